"""The book's recurring figures: one look for the same quantity in every chapter.

    mean_band(ax, t, values)      mean over chains with a 10–90% band         (label-noise runs)
    flow_line(ax, t, values)      the explicit flow, dashed, in the flow colour
    theory_line(ax, t, values)    a closed-form prediction, dotted black (a number: a horizontal line)
    spectrum(ax, eigenvalues)     eigenvalues, largest first, on a log axis

Each takes a matplotlib axis and returns it; colours come from ``nblib.book.style.COLORS``.
"""
from __future__ import annotations

import numpy as np
import torch

from .style import COLORS


def _np(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=float)


def mean_band(ax, t, values, *, color=None, label=None, band=(0.1, 0.9), band_label=None):
    """values [T, C]: the mean over the C chains as a line, the ``band`` quantiles as a shaded band."""
    v = _np(values)
    if v.ndim != 2:
        raise ValueError(f"values must be [T, chains]; got shape {v.shape}")
    color = COLORS["label_noise"] if color is None else color
    lo, hi = np.quantile(v, band[0], axis=1), np.quantile(v, band[1], axis=1)
    if band_label is None and label is not None:
        band_label = f"{label}: {band[0]:.0%}–{band[1]:.0%} of chains"
    ax.fill_between(_np(t), lo, hi, color=color, alpha=0.2, label=band_label, lw=0)
    ax.plot(_np(t), v.mean(1), color=color, label=label)
    return ax


def flow_line(ax, t, values, *, label="explicit flow: GD on L + λ·reg", **kw):
    """The explicit flow's curve: dashed, in the flow colour."""
    ax.plot(_np(t), _np(values), color=COLORS["flow"], ls="--", label=label, **kw)
    return ax


def theory_line(ax, t, values, *, label="prediction", **kw):
    """A closed-form prediction: dotted black; ``values`` a number draws a horizontal line."""
    if np.ndim(_np(values)) == 0:
        ax.axhline(float(_np(values)), color=COLORS["theory"], ls=":", label=label, **kw)
    else:
        ax.plot(_np(t), _np(values), color=COLORS["theory"], ls=":", label=label, **kw)
    return ax


def spectrum(ax, eigenvalues, *, color=None, label=None, floor=1e-12, **kw):
    """Eigenvalues λ_1 ≥ λ_2 ≥ … against their index k on a log axis (values below ``floor`` drawn
    at ``floor``, so that zeros stay visible)."""
    lam = np.sort(_np(eigenvalues).reshape(-1))[::-1]
    k = np.arange(1, len(lam) + 1)
    ax.semilogy(k, np.maximum(lam, floor), "o-", ms=3, lw=1, color=color, label=label, **kw)
    return ax
