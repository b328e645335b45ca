"""Where the book and its build live, shared by tests/book, tests/browser and tests/repo.

BOOK_HTML (environment variable) points the checks at a built book other than _build/html; the
executed notebooks are looked for next to it (BOOK_HTML/../jupyter_execute) unless BOOK_EXECUTED says
otherwise, and the nbmake copies in .nbmake unless NBMAKE_DIR says otherwise.
"""
from __future__ import annotations

import os
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
BOOK_HTML = pathlib.Path(os.environ.get("BOOK_HTML") or ROOT / "_build" / "html").resolve()
EXECUTED = pathlib.Path(os.environ.get("BOOK_EXECUTED") or BOOK_HTML.parent / "jupyter_execute").resolve()
NBMAKE_DIR = pathlib.Path(os.environ.get("NBMAKE_DIR") or ROOT / ".nbmake").resolve()
# `make offset-check` executes every chapter once more with every seed shifted by TEST_SEED_OFFSET.
OFFSET_DIR = pathlib.Path(os.environ.get("OFFSET_DIR") or ROOT / ".nbmake-offset").resolve()
TEST_SEED_OFFSET = int(os.environ.get("TEST_SEED_OFFSET") or 104729)
SCREENSHOTS = pathlib.Path(os.environ.get("BOOK_SCREENSHOTS") or ROOT / "_build" / "screenshots").resolve()

# The repository the book is published from; the launch buttons must point at its main branch
# (a fork sets repository.url in _config.yml and BOOK_REPO_URL for these checks).
REPO_URL = os.environ.get("BOOK_REPO_URL") or "https://github.com/implicit-regularization/implicit-regularization-book"
BRANCH = "main"


def in_ci() -> bool:
    """True under CI, where a check that cannot run is a failure rather than a skip."""
    return bool(os.environ.get("CI"))


def skip_or_fail(reason: str) -> None:
    """Skip the test with ``reason``, or fail it when running under CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
    pytest.skip(reason)


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def toc_files() -> list[str]:
    """Every document of the table of contents, e.g. 'book/theorem'."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def executable(doc: str) -> bool:
    """A chapter that runs code: its .md has a jupytext ``kernelspec:`` header."""
    return re.search(r"^kernelspec:", (ROOT / f"{doc}.md").read_text(), re.M) is not None


def chapters() -> list[str]:
    """The executable chapters (the ones with code, figures and a claims table)."""
    return [d for d in toc_files() if executable(d)]


def book_built() -> bool:
    return (BOOK_HTML / "index.html").exists()
