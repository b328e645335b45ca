#!/usr/bin/env python3
"""Print the key of the book's execution cache (16 hex digits); `make book` clears the cache when it changes.

jupyter-cache keys each chapter on its own code cells only, so a cached chapter would survive a change of
the library it imports or of the environment it runs in. This key covers those:

* every file of nblib/ (path and content, __pycache__ excluded),
* requirements.lock and pyproject.toml (the pinned environment),
* data files that chapters read (the Performance appendix reads benchmarks/results/*.json),
* the environment actually installed in the virtual environment (--venv): its Python version and the
  name and version of every installed distribution, so a package changed by hand also counts.

Standard library only: the Makefile runs it with the system Python, before or after the venv exists.
"""
from __future__ import annotations

import argparse
import hashlib
import pathlib
import re
import sys

PINNED = ("requirements.lock", "pyproject.toml")
CHAPTER_DATA = ("benchmarks/results/*.json",)


def source_files(root: pathlib.Path) -> list[pathlib.Path]:
    lib = sorted(p for p in (root / "nblib").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"})
    data = sorted(p for pattern in CHAPTER_DATA for p in root.glob(pattern) if p.is_file())
    return lib + [root / name for name in PINNED if (root / name).exists()] + data


def installed(venv: pathlib.Path) -> list[str]:
    """'python X.Y.Z' and the NAME-VERSION of every distribution installed in ``venv`` (sorted)."""
    lines = []
    cfg = venv / "pyvenv.cfg"
    if cfg.exists():
        m = re.search(r"^version(?:_info)?\s*=\s*(\S+)", cfg.read_text(), re.M)
        lines.append(f"python {m.group(1) if m else '?'}")
    for site in sorted(venv.glob("lib/python*/site-packages")):
        lines += sorted(p.name for p in site.glob("*.dist-info"))
    return lines


def cache_key(root: pathlib.Path, venv: pathlib.Path | None = None) -> str:
    digest = hashlib.sha256()
    for path in source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    if venv is not None:
        digest.update("\n".join(installed(venv)).encode())
    return digest.hexdigest()[:16]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("."), help="repository root (default: .)")
    parser.add_argument("--venv", type=pathlib.Path, help="virtual environment whose installed packages count")
    args = parser.parse_args(argv)
    venv = args.venv.resolve() if args.venv is not None and args.venv.exists() else None
    print(cache_key(args.root.resolve(), venv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
