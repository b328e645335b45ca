"""System packages: every program the tests and tools look for on PATH (shutil.which) comes from a
Debian package that the Makefile's system-packages target installs as root (DEBIAN_NEEDS), that
make test runs before anything else, and that README's "System packages" table lists."""
import re

from bookinfo import ROOT

# The programs each check looks up, and the Debian package that provides it.
PROGRAMS = {"chromium": "chromium", "pdftoppm": "poppler-utils", "npm": "npm"}


def debian_needs():
    makefile = (ROOT / "Makefile").read_text()
    line = re.search(r"^DEBIAN_NEEDS := (.*)$", makefile, re.M).group(1)
    return dict(need.split(":", 1) for need in line.split())


def test_every_program_the_checks_look_up_is_a_needed_package():
    sources = [p.read_text() for d in ("tests", "tools") for p in (ROOT / d).rglob("*.py")]
    sources.append((ROOT / "Makefile").read_text())
    looked_up = {name for text in sources for name in PROGRAMS if re.search(rf"\b{name}\b", text)}
    assert looked_up == set(PROGRAMS)
    needs = debian_needs()
    for program, package in PROGRAMS.items():
        assert package in needs, f"{package} (for {program}) is not in the Makefile's DEBIAN_NEEDS"
        assert program in needs[package], f"DEBIAN_NEEDS does not probe {package} by {program}"


def test_make_test_installs_them_first():
    makefile = (ROOT / "Makefile").read_text()
    prereqs = re.search(r"^test: (.*)$", makefile, re.M).group(1).split()
    assert prereqs[0] == "system-packages"
    for target in ("book", "book-force", "pdf", "browser-check", "html-check", "axe"):
        block = re.search(rf"^{re.escape(target)}:.*?(?=^\S|\Z)", makefile, re.M | re.S).group(0)
        assert "system-packages" in block, f"make {target} does not check the system packages"


def test_readme_lists_them():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## System packages", 1)[1].split("\n## ", 1)[0]
    for package in debian_needs():
        assert f"| `{package}` |" in section, f"README's System packages table misses {package}"
        assert package in section.split("sudo apt-get install", 1)[1].splitlines()[0]
