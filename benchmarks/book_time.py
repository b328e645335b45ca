"""Each chapter's execution time from a clean state, and the whole book's.

    python benchmarks/book_time.py [chapter ...]

Executes every executable chapter of the table of contents (or the ones named) the way the book build
does: the MyST source read by jupytext, run top to bottom in a fresh kernel (nbclient), no execution
cache. Wall-clock seconds per chapter include the kernel's start. Chapters run one after another, as
`make book` runs them. Before the chapters and after them it times a fixed reference workload (the
standard loop: a two-layer ReLU nn.Module with optim.SGD, 3000 steps, one thread), so that the book's time
can be read against the speed of the machine on that day. Writes benchmarks/results/book_time.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import re
import time

import jupytext
import torch
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


def reference_steps_per_s(steps: int = 3000) -> float:
    """Steps per second of the reference workload: width-100 two-layer ReLU net, 12 points, optim.SGD."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, 100), torch.nn.ReLU(), torch.nn.Linear(100, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    X = torch.linspace(-1, 1, 12)[:, None]
    y = torch.sin(3 * X)
    start = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        (net(X) - y - 0.1 * torch.randn_like(y)).pow(2).mean().backward()
        opt.step()
    torch.set_num_threads(threads)
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter files as in _toc.yml (default: all)")
    args = parser.parse_args()
    docs = args.chapters or chapters()
    rows = []
    before = reference_steps_per_s()
    for doc in docs:
        seconds = run(doc)
        rows.append({"chapter": doc, "seconds": seconds})
        print(f"{doc:28s} {seconds:7.1f} s", flush=True)
    total = sum(r["seconds"] for r in rows)
    print(f"{'total':28s} {total:7.1f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "book_time.json"
    reference = [before, reference_steps_per_s()]
    print(f"reference loop: {reference[0]:,.0f} steps/s before, {reference[1]:,.0f} after")
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "total_seconds": total,
                               "reference_steps_per_s": reference}, indent=1))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
