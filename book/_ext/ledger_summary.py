"""Sphinx extension: the book's claims page, generated from the ledgers the chapters wrote while executing.

Each chapter's ``Ledger.verify()`` leaves a record (MIME type ``application/vnd.nblib.ledger+json``) in its
executed notebook. The directive ``{ledger-summary}`` is replaced, once every chapter has been read (and
executed), by one table of every claim of every chapter, in the order of the table of contents, with the
counts by status above it. A chapter without a record, or a record with a failed gate, is a build warning
(an error under ``-W``).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

LEDGER_MIME = "application/vnd.nblib.ledger+json"
STATUS_ORDER = ("reproduced", "not reproduced", "exact check", "own")
logger = logging.getLogger(__name__)


class ledger_summary(nodes.General, nodes.Element):
    """Placeholder, filled in at doctree-resolved."""


class LedgerSummary(SphinxDirective):
    has_content = False

    def run(self):
        docs = getattr(self.env, "ledger_summary_docs", set())
        docs.add(self.env.docname)
        self.env.ledger_summary_docs = docs
        return [ledger_summary()]


def read_records(outdir: Path) -> dict[str, dict]:
    """docname → ledger record, from the executed notebooks myst-nb wrote next to the HTML output."""
    records = {}
    root = outdir.parent / "jupyter_execute"
    for path in sorted(root.rglob("*.ipynb")):
        nb = json.loads(path.read_text())
        for cell in nb.get("cells", []):
            for out in cell.get("outputs", []):
                data = out.get("data", {})
                if LEDGER_MIME in data:
                    record = data[LEDGER_MIME]
                    records[str(path.relative_to(root).with_suffix("")).replace("\\", "/")] = (
                        json.loads(record) if isinstance(record, str) else record)
    return records


def toc_order(env) -> list[str]:
    """Every document reachable from the root, depth first, in the order of the table of contents."""
    seen, order = set(), []

    def walk(doc):
        if doc in seen:
            return
        seen.add(doc)
        order.append(doc)
        for child in env.toctree_includes.get(doc, []):
            walk(child)

    walk(env.config.root_doc)
    return order


def claims_anchor(env, docname: str) -> str:
    """The id of the chapter's "Claims" section (where its ledger table is), or "" for the page top."""
    try:
        doctree = env.get_doctree(docname)
    except Exception:  # noqa: BLE001 - a missing doctree just means: link to the page
        return ""
    for section in doctree.findall(nodes.section):
        title = section.next_node(nodes.title)
        if title is not None and title.astext().strip().lower().startswith("claims") and section["ids"]:
            return section["ids"][0]
    return ""


def _cell(content) -> nodes.entry:
    entry = nodes.entry()
    if isinstance(content, nodes.Node):
        entry += content
    else:
        entry += nodes.paragraph(text=str(content))
    return entry


def short_title(env, doc: str, records: dict[str, dict]) -> str:
    """The chapter's title up to its colon ("Matrix sensing: label noise ..." -> "Matrix sensing")."""
    title = env.titles[doc].astext() if doc in env.titles else records[doc]["chapter"]
    return title.split(":", 1)[0].strip()


def _table(classes, widths, header, rows) -> nodes.table:
    table = nodes.table(classes=classes)
    group = nodes.tgroup(cols=len(widths))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head, hrow = nodes.thead(), nodes.row()
    for title in header:
        hrow += _cell(title)
    head += hrow
    group += head
    body = nodes.tbody()
    for cells in rows:
        row = nodes.row()
        for content in cells:
            row += _cell(content)
        body += row
    group += body
    return table


def chapter_table(app, fromdoc: str, order: list[str], records: dict[str, dict]) -> nodes.table:
    """One row per chapter: how many claims, by status, and how many gates hold."""
    env = app.builder.env
    rows = []
    for doc in order:
        recs = records[doc]["rows"]
        counts = Counter(r["status"] for r in recs)
        link = nodes.paragraph()
        anchor = claims_anchor(env, doc)
        uri = app.builder.get_relative_uri(fromdoc, doc) + (f"#{anchor}" if anchor else "")
        link += nodes.reference("", short_title(env, doc, records), internal=True, refuri=uri)
        seeds = records[doc]["seeds"]
        rows.append([link, len(recs), counts.get("reproduced", 0), counts.get("not reproduced", 0),
                     counts.get("exact check", 0), counts.get("own", 0),
                     f"{sum(r['holds'] for r in recs)}/{len(recs)}", len(seeds) if seeds else "—"])
    return _table(["ledger-chapters"], (24, 8, 10, 12, 8, 8, 10, 10),
                  ("Chapter", "Claims", "Reproduced", "Not reproduced", "Exact checks", "Own", "Gates hold",
                   "Replicates"), rows)


