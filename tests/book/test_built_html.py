"""Checks of the built HTML book (_build/html): every page of the table of contents is there, chapters
that run code show their claims table with every claim holding, math is served locally, and nothing
leaks (tracebacks, absolute paths, scripts from a CDN). Run after the book build (make test does)."""
import pathlib
import re

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"


def toc_files():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        files += [c["file"] for c in part["chapters"]]
    return files


def executable(doc):
    return re.search(r"^kernelspec:", (ROOT / f"{doc}.md").read_text(), re.M) is not None


pytestmark = pytest.mark.skipif(not (HTML / "index.html").exists(), reason="build the book first (make book)")


@pytest.mark.parametrize("doc", toc_files())
def test_page_exists_and_serves_math_locally(doc):
    page = HTML / f"{doc}.html"
    assert page.exists(), f"{doc} was not built"
    text = page.read_text()
    if 'class="math' in text:
        assert re.search(r'src="\.\./_static/mathjax/tex-chtml\.js', text), "math is not typeset by the local MathJax"
        assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert not re.search(r'<script[^>]+src="https?://', text), "a script is loaded from the network"


@pytest.mark.parametrize("doc", [d for d in toc_files() if executable(d)])
def test_chapter_shows_its_claims_all_holding(doc):
    text = (HTML / f"{doc}.html").read_text()
    assert 'class="claims-table"' in text, f"{doc} has no claims table"
    table = text.split('class="claims-table"', 1)[1].split("</table>", 1)[0]
    assert table.count('class="holds"') >= 1
    assert 'class="fails"' not in table
    assert "Traceback" not in text and "ClaimFailed" not in text


@pytest.mark.parametrize("doc", [d for d in toc_files() if executable(d)])
def test_glued_numbers_are_filled_in(doc):
    text = (HTML / f"{doc}.html").read_text()
    assert "{glue:" not in text and "glue:text" not in text
    assert "could not find" not in text.lower()


def test_no_local_paths_leak():
    for page in HTML.rglob("*.html"):
        text = page.read_text()
        for pattern in (str(ROOT), "/root/", "/home/", "/tmp/"):
            assert pattern not in text, f"{pattern!r} appears in {page.relative_to(HTML)}"
