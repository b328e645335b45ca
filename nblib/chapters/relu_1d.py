"""Two-layer ReLU networks on one-dimensional data (Blanc et al. 2020, Theorem 2, Figs. 2–3).

    f_θ(x) = Σ_i c_i σ(a_i x + b_i) + a0·x + b0,    σ = ReLU

(``nblib.chapters.models.two_layer_relu``). Unit i has its kink at x = −b_i/a_i, where the slope of f jumps by
c_i·|a_i|. So f'' is the measure Σ_i c_i |a_i| δ(x + b_i/a_i), and everything the chapter counts about the
shape of a fit (kinks, convexity changes) is read off the parameters exactly, without finite differences.

The paper's regularizer for this model (ReLU'(0) taken as 0) is

    R = Σ_{i,j} [σ(a_i x_j + b_i)² + c_i²(1 + x_j²)·1{a_i x_j + b_i > 0}] + Σ_j (1 + x_j²),

and nblib's reg = R/n (``paper_R_relu`` computes R independently of nblib's closed form).

Also here: the data of the chapter, the shape measurements (curve length and deviation from a line, exact
from the kinks; convexity changes forced by the data), initializations per replicate seed
(``init_replicates``), the masks that freeze the inner layer per chain (for ``nblib.label_noise_sgd``'s
``trainable``), the predicted training-error floor of full-batch label noise from the Gram spectrum
(``label_noise_floor``) and a Gauss–Newton projection onto the zero-error manifold
(``project_to_interpolant``) that removes the normal fluctuation of a noisy iterate.
"""
from __future__ import annotations

import math

import torch

from .models import init_two_layer_relu, relu_preactivations, two_layer_relu
from ..core.regularizer import closed_form_of
from ..core.runtime import cpu_settings
from ..book.replicates import substream

_forward = closed_form_of(two_layer_relu).forward      # [C, B]: f_θ(x_b) for stacked params

PARAM_NAMES = ("a", "b", "c", "a0", "b0")


# ----------------------------------------------------------------------------- checks

def _as_1d(values, name: str, dtype=None) -> torch.Tensor:
    if dtype is None:
        is_float = isinstance(values, torch.Tensor) and values.is_floating_point()
        dtype = values.dtype if is_float else torch.get_default_dtype()
    t = torch.as_tensor(values, dtype=dtype)
    if t.ndim != 1 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t


def _check_data(X, y) -> tuple[torch.Tensor, torch.Tensor]:
    X = _as_1d(X, "X")
    y = _as_1d(y, "y", dtype=X.dtype)
    if X.shape != y.shape:
        raise ValueError(f"X has {X.shape[0]} points but y has {y.shape[0]}; they must match")
    if X.shape[0] < 2:
        raise ValueError(f"need at least 2 data points, got {X.shape[0]}")
    if not bool((X.diff() > 0).all()):
        raise ValueError("X must be strictly increasing (sort the data by x)")
    return X, y


def _check_stacked(params: dict) -> int:
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict of tensors, got {type(params).__name__}")
    missing = [k for k in PARAM_NAMES if k not in params]
    if missing:
        raise ValueError(f"params lack {missing}; a two-layer ReLU needs {list(PARAM_NAMES)}")
    a = params["a"]
    if a.ndim != 2:
        raise ValueError(f"expected stacked params (a of shape [chains, width]), got a of shape {tuple(a.shape)}")
    C, m = a.shape
    for k in ("b", "c"):
        if tuple(params[k].shape) != (C, m):
            raise ValueError(f"params[{k!r}] has shape {tuple(params[k].shape)}, expected {(C, m)}")
    for k in ("a0", "b0"):
        if tuple(params[k].shape) != (C,):
            raise ValueError(f"params[{k!r}] has shape {tuple(params[k].shape)}, expected {(C,)}")
    return C


# ----------------------------------------------------------------------------- the data

