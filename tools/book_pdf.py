"""The whole book as one PDF: `make pdf` (and the end of `make book`) writes _build/pdf/book.pdf and
copies it to _build/html/book.pdf, which the download menu of every page links.

Route: each page of the built HTML is printed by headless Chromium (Debian's `chromium`, or $CHROMIUM,
driven by Python playwright; no browser download) and the pages are merged with pypdf. The PDF is
therefore the same rendering the reader sees in the browser: MathJax's typesetting, the figures, the
claims tables and sphinx-proof's theorem boxes, with the book's print stylesheet (no sidebars, no
buttons). Jupyter Book's LaTeX builder would need a TeX distribution and re-typesets glued numbers,
theorem boxes and tables through LaTeX writers that do not all support them.

The PDF opens with a title page (from CITATION.cff) and a contents page; every chapter starts on a
new page, in _toc.yml order; the outline has one bookmark per part and per chapter. Links between
pages point to the published book (the GitHub Pages address of repository.url in _config.yml), so a
link in the PDF never points at a local server.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import html
import http.server
import io
import os
import pathlib
import shutil
import sys
import threading
from urllib.parse import urlsplit

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MARGIN = {"top": "16mm", "bottom": "16mm", "left": "14mm", "right": "14mm"}

WAIT_FOR_PAGE = """async () => {
  await Promise.all([...document.images].map(img => {
    img.loading = 'eager';
    if (img.complete) return null;
    return new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); });
  }));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  await document.fonts.ready;
  return true;
}"""

# Links to other pages of the book point to the published book; links within the page stay.
PUBLISH_LINKS = """([local, published]) => {
  for (const a of document.querySelectorAll('a[href]')) {
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin) continue;
    if (url.pathname === location.pathname && url.hash) continue;
    a.href = published + url.pathname.slice(local.length) + url.search + url.hash;
  }
  return true;
}"""

FOOTER = """<div style="font-size:8px;width:100%;padding:0 14mm;color:#444;display:flex;
justify-content:space-between;font-family:sans-serif"><span>{title}</span>
<span>{chapter}, page <span class="pageNumber"></span> of <span class="totalPages"></span></span></div>"""


class PdfError(RuntimeError):
    """The book could not be printed: what is missing and how to get it."""


@functools.lru_cache
def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def published_url() -> str:
    """https://OWNER.github.io/REPO/ for repository.url https://github.com/OWNER/REPO."""
    owner, repo = urlsplit(config()["repository"]["url"]).path.strip("/").split("/")[:2]
    return f"https://{owner.lower()}.github.io/{repo}/"


def toc_parts() -> list[tuple[str | None, list[str]]]:
    """[(part caption or None for the root page, [doc, ...]), ...] in _toc.yml order."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [(None, [toc["root"]])] + [(p["caption"], [c["file"] for c in p["chapters"]])
                                      for p in toc["parts"]]


def page_title(page) -> str:
    return page.evaluate("() => (document.querySelector('article h1') || {}).innerText || document.title"
                         ).replace("#", "").strip()


def title_page_html() -> str:
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    authors = ", ".join(a.get("name") or f"{a['given-names']} {a['family-names']}" for a in cff["authors"])
    esc = html.escape
    return f"""<html><body style="font-family:serif;margin:0">
<div style="margin-top:70mm;text-align:center">
<h1 style="font-size:30px">{esc(config()['title'])}</h1>
<p style="font-size:18px">{esc(cff['title'])}</p>
<p style="font-size:15px;margin-top:18mm">{esc(authors)}</p>
<p>Version {esc(str(cff['version']))}, printed {datetime.date.today().isoformat()}</p>
<p style="margin-top:18mm"><a href="{published_url()}">{published_url()}</a></p>
<p style="font-size:12px;margin-top:30mm">Code: MIT License. Text and figures: CC BY 4.0.
See LICENSE and CITATION.cff in the repository.<br>{esc(cff['message'])}</p>
</div></body></html>"""


def contents_html(entries: list[tuple[str | None, str, int]]) -> str:
    """entries: (part caption or None, chapter title, first page in the PDF)."""
    rows, last = [], object()
    for part, title, first in entries:
        if part != last and part is not None:
            rows.append(f'<tr><td colspan="2" style="padding-top:10px"><b>{html.escape(part)}</b></td></tr>')
        last = part
        rows.append(f'<tr><td style="padding-left:14px">{html.escape(title)}</td>'
                    f'<td style="text-align:right">{first}</td></tr>')
    return f"""<html><body style="font-family:serif"><h1>Contents</h1>
