"""Checks of the built HTML book (_build/html, or $BOOK_HTML): every page of the table of contents is
there, chapters that run code show their claims table with every claim holding, math is served locally,
nothing leaks (tracebacks, absolute paths, the user's name, scripts from a CDN), the launch buttons point
at this repository's main branch, every chapter can be downloaded as .md, .ipynb (executed, with its
outputs) and printed to PDF, every figure has an opaque background (legible in dark mode), every internal
link and anchor resolves, and the stored benchmark results measured the current nblib.
Run after the book build (make test does)."""
import getpass
import json
import re
from urllib.parse import urljoin, urlsplit

import nbformat
import pytest
from bookinfo import BOOK_HTML, BRANCH, EXECUTED, REPO_URL, ROOT, book_built, chapters, config, toc_files
from bs4 import BeautifulSoup
from PIL import Image

HTML = BOOK_HTML
LEDGER_MIME = "application/vnd.nblib.ledger+json"
CLAIMS_PAGE = "book/claims"

pytestmark = pytest.mark.skipif(not book_built(), reason=f"build the book first (make book): no {HTML}/index.html")


def soup(doc):
    return BeautifulSoup((HTML / f"{doc}.html").read_text(), "html.parser")


@pytest.mark.parametrize("doc", toc_files())
def test_page_exists_and_serves_math_locally(doc):
    page = HTML / f"{doc}.html"
    assert page.exists(), f"{doc} was not built"
    text = page.read_text()
    if 'class="math' in text:
        assert re.search(r'src="\.\./_static/mathjax/tex-chtml\.js', text), "math is not typeset by the local MathJax"
        assert (HTML / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert not re.search(r'<script[^>]+src="https?://', text), "a script is loaded from the network"


@pytest.mark.parametrize("doc", chapters())
def test_chapter_shows_its_claims_all_holding(doc):
    text = (HTML / f"{doc}.html").read_text()
    assert 'class="claims-table"' in text, f"{doc} has no claims table"
    table = text.split('class="claims-table"', 1)[1].split("</table>", 1)[0]
    assert table.count('class="holds ') >= 1
    assert 'class="fails' not in table
    assert "Traceback" not in text and "ClaimFailed" not in text


@pytest.mark.parametrize("doc", chapters())
def test_glued_numbers_are_filled_in(doc):
    text = (HTML / f"{doc}.html").read_text()
    assert "{glue:" not in text and "glue:text" not in text
    assert "could not find" not in text.lower()


# ------------------------------------------------------------------------------------------ claims page

def ledger_records():
    """chapter → the ledger record its executed notebook holds (the book build's copy)."""
    records = {}
    for doc in chapters():
        nb = json.loads((EXECUTED / f"{doc}.ipynb").read_text())
        for cell in nb["cells"]:
            for out in cell.get("outputs", []):
                if LEDGER_MIME in out.get("data", {}):
                    records[doc] = out["data"][LEDGER_MIME]
    return records


def test_every_chapter_writes_a_ledger_record_of_replicated_rows():
    records = ledger_records()
    assert sorted(records) == sorted(chapters())
    for doc, record in records.items():
        assert record["rows"], f"{doc}: empty ledger"
        for row in record["rows"]:
            assert row["holds"], f"{doc}: {row['key']} fails its gate"
            assert row["status"] in ("reproduced", "not reproduced", "exact check", "own")
            assert row["status"] in ("own", "exact check") or row["paper"], f"{doc}: {row['key']} names no paper"
            if row["kind"] == "replicates":
                assert row["n"] == len(record["seeds"]) >= 5, f"{doc}: {row['key']} on {row['n']} replicates"


def test_the_claims_page_lists_every_claim_with_its_status_and_a_working_link():
    records = ledger_records()
    page = soup(CLAIMS_PAGE)
    table = page.select_one("table.ledger-summary")
    assert table is not None, "the claims page has no summary table"
    rows = table.select("tbody tr")
    expected = [(doc, r) for doc in chapters() for r in records[doc]["rows"]]
    assert len(rows) == len(expected), f"{len(rows)} rows on the claims page, {len(expected)} claims in the ledgers"
    for tr, (doc, r) in zip(rows, expected):
        cells = [td.get_text(" ", strip=True) for td in tr.select("td")]
        assert r["claim"] in cells[1] and cells[2] == r["status_text"] and cells[3] == f"{r['n_hold']}/{r['n']}"
        if r.get("ablation"):
            assert cells[6] == r["ablation_text"] and "fails the gate" in cells[6], f"{r['key']}: {cells[6]}"
        href = tr.select_one("td a")["href"]
        target, _, anchor = urljoin(f"{CLAIMS_PAGE}.html", href).partition("#")
        assert target == f"{doc}.html", f"{r['key']} links to {href}"
        assert anchor and soup(doc).find(id=anchor) is not None, f"{r['key']}: no #{anchor} on {doc}"
    not_reproduced = [r["claim"] for _, r in expected if r["status"] == "not reproduced"]
    listed = [li.get_text(" ", strip=True) for li in page.select("ul.ledger-not-reproduced li")]
    assert len(listed) == len(not_reproduced) and all(c in t for c, t in zip(not_reproduced, listed))
    chapters_table = page.select("table.ledger-chapters tbody tr")
    assert len(chapters_table) == len(records), "one row per chapter in the overview table"
    counts = [li.get_text(" ", strip=True) for li in page.select("ul.ledger-counts li")]
    for status, label in (("reproduced", "reproduced"), ("not reproduced", "not reproduced at this scale"),
                          ("exact check", "exact checks"), ("own", "the book's own claims")):
        n = sum(r["status"] == status for _, r in expected)
        assert any(c.startswith(f"{n} {label}") for c in counts), counts


# ----------------------------------------------------------------------------------------------- links

def internal_link_problems(root):
    """(page, url, problem) for every link, image, stylesheet or script of the HTML pages under ``root``
    that points inside the book and does not resolve: a missing file, or a #fragment that no element of the
    target page has as its id (or name)."""
    from urllib.parse import unquote

    pages = sorted(p for p in root.rglob("*.html") if "_static" not in p.parts)
    parsed = {p.relative_to(root).as_posix(): BeautifulSoup(p.read_text(), "html.parser") for p in pages}
    anchors = {rel: {t["id"] for t in s.find_all(id=True)} | {t["name"] for t in s.find_all("a", attrs={"name": True})}
               for rel, s in parsed.items()}
    problems = []
    for rel, page in parsed.items():
        for tag, attr in (("a", "href"), ("img", "src"), ("link", "href"), ("script", "src")):
            for node in page.find_all(tag):
                url = node.get(attr)
                if not url or url.startswith(("mailto:", "javascript:", "data:")):
                    continue
                parts = urlsplit(url)
                if parts.scheme or parts.netloc:
                    continue                                   # external: not this check's business
                target = unquote(urlsplit(urljoin(rel, url)).path) if parts.path else rel
                if parts.path and not (root / target).exists():
                    problems.append((rel, url, "no such file"))
                elif parts.fragment and target.endswith(".html") and parts.fragment not in anchors.get(target, ()):
                    problems.append((rel, url, f"no #{parts.fragment} on {target}"))
    return problems


def test_every_internal_link_and_anchor_resolves():
    problems = internal_link_problems(HTML)
    assert not problems, f"{len(problems)} broken internal link(s): " + "; ".join(map(str, problems[:20]))


def test_link_check_catches_a_planted_broken_link(tmp_path):
    (tmp_path / "a.html").write_text('<p id="here"><a href="b.html#there">b</a> <a href="#here">self</a>'
                                     ' <a href="#gone">x</a> <img src="missing.png"> <a href="https://x.org/">e</a></p>')
    (tmp_path / "b.html").write_text('<h1 id="elsewhere">b</h1>')
    problems = internal_link_problems(tmp_path)
    assert sorted(p[1] for p in problems) == ["#gone", "b.html#there", "missing.png"], problems


# ----------------------------------------------------------------------------------------------- leaks

def published_text_files():
    """Every text file of the built book a reader can fetch (pages, sources, notebooks, logs, search
    index), except the theme's own _static files."""
    for path in sorted(HTML.rglob("*")):
        if path.is_file() and "_static" not in path.parts and path.suffix not in BINARY:
            yield path


BINARY = {".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf", ".inv", ".woff", ".woff2", ".ttf", ".eot", ".ico"}


def leak_patterns():
    patterns = {p: re.escape(p) for p in ("/work/", "/tmp/", "/home/", "/root/", "/Users/", "Traceback")}
    patterns[str(ROOT)] = re.escape(str(ROOT))
    user = getpass.getuser()
    # The user's name as a path component (/x/USER/ or \USER\), unless it is also a name the book itself uses.
    own_names = {p.name for p in HTML.rglob("*")} | {p.name for p in ROOT.iterdir()}
    if len(user) >= 2 and user not in own_names:
        patterns[f"user name {user!r} in a path"] = rf"[/\\]{re.escape(user)}(?:[/\\]|$)"
    return patterns


def test_no_local_paths_user_names_or_tracebacks_leak():
    patterns = leak_patterns()
    files = list(published_text_files())
    assert len(files) >= len(toc_files()), "the HTML pages were not found"
    leaks = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for name, pattern in patterns.items():
            for m in re.finditer(pattern, text, re.M):
                context = text[max(0, m.start() - 60):m.end() + 60]
                leaks.append(f"{name!r} in {path.relative_to(HTML)}: …{context!r}…")
                break
    assert not leaks, "local details leak into the published book:\n" + "\n".join(leaks)


def test_leak_check_catches_a_planted_path(tmp_path):
    """The patterns above do catch an absolute path, the user's home and a traceback."""
    patterns = leak_patterns().values()
    for planted in (f"<p>{ROOT}/nblib/claims.py</p>", "<pre>Traceback (most recent call last):</pre>",
                    "<p>/home/someone/book</p>", f"<p>{tmp_path}/x.png</p>"):
        assert any(re.search(p, planted) for p in patterns), planted


# ------------------------------------------------------------------------------ launch and download buttons

def test_config_names_this_repository_and_branch():
    repo = config()["repository"]
    assert repo["url"].rstrip("/") == REPO_URL
    assert repo.get("branch") == BRANCH
    assert config()["launch_buttons"].get("binderhub_url", "").rstrip("/") == "https://mybinder.org"


@pytest.mark.parametrize("doc", chapters())
def test_launch_buttons_point_at_this_repository_main_branch(doc):
    page = soup(doc)
    launch = page.select(".dropdown-launch-buttons a[href]")
    assert launch, f"{doc} has no launch button"
    owner_repo = urlsplit(REPO_URL).path.strip("/")
    binder = [a["href"] for a in launch if "mybinder.org" in a["href"]]
    assert binder == [f"https://mybinder.org/v2/gh/{owner_repo}/{BRANCH}?urlpath=lab/tree/{doc}.md"], binder
    repo_button = page.select_one("a.btn-source-repository-button")
    assert repo_button is not None and repo_button["href"].rstrip("/") == REPO_URL


def download_links(doc):
    """{suffix: local path} of the download dropdown of ``doc``'s page, and whether it has a print button."""
    page = soup(doc)
    menu = page.select_one(".dropdown-download-buttons")
    assert menu is not None, f"{doc} has no download button"
    links = {}
    for a in menu.select("a[href]"):
        href = a["href"]
        assert not urlsplit(href).scheme, f"{doc}: download link {href} leaves the book"
        target = (HTML / urljoin(f"{doc}.html", href)).resolve()
        links[target.suffix] = target
    printable = any("window.print()" in (b.get("onclick") or "") for b in menu.select(".btn-download-pdf-button"))
    return links, printable


@pytest.mark.parametrize("doc", toc_files())
def test_page_downloads_as_source_and_prints_to_pdf(doc):
    links, printable = download_links(doc)
    assert ".md" in links, f"{doc}: no .md download"
    assert links[".md"].is_file(), f"{doc}: the .md download {links['.md']} does not exist"
    assert links[".md"].read_text() == (ROOT / f"{doc}.md").read_text(), f"{doc}: the .md download is not the source"
    assert printable, f"{doc}: no print-to-PDF button"


@pytest.mark.parametrize("doc", chapters())
def test_chapter_downloads_as_executed_ipynb(doc):
    links, _ = download_links(doc)
    assert ".ipynb" in links, f"{doc}: no .ipynb download"
    path = links[".ipynb"]
    assert path.is_file(), f"{doc}: the .ipynb download {path} does not exist"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{doc}: the notebook has no code"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert outputs, f"{doc}: the downloadable notebook has no outputs (not the executed one)"
    assert not [o for o in outputs if o.output_type == "error"], f"{doc}: the notebook holds an error output"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{doc}: the notebook has no figures"
    assert any("claims-table" in json.dumps(o.get("data", {})) for o in outputs), f"{doc}: no claims table"


# --------------------------------------------------------------------------------------------- figures

def figure_files():
    return sorted((HTML / "_images").glob("*.png"))


def test_every_figure_has_an_opaque_background():
    """A transparent figure shows the dark theme's background through it: black text would vanish."""
    figures = figure_files()
    assert len(figures) >= len(chapters()), f"expected figures in {HTML / '_images'}"
    transparent = []
    for path in figures:
        with Image.open(path) as im:
            if "transparency" in im.info:
                transparent.append(f"{path.name}: has a transparent colour")
            elif im.mode in ("RGBA", "LA", "PA") or "A" in im.getbands():
                lo, _ = im.getchannel("A").getextrema()
                if lo < 255:
                    transparent.append(f"{path.name}: alpha down to {lo}")
    assert not transparent, "figures with transparent pixels:\n" + "\n".join(transparent)


@pytest.mark.parametrize("doc", chapters())
def test_chapter_figures_exist(doc):
    images = [img["src"] for img in soup(doc).select("article img[src]") if "_images/" in img["src"]]
    assert images, f"{doc} shows no figure"
    for src in images:
        assert (HTML / urljoin(f"{doc}.html", src)).is_file(), f"{doc}: figure {src} is missing"


def test_stored_benchmark_results_measured_the_current_nblib():
    """Every stored benchmark result records the hash of the nblib source it measured; results measured on
    other code are stale (re-run `make bench`), and the Performance page says so. ALLOW_STALE_RESULTS=1
    turns the failure into a skip (e.g. while changing nblib, before re-measuring)."""
    import os
    import sys

    sys.path.insert(0, str(ROOT))
    from nblib.core.runtime import source_hash

    current = source_hash()
    stale = {}
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        recorded = json.loads(path.read_text()).get("machine", {}).get("nblib_hash")
        if recorded != current:
            stale[path.name] = recorded
    page = soup("book/performance").get_text(" ", strip=True)
    if stale and os.environ.get("ALLOW_STALE_RESULTS") == "1":
        pytest.skip(f"stale benchmark results allowed: {stale}")
    assert not stale, (f"benchmark results measured other nblib code than the current {current}: {stale}; "
                       "re-run `make bench` and commit benchmarks/results")
    assert "none: every result measured the current code" in page


def test_bibliography_entries_are_list_items():
    """The bibliography's role="list" holds role="listitem" entries (ARIA: a list contains list items)."""
    page = soup("book/bibliography")
    lists = page.select('[role="list"].citation-list')
    assert lists, "no citation list on the bibliography page"
    for lst in lists:
        roles = {child.get("role") for child in lst.find_all(recursive=False)}
        assert roles == {"listitem"}, roles


@pytest.mark.parametrize("doc", chapters())
def test_every_figure_has_alt_text_that_says_what_it_shows(doc):
    """Every image of a chapter has alt text of at least a few words (the cell's mystnb.image.alt),
    not the file name myst-nb falls back to."""
    for img in soup(doc).select("article.bd-article img"):
        alt = (img.get("alt") or "").strip()
        where = f"{doc}: image {img.get('src', '')[:60]}"
        assert len(alt.split()) >= 6, f"{where} has alt text {alt[:60]!r}"
        assert "_images" not in alt and not alt.lower().endswith((".png", ".svg")), f"{where}: {alt[:60]!r}"
