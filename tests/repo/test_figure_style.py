"""One figure style for the whole book: every executable chapter applies nblib's style before it draws,
and none sets its own colours, backgrounds or transparency (which could vanish in the dark theme)."""
import re

import pytest
from bookinfo import ROOT, chapters

OWN_STYLE = re.compile(r"rcParams|plt\.style\.use|mpl\.style\.use|transparent\s*=\s*True|set_facecolor|"
                       r"facecolor\s*=\s*['\"](?:none|transparent)")


def code_cells(doc):
    text = (ROOT / f"{doc}.md").read_text()
    return re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, re.M | re.S)


@pytest.mark.parametrize("doc", chapters())
def test_chapter_uses_the_shared_style_before_drawing(doc):
    cells = code_cells(doc)
    assert cells, f"{doc}: no code cells found"
    code = "\n".join(cells)
    styled = code.find("book.use_style()")
    assert styled >= 0, f"{doc} does not call nblib.book.use_style()"
    first_plot = min((m.start() for m in re.finditer(r"plt\.(subplots|figure)\(", code)), default=len(code))
    assert styled < first_plot, f"{doc} draws a figure before applying the book style"


@pytest.mark.parametrize("doc", chapters())
def test_chapter_sets_no_style_of_its_own(doc):
    own = [m.group(0) for cell in code_cells(doc) for m in OWN_STYLE.finditer(cell)]
    assert not own, f"{doc} overrides the shared figure style: {own}"
