"""The execution cache cannot serve results that are stale with respect to nblib or the environment:
tools/cache_key.py changes whenever nblib, the pins, the installed packages or the data files chapters
read change, and `make book` (its cache-guard step) then clears _build/.jupyter_cache."""
import shutil
import subprocess
import sys

import pytest
from bookinfo import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import cache_key  # noqa: E402


@pytest.fixture
def repo(tmp_path):
    """A minimal copy of the repository: nblib, the pins, the Makefile and tools/, and a fake venv."""
    shutil.copytree(ROOT / "nblib", tmp_path / "nblib", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.lock", "pyproject.toml", "Makefile"):
        shutil.copy2(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "tools", tmp_path / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "book").mkdir()
    site = tmp_path / ".venv" / "lib" / "python3.11" / "site-packages"
    (site / "torch-2.13.0+cpu.dist-info").mkdir(parents=True)
    (site / "numpy-2.4.6.dist-info").mkdir()
    (tmp_path / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    return tmp_path


def key(repo):
    return cache_key.cache_key(repo, repo / ".venv")


CHANGES = {
    "a line of nblib": lambda r: (r / "nblib" / "book" / "claims.py").write_text(
        (r / "nblib" / "book" / "claims.py").read_text() + "\n# x\n"),
    "a new nblib module": lambda r: (r / "nblib" / "extra.py").write_text("X = 1\n"),
    "a renamed nblib module": lambda r: (r / "nblib" / "book" / "claims.py").rename(
        r / "nblib" / "book" / "claims2.py"),
    "requirements.lock": lambda r: (r / "requirements.lock").write_text(
        (r / "requirements.lock").read_text().replace("numpy==2.4.6", "numpy==2.4.7")),
    "pyproject.toml": lambda r: (r / "pyproject.toml").write_text((r / "pyproject.toml").read_text() + "\n"),
    "an installed package": lambda r: (r / ".venv/lib/python3.11/site-packages/numpy-2.4.6.dist-info").rename(
        r / ".venv/lib/python3.11/site-packages/numpy-2.4.7.dist-info"),
    "a package installed by hand": lambda r: (r / ".venv/lib/python3.11/site-packages/einops-0.8.2.dist-info").mkdir(),
    "the venv's Python": lambda r: (r / ".venv" / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.9\n"),
    "stored benchmark results": lambda r: ((r / "benchmarks" / "results").mkdir(parents=True, exist_ok=True),
                                           (r / "benchmarks" / "results" / "book_time.json").write_text("{}")),
}


@pytest.mark.parametrize("what", CHANGES)
def test_key_changes_when_an_input_changes(repo, what):
    before = key(repo)
    CHANGES[what](repo)
    assert key(repo) != before, f"the cache key ignores {what}"


def test_key_is_stable(repo):
    before = key(repo)
    (repo / "nblib" / "__pycache__").mkdir(exist_ok=True)
    (repo / "nblib" / "__pycache__" / "claims.cpython-311.pyc").write_bytes(b"\0")
    (repo / "book" / "theorem.md").write_text("a chapter: jupyter-cache keys chapters itself\n")
    assert key(repo) == before == key(repo)
    assert len(before) == 16 and int(before, 16) >= 0


def test_command_line_matches_the_function(repo):
    out = subprocess.run([sys.executable, "tools/cache_key.py", "--venv", ".venv"], cwd=repo,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == key(repo)


def make_cache_guard(repo):
    return subprocess.run(["make", "--no-print-directory", "cache-guard", f"PYTHON={sys.executable}"],
                          cwd=repo, capture_output=True, text=True, timeout=60)


def test_make_clears_the_execution_cache_when_nblib_or_the_environment_changes(repo):
    cache = repo / "_build" / ".jupyter_cache"
    assert make_cache_guard(repo).returncode == 0
    cache.mkdir(parents=True)
    (cache / "entry").write_text("cached outputs")
    assert make_cache_guard(repo).returncode == 0
    assert (cache / "entry").exists(), "the cache was cleared although nothing changed"
    for what in ("a line of nblib", "an installed package"):
        CHANGES[what](repo)
        run = make_cache_guard(repo)
        assert run.returncode == 0, run.stderr
        assert not cache.exists(), f"a change of {what} left the execution cache in place"
        assert "clearing the execution cache" in run.stdout
        cache.mkdir(parents=True)
        (cache / "entry").write_text("cached outputs")
