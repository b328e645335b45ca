"""CPU settings for nblib's loops, set by the loops themselves (so chapters carry no speed knobs).

The book's loops run 10⁴–10⁵ steps on tiny tensors: each step is overhead-bound, a second torch thread
only adds synchronization, and residuals of noise-free runs decay into the denormal range, where CPU
arithmetic is slow. ``cpu_settings`` applies one thread count and flush-to-zero for the duration of a
run and restores the caller's settings afterwards.
"""
from __future__ import annotations

import contextlib
import hashlib
import pathlib

import torch


@contextlib.contextmanager
def cpu_settings(threads: int | None = 1, *, flush_denormal: bool = True):
    """Run the body with ``threads`` torch threads (None: leave as is) and denormals flushed to zero."""
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    flushed = bool(flush_denormal) and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if threads is not None:
            torch.set_num_threads(before)
        if flushed:
            torch.set_flush_denormal(False)


def source_hash() -> str:
    """SHA-256 (first 16 hex digits) of nblib's own source: every ``*.py`` under the package, by relative
    path and content. Stored benchmark results record it, so that results measured on other code show
    up as stale."""
    root = pathlib.Path(__file__).resolve().parents[1]          # the nblib package
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]
