"""LICENSE, CITATION.cff and CONTRIBUTING.md: present, consistent with pyproject and the book's
repository, and linked from README. CITATION.cff is validated against the Citation File Format 1.2.0
JSON schema, as shipped inside the cffconvert wheel on PyPI (CFF_SCHEMA_WHEEL: downloaded by pip at
test time, no dependency installed; jsonschema validates), and its required fields are checked by hand
as well."""
import datetime
import json
import re
import subprocess
import sys
import tomllib
import zipfile

import pytest
import yaml
from bookinfo import REPO_URL, ROOT, skip_or_fail

CFF_SCHEMA_WHEEL = "cffconvert==2.0.0"
CFF_SCHEMA_IN_WHEEL = "cffconvert/schemas/1.2.0/schema.json"

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


@pytest.fixture(scope="module")
def cff_schema(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cff-schema")
    run = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder),
                          CFF_SCHEMA_WHEEL], capture_output=True, text=True, timeout=300)
    wheels = list(folder.glob("*.whl"))
    if run.returncode != 0 or not wheels:
        skip_or_fail(f"could not download {CFF_SCHEMA_WHEEL} (the CFF schema) from PyPI: {run.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return json.loads(wheel.read(CFF_SCHEMA_IN_WHEEL))


def test_citation_is_valid_against_the_cff_1_2_0_schema(cff_schema):
    import jsonschema
    assert cff_schema["$id"].startswith("https://citation-file-format.github.io/1.2.0/schema")
    # the schema's own note: YAML dates are validated as strings
    doc = json.loads(json.dumps(cff(), default=str))
    validator = jsonschema.Draft7Validator(cff_schema, format_checker=jsonschema.FormatChecker())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, errors


def test_the_schema_check_catches_a_broken_citation(cff_schema):
    import jsonschema
    broken = {**json.loads(json.dumps(cff(), default=str)), "license": "MIT-ish", "date-released": "2026-13-01"}
    broken["authors"] = [{"nickname": "no name"}]
    errors = list(jsonschema.Draft7Validator(cff_schema).iter_errors(broken))
    paths = {e.absolute_path[0] for e in errors if e.absolute_path}
    assert {"license", "date-released", "authors"} <= paths, paths


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
    for must in ("_toc.yml", "nblib.book.seeds", "Ledger", "verify()", "make test", "offset-check", "make bench"):
        assert must in text, must
