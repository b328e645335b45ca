"""LICENSE, CITATION.cff and CONTRIBUTING.md: present, consistent with pyproject and the book's
repository, and linked from README. CITATION.cff is checked against the required fields and types of the
Citation File Format 1.2.0 (cff-version, message, title, authors; person or entity authors; SPDX
licenses; an ISO date), not against the full JSON schema."""
import datetime
import re
import tomllib

import yaml
from bookinfo import REPO_URL, ROOT

SPDX = {"MIT", "CC-BY-4.0"}


def cff():
    return yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_citation_has_the_required_fields_of_cff_1_2():
    c = cff()
    assert c["cff-version"] == "1.2.0"
    for key in ("message", "title"):
        assert isinstance(c[key], str) and c[key].strip()
    assert isinstance(c["authors"], list) and c["authors"]
    for a in c["authors"]:
        assert ("family-names" in a) or ("name" in a), a
    assert c.get("type", "software") in {"software", "dataset"}
    assert isinstance(datetime.date.fromisoformat(str(c["date-released"])), datetime.date)
    for ref in c.get("references", []):
        assert ref["type"] and ref["title"] and ref["authors"], ref


def test_citation_agrees_with_pyproject_license_and_repository():
    c = cff()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert str(c["version"]) == project["version"]
    licenses = set(c["license"]) if isinstance(c["license"], list) else {c["license"]}
    assert licenses == SPDX and project["license"]["text"] == "MIT"
    assert c["repository-code"] == REPO_URL


def test_license_names_both_licenses_and_readme_links_everything():
    text = (ROOT / "LICENSE").read_text()
    assert "MIT License" in text and "CC BY 4.0" in text and "creativecommons.org/licenses/by/4.0" in text
    readme = (ROOT / "README.md").read_text()
    for name in ("LICENSE", "CITATION.cff", "CONTRIBUTING.md"):
        assert (ROOT / name).exists()
        assert re.search(rf"\]\({re.escape(name)}\)", readme), f"README does not link {name}"
    footer = yaml.safe_load((ROOT / "_config.yml").read_text())["html"]["extra_footer"]
    assert "MIT" in footer and "CC BY 4.0" in footer


def test_contributing_covers_a_new_chapter():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    for must in ("_toc.yml", "book_seeds", "Ledger", "verify()", "make test", "offset-check", "make bench"):
        assert must in text, must
