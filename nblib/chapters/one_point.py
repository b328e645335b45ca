"""Two-layer sigmoid / tanh networks on one datapoint (Blanc et al. 2020, Theorem 3).

    f(x) = Σ_i c_i σ(w_iᵀx),    h_i = σ(w_iᵀx),    o_i = c_i h_i,    a = ‖x‖²,

with σ the logistic function or tanh. For one example ∇_{c_i} f = h_i and ∇_{w_i} f = c_i σ'(w_iᵀx) x, so

    reg = ‖∇_θ f‖² = Σ_i [h_i² + c_i² σ'(w_iᵀx)² a],

    logistic (σ' = h(1 − h)):  R = Σ_i [h_i² + c_i² h_i² (1 − h_i)² a]
    tanh     (σ' = 1 − h²):    R = Σ_i [h_i² + c_i² (1 − h_i²)² a]

Minimizing R on the zero-error set Σ_i o_i = y (Lagrange multiplier, h_i free for fixed o_i) gives the
stationarity relations

    logistic:  h_i = o_i² a / (1 + o_i² a)          tanh:  h_i² = sqrt(o_i² a / (o_i² a + 1)),

and, with h_i eliminated, R = Σ_i r(o_i) with r(o) = s/(1 + s) (logistic) or r(o) = 2u/(1 + u),
u = sqrt(s/(1 + s)) (tanh), s = a o². The models (``nblib.chapters.models.logistic_net``, ``tanh_net``) carry
closed forms, so label-noise SGD runs many chains as one batched tensor computation.

On one example the step w_i ← w_i − 2η r c_i σ'(w_iᵀx) x never changes the part of w_i orthogonal to x.
So a run in d dimensions is exactly the run of the same network on the 1-D input ‖x‖ whose weights
are the components w_iᵀx̂ (``along_x``): the chapter runs that reduction.

Counting distinct (c_i, h_i) pairs: single-linkage clusters at a tolerance (``count_clusters``), the merge
heights behind them (``merge_heights``, ``merge_tolerance``: the tolerance at which a chain would read as k
pairs), and the rule that reads a count only when it is final (``continue_until_final``: chains reading as
more than k pairs are run on, doubling their run time, until they read as k or fewer or their merge
tolerance stops shrinking).
"""
from __future__ import annotations

import math

import torch

from .models import (ACTIVATIONS, UNIT_NETS, activation_derivatives, check_activation,
                     init_unit_net, logistic_net, tanh_net)

MODELS = UNIT_NETS                       # {"logistic": logistic_net, "tanh": tanh_net}

__all__ = ["ACTIVATIONS", "MODELS", "along_x", "cluster_diameter", "continue_until_final", "count_clusters",
           "init_unit_net", "logistic_net", "merge_heights", "merge_tolerance", "paper_R_unit", "predicted_optimum",
           "reduced_r", "stationarity_residual", "stationary_h", "tanh_net", "unit_pairs"]


def along_x(params: dict, x) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The exact 1-D reduction of a one-point run: ({c, W: [..., m, 1]}, X = [[‖x‖]]).

    W_i ↦ w_iᵀx̂ (the only part of w_i a step on the example x moves), x ↦ ‖x‖, so that
    w_iᵀx = (w_iᵀx̂)·‖x‖ and the network's output, gradient norms and updates are unchanged."""
    x = _check_x(x).to(params["W"].dtype)
    norm = x.norm()
    return {"c": params["c"], "W": (params["W"] @ (x / norm)).unsqueeze(-1)}, norm.reshape(1, 1)


# ----------------------------------------------------------------------------- unit coordinates and R

