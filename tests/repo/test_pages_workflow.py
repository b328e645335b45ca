"""Publishing: .github/workflows/pages.yml builds the book and its PDF with `make book` and deploys
exactly _build/html (book.pdf included) to GitHub Pages, untouched between the build and the upload,
with the execution cache restored under the key tools/cache_key.py computes. Testing:
.github/workflows/test.yml runs `make test` (through .ci/run) on every pull request and uploads the
built book, the screenshots and the execution reports as artifacts."""
import subprocess

import yaml
from bookinfo import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "pages.yml"


def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def triggers(wf):
    return wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True


def uses(step, action):
    return step.get("uses", "").split("@")[0] == action


def test_runs_on_pushes_to_main():
    on = triggers(workflow())
    assert "main" in on["push"]["branches"]


def test_has_the_permissions_pages_deployment_needs():
    perms = workflow()["permissions"]
    assert perms.get("pages") == "write" and perms.get("id-token") == "write"


def test_builds_with_make_book_and_uploads_exactly_build_html():
    jobs = workflow()["jobs"]
    uploads = [(name, i, s) for name, job in jobs.items() for i, s in enumerate(job.get("steps", []))
               if uses(s, "actions/upload-pages-artifact")]
    assert len(uploads) == 1, "one upload-pages-artifact step expected"
    job_name, index, upload = uploads[0]
    assert upload.get("with", {}).get("path") == "_build/html"
    steps = jobs[job_name]["steps"]
    runs = [s["run"].strip() for s in steps[:index] if "run" in s and s.get("id") != "cache-key"]
    assert runs == ["make book"], f"the job must build with `make book` and nothing else: {runs}"
    assert "run" in steps[index - 1] and steps[index - 1]["run"].strip() == "make book", \
        "nothing may change _build/html between `make book` and the upload"
    # Debian as root, as test.yml: make book installs Debian's chromium for the whole-book PDF
    assert jobs[job_name].get("container") == "python:3.11-bookworm"


def test_deploys_the_uploaded_artifact():
    jobs = workflow()["jobs"]
    deploy = [(name, job) for name, job in jobs.items() if any(uses(s, "actions/deploy-pages") for s in job["steps"])]
    assert len(deploy) == 1
    name, job = deploy[0]
    build = next(n for n, j in jobs.items()
                 if any(uses(s, "actions/upload-pages-artifact") for s in j.get("steps", [])))
    needs = job.get("needs")
    assert build == needs or build in (needs or []), f"{name} must need {build}"
    assert job["environment"]["name"] == "github-pages"


def test_the_book_build_does_not_read_the_workflow_folder():
    """_config.yml keeps .github out of the book, so the published pages are the book only."""
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert ".github" in cfg["exclude_patterns"]


def test_make_book_builds_into_build_html():
    """What the workflow uploads is where `make book` writes: jupyter-book's default _build/html."""
    dry = subprocess.run(["make", "-n", "book"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    builds = [line for line in dry.stdout.splitlines() if "jupyter-book build" in line]
    assert len(builds) == 1, dry.stdout
    assert " build . " in f"{builds[0]} " and "--path-output" not in builds[0] and "--builder" not in builds[0]


def test_pages_restores_the_execution_cache_under_the_computed_key():
    steps = workflow()["jobs"]["build"]["steps"]
    key = next(s for s in steps if s.get("id") == "cache-key")
    assert "tools/cache_key.py" in key["run"] and "GITHUB_OUTPUT" in key["run"]
    cache = next(s for s in steps if uses(s, "actions/cache"))
    assert cache["with"]["path"] == "_build/.jupyter_cache"
    assert cache["with"]["key"] == "${{ steps.cache-key.outputs.key }}"
    order = [s.get("id") or s.get("name") for s in steps]
    assert order.index("cache-key") < steps.index(cache) < order.index("Build the book")


def test_pull_requests_run_make_test_and_upload_artifacts():
    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "test.yml").read_text())
    on = triggers(wf)
    assert "pull_request" in on and "main" in on["push"]["branches"]
    steps = wf["jobs"]["test"]["steps"]
    assert any(s.get("run", "").strip() == "bash .ci/run" for s in steps)
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    upload = next(s for s in steps if uses(s, "actions/upload-artifact"))
    assert upload.get("if") == "always()"
    paths = upload["with"]["path"].split()
    assert {"_build/html", "_build/screenshots", "_build/html/reports"} <= set(paths)
    assert wf["jobs"]["test"].get("timeout-minutes", 360) <= 90
