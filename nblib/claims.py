"""The claims ledger every chapter ends with: claim, measured value, tolerance, holds.

Each check records a row and glues the measured value (myst-nb ``glue``) under its key, so the prose
can quote it with {glue:text}`key:.3g`. ``Ledger.verify()`` shows the table and raises ``ClaimFailed``
if any claim does not hold, so a chapter whose claims fail fails nbmake and the book build.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np
import torch


class ClaimFailed(AssertionError):
    """At least one claim of a chapter's ledger does not hold in this run."""


def as_float(value) -> float:
    """A plain Python float from a number, a NumPy scalar or a one-element tensor."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"expected a single number, got a tensor of shape {tuple(value.shape)}")
        return float(value.item())
    if isinstance(value, np.ndarray) and value.size != 1:
        raise ValueError(f"expected a single number, got an array of shape {value.shape}")
    return float(value)


def glue(key: str, value, display: bool = False) -> None:
    """Glue a number (as a plain float) or a string for the prose; a no-op outside myst-nb."""
    if not isinstance(value, str):
        value = as_float(value)
    try:
        from myst_nb import glue as _glue
    except ImportError:          # plain Python without the book's tools: nothing to glue into
        return
    _glue(key, value, display=display)


@dataclass
class Row:
    key: str
    claim: str
    measured: float
    tolerance: str
    holds: bool
    fmt: str


class Ledger:
    """Collects a chapter's claims. Use close_to / at_most / at_least / check, then verify()."""

    def __init__(self, chapter: str):
        self.chapter = chapter
        self.rows: list[Row] = []

    def check(self, key: str, claim: str, measured, *, holds: bool, tolerance: str, fmt: str = ".3g") -> None:
        """Record a claim: ``measured`` (a single number) and whether it ``holds`` within ``tolerance``."""
        if any(r.key == key for r in self.rows):
            raise ValueError(f"claim key {key!r} is already in the ledger")
        m = as_float(measured)
        ok = bool(holds) and math.isfinite(m)
        self.rows.append(Row(key, claim, m, tolerance, ok, fmt))
        glue(key, m)

    def close_to(self, key, claim, measured, target, *, rtol: float = 0.0, atol: float = 0.0, fmt=".3g") -> None:
        """Holds if |measured − target| ≤ atol + rtol·|target|."""
        m, t = as_float(measured), as_float(target)
        bound = atol + rtol * abs(t)
        parts = [f"{rtol:.0%} rel." if rtol else "", f"{atol:{fmt}} abs." if atol else ""]
        tol = f"{t:{fmt}} ± " + " + ".join(p for p in parts if p)
        self.check(key, claim, m, holds=abs(m - t) <= bound, tolerance=tol, fmt=fmt)

    def at_most(self, key, claim, measured, bound, *, fmt=".3g") -> None:
        b = as_float(bound)
        self.check(key, claim, measured, holds=as_float(measured) <= b, tolerance=f"≤ {b:{fmt}}", fmt=fmt)

    def at_least(self, key, claim, measured, bound, *, fmt=".3g") -> None:
        b = as_float(bound)
        self.check(key, claim, measured, holds=as_float(measured) >= b, tolerance=f"≥ {b:{fmt}}", fmt=fmt)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.holds]

    def _repr_html_(self) -> str:
        head = "<tr><th>Claim</th><th>Measured</th><th>Tolerance</th><th>Holds</th></tr>"
        body = "".join(
            f"<tr class=\"{'holds' if r.holds else 'fails'}\"><td>{html.escape(r.claim)}</td>"
            f"<td>{r.measured:{r.fmt}}</td><td>{html.escape(r.tolerance)}</td>"
            f"<td>{'✓ yes' if r.holds else '✗ NO'}</td></tr>"
            for r in self.rows
        )
        return f'<table class="claims-table"><thead>{head}</thead><tbody>{body}</tbody></table>'

    def __repr__(self) -> str:
        lines = [f"Claims of {self.chapter!r}:"]
        lines += [f"  [{'holds' if r.holds else 'FAILS'}] {r.claim}: {r.measured:{r.fmt}} ({r.tolerance})"
                  for r in self.rows]
        return "\n".join(lines)

    def verify(self) -> "Ledger":
        """Show the table; raise ClaimFailed naming every claim that does not hold."""
        if not self.rows:
            raise ClaimFailed(f"the ledger of {self.chapter!r} is empty: a chapter must measure its claims")
        try:
            from IPython.display import display
            display(self)
        except ImportError:
            print(repr(self))
        if self.failed:
            raise ClaimFailed(
                f"{len(self.failed)} claim(s) of {self.chapter!r} do not hold in this run: "
                + "; ".join(f"{r.claim} (measured {r.measured:{r.fmt}}, needs {r.tolerance})" for r in self.failed)
            )
        return self
