"""Binder: repo2docker accepts the repository (environment.yml + postBuild), the Binder environment pins
exactly what requirements.lock and pyproject.toml pin, torch comes CPU-only, and postBuild makes
JupyterLab open a chapter's .md as a notebook (jupytext's default-viewer setting)."""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml
from bookinfo import ROOT, chapters

BIN = os.path.dirname(sys.executable)  # the venv's bin: jupytext-config, jupyter-repo2docker
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pin(spec: str) -> tuple[str, str]:
    m = re.fullmatch(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)\s*", spec)
    assert m, f"not an exact pin: {spec!r}"
    return canonical(m.group(1)), m.group(2)


def public(version: str) -> str:
    """The version without its local label (2.13.0+cpu -> 2.13.0)."""
    return version.split("+", 1)[0]


def environment():
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def environment_pip_lines():
    pip = [d["pip"] for d in environment()["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs one pip: section"
    return pip[0]


def environment_pins():
    return dict(parse_pin(line) for line in environment_pip_lines() if not line.startswith("-"))


def lock_pins():
    return dict(parse_pin(line) for line in (ROOT / "requirements.lock").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#"))


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pyproject_pins(*groups):
    project = pyproject()["project"]
    specs = list(project["dependencies"]) if "main" in groups else []
    for group in groups:
        specs += pyproject().get("dependency-groups", {}).get(group, [])
    return dict(parse_pin(s) for s in specs)


def test_environment_pins_agree_with_the_lock_and_pyproject():
    env, lock = environment_pins(), lock_pins()
    declared = pyproject_pins("main", "book", "test")
    assert env, "environment.yml pins nothing"
    for name, version in env.items():
        assert name in lock, f"{name} is in environment.yml but not in requirements.lock"
        assert version == lock[name], f"{name}: environment.yml {version} != requirements.lock {lock[name]}"
        if name in declared:
            assert version == declared[name], f"{name}: environment.yml {version} != pyproject.toml {declared[name]}"
    for name, version in pyproject_pins("main", "book").items():
        assert env.get(name) == version, f"{name}=={version} (pyproject.toml) is missing from environment.yml"
    for name, version in declared.items():
        assert lock.get(name) == version, f"{name}: pyproject.toml {version} != requirements.lock {lock.get(name)}"


def test_environment_python_matches_the_project():
    conda = [d for d in environment()["dependencies"] if isinstance(d, str)]
    python = [d for d in conda if d.startswith("python")]
    assert python == ["python=3.11"], python
    assert pyproject()["project"]["requires-python"] == ">=3.11,<3.12"


def test_binder_torch_is_cpu_only():
    lines = environment_pip_lines()
    indexes = [line.split(None, 1)[1] for line in lines if line.startswith(("--extra-index-url", "--index-url"))]
    assert CPU_INDEX in indexes, f"torch must come from {CPU_INDEX}: {indexes}"
    assert all("cu1" not in i and "rocm" not in i for i in indexes), indexes
    env = environment_pins()
    assert public(env["torch"]) == public(lock_pins()["torch"])
    gpu = [n for n in env if n.startswith(("nvidia-", "cuda", "triton"))]
    assert not gpu, f"GPU packages in environment.yml: {gpu}"


def test_repo2docker_accepts_the_repository(tmp_path):
    """repo2docker (no container engine needed with --no-build) detects environment.yml and postBuild."""
    exe = shutil.which("jupyter-repo2docker", path=BIN) or shutil.which("jupyter-repo2docker")
    if exe is None:
        pytest.skip("jupyter-repo2docker is not installed (it is pinned in requirements.lock: make venv)")
    # Only the files repo2docker looks at: a copy keeps it from reading the whole working tree.
    for name in ("environment.yml", "postBuild", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, tmp_path / name)
    assert not (ROOT / "binder").exists() and not (ROOT / ".binder").exists(), \
        "a binder/ folder would make repo2docker ignore environment.yml and postBuild at the root"
    run = subprocess.run([exe, "--no-build", "--no-run", "--debug", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "conda environment for python=3.11" in out, out[-3000:]
    assert re.search(r"env update .*--file \"?environment\.yml", out), "environment.yml is not installed"
    assert "./postBuild" in out, "postBuild is not run"


def test_postbuild_makes_md_open_as_a_notebook(tmp_path):
    """Run postBuild in a sandbox (HOME in tmp, pip recorded instead of run) and read the JupyterLab
    settings back the way JupyterLab does: .md and MyST files open with the Jupytext Notebook viewer."""
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    (fakebin / "pip").write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/pip-args\n')
    (fakebin / "pip").chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    env.update(HOME=str(home), PATH=f"{fakebin}{os.pathsep}{BIN}{os.pathsep}{env['PATH']}")
    run = subprocess.run(["bash", str(ROOT / "postBuild")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (tmp_path / "pip-args").read_text().split() == ["install", "--no-deps", "-e", "."], "nblib is not installed"
    assert (home / ".jupyter" / "labconfig" / "default_setting_overrides.json").exists()
    read_back = ("import json, tempfile; from jupyterlab_server.settings_utils import _get_overrides; "
                 "print(json.dumps(_get_overrides(tempfile.mkdtemp())[0]))")
    out = subprocess.run([sys.executable, "-c", read_back], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    viewers = yaml.safe_load(out.stdout)["@jupyterlab/docmanager-extension:plugin"]["defaultViewers"]
    assert viewers.get("markdown") == "Jupytext Notebook" and viewers.get("myst") == "Jupytext Notebook", viewers


def test_jupytext_notebook_viewer_exists_and_reads_the_chapters():
    """The viewer named in the settings is the one jupytext's JupyterLab extension registers, and every
    chapter's .md reads as a notebook."""
    import jupytext

    ext = pathlib.Path(sys.prefix) / "share" / "jupyter" / "labextensions" / "jupyterlab-jupytext"
    assert ext.is_dir(), "jupytext's JupyterLab extension is not installed"
    assert any('"Jupytext Notebook"' in p.read_text(errors="replace") for p in ext.rglob("*.js"))
    for doc in chapters():
        nb = jupytext.read(ROOT / f"{doc}.md")
        assert nb.metadata["kernelspec"]["name"] == "python3"
        assert any(c.cell_type == "code" for c in nb.cells)