<table style="width:100%;font-size:14px;border-collapse:collapse">{''.join(rows)}</table>
</body></html>"""


def serve(directory: pathlib.Path):
    handler = functools.partial(_Quiet, directory=str(directory))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def chromium_path() -> str:
    candidate = os.environ.get("CHROMIUM") or "chromium"
    exe = shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)
    if exe is None:
        raise PdfError("chromium not found: install Debian's chromium (apt-get install chromium; as root "
                       "`make pdf` does it) or set CHROMIUM=/path/to/chromium")
    return exe


def print_chapter(context, base: str, doc: str) -> tuple[str, bytes]:
    """(title, PDF bytes) of one page of the built book, printed as the reader's browser prints it."""
    page = context.new_page()
    try:
        page.emulate_media(media="print", color_scheme="light")
        page.goto(base + f"{doc}.html", wait_until="load")
        page.evaluate(WAIT_FOR_PAGE)
        page.evaluate(PUBLISH_LINKS, [urlsplit(base).path, published_url()])
        title = page_title(page)
        footer = FOOTER.format(title=html.escape(config()["title"]), chapter=html.escape(title))
        pdf = page.pdf(format="A4", print_background=True, margin=MARGIN, display_header_footer=True,
                       header_template="<span></span>", footer_template=footer)
        return title, pdf
    finally:
        page.close()


def print_html(context, markup: str) -> bytes:
    page = context.new_page()
    try:
        page.set_content(markup)
        return page.pdf(format="A4", margin=MARGIN)
    finally:
        page.close()


def build(html_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Print every page of the table of contents, merge them, write ``out``; return it."""
    try:
        from playwright.sync_api import sync_playwright
        from pypdf import PdfReader, PdfWriter
    except ImportError as e:
        raise PdfError(f"{e.name} is not installed (it is pinned in requirements.lock: make venv)") from e
    if not (html_dir / "index.html").exists():
        raise PdfError(f"no built book in {html_dir}: run `make book` first")
    httpd, base = serve(html_dir)
    chapters = []  # (part, doc, title, reader)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
            context = browser.new_context(color_scheme="light")
            context.add_init_script("localStorage.setItem('mode','light');localStorage.setItem('theme','light');")
            for part, docs in toc_parts():
                for doc in docs:
                    title, pdf = print_chapter(context, base, doc)
                    chapters.append((part, doc, title, PdfReader(io.BytesIO(pdf))))
                    print(f"  {doc}: {len(chapters[-1][3].pages)} pages", file=sys.stderr)
            cover = PdfReader(io.BytesIO(print_html(context, title_page_html())))
            contents, n_contents = None, 1
            for _ in range(3):  # the contents' own length moves every chapter's first page
                first, entries = len(cover.pages) + n_contents + 1, []
                for part, _doc, title, reader in chapters:
                    entries.append((part, title, first))
                    first += len(reader.pages)
                contents = PdfReader(io.BytesIO(print_html(context, contents_html(entries))))
                if len(contents.pages) == n_contents:
                    break
                n_contents = len(contents.pages)
            browser.close()
    finally:
        httpd.shutdown()
        httpd.server_close()

    writer = PdfWriter()
    for reader in (cover, contents):
        writer.append(reader)
    parents = {}
    for part, doc, title, reader in chapters:
        start = len(writer.pages)
        writer.append(reader)
        if part is not None and part not in parents:
            parents[part] = writer.add_outline_item(title=part, page_number=start)
        writer.add_outline_item(title=title, page_number=start, parent=parents.get(part))
    writer.add_metadata({"/Title": config()["title"], "/Author": config()["author"],
                         "/Subject": "Implicit regularization in deep learning: an executable book"})
    writer.page_mode = "/UseOutlines"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:
        writer.write(f)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", type=pathlib.Path, default=ROOT / "_build" / "html", help="the built book")
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "_build" / "pdf" / "book.pdf")
    ap.add_argument("--skip-without-browser", action="store_true",
                    help="without chromium, warn and write nothing instead of failing")
    args = ap.parse_args(argv)
    try:
        if args.skip_without_browser:
            try:
                chromium_path()
            except PdfError as e:
                print(f"warning: the whole-book PDF is not built: {e}; the download menu's "
                      "'book (.pdf)' link stays broken until `make pdf` runs", file=sys.stderr)
                return 0
        out = build(args.html, args.out)
    except PdfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    shutil.copyfile(out, args.html / "book.pdf")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {args.html / 'book.pdf'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
