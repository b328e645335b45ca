"""The built book in a real browser (headless Chromium over http://127.0.0.1): every page loads with no
failed request and nothing fetched from outside, its math is typeset by the local MathJax with no raw
TeX left, every image loads; chapters show their claims table, launch and download buttons, and print
to PDF; a chapter in the theme's dark mode shows its figures on their own light background; axe-core
finds no serious or critical accessibility violation on any page, in light or dark mode.
Screenshots (and the chapter PDFs) are saved to _build/screenshots/."""
import io
import pathlib
import re
from urllib.parse import urlsplit

import pytest
from bookinfo import BOOK_HTML, BRANCH, REPO_URL, ROOT, chapters, skip_or_fail, toc_files
from PIL import Image, ImageStat

# Every HTML page of the book except index.html, which only redirects (tested on its own).
PAGES = sorted({f"{d}.html" for d in toc_files()}
               | {p.relative_to(BOOK_HTML).as_posix() for p in BOOK_HTML.glob("*.html") if p.name != "index.html"})
CHAPTER_PAGES = [f"{d}.html" for d in chapters()]

# TeX that MathJax should have typeset but that is still visible as text.
RAW_TEX = re.compile(r"\$[^$\s][^$]*?\$|\\\(|\\\)|\\\[|\\\]|\\begin\{|\\frac\{|\\mathbb\{|\\reg\b")


def test_every_page_of_the_toc_is_opened():
    assert {f"{d}.html" for d in toc_files()} <= set(PAGES)


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_everything_locally(open_page, path):
    visit = open_page(path)
    assert visit.screenshot.exists() and visit.screenshot.stat().st_size > 0
    assert not visit.failed, f"failed requests: {visit.failed}"
    assert not visit.bad_status, f"HTTP errors: {visit.bad_status}"
    assert not visit.foreign, f"requests that leave the book (CDN?): {visit.foreign}"
    assert not visit.unexpected_errors(), f"JavaScript errors: {visit.unexpected_errors()}"


@pytest.mark.parametrize("path", PAGES)
def test_math_is_typeset_by_the_local_mathjax(open_page, path):
    visit = open_page(path)
    facts = visit.facts
    if facts["math"]:
        mathjax = [u for u in visit.requests if "mathjax" in u.lower()]
        assert mathjax and all(urlsplit(u).hostname == "127.0.0.1" for u in mathjax), mathjax
        assert not facts["untypeset"], f"{len(facts['untypeset'])} formulas not typeset, e.g. {facts['untypeset'][:3]}"
        assert facts["mjx"] >= facts["math"]
    assert not facts["math_errors"], f"MathJax errors: {facts['math_errors']}"
    raw = [facts["text"][max(0, m.start() - 40):m.end() + 40] for m in RAW_TEX.finditer(facts["text"])]
    assert not raw, f"raw TeX left in the page: {raw[:5]}"


@pytest.mark.parametrize("path", PAGES)
def test_every_image_loads(open_page, path):
    images = open_page(path).facts["images"]
    broken = [i["src"] for i in images if not i["complete"] or i["width"] == 0]
    assert not broken, f"images that did not load: {broken}"


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_chapter_shows_figures_and_its_claims_table(open_page, path):
    facts = open_page(path).facts
    assert [i for i in facts["images"] if "/_images/" in i["src"]], "no figure on the page"
    assert facts["claims_tables"] >= 1, "no claims table on the page"


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_chapter_has_launch_and_download_buttons(open_page, path):
    facts = open_page(path).facts
    owner_repo = urlsplit(REPO_URL).path.strip("/")
    binder = f"https://mybinder.org/v2/gh/{owner_repo}/{BRANCH}?urlpath=lab/tree/{path.removesuffix('.html')}.md"
    assert binder in facts["launch"], f"no Binder button for this repository's {BRANCH} branch: {facts['launch']}"
    suffixes = {urlsplit(u).path.rsplit(".", 1)[-1]: u for u in facts["downloads"]}
    assert {"md", "ipynb"} <= suffixes.keys(), f"download menu: {facts['downloads']}"
    assert any("window.print()" in b for b in facts["print_buttons"]), "no print-to-PDF button"


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_chapter_downloads_resolve(open_page, new_page, path):
    """The .md and .ipynb links of the download menu are served (HTTP 200) and are what they claim."""
    facts = open_page(path).facts
    page = new_page()
    try:
        for url in facts["downloads"]:
            response = page.request.get(url)
            assert response.status == 200, f"{url}: HTTP {response.status}"
            body = response.body()
            if url.endswith(".ipynb"):
                assert b'"nbformat": 4' in body and b'"outputs"' in body and b"image/png" in body, url
            elif url.endswith(".md"):
                assert body.startswith(b"---\njupytext:"), url
    finally:
        page.close()


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_chapter_prints_to_pdf(new_page, load_page, server, screenshots, path):
    """The .pdf entry of the download menu prints the page: in print media the chapter becomes a PDF
    (saved next to the screenshots) of several pages with its figures."""
    page = new_page()
    try:
        page.emulate_media(media="print")
        visit = load_page(page, server + path)
        assert not visit.failed and not visit.bad_status, (visit.failed, visit.bad_status)
        visible = page.evaluate("""() => ({
            title: getComputedStyle(document.querySelector('#jb-print-docs-body')).display !== 'none',
            sidebar: [...document.querySelectorAll('.bd-sidebar-primary')]
                     .some(e => getComputedStyle(e).display !== 'none'),
        })""")
        pdf = page.pdf(format="A4", print_background=True)
    finally:
        page.close()
    (screenshots / path.replace("/", "__").replace(".html", ".pdf")).write_bytes(pdf)
    assert pdf.startswith(b"%PDF-")
    pages = len(re.findall(rb"/Type\s*/Page[^s]", pdf))
    assert pages >= 2, f"the PDF has {pages} page(s)"
    assert b"/Subtype /Image" in pdf or b"/Subtype/Image" in pdf, "the PDF shows no figure"
    assert visible["title"] and not visible["sidebar"], f"print layout: {visible}"


