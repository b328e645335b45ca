"""CPU settings for nblib's loops, set by the loops themselves (so chapters carry no speed knobs).

The book's loops run 10⁴–10⁵ steps on tiny tensors: each step is overhead-bound, a second torch thread
only adds synchronization, and residuals of noise-free runs decay into the denormal range, where CPU
arithmetic is slow. ``cpu_settings`` applies one thread count and flush-to-zero for the duration of a
run and restores the caller's settings afterwards.
"""
from __future__ import annotations

import contextlib

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
