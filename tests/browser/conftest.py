"""Serve the built book on 127.0.0.1 and open its pages in headless Chromium.

The browser is Debian's `chromium` (or $CHROMIUM), driven by Python playwright through
executable_path: playwright's own browser download is never used. Without chromium or playwright the
tests skip with the reason; when CI is set they fail instead.
"""
from __future__ import annotations

import functools
import http.server
import os
import pathlib
import shutil
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from bookinfo import BOOK_HTML, SCREENSHOTS, book_built, skip_or_fail

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1280, "height": 900}
SETTLE_TIMEOUT_S = 30

# A known harmless error of Jupyter Book 1.0: sphinx-thebe's inline configuration script is emitted twice
# in every page's <head>, so the second `const THEBE_JS_URL` fails to redeclare. Thebe (live code) is not
# enabled in this book; any other page error fails the tests.
KNOWN_PAGE_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def chromium_path() -> str | None:
    candidate = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return shutil.which(candidate) or (candidate if os.access(candidate, os.X_OK) else None)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output readable
        pass


@pytest.fixture(scope="session")
def server():
    """Base URL of the book served by http.server on 127.0.0.1, on a free port."""
    if not book_built():
        skip_or_fail(f"build the book first (make book): no {BOOK_HTML}/index.html")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(BOOK_HTML)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Python playwright is not installed (it is pinned in requirements.lock: make venv)")
    exe = chromium_path()
    if exe is None:
        skip_or_fail("chromium not found: install Debian's chromium (as root `make system-packages` does it: "
                     "apt-get install chromium) or set CHROMIUM=/path/to/chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@dataclass
class Visit:
    """What happened when a page was opened: network problems, page errors, and facts read from the page."""
    url: str
    failed: list = field(default_factory=list)        # (url, failure) of requests that failed
    bad_status: list = field(default_factory=list)    # (url, status) of responses with status >= 400
    foreign: list = field(default_factory=list)       # requests that left 127.0.0.1
    errors: list = field(default_factory=list)        # uncaught JavaScript errors
    requests: list = field(default_factory=list)      # every URL requested
    facts: dict = field(default_factory=dict)         # what READ_FACTS returned
    screenshot: pathlib.Path | None = None

    def unexpected_errors(self):
        return [e for e in self.errors if not any(k in e for k in KNOWN_PAGE_ERRORS)]


WAIT_FOR_PAGE = """async () => {
  // Make every image load now (lazy ones too) and wait for all of them.
  await Promise.all([...document.images].map(img => {
    img.loading = 'eager';
    if (img.complete) return null;
    return new Promise(r => { img.addEventListener('load', r); img.addEventListener('error', r); });
  }));
  // Wait until MathJax (if the page loads it) has typeset the page.
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  return true;
}"""

READ_FACTS = """() => {
  const maths = [...document.querySelectorAll('.math')];
  const article = (document.querySelector('article.bd-article') || document.body).cloneNode(true);
  article.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight, .cell_input')
         .forEach(e => e.remove());
  const hrefs = sel => [...document.querySelectorAll(sel)].map(a => a.href);
  return {
    theme: document.documentElement.dataset.theme,
    math: maths.length,
    untypeset: maths.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    mjx: document.querySelectorAll('mjx-container').length,
    math_errors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80)),
    text: article.innerText,
    images: [...document.images].map(i => ({src: i.src, complete: i.complete, width: i.naturalWidth})),
    claims_tables: document.querySelectorAll('table.claims-table, .claims-table table').length,
    launch: hrefs('.dropdown-launch-buttons a[href]'),
    downloads: hrefs('.dropdown-download-buttons a[href]'),
    print_buttons: [...document.querySelectorAll('.dropdown-download-buttons .btn-download-pdf-button')]
                   .map(b => b.getAttribute('onclick') || ''),
  };
}"""


def screenshot_name(path: str, dark: bool) -> str:
    return path.removesuffix(".html").replace("/", "__") + ("-dark" if dark else "") + ".png"


@pytest.fixture(scope="session")
def screenshots():
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


@pytest.fixture(scope="session")
def new_page(browser):
    """new_page(dark=False): a fresh tab (light or dark colour mode); close it when done."""
    contexts = {}

    def _new(dark: bool = False):
        if dark not in contexts:
            ctx = browser.new_context(viewport=VIEWPORT, color_scheme="dark" if dark else "light")
            if dark:  # the theme's own switch: pydata-sphinx-theme reads localStorage "mode"
                ctx.add_init_script("localStorage.setItem('mode', 'dark'); localStorage.setItem('theme', 'dark');")
            contexts[dark] = ctx
        return contexts[dark].new_page()

    yield _new
    for ctx in contexts.values():
        ctx.close()


def load(page, url: str) -> Visit:
    """Open ``url`` in ``page`` recording every request; wait for images, MathJax and a quiet network
    (half a second without an open request; one still open after SETTLE_TIMEOUT_S counts as failed)."""
    visit = Visit(url=url)
    pending = set()
    page.on("request", lambda r: (visit.requests.append(r.url), pending.add(r)))
    page.on("requestfinished", lambda r: pending.discard(r))
    page.on("requestfailed", lambda r: (visit.failed.append((r.url, r.failure)), pending.discard(r)))
    page.on("response", lambda r: visit.bad_status.append((r.url, r.status)) if r.status >= 400 else None)
    page.on("pageerror", lambda e: visit.errors.append(str(e)))
    page.goto(url, wait_until="load")
    page.evaluate(WAIT_FOR_PAGE)
    quiet, deadline = 0.0, time.monotonic() + SETTLE_TIMEOUT_S
    while quiet < 0.5 and time.monotonic() < deadline:
        page.wait_for_timeout(100)
        quiet = quiet + 0.1 if not pending else 0.0
    visit.failed += [(r.url, f"still open after {SETTLE_TIMEOUT_S}s") for r in pending]
    visit.foreign = [u for u in visit.requests
                     if urlsplit(u).scheme not in ("data", "blob", "about") and urlsplit(u).hostname != "127.0.0.1"]
    return visit


@pytest.fixture(scope="session")
def load_page():
    """load_page(page, url) -> Visit (see load)."""
    return load


@pytest.fixture(scope="session")
def open_page(new_page, server, screenshots):
    """open_page(path, dark=False) -> Visit: each page is opened once per colour mode for the whole
    session; its facts are read, a full-page screenshot is saved to _build/screenshots/, and the tab closed."""
    visits = {}

    def _open(path: str, dark: bool = False) -> Visit:
        if (path, dark) not in visits:
            page = new_page(dark)
            try:
                visit = load(page, server + path)
                visit.facts = page.evaluate(READ_FACTS)
                visit.screenshot = screenshots / screenshot_name(path, dark)
                page.screenshot(path=str(visit.screenshot), full_page=True)
            finally:
                page.close()
            visits[(path, dark)] = visit
        return visits[(path, dark)]

    return _open
