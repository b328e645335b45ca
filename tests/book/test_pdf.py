"""The whole book as one PDF (`make pdf`, tools/book_pdf.py): _build/html/book.pdf has a bookmark per
part and per chapter of _toc.yml, each chapter's figures (images), claims table, theorem boxes and
bibliography, no TeX left untypeset, no link to a local server; pages rendered by pdftoppm are not
blank; every page's download menu links it. Run after `make pdf` (make test does)."""
import functools
import re
import shutil
import subprocess
from urllib.parse import urljoin

import pytest
import yaml
from bookinfo import BOOK_HTML, ROOT, chapters, skip_or_fail, toc_files
from bs4 import BeautifulSoup
from PIL import Image, ImageStat

PDF = BOOK_HTML / "book.pdf"
# Untypeset TeX, as tests/browser looks for it on the pages (inline $...$, \( \), \[ \], environments).
RAW_TEX = re.compile(r"\$[^$\s][^$]*?\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\frac\{|\\mathbb\{|\\reg\b")


@pytest.fixture(scope="module")
def book():
    if not PDF.exists():
        skip_or_fail(f"no {PDF}: run `make pdf`")
    from pypdf import PdfReader
    return PdfReader(PDF)


def outline_pages(book):
    """(title, first page) of every bookmark, parts and chapters."""
    for item in book.outline:
        for sub in item if isinstance(item, list) else [item]:
            yield sub.title, book.get_destination_page_number(sub)


@pytest.fixture(scope="module")
def chapter_ranges(book):
    """doc -> range of its pages in the PDF: a chapter runs to the next chapter's bookmark."""
    first = {title: page for title, page in outline_pages(book)}
    starts = sorted(first[titles()[d]] for d in toc_files())
    ends = dict(zip(starts, starts[1:] + [len(book.pages)]))
    return {d: range(first[titles()[d]], ends[first[titles()[d]]]) for d in toc_files()}


@pytest.fixture(scope="module")
def chapter_pages(book, chapter_ranges):
    """doc -> the text of its pages."""
    return {doc: [book.pages[i].extract_text() for i in pages] for doc, pages in chapter_ranges.items()}


@functools.lru_cache
def titles():
    """doc -> the title of its page, as the built HTML gives it (the <h1>)."""
    out = {}
    for doc in toc_files():
        h1 = BeautifulSoup((BOOK_HTML / f"{doc}.html").read_text(), "html.parser").select_one("article h1")
        out[doc] = h1.get_text().replace("#", "").strip()
    return {**out, **{v: v for v in out.values()}}


def test_one_bookmark_per_chapter_in_toc_order_under_its_part(book):
    toc_titles = [titles()[d] for d in toc_files()]
    top = [item for item in book.outline if not isinstance(item, list)]
    nested = [sub.title for item in book.outline if isinstance(item, list) for sub in item]
    assert [t.title for t in top][0] == toc_titles[0], "the book opens with its introduction"
    assert [top[0].title] + nested == toc_titles, "one bookmark per chapter, in _toc.yml order"
    parts = [p["caption"] for p in yaml.safe_load((ROOT / "_toc.yml").read_text())["parts"]]
    assert [t.title for t in top[1:]] == parts, "one bookmark per part"


def test_every_chapter_has_its_figures_and_claims_table(book, chapter_pages, chapter_ranges):
    for doc in chapters():
        text = "\n".join(chapter_pages[doc])
        html = BeautifulSoup((BOOK_HTML / f"{doc}.html").read_text(), "html.parser")
        claims = html.select_one("table.claims-table")
        assert claims is not None
        first_claim = claims.select("tbody tr td")[0].get_text(" ", strip=True)[:25]
        assert squash(first_claim) in squash(text), f"{doc}: its claims table is not in the PDF"
    for doc in chapters():
        images = sum(len(book.pages[i].images) for i in chapter_ranges[doc])
        figures = len(BeautifulSoup((BOOK_HTML / f"{doc}.html").read_text(), "html.parser")
                      .select("article img"))
        assert images >= figures >= 1, f"{doc}: {images} images in the PDF, {figures} figures"


def squash(s: str) -> str:
    return re.sub(r"\W+", "", s).lower()


def test_theorem_boxes_and_bibliography_are_printed(chapter_pages):
    theorem = "\n".join(chapter_pages["book/theorem"])
    assert re.search(r"(Theorem|Definition|Proposition|Lemma)\s*\d", theorem), "no numbered theorem box"
    bibliography = "\n".join(chapter_pages["book/bibliography"])
    for name in ("Blanc", "Chou", "Neyshabur"):
        assert name in bibliography, name


def test_no_raw_tex_and_no_local_links(book, chapter_pages):
    for doc, pages in chapter_pages.items():
        raw = [m.group(0) for m in RAW_TEX.finditer("\n".join(pages))]
        assert not raw, f"{doc}: untypeset TeX in the PDF: {raw[:5]}"
    uris = [a["/A"].get("/URI", "") for page in book.pages for a in
            (x.get_object() for x in page.get("/Annots", []) or []) if "/A" in a]
    local = [u for u in uris if re.match(r"https?://(127\.0\.0\.1|localhost)", u) or u.startswith("file:")]
    assert uris and not local, f"{len(local)} links to a local server or file: {local[:3]}"


def test_pages_render_and_are_not_blank(book, tmp_path):
    exe = shutil.which("pdftoppm")
    if exe is None:
        skip_or_fail("pdftoppm not found: install Debian's poppler-utils (as root `make system-packages` "
                     "does it; README, 'System packages')")
    firsts = sorted({p for _, p in outline_pages(book)})
    for page in firsts:
        out = tmp_path / f"p{page}"
        subprocess.run([exe, "-r", "40", "-png", "-f", str(page + 1), "-l", str(page + 1), str(PDF), str(out)],
                       check=True, timeout=120)
        png = next(tmp_path.glob(f"p{page}*.png"))
        stat = ImageStat.Stat(Image.open(png).convert("L"))
        assert stat.stddev[0] > 5, f"page {page + 1} renders blank"


def test_every_page_links_the_book_pdf():
    for doc in toc_files():
        menu = BeautifulSoup((BOOK_HTML / f"{doc}.html").read_text(), "html.parser").select_one(
            ".dropdown-download-buttons")
        links = [a["href"] for a in menu.select("a.btn-download-book-pdf-button[href], a[href$='book.pdf']")]
        assert links, f"{doc}: the download menu does not link the whole-book PDF"
        assert (BOOK_HTML / urljoin(f"{doc}.html", links[0])).resolve() == PDF.resolve(), links
