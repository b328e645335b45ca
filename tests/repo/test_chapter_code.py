"""The book's rules for the code cells of a chapter: every line of code fits in 88 columns (counted as
UTF-8 bytes: a non-ASCII glyph such as η or ‖ may come from a wider fallback font on the page, so it
counts as more than one column) and a code cell
has at most 30 lines (the book's rhythm is about 25). Violations are reported as chapter.md:line. The
cells are read by tools/chapter_code.py (also what `make lint` runs ruff on); that it reads them as
jupytext does, and maps ruff's findings back to the .md lines, is checked here too."""
import shutil
import sys

import pytest
from bookinfo import ROOT, chapters

sys.path.insert(0, str(ROOT / "tools"))
import chapter_code  # noqa: E402
from chapter_code import LINE_LENGTH, MAX_CELL_LINES, code_cells  # noqa: E402

CHAPTERS = chapters()


def width(line: str) -> int:
    """Columns a code line may take on the page, conservatively: its UTF-8 bytes."""
    return len(line.encode("utf-8"))


@pytest.mark.parametrize("doc", CHAPTERS)
def test_code_lines_fit_the_line_length(doc):
    too_long = [f"{doc}.md:{cell.md_line(row)}: {width(line)} > {LINE_LENGTH} columns"
                for cell in code_cells(ROOT / f"{doc}.md")
                for row, line in enumerate(cell.lines, 1) if width(line) > LINE_LENGTH]
    assert not too_long, f"{len(too_long)} code line(s) longer than {LINE_LENGTH}:\n" + "\n".join(too_long)


@pytest.mark.parametrize("doc", CHAPTERS)
def test_code_cells_are_short(doc):
    too_big = [f"{doc}.md:{cell.fence}: code cell of {cell.length()} lines (lines {cell.start}-"
               f"{cell.md_line(cell.length())})"
               for cell in code_cells(ROOT / f"{doc}.md") if cell.length() > MAX_CELL_LINES]
    assert not too_big, f"{len(too_big)} code cell(s) longer than {MAX_CELL_LINES} lines:\n" + "\n".join(too_big)


@pytest.mark.parametrize("doc", CHAPTERS)
def test_code_cells_are_read_as_jupytext_reads_them(doc):
    import jupytext

    expected = [c.source for c in jupytext.read(ROOT / f"{doc}.md").cells if c.cell_type == "code"]
    assert [c.source.rstrip() for c in code_cells(ROOT / f"{doc}.md")] == [s.rstrip() for s in expected]


SAMPLE = """\
---
kernelspec:
  name: python3
---
# A chapter

```python
x = "not a code cell"
```

```{code-cell} ipython3
%matplotlib inline
import os
```

```{code-cell} ipython3
:tags: [remove-input]

y = 1;
```

```{code-cell} ipython3
---
tags: [hide-output]
---
import sys
z = (1,2)
```
"""


def test_line_numbers_of_the_cells(tmp_path):
    md = tmp_path / "sample.md"
    md.write_text(SAMPLE)
    cells = code_cells(md)
    assert [c.lines for c in cells] == [["%matplotlib inline", "import os"], ["y = 1;"],
                                        ["import sys", "z = (1,2)"]]
    assert [c.fence for c in cells] == [11, 16, 22]
    assert [c.start for c in cells] == [12, 19, 26]
    assert cells[2].md_line(2) == 27


def test_ruff_findings_are_reported_at_the_md_lines(tmp_path):
    ruff = chapter_code.find_ruff(None)
    if shutil.which(ruff) is None:
        pytest.skip("ruff is not installed (it is pinned in requirements.lock: make venv)")
    md = tmp_path / "sample.md"
    md.write_text(SAMPLE)
    work = tmp_path / "work"
    work.mkdir()
    findings = chapter_code.lint([md], ruff, work)
    # the magic and the output-hiding ';' are fine; the unused imports are found at their .md lines
    assert [f.split(":", 1)[1].split(" ")[:2] for f in findings] == [["13:8:", "F401"], ["26:8:", "F401"]], findings


@pytest.mark.parametrize("doc", CHAPTERS)
def test_code_cell_metadata_fits_the_line_length(doc):
    """The YAML header of a code cell (tags, figure alt text) is shown in the source views and the
    .md download, so it keeps the same 88 columns as the code."""
    too_long, inside = [], False
    for number, line in enumerate((ROOT / f"{doc}.md").read_text().splitlines(), 1):
        if line.startswith("```{code-cell}"):
            inside = True
        elif inside and line.startswith("```"):
            inside = False
        elif inside and width(line) > LINE_LENGTH:
            too_long.append(f"{doc}.md:{number}: {width(line)} > {LINE_LENGTH} columns")
    assert not too_long, f"{len(too_long)} code-cell line(s) longer than {LINE_LENGTH}:\n" + "\n".join(too_long)
