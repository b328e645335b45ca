"""Each chapter's execution time from a clean state, and the whole book's.

    python benchmarks/book_time.py [chapter ...]

Executes every executable chapter of the table of contents (or the ones named) the way the book build
does: the MyST source read by jupytext, run top to bottom in a fresh kernel (nbclient), no execution
cache. Wall-clock seconds per chapter include the kernel's start. Chapters run one after another, as
`make book` runs them. Writes benchmarks/results/book_time.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import time

import jupytext
import yaml
from nbclient import NotebookClient

from _common import RESULTS, machine

ROOT = pathlib.Path(__file__).resolve().parents[1]


def chapters() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f for f in files if re.search(r"^kernelspec:", (ROOT / f"{f}.md").read_text(), re.M)]


def run(doc: str) -> float:
    nb = jupytext.read(ROOT / f"{doc}.md")
    start = time.perf_counter()
    NotebookClient(nb, timeout=1800, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "book")}}).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter files as in _toc.yml (default: all)")
    args = parser.parse_args()
    docs = args.chapters or chapters()
    rows = []
    for doc in docs:
        seconds = run(doc)
        rows.append({"chapter": doc, "seconds": seconds})
        print(f"{doc:28s} {seconds:7.1f} s", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':28s} {total:7.1f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "book_time.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "total_seconds": total}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
