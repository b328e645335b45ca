"""The claims ledger every chapter ends with: each claim measured on every replicate, gated, with a status.

A row holds, per claim:

- the measured values, one per replicate (one seed of the chapter's ``SEEDS``), or a single value that is
  ``exact`` (a deterministic identity, e.g. a closed form against autograd) or ``pooled`` (one statistic of all
  replicates together, e.g. a pooled z) or ``stored`` (a benchmark result read from its stored file);
- the tolerance and the *gate* that decides the row: ``"all"`` (every replicate within the tolerance),
  ``"median"`` (the median is), or ``"mean"`` (the whole 95% t-interval of the mean is);
- how many replicates hold ("5/5"), the statistic (median, or mean with its interval) and the range;
- the *status*, separate from the gate: ``"reproduced"`` (a paper's claim holds here), ``"not reproduced"``
  (the paper's claim does not hold at this scale: the gate checks what was observed instead, so it cannot
  flip silently), ``"exact check"`` (an identity, an a-priori bound or a quantity fixed by construction:
  it holds whatever the run does, unless the code is wrong, so it is never counted as a reproduction) or
  ``"own"`` (a claim of this book, not of a paper). A paper's claim names its source;
- for a reproduced row, its *ablation*: the arm of the experiment in which the claim should fail (no label
  noise, one layer frozen, ...), measured on the same replicates and decided by the same gate. A reproduced
  row whose ablation passes the gate too fails: the claim cannot tell the two arms apart.

``Ledger.verify()`` shows the table, writes a machine-readable record of it into the notebook's output
(MIME type ``application/vnd.nblib.ledger+json``: the book's claims page is generated from these records), and
raises ``ClaimFailed`` if any gate fails, so a chapter whose claims fail fails nbmake and the book build.
Each row glues its statistic under its key and "k/n" under ``key + "_held"`` for the prose (an ablation:
``key + "_ablation"`` and ``key + "_ablation_held"``).
"""
from __future__ import annotations

import html
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .replicates import seed_offset

LEDGER_MIME = "application/vnd.nblib.ledger+json"
STATUSES = {
    "reproduced": "✓ reproduced",
    "not reproduced": "✗ not reproduced at this scale",
    "exact check": "= exact check",
    "own": "◆ the book's own claim",
}
GATES = {"all": "every replicate", "median": "the median", "mean": "95% interval of the mean"}
KINDS = ("replicates", "exact", "pooled", "stored")

# Two-sided 95% quantiles of Student's t, df = 1 … 30 (beyond: 1.96 suffices at this table's precision).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


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


