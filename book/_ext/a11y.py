"""Accessibility fixes to the generated HTML that CSS cannot make.

docutils writes a bibliography as ``<div role="list" class="citation-list">`` whose entries carry
``role="doc-biblioentry"``; a list may only contain list items (ARIA 1.2, axe-core's
aria-required-children), so the entries become ``role="listitem"``.
"""
from __future__ import annotations


def fix_citation_roles(html: str) -> str:
    """Give the entries of every citation list role="listitem" (nothing else changes)."""
    if 'class="citation-list"' not in html:
        return html
    return html.replace('role="doc-biblioentry"', 'role="listitem"')


def _page_context(app, pagename, templatename, context, doctree):
    if "body" in context:
        context["body"] = fix_citation_roles(context["body"])


def setup(app):
    app.connect("html-page-context", _page_context)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
