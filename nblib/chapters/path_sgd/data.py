"""The data of the Path-SGD and network-size chapters: scikit-learn's bundled 8×8 digits, split and
(optionally) with a fraction of the training labels corrupted."""
from __future__ import annotations

import numpy as np
import torch


def digits_split(sizes, *, seed: int = 0, dtype: torch.dtype = torch.float64):
    """scikit-learn's bundled 8×8 digits (1797 images, no download), pixels scaled to [0, 1], shuffled with
    ``seed`` and cut into consecutive parts of the given ``sizes`` (e.g. train, validation, test).
    Returns a list of (X [n, 64], y [n] int64) pairs."""
    from sklearn.datasets import load_digits

    data = load_digits()
    sizes = list(sizes)
    if any(not isinstance(s, int) or s < 1 for s in sizes) or sum(sizes) > len(data.target):
        raise ValueError(f"sizes must be positive integers summing to at most {len(data.target)}, got {sizes}")
    order = np.random.default_rng(seed).permutation(len(data.target))
    X = torch.tensor(data.data / 16.0, dtype=dtype)
    y = torch.tensor(data.target, dtype=torch.int64)
    parts, start = [], 0
    for s in sizes:
        idx = torch.as_tensor(order[start:start + s])
        parts.append((X[idx], y[idx]))
        start += s
    return parts


def corrupt_labels(y, fraction: float, *, num_classes: int = 10, seed: int = 0) -> torch.Tensor:
    """A copy of y with a random ``fraction`` of the labels replaced by a different, random class."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    y = y.clone()
    k = int(round(fraction * len(y)))
    idx = torch.randperm(len(y), generator=g)[:k]
    y[idx] = (y[idx] + torch.randint(1, num_classes, (k,), generator=g)) % num_classes
    return y