def as_floats(values) -> list[float]:
    """Plain floats from a number or a 1-D sequence (list, array, tensor) of numbers."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim > 1:
        raise ValueError(f"expected one number per replicate (1-D), got shape {arr.shape}")
    return [float(v) for v in arr.reshape(-1)]


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean and its 95% Student-t interval (lo = hi = mean for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    mean = float(v.mean())
    if v.size < 2:
        return mean, mean, mean
    t = _T975[v.size - 2] if v.size - 1 <= len(_T975) else 1.96
    half = t * float(v.std(ddof=1)) / math.sqrt(v.size)
    return mean, mean - half, mean + half


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
    status: str
    paper: str | None
    kind: str
    gate: str
    tolerance: str
    values: list[float]
    per_replicate: list[bool]
    statistic: float
    lo: float | None
    hi: float | None
    holds: bool
    fmt: str = ".3g"
    extra: dict = field(default_factory=dict)
    ablation: str | None = None                 # the arm in which a reproduced claim should fail
    ablation_values: list[float] | None = None
    ablation_statistic: float | None = None
    ablation_held: str | None = None            # "k/n" replicates of the ablation within the tolerance
    ablation_holds: bool | None = None          # whether the ablation passes the gate (it must not)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def n_hold(self) -> int:
        return sum(self.per_replicate)

    @property
    def held(self) -> str:
        return f"{self.n_hold}/{self.n}"

    def measured_text(self) -> str:
        f = self.fmt
        if self.kind != "replicates" or self.n == 1:
            return f"{self.statistic:{f}}"
        if self.gate == "mean":
            return f"mean {self.statistic:{f}} [{self.lo:{f}}, {self.hi:{f}}]"
        return f"median {self.statistic:{f}}"

    def ablation_text(self) -> str:
        """The ablation, its statistic, and whether it fails the gate as it should ("" for none)."""
        if self.ablation is None:
            return ""
        verdict = "passes the gate too" if self.ablation_holds else "fails the gate"
        stat = self.ablation_statistic
        shown = "NaN" if stat is None or not math.isfinite(stat) else f"{stat:{self.fmt}}"
        return f"{self.ablation}: {shown} ({verdict}, {self.ablation_held})"

    def range_text(self) -> str:
        if self.kind == "exact":
            return "exact"
        if self.kind in ("pooled", "stored"):
            return self.kind
        return f"{min(self.values):{self.fmt}} … {max(self.values):{self.fmt}}"


class Ledger:
    """Collects a chapter's claims. Use close_to / at_most / at_least / check, then verify().

    ``seeds``: the chapter's replicate seeds; a row of several values must have one per seed."""

    def __init__(self, chapter: str, seeds=None):
        self.chapter = chapter
        self.seeds = [int(s) for s in seeds] if seeds is not None else None
        self.rows: list[Row] = []

    # -- recording ---------------------------------------------------------------------------------------
    @staticmethod
    def _decide(values, predicate, gate):
        """(per-replicate flags, statistic, lo, hi, holds) of values under a predicate and a gate."""
        finite = [math.isfinite(v) for v in values]
        per = [bool(predicate(v)) and f for f, v in zip(finite, values)]   # predicate sees every value, in order
        lo = hi = None
        if gate == "all":
            stat, holds = float(np.median(values)), all(per)
        elif gate == "median":
            stat = float(np.median(values))
            holds = all(finite) and bool(predicate(stat))
        else:
            stat, lo, hi = mean_interval(values)
            holds = all(finite) and bool(predicate(lo)) and bool(predicate(hi))
        return per, stat, lo, hi, holds

    def _record(self, key, claim, measured, predicate, tolerance, *, status, paper, gate, kind, fmt,
                ablation=None, ablation_predicate=None):
        if any(r.key == key for r in self.rows):
            raise ValueError(f"claim key {key!r} is already in the ledger")
        if status not in STATUSES:
            raise ValueError(f"status must be one of {sorted(STATUSES)}, got {status!r}")
        if status in ("reproduced", "not reproduced") and not paper:
            raise ValueError(f"claim {key!r}: a paper's claim ({status}) must name its source (paper=...)")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {sorted(GATES)}, got {gate!r}")
        values = as_floats(measured)
        if kind is None:
            if len(values) == 1:
                raise ValueError(
                    f"claim {key!r} has a single value: measure it on every replicate, or say that it is "
                    "kind='exact' (deterministic), kind='pooled' (one statistic of all replicates) or "
                    "kind='stored' (a stored benchmark result)")
            kind = "replicates"
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind != "replicates" and len(values) != 1:
            raise ValueError(f"claim {key!r}: kind={kind!r} takes a single value, got {len(values)}")
        if kind == "replicates" and self.seeds is not None and len(values) != len(self.seeds):
            raise ValueError(f"claim {key!r}: {len(values)} values for {len(self.seeds)} replicates (seeds)")
        per, stat, lo, hi, holds = self._decide(values, predicate, gate)
        row = Row(key, claim, status, paper, kind, gate, tolerance, values, per, stat, lo, hi, holds, fmt)
        if ablation is not None:
            if status != "reproduced":
                raise ValueError(f"claim {key!r}: an ablation belongs to a reproduced row, not {status!r}")
            label, arm = ablation
            arm = as_floats(arm)
            if len(arm) != len(values):
                raise ValueError(f"claim {key!r}: the ablation has {len(arm)} values for {len(values)}")
            a_per, a_stat, _, _, a_holds = self._decide(arm, ablation_predicate or predicate, gate)
            row.ablation, row.ablation_values, row.ablation_statistic = str(label), arm, a_stat
            row.ablation_held, row.ablation_holds = f"{sum(a_per)}/{len(arm)}", a_holds
            row.holds = holds and not a_holds
        self.rows.append(row)
        glue(key, stat)
        glue(key + "_held", row.held)
        if row.ablation is not None:
            glue(key + "_ablation", row.ablation_statistic)
            glue(key + "_ablation_held", row.ablation_held)
        return row

    def check(self, key, claim, measured, *, holds, tolerance: str, status="own", paper=None, gate="all",
              kind=None, fmt=".3g", ablation=None) -> Row:
        """Record a claim whose test is not a bound: ``holds`` is one bool, or one per replicate value.
        ablation: (label, values, holds) of the arm in which the claim should fail."""
        values = as_floats(measured)
        flags = np.broadcast_to(np.asarray(holds, dtype=bool).reshape(-1), (len(values),)).tolist()
        if gate != "all":
            raise ValueError("check() decides each replicate by its own flag: use gate='all'")
        lookup = iter(flags)
        arm = a_pred = None
        if ablation is not None:
            label, a_values, a_holds = ablation
            a_values = as_floats(a_values)
            a_lookup = iter(np.broadcast_to(np.asarray(a_holds, dtype=bool).reshape(-1),
                                            (len(a_values),)).tolist())
            arm, a_pred = (label, a_values), (lambda v: next(a_lookup))
        return self._record(key, claim, values, lambda v: next(lookup), tolerance, status=status,
                            paper=paper, gate=gate, kind=kind, fmt=fmt, ablation=arm, ablation_predicate=a_pred)

    def close_to(self, key, claim, measured, target, *, rtol: float = 0.0, atol: float = 0.0, fmt=".3g",
                 status="own", paper=None, gate="all", kind=None, ablation=None) -> Row:
        """Holds where |measured − target| ≤ atol + rtol·|target|."""
        t = as_float(target)
        bound = atol + rtol * abs(t)
        parts = [f"{rtol:.0%} rel." if rtol else "", f"{atol:{fmt}} abs." if atol else ""]
        tol = f"{t:{fmt}} ± " + " + ".join(p for p in parts if p)
        return self._record(key, claim, measured, lambda v: abs(v - t) <= bound, tol, status=status,
                            paper=paper, gate=gate, kind=kind, fmt=fmt, ablation=ablation)

    def at_most(self, key, claim, measured, bound, *, fmt=".3g", status="own", paper=None, gate="all",
                kind=None, ablation=None) -> Row:
        """Holds where measured ≤ bound. ablation (every recording method): (label, values) of the arm
        in which a reproduced claim should fail, decided by the same tolerance and gate."""
        b = as_float(bound)
        return self._record(key, claim, measured, lambda v: v <= b, f"≤ {b:{fmt}}", status=status,
                            paper=paper, gate=gate, kind=kind, fmt=fmt, ablation=ablation)

    def at_least(self, key, claim, measured, bound, *, fmt=".3g", status="own", paper=None, gate="all",
                 kind=None, ablation=None) -> Row:
        b = as_float(bound)
        return self._record(key, claim, measured, lambda v: v >= b, f"≥ {b:{fmt}}", status=status,
                            paper=paper, gate=gate, kind=kind, fmt=fmt, ablation=ablation)

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if not r.holds]

    def record(self) -> dict:
        """The ledger as plain data: what the claims page of the book is built from."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d.update(n=r.n, n_hold=r.n_hold, measured_text=r.measured_text(), range_text=r.range_text(),
                     status_text=STATUSES[r.status], gate_text=GATES[r.gate], ablation_text=r.ablation_text())
            rows.append(d)
        return dict(chapter=self.chapter, seeds=self.seeds, seed_offset=seed_offset(), rows=rows)

    def _repr_html_(self) -> str:
        head = ("<tr><th>Claim</th><th>Status</th><th>Measured</th><th>Range</th><th>Tolerance</th>"
                "<th>Gate</th><th>Held</th><th>Ablation</th></tr>")
        body = []
        for r in self.rows:
            source = f'<br><span class="claim-source">{html.escape(r.paper)}</span>' if r.paper else ""
            status = r.status.replace(" ", "-")
            verdict = "holds" if r.holds else "FAILS"
            body.append(
                f"<tr class=\"{'holds' if r.holds else 'fails'} status-{status}\">"
                f"<td>{html.escape(r.claim)}{source}</td><td>{html.escape(STATUSES[r.status])}</td>"
                f"<td>{html.escape(r.measured_text())}</td><td>{html.escape(r.range_text())}</td>"
                f"<td>{html.escape(r.tolerance)}</td><td>{html.escape(GATES[r.gate])}: {verdict}</td>"
                f"<td>{r.held}</td><td>{html.escape(r.ablation_text()) or '—'}</td></tr>")
        return f'<table class="claims-table"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'

    def __repr__(self) -> str:
        lines = [f"Claims of {self.chapter!r} (seeds {self.seeds}):"]
        lines += [f"  [{'holds' if r.holds else 'FAILS'}] [{r.status}] {r.claim}: {r.measured_text()}"
                  f" ({r.tolerance}; {GATES[r.gate]}; {r.held})"
                  + (f"; ablation {r.ablation_text()}" if r.ablation else "") for r in self.rows]
        return "\n".join(lines)

    def verify(self) -> "Ledger":
        """Show the table and write its record; raise ClaimFailed naming every claim that does not hold."""
        if not self.rows:
            raise ClaimFailed(f"the ledger of {self.chapter!r} is empty: a chapter must measure its claims")
        try:
            from IPython.display import display
            display({"text/html": self._repr_html_(), "text/plain": repr(self), LEDGER_MIME: self.record()},
                    raw=True)
        except ImportError:
            print(repr(self))
        if self.failed:
            raise ClaimFailed(
                f"{len(self.failed)} claim(s) of {self.chapter!r} do not hold in this run: "
                + "; ".join(f"{r.claim} (measured {r.measured_text()}, {r.held} replicates within "
                            f"{r.tolerance}, gate: {GATES[r.gate]}"
                            + (f"; its ablation {r.ablation_text()}" if r.ablation_holds else "") + ")"
                            for r in self.failed)
            )
        return self