def build_table(app, fromdoc: str, records: dict[str, dict]) -> list[nodes.Node]:
    env = app.builder.env
    order = [d for d in toc_order(env) if d in records]
    rows = [(doc, r) for doc in order for r in records[doc]["rows"]]
    counts = Counter(r["status"] for _, r in rows)
    held = sum(1 for _, r in rows if r["holds"])
    seeds = {tuple(records[d]["seeds"] or ()) for d in order}
    offsets = sorted({records[d].get("seed_offset", 0) for d in order})
    labels = {"reproduced": "reproduced", "not reproduced": "not reproduced at this scale",
              "exact check": "exact checks (identities and bounds that hold by construction; not "
                             "counted as reproductions)", "own": "the book's own claims"}
    summary = nodes.bullet_list(classes=["ledger-counts"])
    for status in STATUS_ORDER:
        item = nodes.list_item()
        item += nodes.paragraph(text=f"{counts.get(status, 0)} {labels[status]}")
        summary += item
    intro = nodes.paragraph(text=(
        f"{len(rows)} claims in {len(order)} chapters; the gates of {held} of them hold in this build "
        f"(seed offset {', '.join(map(str, offsets))}; "
        f"{max((len(s) for s in seeds), default=0)} replicates per chapter at most)."))

    by_chapter = chapter_table(app, fromdoc, order, records)

    table = nodes.table(classes=["ledger-summary"])
    group = nodes.tgroup(cols=7)
    table += group
    for width in (12, 34, 14, 7, 12, 7, 14):
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    hrow = nodes.row()
    for title in ("Chapter", "Claim", "Status", "Held", "Measured", "Gate", "Ablation"):
        hrow += _cell(title)
    head += hrow
    group += head
    body = nodes.tbody()
    for doc, r in rows:
        uri = app.builder.get_relative_uri(fromdoc, doc)
        anchor = claims_anchor(env, doc)
        title = short_title(env, doc, records)
        link = nodes.paragraph()
        link += nodes.reference("", title, internal=True, refuri=uri + (f"#{anchor}" if anchor else ""))
        claim = nodes.paragraph(text=r["claim"])
        if r.get("paper"):
            claim += nodes.inline(text=f" ({r['paper']})", classes=["claim-source"])
        row = nodes.row(classes=[f"status-{r['status'].replace(' ', '-')}",
                                 "holds" if r["holds"] else "fails"])
        ablation = r.get("ablation_text") or ("none named" if r["status"] == "reproduced" else "—")
        for content in (link, claim, r["status_text"], f"{r['n_hold']}/{r['n']}", r["measured_text"],
                        "holds" if r["holds"] else "FAILS", ablation):
            row += _cell(content)
        body += row
    group += body
    missing = nodes.bullet_list(classes=["ledger-not-reproduced"])
    for doc, r in rows:
        if r["status"] == "not reproduced":
            item, para = nodes.list_item(), nodes.paragraph()
            anchor = claims_anchor(env, doc)
            uri = app.builder.get_relative_uri(fromdoc, doc) + (f"#{anchor}" if anchor else "")
            para += nodes.reference("", short_title(env, doc, records), internal=True, refuri=uri)
            para += nodes.Text(f": {r['claim']} ({r['paper']})")
            item += para
            missing += item
    out = [intro, summary, by_chapter]
    if len(missing):
        out += [nodes.paragraph(text="What does not reproduce at this book's scale:"), missing]
    return out + [nodes.paragraph(text="Every claim, in the order of the chapters:"), table]


def fill_summaries(app, doctree, docname):
    placeholders = list(doctree.findall(ledger_summary))
    if not placeholders:
        return
    records = read_records(Path(app.outdir))
    env = app.builder.env
    for doc in toc_order(env):
        if doc in records and any(not r["holds"] for r in records[doc]["rows"]):
            logger.warning(f"claims page: a claim of {doc} fails its gate", location=docname)
    if not records:
        logger.warning("claims page: no chapter wrote a ledger record", location=docname)
    for node in placeholders:
        node.replace_self(build_table(app, docname, records))


def always_outdated(app, env, added, changed, removed):
    """The claims page reads every chapter: re-read it on every build."""
    return sorted(getattr(env, "ledger_summary_docs", set()) - set(removed))


def merge(app, env, docnames, other):
    env.ledger_summary_docs = getattr(env, "ledger_summary_docs", set()) | getattr(
        other, "ledger_summary_docs", set())


def setup(app):
    app.add_node(ledger_summary)
    app.add_directive("ledger-summary", LedgerSummary)
    app.connect("doctree-resolved", fill_summaries)
    app.connect("env-get-outdated", always_outdated)
    app.connect("env-merge-info", merge)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
