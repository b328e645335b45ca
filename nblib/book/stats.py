"""Paired comparison of two classifiers on the same test examples (McNemar's test, as a z statistic).

Only the examples on which the two disagree about being right carry information:

    n_a = #{examples only a gets wrong},   n_b = #{examples only b gets wrong}
    z   = (n_b − n_a) / √(n_a + n_b)          (z = 0 when n_a + n_b = 0)

Under "a and b are equally accurate" each discordant example is a fair coin, so z is approximately
standard normal: z ≥ 2 says b makes significantly more errors than a (about the 5% level), |z| < 2 no
difference the test set can resolve. Pooled over several pairs (runs), the counts are summed first.
"""
from __future__ import annotations

import math

import numpy as np


def _wrong(mask, name) -> np.ndarray:
    a = np.asarray(mask)
    if a.dtype != np.bool_ or a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D boolean array (True = example misclassified), "
                         f"got dtype {a.dtype} and shape {a.shape}")
    return a


def discordant(wrong_a, wrong_b) -> tuple[int, int]:
    """(n_a, n_b): how many examples only a, and only b, gets wrong (boolean arrays of one length)."""
    a, b = _wrong(wrong_a, "wrong_a"), _wrong(wrong_b, "wrong_b")
    if a.shape != b.shape:
        raise ValueError(f"wrong_a and wrong_b must cover the same examples, got {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((b & ~a).sum())


def z_from_counts(n_a: int, n_b: int) -> float:
    """z = (n_b − n_a) / √(n_a + n_b), and 0 when there is no discordant example."""
    for name, n in (("n_a", n_a), ("n_b", n_b)):
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {n!r}")
    return float((n_b - n_a) / max(math.sqrt(n_a + n_b), 1.0))


def paired_z(wrong_a, wrong_b) -> float:
    """McNemar z for "b makes more errors than a" on the same examples: (n_b − n_a)/√(n_a + n_b).

    wrong_a, wrong_b: boolean arrays (or tensors), True where a (b) misclassifies the example.
    Antisymmetric, paired_z(a, b) = −paired_z(b, a), and 0 when a and b err on the same examples."""
    return z_from_counts(*discordant(wrong_a, wrong_b))


def pooled_z(pairs) -> float:
    """Pooled McNemar z over several pairs (wrong_a, wrong_b), e.g. one per seed: the discordant counts
    are summed over the pairs, z = (Σ n_b − Σ n_a)/√(Σ n_a + Σ n_b). The pairs are treated as independent."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pooled_z needs at least one pair (wrong_a, wrong_b)")
    counts = [discordant(a, b) for a, b in pairs]
    return z_from_counts(sum(c[0] for c in counts), sum(c[1] for c in counts))
