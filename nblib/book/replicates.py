"""Seeds are an input: every chapter draws its replicates from one list, which one variable shifts.

    SEEDS = nblib.book.seeds(5)      # [0, 1, 2, 3, 4] + offset,  offset = $BOOK_SEED_OFFSET (default 0)
    substream(seed, "teacher")       # an independent, named seed derived from a replicate's seed

A replicate is everything a chapter draws at random for one run of its experiment (data, initialization,
noise), all derived from one seed of ``SEEDS``. Setting ``BOOK_SEED_OFFSET`` to a value the book never uses
re-runs every chapter on fresh draws: the claims must hold there too.
"""
from __future__ import annotations

import hashlib
import os

OFFSET_ENV = "BOOK_SEED_OFFSET"


def seed_offset() -> int:
    """The shift applied to every seed of the book: ``$BOOK_SEED_OFFSET`` (a non-negative integer), or 0."""
    raw = os.environ.get(OFFSET_ENV, "").strip()
    if not raw:
        return 0
    try:
        offset = int(raw)
    except ValueError:
        raise ValueError(f"{OFFSET_ENV} must be a non-negative integer, got {raw!r}") from None
    if offset < 0:
        raise ValueError(f"{OFFSET_ENV} must be a non-negative integer, got {offset}")
    return offset


def seeds(n: int, start: int = 0) -> list[int]:
    """``n`` replicate seeds, ``start + offset + i`` for i < n, with the offset of ``seed_offset()``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of replicates must be a positive integer, got {n!r}")
    base = start + seed_offset()
    return [base + i for i in range(n)]


def substream(seed: int, name: str) -> int:
    """A seed for the stream ``name`` of replicate ``seed`` (e.g. "teacher", "init", "noise").

    Distinct names give unrelated seeds; the same (seed, name) gives the same seed on every machine
    (the first 62 bits of SHA-256 of "seed/name")."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 2