def test_index_redirects_to_the_introduction(new_page, server):
    page = new_page()
    try:
        page.goto(server + "index.html")
        page.wait_for_url(re.compile(r".*/book/intro\.html$"), timeout=15_000)
    finally:
        page.close()


def test_dark_mode_keeps_figures_legible(open_page, new_page, load_page, server):
    """In the theme's dark mode every figure must show on a light background, with no transparent pixel:
    the theme paints a light backdrop behind images, but a transparent figure would lose it wherever the
    notebook is shown elsewhere (the downloaded .ipynb in a dark JupyterLab), and its black axes vanish."""
    path = CHAPTER_PAGES[0]
    visit = open_page(path, dark=True)
    assert visit.facts["theme"] == "dark", "the page did not switch to dark mode"
    page_luma = ImageStat.Stat(Image.open(visit.screenshot).convert("L")).mean[0]
    assert page_luma < 128, f"the dark-mode page is not dark ({page_luma:.0f}/255)"
    page = new_page(dark=True)
    try:
        load_page(page, server + path)
        transparent = page.evaluate(COUNT_TRANSPARENT_PIXELS)
        assert transparent, "no figure found"
        assert not [f for f in transparent if f["transparent"]], f"figures with transparent pixels: {transparent}"
        figures = page.locator("article img[src*='_images/']")
        for k in range(figures.count()):
            shot = Image.open(io.BytesIO(figures.nth(k).screenshot())).convert("L")
            brightness = ImageStat.Stat(shot).mean[0]
            assert brightness > 150, f"figure {k} looks dark ({brightness:.0f}/255) on the dark page"
    finally:
        page.close()


COUNT_TRANSPARENT_PIXELS = """() => [...document.querySelectorAll("article img")]
  .filter(img => img.src.includes('/_images/'))
  .map(img => {
    if (!img.naturalWidth) return {src: img.src.split('/').pop(), transparent: 'not loaded'};
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    let transparent = 0;
    for (let k = 3; k < data.length; k += 4) if (data[k] < 255) transparent++;
    return {src: img.src.split('/').pop(), transparent};
  })"""


# ----------------------------------------------------------------------------------------------- accessibility

AXE_JS = ROOT / ".axe" / "node_modules" / "axe-core" / "axe.min.js"
RUN_AXE = """async () => {
  const r = await axe.run(document, {resultTypes: ['violations']});
  return r.violations.filter(v => v.impact === 'serious' || v.impact === 'critical')
    .map(v => `${v.id} (${v.impact}): ` + v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | '));
}"""


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
@pytest.mark.parametrize("path", PAGES)
def test_no_serious_accessibility_violations(new_page, load_page, server, path, dark):
    """axe-core (the npm package, `make axe`), injected into the page, finds no serious or critical
    violation of WCAG 2 A/AA rules, in light and in dark mode."""
    import os

    axe = pathlib.Path(os.environ.get("AXE_JS") or AXE_JS)
    if not axe.exists():
        skip_or_fail(f"axe-core is not installed ({axe}): run `make axe` (needs npm)")
    page = new_page(dark)
    try:
        load_page(page, server + path)
        page.wait_for_timeout(300)                       # let the theme's colour transitions finish
        page.add_script_tag(path=str(axe))
        problems = page.evaluate(RUN_AXE)
    finally:
        page.close()
    assert not problems, f"{path} ({'dark' if dark else 'light'}): " + "; ".join(problems)
