#!/usr/bin/env python3
"""Lint the code cells of the book's chapters (book/*.md) with ruff and report chapter:line.

A chapter is a jupytext MyST notebook: its code is in ```{code-cell} blocks of the .md file. This tool
reads those blocks the way jupytext does (a ``---`` YAML block or ``:key: value`` option lines at the top
of a cell are cell metadata, and one blank line after them is dropped), writes each chapter's code cells
as a notebook (.ipynb, code cells only) into a temporary folder and runs ``ruff check`` on it with the
ruff settings of pyproject.toml and the book's line length for code cells (88). Ruff reads notebooks
natively, so IPython magics (``%matplotlib``, ``%%time``, ``!cmd``), a trailing ``;`` that hides a cell's
output and imports at the top of a later cell are handled as in Jupyter. Each finding is reported at its
line of the chapter's .md file:

    book/theorem.md:212:89: E501 Line too long (93 > 88)

Usage: python tools/chapter_code.py [--ruff PATH] [--keep DIR] [book/theorem.md ...]
(default: every book/*.md with code cells). Exit status 0: no finding; 1: findings; 2: ruff failed.
tests/repo/test_chapter_code.py uses code_cells() for the book's line and cell-length rules.

Standard library only (plus the ruff executable).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
LINE_LENGTH = 88       # the book's rule for a line of code in a chapter
MAX_CELL_LINES = 30    # the book's rhythm: a code cell of about 25 lines at most, 30 a hard limit

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
CODE_CELL = "{code-cell}"


@dataclasses.dataclass
class Cell:
    """One code cell of a chapter: ``lines`` are its code, ``start`` is the .md line (1-based) of the
    first of them and ``fence`` the .md line of its opening ```{code-cell} fence."""
    fence: int
    start: int
    lines: list[str]

    @property
    def source(self) -> str:
        return "\n".join(self.lines)

    def md_line(self, row: int) -> int:
        """The .md line of the cell's ``row``-th line (1-based)."""
        return self.start + row - 1

    def length(self) -> int:
        """Number of lines of code, trailing blank lines not counted."""
        n = len(self.lines)
        while n and not self.lines[n - 1].strip():
            n -= 1
        return n


def _closes(line: str, fence: str) -> bool:
    stripped = line.rstrip()
    return (len(stripped) >= len(fence) and set(stripped) == {fence[0]}
            and not line[:1].isspace())


def _body(lines: list[str], first: int) -> tuple[int, list[str]]:
    """Drop the cell's options the way jupytext does; return (index of the first code line, code lines).
    ``lines`` is the fence's content, ``first`` the index of its first line in the .md file."""
    i = 0
    if lines and lines[0].startswith("---"):
        i = 1
        while i < len(lines) and not re.match(r"-{3,}", lines[i]):
            i += 1
        i += 1                                   # past the closing ---
    elif lines and lines[0].lstrip().startswith(":"):
        while i < len(lines) and lines[i].lstrip().startswith(":"):
            i += 1
    if i < len(lines) and not lines[i].strip():
        i += 1                                   # one blank line between the options and the code
    return first + i, lines[i:]


def code_cells(path: pathlib.Path | str) -> list[Cell]:
    """The code cells of a MyST-markdown chapter, in order, with their .md line numbers."""
    lines = pathlib.Path(path).read_text().splitlines()
    cells = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, info = m.group("fence"), m.group("info").strip()
        j = i + 1
        while j < len(lines) and not _closes(lines[j], fence):
            j += 1
        if info.startswith(CODE_CELL):
            start, body = _body(lines[i + 1:j], i + 1)
            cells.append(Cell(fence=i + 1, start=start + 1, lines=body))
        i = j + 1                                 # any other fenced block is skipped whole
    return cells


def chapter_paths(root: pathlib.Path = ROOT) -> list[pathlib.Path]:
    """Every book/*.md that has code cells."""
    return [p for p in sorted((root / "book").glob("*.md")) if code_cells(p)]


def notebook(cells: list[Cell]) -> dict:
    """A minimal nbformat-4 notebook holding just the code cells (enough for ruff)."""
    def source(cell):
        return [line + "\n" for line in cell.lines[:-1]] + cell.lines[-1:]
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"cell-{k}", "metadata": {},
                   "outputs": [], "source": source(c)} for k, c in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                     "language_info": {"name": "python"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


def find_ruff(explicit: str | None) -> str:
    if explicit:
        return explicit
    here = pathlib.Path(sys.executable).parent / "ruff"     # the venv's ruff when run by the venv's python
    return str(here) if here.exists() else (shutil.which("ruff") or "ruff")


def lint(paths: list[pathlib.Path], ruff: str, workdir: pathlib.Path) -> list[str]:
    """Run ruff on the code cells of ``paths``; return its findings as 'chapter.md:line:col: CODE msg'."""
    chapters = {}
    for k, path in enumerate(paths):
        cells = code_cells(path)
        if not cells:
            continue
        nb = workdir / f"{k:02d}_{path.stem}.ipynb"
        nb.write_text(json.dumps(notebook(cells), indent=1))
        chapters[nb.resolve()] = (path, cells)
    if not chapters:
        return []
    cmd = [ruff, "check", "--config", str(ROOT / "pyproject.toml"), "--line-length", str(LINE_LENGTH),
           "--no-cache", "--no-fix", "--exit-zero", "--output-format", "json", *map(str, chapters)]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed ({run.returncode}):\n{run.stderr}")
    findings = []
    for d in json.loads(run.stdout or "[]"):
        path, cells = chapters[pathlib.Path(d["filename"]).resolve()]
        row, col = d["location"]["row"], d["location"]["column"]
        cell = d.get("cell")
        line = cells[cell - 1].md_line(row) if cell else row
        findings.append((str(display(path)), line, col, f"{d['code']} {d['message']}"))
    return [f"{p}:{line}:{col}: {msg}" for p, line, col, msg in sorted(findings)]


def display(path: pathlib.Path) -> pathlib.Path:
    try:
        return path.resolve().relative_to(pathlib.Path.cwd().resolve())
    except ValueError:
        return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", type=pathlib.Path,
                        help="chapter .md files (default: every book/*.md with code cells)")
    parser.add_argument("--ruff", help="the ruff executable (default: the one next to this Python, or PATH's)")
    parser.add_argument("--keep", type=pathlib.Path, help="write the extracted notebooks to this folder")
    args = parser.parse_args(argv)
    paths = args.chapters or chapter_paths()
    ruff = find_ruff(args.ruff)
    try:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            findings = lint(paths, ruff, args.keep)
        else:
            with tempfile.TemporaryDirectory(prefix="chapter_code_") as tmp:
                findings = lint(paths, ruff, pathlib.Path(tmp))
    except (OSError, RuntimeError) as error:
        print(f"chapter_code: {error}", file=sys.stderr)
        return 2
    for line in findings:
        print(line)
    n = len(paths)
    print(f"chapter code cells ({n} chapter{'s' * (n != 1)}, ruff, line length {LINE_LENGTH}): "
          f"{len(findings) or 'no'} finding{'s' * (len(findings) != 1)}", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    os.environ.setdefault("NO_COLOR", "1")
    sys.exit(main())