def chapter_data(dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The chapter's 12 training points, x equally spaced on [−1.1, 1.1] (spacing 0.2).

    Slopes of the polyline through them: 0.5, 0.5, 0.5, 2, 0, −2, −0.5, 1.5, 0.5, 0.5, 0.5. So points
    0–3 and 8–11 are two runs of four collinear points (slope 0.5), and the slope changes
    (+1.5, −2, −2, +1.5, +2, −1) force three changes of convexity (convex, concave, convex, concave).
    y is centred to mean 0.
    """
    dtype = dtype or torch.get_default_dtype()
    h = 0.2
    X = torch.linspace(-1.1, 1.1, 12, dtype=dtype)
    slopes = torch.tensor([0.5, 0.5, 0.5, 2.0, 0.0, -2.0, -0.5, 1.5, 0.5, 0.5, 0.5], dtype=dtype)
    y = torch.cat([torch.zeros(1, dtype=dtype), torch.cumsum(slopes * h, 0)])
    return X, y - y.mean()


def polyline_slopes(X, y) -> torch.Tensor:
    """[n − 1]: s_k = (y_{k+1} − y_k)/(x_{k+1} − x_k)."""
    X, y = _check_data(X, y)
    return y.diff() / X.diff()


def _slope_tol(s: torch.Tensor) -> float:
    """Slopes closer than this count as equal: a few ulps of the data's dtype, relative to the slopes."""
    return 100 * torch.finfo(s.dtype).eps * (1 + float(s.abs().max()))


def collinear_runs(X, y, *, tol: float | None = None) -> list[tuple[int, int]]:
    """Maximal runs (first, last) of ≥ 3 consecutive points on one line (equal consecutive slopes within tol)."""
    s = polyline_slopes(X, y)
    tol = _slope_tol(s) if tol is None else tol
    runs, start = [], 0
    for k in range(1, len(s) + 1):
        if k == len(s) or abs(float(s[k] - s[k - 1])) > tol:
            if k - start >= 2:                      # slopes start..k−1 equal: points start..k
                runs.append((start, k))
            start = k
    return runs


def _sign_changes(values: torch.Tensor) -> int:
    signs = torch.sign(values[values != 0])
    return int((signs[1:] != signs[:-1]).sum()) if signs.numel() > 1 else 0


def min_convexity_changes(X, y, *, tol: float | None = None) -> int:
    """The fewest changes of convexity any interpolant of the data can have on (x_1, x_n).

    The slope changes d_k = s_{k+1} − s_k of the polyline: an interpolant must be strictly convex
    somewhere on (x_k, x_{k+2}) if d_k > 0 and strictly concave if d_k < 0, so it changes convexity at
    least as often as the nonzero d_k change sign; the polyline itself attains that number.
    """
    s = polyline_slopes(X, y)
    tol = _slope_tol(s) if tol is None else tol
    d = s.diff()
    d = torch.where(d.abs() > tol, d, torch.zeros_like(d))
    return _sign_changes(d)


def polyline_length(X, y) -> float:
    """Length of the polyline through the points: the shortest curve through them over [x_1, x_n]."""
    X, y = _check_data(X, y)
    return float(torch.sqrt(X.diff() ** 2 + y.diff() ** 2).sum())


# ----------------------------------------------------------------------------- a fit's shape

def evaluate(params: dict, x) -> torch.Tensor:
    """[C, G]: f_θ(x_g) for stacked params ({name: [C, ...]}) on the points x ([G])."""
    C = _check_stacked(params)
    x = _as_1d(x, "x", dtype=params["a"].dtype)
    with torch.no_grad():
        return _forward(params, x.expand(C, -1))


def _breakpoints(params: dict, lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    """([C, m + 2], [C, m + 2]): lo, every kink of f_θ inside (lo, hi) and hi, sorted (kinks outside are
    moved onto lo or hi), and f_θ there, in float64. f_θ is linear between consecutive points."""
    C = _check_stacked(params)
    if not hi > lo:
        raise ValueError(f"need lo < hi, got lo={lo}, hi={hi}")
    P = {k: params[k].detach().to(torch.float64) for k in PARAM_NAMES}
    a, b = P["a"], P["b"]
    k = torch.where(a != 0, -b / torch.where(a != 0, a, torch.ones_like(a)), torch.full_like(a, lo))
    ends = torch.tensor([lo, hi], dtype=torch.float64).expand(C, 2)
    x = torch.cat([ends, k.clamp(lo, hi)], 1).sort(1).values
    with torch.no_grad():
        return x, _forward(P, x)


def curve_length(params: dict, lo: float, hi: float) -> torch.Tensor:
    """[C]: length of the graph of f_θ over [lo, hi], ∫ √(1 + f'²) dx, exact: f_θ is piecewise linear,
    so the length is that of the polyline through its values at lo, its kinks and hi."""
    x, f = _breakpoints(params, lo, hi)
    return torch.sqrt(x.diff(dim=1) ** 2 + f.diff(dim=1) ** 2).sum(1).to(params["a"].dtype)


def line_deviation(params: dict, X, y, run: tuple[int, int]) -> torch.Tensor:
    """[C]: max |f_θ(x) − ℓ(x)| over [x_first, x_last] of a run of collinear points, ℓ their line.

    Exact: f_θ − ℓ is piecewise linear, so its largest size is at an end or at a kink."""
    X, y = _check_data(X, y)
    i, j = run
    if not (0 <= i < j < X.shape[0]):
        raise ValueError(f"run {run} is not a pair of point indices first < last within 0..{X.shape[0] - 1}")
    x, f = _breakpoints(params, float(X[i]), float(X[j]))
    xi, yi = float(X[i]), float(y[i])
    slope = (float(y[j]) - yi) / (float(X[j]) - xi)
    return (f - (yi + slope * (x - xi))).abs().max(1).values.to(params["a"].dtype)


def kink_masses(params: dict, lo: float, hi: float, *, bins: int) -> torch.Tensor:
    """[C, bins]: the slope change of f_θ in each of ``bins`` equal bins of [lo, hi].

    f'' = Σ_i c_i |a_i| δ(x − k_i), k_i = −b_i/a_i, so the slope change in a bin is the sum of c_i|a_i|
    over the units whose kink lies in it (units with a_i = 0 have no kink).
    """
    C = _check_stacked(params)
    bins = int(bins)
    if bins < 1 or not hi > lo:
        raise ValueError(f"need bins >= 1 and lo < hi, got bins={bins}, lo={lo}, hi={hi}")
    a, b, c = params["a"], params["b"], params["c"]
    has_kink = a != 0
    k = torch.where(has_kink, -b / torch.where(has_kink, a, torch.ones_like(a)), torch.full_like(a, -math.inf))
    inside = has_kink & (k >= lo) & (k < hi)
    idx = ((k - lo) / (hi - lo) * bins).floor().clamp(0, bins - 1).long()
    jump = torch.where(inside, c * a.abs(), torch.zeros_like(a))
    out = torch.zeros(C, bins, dtype=a.dtype)
    return out.scatter_add_(1, idx, jump)


def convexity_changes(params: dict, lo: float, hi: float, *, bins: int, threshold: float) -> torch.Tensor:
    """[C]: changes of convexity of f_θ on [lo, hi]: sign changes of the binned slope changes.

    Bins whose slope change is at most ``threshold`` in size are treated as straight (their kinks are too
    small to matter); the count is the number of sign changes along the remaining bins.
    """
    m = kink_masses(params, lo, hi, bins=bins)
    m = torch.where(m.abs() > threshold, m, torch.zeros_like(m))
    return torch.tensor([_sign_changes(row) for row in m])


def kink_count(params: dict, lo: float, hi: float, *, bins: int, threshold: float) -> torch.Tensor:
    """[C]: number of bins of [lo, hi] in which the slope of f_θ changes by more than ``threshold``."""
    m = kink_masses(params, lo, hi, bins=bins)
    return (m.abs() > threshold).sum(1)


# ----------------------------------------------------------------------------- the paper's R

def paper_R_relu(params: dict, X) -> torch.Tensor:
    """[C]: R = Σ_{i,j} [σ(a_i x_j + b_i)² + c_i²(1 + x_j²)·1{a_i x_j + b_i > 0}] + Σ_j (1 + x_j²).

    Written from the paper's formula with plain loops over data points (no nblib closed form), so that it
    can be compared with nblib's reg = (1/n) Σ_j ‖∇_θ f(x_j)‖² (expected: reg = R/n).
    """
    _check_stacked(params)
    X = _as_1d(X, "X", dtype=params["a"].dtype)
    a, b, c = params["a"], params["b"], params["c"]
    total = torch.zeros(a.shape[0], dtype=a.dtype)
    for x in X:
        pre = a * x + b
        total = total + (torch.relu(pre) ** 2 + c ** 2 * (1 + x ** 2) * (pre > 0)).sum(1) + (1 + x ** 2)
    return total


# ----------------------------------------------------------------------------- initialization

def init_replicates(width: int, per_seed: int, seeds, *, scale_ab: float, scale_c: float,
                    stream: str = "init", dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Stacked params for ``per_seed`` initializations of every replicate seed, in seed order: chains
    [i·per_seed, (i + 1)·per_seed) are ``init_two_layer_relu(width, chains=per_seed, scale=scale_ab,
    scale_c=scale_c)`` drawn from a generator seeded ``substream(seeds[i], stream)``."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must be a non-empty list of integers")
    blocks = [init_two_layer_relu(width, chains=per_seed, scale=scale_ab, scale_c=scale_c, dtype=dtype,
                                  generator=torch.Generator().manual_seed(substream(s, stream)))
              for s in seeds]
    return {k: torch.cat([b[k] for b in blocks]) for k in blocks[0]}


# ----------------------------------------------------------------------------- layers frozen per chain

def inner_frozen(inner_trainable, C: int, dtype) -> dict[str, torch.Tensor]:
    """The ``trainable`` masks of nblib.label_noise_sgd that freeze the inner layer (a, b) of the chains
    where inner_trainable is 0: {"a": [C], "b": [C]}. The outer layer and the linear part always train
    (the chapter's control: the effect needs both layers trainable)."""
    t = torch.as_tensor(inner_trainable, dtype=dtype).expand(C).clone()
    if not bool(((t == 0) | (t == 1)).all()):
        raise ValueError(f"inner_trainable must hold 0 (frozen) or 1 (trainable) per chain, got {t.tolist()}")
    return {"a": t, "b": t.clone()}


def jacobian(params: dict, X, *, inner_trainable=None) -> torch.Tensor:
    """[C, n, 3m + 2]: ∇_θ f(x_j) for every chain and data point, over (a, b, c, a0, b0); the columns of
    a frozen inner layer (inner_trainable[c] = 0) are zero."""
    C = _check_stacked(params)
    X = _as_1d(X, "X", dtype=params["a"].dtype)
    pre = relu_preactivations(params, X.expand(C, -1))             # [C, n, m]
    on = (pre > 0).to(pre.dtype)
    t_in = (torch.ones(C, dtype=pre.dtype) if inner_trainable is None
            else torch.as_tensor(inner_trainable, dtype=pre.dtype).expand(C))[:, None, None]
    c = params["c"][:, None, :]
    xs = X[None, :, None].expand(C, -1, 1)
    return torch.cat([t_in * c * xs * on, t_in * c * on, torch.relu(pre), xs, torch.ones_like(xs)], 2)


def gram_eigenvalues(params: dict, X, *, inner_trainable=None) -> torch.Tensor:
    """[C, n]: eigenvalues (ascending) of the Gram matrix J Jᵀ of the trainable parameters, in float64.

    Their sum is n·reg (reg = tr(J Jᵀ)/n); label-noise SGD relaxes along eigenvalue k at the rate 2ηk/B."""
    P = {k: v.detach().to(torch.float64) for k, v in params.items()}
    J = jacobian(P, _as_1d(X, "X", dtype=torch.float64), inner_trainable=inner_trainable)
    return torch.linalg.eigvalsh(J @ J.transpose(1, 2))


def label_noise_floor(params: dict, X, *, lr: float, noise_std: float, batch_size: int,
                      inner_trainable=None) -> torch.Tensor:
    """[C]: the clean training MSE at which full-batch label-noise SGD fluctuates around an interpolant.

    Linearized at the iterate, the residual along an eigenvector of J Jᵀ (eigenvalue k) is an AR(1)
    process r ← (1 − 2ηk/B) r + (2ησk/B) z, with stationary variance λk/(1 − ηk/B), λ = ησ²/B. So the
    predicted MSE is (λ/n) Σ_k k/(1 − ηk/B): λ·reg to first order in η (needs the full batch, B = n, and
    ηk/B < 1 for every k: the step is stable). Raises ValueError when some ηk/B ≥ 1.
    """
    ev = gram_eigenvalues(params, X, inner_trainable=inner_trainable)
    n = ev.shape[1]
    if batch_size != n:
        raise ValueError(f"the floor formula is for full-batch steps: batch_size={batch_size}, n={n}")
    q = lr * ev / batch_size
    if bool((q >= 1).any()):
        raise ValueError(f"lr·k/B reaches {float(q.max()):.3g} ≥ 1: the step is unstable; lower lr")
    lam = lr * noise_std ** 2 / batch_size
    return lam * (ev / (1 - q)).sum(1) / n


def project_to_interpolant(params: dict, X, y, *, iters: int = 60, tol: float = 1e-12,
                           inner_trainable=None) -> dict[str, torch.Tensor]:
    """The nearby zero-error point, by Levenberg–Marquardt steps θ ← θ − Jᵀ(JJᵀ + μI)⁻¹(f(X) − y).

    Each step is the smallest change of the trainable tensors that removes the linearized residual,
    damped by μ (per chain: divided by 3 after a step that lowers the squared error, multiplied by 4 and
    the step refused otherwise), because a ReLU pattern can change within a step and JJᵀ is badly
    conditioned. From a point O(ε) off the zero-error manifold this lands on it (mean squared error
    below ``tol``) after moving O(ε): it removes the normal fluctuation of a label-noise iterate and
    keeps its position along the manifold to first order. A chain whose inner layer is frozen
    (inner_trainable[c] = 0) is projected with a and b fixed. Runs in float64; returns the input dtype.
    """
    with cpu_settings(1):
        return _project(params, X, y, iters, tol, inner_trainable)


def _project(params: dict, X, y, iters: int, tol: float, inner_trainable) -> dict[str, torch.Tensor]:
    C = _check_stacked(params)
    X, y = _check_data(X, y)
    dtype = params["a"].dtype
    P = {k: v.detach().to(torch.float64).clone() for k, v in params.items()}
    X, y = X.to(torch.float64), y.to(torch.float64)
    n, m = X.shape[0], P["a"].shape[1]
    eye = torch.eye(n, dtype=torch.float64)

    def error(Q):
        f = _forward(Q, X.expand(Q["a"].shape[0], -1))
        return torch.nan_to_num((f - y).pow(2).mean(1), nan=math.inf)

    t_in = (torch.ones(C, dtype=torch.float64) if inner_trainable is None
            else torch.as_tensor(inner_trainable, dtype=torch.float64).expand(C).clone())
    err = error(P)
    J = jacobian(P, X, inner_trainable=t_in)
    mu = 1e-3 * torch.diagonal(J @ J.transpose(1, 2), dim1=1, dim2=2).mean(1)
    for _ in range(int(iters)):
        act = (err > tol).nonzero().squeeze(1)      # only the chains not yet on the manifold
        if act.numel() == 0:
            break
        Pa = {k: v[act] for k, v in P.items()}
        r = _forward(Pa, X.expand(act.numel(), -1)) - y
        J = jacobian(Pa, X, inner_trainable=t_in[act])
        K = J @ J.transpose(1, 2) + mu[act, None, None] * eye
        step = (J.transpose(1, 2) @ torch.linalg.solve(K, r.unsqueeze(2))).squeeze(2)
        parts = {"a": step[:, :m], "b": step[:, m:2 * m], "c": step[:, 2 * m:3 * m],
                 "a0": step[:, 3 * m], "b0": step[:, 3 * m + 1]}
        Q = {k: Pa[k] - d for k, d in parts.items()}
        new = error(Q)
        ok = new < err[act]
        for k in parts:
            keep = ok if P[k].ndim == 1 else ok[:, None]
            P[k][act] = torch.where(keep, Q[k], Pa[k])
        err[act] = torch.where(ok, new, err[act])
        mu[act] = torch.where(ok, mu[act] / 3, mu[act] * 4)
    return {k: v.to(dtype) for k, v in _solve_outer_layer(P, X, y, tol).items()}


def _solve_outer_layer(P: dict, X: torch.Tensor, y: torch.Tensor, tol: float) -> dict[str, torch.Tensor]:
    """Last step: the exact min-norm change of (c, a0, b0) that zeroes the residual (f is linear in them).

    Where a ReLU pattern flips at a data point the Levenberg–Marquardt steps can stall at a tiny residual;
    this removes it without moving any kink. Skipped for a chain already within ``tol`` or whose fit gets worse.
    """
    C, m = P["a"].shape
    XC = X.expand(C, -1)
    r = _forward(P, XC) - y
    J = jacobian(P, X)[:, :, 2 * m:]                               # columns of c, a0, b0
    K = J @ J.transpose(1, 2)
    K = K + 1e-13 * torch.diagonal(K, dim1=1, dim2=2).mean(1)[:, None, None] * torch.eye(len(X), dtype=K.dtype)
    step = (J.transpose(1, 2) @ torch.linalg.solve(K, r.unsqueeze(2))).squeeze(2)
    Q = dict(P, c=P["c"] - step[:, :m], a0=P["a0"] - step[:, m], b0=P["b0"] - step[:, m + 1])
    err = r.pow(2).mean(1)
    better = ((_forward(Q, XC) - y).pow(2).mean(1) < err) & (err > tol)
    return {k: torch.where(better if v.ndim == 1 else better[:, None], Q[k], v) if k in ("c", "a0", "b0") else v
            for k, v in P.items()}


def flatten_records(traj_params: dict) -> dict[str, torch.Tensor]:
    """{name: [T, C, ...]} -> {name: [T·C, ...]}: every record of every chain as one stacked batch."""
    return {k: v.reshape(-1, *v.shape[2:]) for k, v in traj_params.items()}
