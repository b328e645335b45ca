"""One figure style for the whole book: opaque white figures (legible in print and in dark mode),
the Okabe–Ito colour-blind-safe palette, labelled axes, and fixed roles for recurring curves."""
from __future__ import annotations

import matplotlib as mpl

OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

# The same quantity gets the same colour in every chapter.
COLORS = {
    "sgd": "#0072B2",          # plain SGD / GD (no label noise)
    "label_noise": "#D55E00",  # label-noise SGD
    "flow": "#009E73",         # explicit flow: GD on loss + λ·reg
    "theory": "#000000",       # closed-form prediction
    "data": "#CC79A7",         # training points
    "other": "#E69F00",
}

BOOK_STYLE = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.transparent": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "figure.figsize": (6.4, 3.8),
    "figure.constrained_layout.use": True,
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "legend.fontsize": 9,
    "legend.framealpha": 0.9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "axes.prop_cycle": mpl.cycler(color=OKABE_ITO),
    "text.color": "black",
    "axes.labelcolor": "black",
    "xtick.color": "black",
    "ytick.color": "black",
}


def use_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    mpl.rcParams.update(BOOK_STYLE)


def check_labelled(fig) -> None:
    """Raise ValueError if an axis of ``fig`` that shows data has no x or y label."""
    for ax in fig.axes:
        if ax.has_data() and (not ax.get_xlabel() or not ax.get_ylabel()):
            raise ValueError(f"an axis titled {ax.get_title()!r} lacks an x or y label")
