"""Two clean executions of every chapter glue identical numbers.

`make test` executes each chapter twice from scratch: once through nbmake (the executed copies stay in
.nbmake/NAME.ipynb, `--overwrite`) and once in the forced book build (myst-nb writes the glued values to
_build/jupyter_execute/book/NAME.glue.json). Every glued value, i.e. every number quoted in the text and
every measured value of a claims table, must be the same in both. The one exception is wall-clock
time ("the chapter ran in 16 s here"): by convention such values are glued under a name ending in
`_seconds`; they must be present in both runs as positive numbers, but may differ.
"""
import json

import pytest
from bookinfo import EXECUTED, NBMAKE_DIR, chapters, skip_or_fail

RECORD_PREFIX = "application/papermill.record/"
WALL_CLOCK_SUFFIX = "_seconds"


def glue_from_outputs(outputs):
    """{name: {mime: value}} of the myst-nb glue outputs (metadata {"scrapbook": {"name": ...}})."""
    glued = {}
    for out in outputs:
        meta = (out.get("metadata") or {}).get("scrapbook")
        if not meta or "name" not in meta:
            continue
        prefix = meta.get("mime_prefix", RECORD_PREFIX)
        glued[meta["name"]] = {
            (mime[len(prefix):] if mime.startswith(prefix) else mime): value
            for mime, value in out.get("data", {}).items()
        }
    return glued


def glue_of_notebook(path):
    nb = json.loads(path.read_text())
    return glue_from_outputs(o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", []))


def code_of(path):
    nb = json.loads(path.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]


def glue_of_book_build(name):
    """Glued values of the book build: myst-nb's NAME.glue.json, else the glue outputs of NAME.ipynb."""
    store = EXECUTED / "book" / f"{name}.glue.json"
    if store.exists():
        return glue_from_outputs(json.loads(store.read_text()).values())
    return glue_of_notebook(EXECUTED / "book" / f"{name}.ipynb")


def differences(a, b):
    """Lines describing how two {name: {mime: value}} dicts differ (empty when identical)."""
    lines = [f"{k}: only in the first run" for k in sorted(a.keys() - b.keys())]
    lines += [f"{k}: only in the second run" for k in sorted(b.keys() - a.keys())]
    for k in sorted(a.keys() & b.keys()):
        if k.endswith(WALL_CLOCK_SUFFIX):
            if not all(positive_number(run[k]) for run in (a, b)):
                lines.append(f"{k}: a wall-clock time must be a positive number: {a[k]}, {b[k]}")
        elif a[k] != b[k]:
            lines.append(f"{k}: {a[k]} != {b[k]}")
    return lines


def positive_number(value):
    try:
        return float(value.get("text/plain", "nan")) > 0
    except ValueError:
        return False


@pytest.mark.parametrize("doc", chapters())
def test_two_clean_executions_glue_identical_values(doc):
    name = doc.split("/")[-1]
    nbmake_copy = NBMAKE_DIR / f"{name}.ipynb"
    built = [EXECUTED / "book" / f"{name}.glue.json", EXECUTED / "book" / f"{name}.ipynb"]
    if not nbmake_copy.exists() or not any(p.exists() for p in built):
        skip_or_fail(f"needs both executions of {name}: {nbmake_copy} (make nbmake) and {built[1]} (make book-force)")
    if built[1].exists() and code_of(nbmake_copy) != code_of(built[1]):
        skip_or_fail(f"{nbmake_copy} and {built[1]} ran different versions of {name}: "
                     "run make nbmake and make book-force")
    first, second = glue_of_notebook(nbmake_copy), glue_of_book_build(name)
    assert first, f"{nbmake_copy} has no glued values: was nbmake run with --overwrite?"
    diff = differences(first, second)
    assert not diff, f"{name}: {len(diff)} glued values differ between two clean runs:\n" + "\n".join(diff)


def test_comparison_reports_a_changed_value():
    meta = {"scrapbook": {"name": "x", "mime_prefix": RECORD_PREFIX}}
    # nbmake's copy keeps the prefixed mime type; myst-nb's glue store strips it
    a = glue_from_outputs([{"output_type": "display_data", "metadata": meta,
                            "data": {RECORD_PREFIX + "text/plain": "0.5"}}])
    b = glue_from_outputs([{"output_type": "display_data", "metadata": meta, "data": {"text/plain": "0.5"}}])
    assert a == b == {"x": {"text/plain": "0.5"}}
    c = {"x": {"text/plain": "0.50001"}, "y": {"text/plain": "1"}}
    assert differences(a, c) == ["y: only in the second run", "x: {'text/plain': '0.5'} != {'text/plain': '0.50001'}"]
    timings = ({"t_seconds": {"text/plain": "16.0"}}, {"t_seconds": {"text/plain": "18.3"}})
    assert differences(*timings) == []
    assert differences(timings[0], {"t_seconds": {"text/plain": "'n/a'"}})
