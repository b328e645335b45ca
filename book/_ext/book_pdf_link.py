"""The whole book as one PDF in every page's download menu.

sphinx-book-theme's download menu (the group labelled "download-buttons") offers the page's .ipynb, its
.md and a print of the page; this adds "book (.pdf)", a link to book.pdf at the root of the built book,
which `make pdf` (tools/book_pdf.py) writes there.
"""
from __future__ import annotations

BOOK_PDF = "book.pdf"
BUTTON = {
    "type": "link",
    "text": "book (.pdf)",
    "icon": "fas fa-book",
    "tooltip": "Download the whole book as one PDF",
    "label": "download-book-pdf-button",
}


def add_book_pdf(header_buttons: list, url: str) -> bool:
    """Append the whole-book PDF link to the download group of ``header_buttons``; False if none."""
    for group in header_buttons:
        if group.get("type") == "group" and group.get("label") == "download-buttons":
            if not any(b.get("label") == BUTTON["label"] for b in group["buttons"]):
                group["buttons"].append({**BUTTON, "url": url})
            return True
    return False


def _page_context(app, pagename, templatename, context, doctree):
    if "header_buttons" in context and "pathto" in context:
        add_book_pdf(context["header_buttons"], context["pathto"](BOOK_PDF, 1))


def setup(app):
    # after sphinx-book-theme builds the menu (priority 501)
    app.connect("html-page-context", _page_context, priority=502)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