def _check_x(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 1 or x.numel() == 0 or not torch.isfinite(x).all():
        raise ValueError(f"x must be one finite input vector of shape [d]; got shape {tuple(x.shape)}")
    return x


def unit_pairs(params: dict, x, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_i, h_i = σ(w_iᵀx)) for every unit: two tensors of shape [..., m] (any leading dims of params)."""
    check_activation(activation)
    x = _check_x(x).to(params["W"].dtype)
    if params["W"].shape[-1] != x.shape[0] or params["W"].shape[:-1] != params["c"].shape:
        raise ValueError(f"params W {tuple(params['W'].shape)} and c {tuple(params['c'].shape)} do not match "
                         f"x of dimension {x.shape[0]}")
    h = activation_derivatives(activation, params["W"] @ x)[0]
    return params["c"], h


def paper_R_unit(c: torch.Tensor, h: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """The paper's closed form, summed over the last (unit) dimension:
    logistic Σ [h² + c² h² (1 − h)² a];  tanh Σ [h² + c² (1 − h²)² a]   (a = ‖x‖²)."""
    check_activation(activation)
    if c.shape != h.shape:
        raise ValueError(f"c and h must have the same shape, got {tuple(c.shape)} and {tuple(h.shape)}")
    d1 = h * (1 - h) if activation == "logistic" else 1 - h * h
    return (h * h + c * c * d1 * d1 * x_norm2).sum(-1)


def stationary_h(o: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """The h that minimizes R for a unit with output o = c·h:
    logistic o²a/(1 + o²a); tanh sign(o)·(o²a/(o²a + 1))^{1/4} (the sign of h is free: c flips with it)."""
    check_activation(activation)
    s = o * o * x_norm2
    if activation == "logistic":
        return s / (1 + s)
    return torch.sign(o) * (s / (s + 1)) ** 0.25


def stationarity_residual(c: torch.Tensor, h: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """Per unit: logistic h − o²a/(1 + o²a); tanh h² − sqrt(o²a/(o²a + 1)); o = c·h. Zero at stationary points."""
    check_activation(activation)
    s = (c * h) ** 2 * x_norm2
    if activation == "logistic":
        return h - s / (1 + s)
    return h * h - torch.sqrt(s / (s + 1))


def reduced_r(o: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """R of one unit at its best h for output o: logistic s/(1 + s); tanh 2u/(1 + u), u = sqrt(s/(1 + s)), s = a o²."""
    check_activation(activation)
    s = o * o * x_norm2
    if activation == "logistic":
        return s / (1 + s)
    u = torch.sqrt(s / (1 + s))
    return 2 * u / (1 + u)


def predicted_optimum(y: float, width: int, x_norm2: float, activation: str) -> dict[str, float]:
    """A minimizer of R on the zero-error set Σ_i c_i h_i = y, in closed form.

    logistic: the symmetric point, every unit with o = y/m. r(o) = s/(1 + s) is convex for s < 1/3, so when
    a(y/m)² < 1/3 this is a strict local minimizer (one cluster); for small a·y² it is the only stable point
    (a configuration with one large unit needs a·y² large; not checked here).
    tanh: r(o) = 2u/(1 + u) is concave in |o| with r(0) = 0, so the global minimum puts all of y on ONE unit
    (o = y) and sends the others to zero. Returns o, h (> 0 branch), c, R and the number of active units.
    """
    check_activation(activation)
    if not (math.isfinite(y) and y != 0):
        raise ValueError(f"y must be a finite nonzero number, got {y!r}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if not (math.isfinite(x_norm2) and x_norm2 > 0):
        raise ValueError(f"x_norm2 must be positive and finite, got {x_norm2!r}")
    if activation == "logistic":
        o = y / width
        s = x_norm2 * o * o
        if s >= 1 / 3:
            raise ValueError(f"a·(y/m)² = {s:.3g} >= 1/3: the all-equal point is not the minimizer; "
                             "use a smaller ‖x‖ or |y|, or a larger width")
        h = s / (1 + s)
        return {"o": o, "h": h, "c": o / h, "R": width * s / (1 + s), "active": width}
    s = x_norm2 * y * y
    u = math.sqrt(s / (1 + s))
    h = math.sqrt(u)
    return {"o": y, "h": h, "c": y / h, "R": 2 * u / (1 + u), "active": 1}


# ----------------------------------------------------------------------------- clustering of units

def count_clusters(points: torch.Tensor, tol: float) -> torch.Tensor:
    """Number of single-linkage clusters of the m points of each chain: points [C, m, k] -> [C] (ints).

    Two units are linked when their Euclidean distance is ≤ tol; a cluster is a connected component.
    Computed for all chains at once by propagating the smallest index through the link graph.
    """
    if points.ndim != 3:
        raise ValueError(f"points must have shape [chains, units, coords]; got {tuple(points.shape)}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative finite number, got {tol!r}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    C, m, _ = points.shape
    link = torch.cdist(points, points) <= tol                                  # [C, m, m], diagonal True
    big = torch.full((C, m, m), m, dtype=torch.long)
    labels = torch.arange(m).expand(C, m).clone()
    for _ in range(m):
        new = torch.where(link, labels.unsqueeze(1).expand(C, m, m), big).min(-1).values
        if torch.equal(new, labels):
            break
        labels = new
    return (labels == torch.arange(m)).sum(-1)


def cluster_diameter(points: torch.Tensor, labels_tol: float) -> torch.Tensor:
    """Per chain, the largest distance between two units that ``count_clusters(points, labels_tol)`` puts in
    one cluster ([C]); small means the clusters are tight compared with labels_tol."""
    if points.ndim != 3:
        raise ValueError(f"points must have shape [chains, units, coords]; got {tuple(points.shape)}")
    C, m, _ = points.shape
    dist = torch.cdist(points, points)
    link = dist <= labels_tol
    reach = link.clone()
    for _ in range(max(1, int(math.ceil(math.log2(max(m, 2)))) + 1)):       # transitive closure by squaring
        reach = torch.bmm(reach.double(), reach.double()) > 0
    return torch.where(reach, dist, torch.zeros_like(dist)).amax((1, 2))


def merge_heights(points: torch.Tensor) -> torch.Tensor:
    """The single-linkage merge heights of each chain's units, ascending: points [C, m, k] -> [C, m − 1].

    They are the edge lengths of the minimum spanning tree of the m points (Prim's algorithm, all chains at
    once): ``count_clusters(points, tol)`` is 1 + the number of heights above tol."""
    if points.ndim != 3:
        raise ValueError(f"points must have shape [chains, units, coords]; got {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    C, m, _ = points.shape
    dist = torch.cdist(points, points)
    rows = torch.arange(C)
    inside = torch.zeros(C, m, dtype=torch.bool)
    inside[:, 0] = True
    best = dist[:, 0].clone()
    edges = []
    for _ in range(m - 1):
        e, j = best.masked_fill(inside, math.inf).min(-1)
        edges.append(e)
        inside[rows, j] = True
        best = torch.minimum(best, dist[rows, j])
    if not edges:
        return points.new_zeros(C, 0)
    return torch.stack(edges, -1).sort(-1).values


def merge_tolerance(points: torch.Tensor, k: int) -> torch.Tensor:
    """Per chain, the smallest tolerance at which ``count_clusters`` finds at most k clusters ([C]): the
    distance the chain's units still have to close for it to read as k pairs (0 when it already would at
    any tolerance, i.e. m ≤ k)."""
    if not (isinstance(k, int) and not isinstance(k, bool) and k >= 1):
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    heights = merge_heights(points)
    m = points.shape[1]
    if m <= k:
        return points.new_zeros(points.shape[0])
    return heights[:, m - 1 - k]


def continue_until_final(params: dict, measure, run, *, steps: int, tol: float, k: int = 2, rounds: int = 3,
                         settled: float = 0.9):
    """Continue the chains that read as more than k pairs until that reading is final.

    params: {name: [C, ...]}, the chains after a run of ``steps`` steps. measure(params) -> a dict of [C, ...]
    tensors holding at least "c" and "h" ([C, m], the units' pairs) and "clusters" ([C], the count at tol).
    run(sub, chains, n) -> the parameters of the chains ``chains`` (a LongTensor of indices; ``sub`` is params
    restricted to them) after n more steps.

    Round r runs every open chain for steps·2^r more steps, so each round doubles its run time. A chain is
    closed when its count is ≤ k, or when its τ_k = merge_tolerance(·, k) changed by less than a fraction
    1 − settled over the doubling (the count has settled: final, whatever it is). Chains still open after
    ``rounds`` rounds are reported as open.

    Returns (params, meas, report): every chain's parameters and measurements at the point where its count
    was read, and report = {"chains": [indices continued], "tau_k": {chain: [τ_k at the end of the run and
    after each round]}, "steps": {chain: total steps}, "open": [indices still open]}.
    """
    if not (isinstance(steps, int) and steps >= 1 and isinstance(rounds, int) and rounds >= 0):
        raise ValueError(f"steps must be >= 1 and rounds >= 0 (integers); got {steps!r}, {rounds!r}")
    if not 0 < settled < 1:
        raise ValueError(f"settled must lie in (0, 1), got {settled!r}")
    params = {name: v.clone() for name, v in params.items()}
    meas = {name: v.clone() for name, v in measure(params).items()}

    def tau_k(ms):
        return merge_tolerance(torch.stack([ms["c"], ms["h"]], -1), k)

    gap = tau_k(meas)
    open_ = meas["clusters"] > k
    chains = torch.nonzero(open_).flatten().tolist()
    report = {"chains": chains, "tau_k": {c: [float(gap[c])] for c in chains},
              "steps": {c: steps for c in chains}, "open": []}
    for r in range(rounds):
        idx = torch.nonzero(open_).flatten()
        if idx.numel() == 0:
            break
        n = steps * 2 ** r
        new = run({name: v[idx] for name, v in params.items()}, idx, n)
        new_meas = measure(new)
        new_gap = tau_k(new_meas)
        for name in params:
            params[name][idx] = new[name]
        for name in meas:
            meas[name][idx] = new_meas[name]
        for j, c in enumerate(idx.tolist()):
            report["tau_k"][c].append(float(new_gap[j]))
            report["steps"][c] += n
        open_[idx] = (new_meas["clusters"] > k) & (new_gap < settled * gap[idx])
        gap[idx] = new_gap
    report["open"] = torch.nonzero(open_).flatten().tolist()
    return params, meas, report
