"""Sparse recovery with a diagonal linear network: GD, weight-normalized GD and a radius-preconditioned GD.

    y = A x*,  A ∈ R^{M×N},  x* s-sparse,  L(x) = ½‖Ax − y‖²,  x = u^{⊙L} − v^{⊙L},  u₀ = v₀ = α·1,
    trained on w = (u, v) ∈ R^{2N}.

Three updates, the step rules of one loop (``STEP_RULES``; names as in ``Trajectory.config["method"]``):

    gd   plain GD               w ← w − η ∇_w L
    wn   weight normalization   w = g·q/‖q‖ (Salimans & Kingma 2016), g₀ = ‖w₀‖, q₀ = w₀, constant steps
                                g ← g − η ⟨s, ∇_w L⟩,  q ← q − λη (g/‖q‖)(I − ssᵀ)∇_w L,  s = q/‖q‖;
                                λ = η_q/η_g the learning-rate ratio; granularity "joint" (one (g, q) for
                                w = (u, v)) or "separate" (one for u, one for v)
    rp   radius-preconditioned  w = r z: r ← r − η ⟨z, ∇_w L⟩, z ← normalize(z − (ρη/r²) P_z ∇_z L)

As flows all three read ẇ = −η_t ∇L − (η_r − η_t) s sᵀ∇L (s = w/‖w‖) with a radial rate η_r and a
tangential rate η_t: gd η_t = η_r = η; rp η_r = η, η_t = ρη; wn (joint; ‖q‖ = r₀ is conserved) η_r = η,
η_t = λη r²/r₀². Along such a flow log a_i − ∫ (1 − η_t/η_r) d log r is constant, where a_i is the
*effective scale*

    L = 2:  a_i = √(u_i v_i)            L > 2:  a_i = ((u_i^{2−L} + v_i^{2−L})/2)^{1/(2−L)}

(a_i = α at the start); the conserved quantities are a_i (gd), a_i r^{ρ−1} (rp) and a_i e^{λr²/(2r₀²)}/r
(wn). ``log_invariant`` computes them and ``implied_scale`` the effective scale they imply. The rp update is
this book's own variant, kept beside standard weight normalization for comparison.

Every run is batched: P problems (A: [P, M, N], y: [P, M]; seeds, sparsities) times K runs on each (α's,
step sizes, ratios: [K] or [P, K]) advance as one tensor computation, x: [P, K, N], so that each step is
one batched matrix product x Aᵀ per problem. ``gd``, ``wn_gd`` and ``rp_gd`` return a ``Trajectory`` whose
C = P·K chains are the (problem, setting) pairs, flattened problem-major (c = p·K + k), recorded at
t = 0, record_every, 2·record_every, ... and the last step:

    params   {"u": [T, C, N], "v": [T, C, N]}   (the final x is u^{⊙L} − v^{⊙L} of the last record)
    loss     [T, C]  ½‖Ax − y‖²
    metrics  {"radius": [T, C] r = ‖(u, v)‖,
              "drift": [T, C] max_i |ln I_i(t) − ln I_i(0)| of the method's invariant (NaN: wn, "separate"),
              "steps_to_tol": [T, C] (int64) the first step with loss ≤ tol so far (−1: not yet),
              "diverged": [T, C] (bool, on_divergence="mark"), "direction_norm": [T, C] ‖q‖/‖q₀‖ (wn; 1 else),
              with x_star: "error" [T, C] ‖x − x*‖/‖x*‖ and "steps_to_err" [T, C] the first step ≤ err_tol}
    config   {"method", "depth", "problems": P, "runs": K, "alpha": [C], "lr": [C], "ratio": [C] or None,
              "granularity", "tol", "err_tol", "steps", "steps_run", "seconds" (wall time of the loop)}

``final_x`` [P, K, N], ``by_problem`` [T, P, K] and ``steps_to_tol`` [P, K] give them back per problem;
``crossing_scale`` reads off a sweep the largest α at which an error stays below a level, interpolated
between the grid points; ``loss_rate`` fits the linear rate of a loss curve.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..core.runtime import cpu_settings
from ..core.trajectory import HUGE, DivergenceError, Trajectory


# ----------------------------------------------------------------------------- input checks


def _as_batch(A, y, dtype=None):
    """A: [P, M, N] (or [M, N]), y: [P, M] (or [M]); finite, matching. Returns batched tensors."""
    A = torch.as_tensor(A, dtype=dtype)
    y = torch.as_tensor(y, dtype=A.dtype)
    if A.ndim == 2:
        A = A.unsqueeze(0)
    if y.ndim == 1:
        y = y.unsqueeze(0)
    if A.ndim != 3 or y.ndim != 2:
        raise ValueError(f"A must be [P, M, N] or [M, N] and y [P, M] or [M]; got {tuple(A.shape)}, {tuple(y.shape)}")
    if not A.is_floating_point():
        raise ValueError(f"A must be a floating tensor, got dtype {A.dtype}")
    if A.shape[0] != y.shape[0] or A.shape[1] != y.shape[1]:
        raise ValueError(f"A {tuple(A.shape)} and y {tuple(y.shape)} do not match: need A [P, M, N], y [P, M]")
    if not (torch.isfinite(A).all() and torch.isfinite(y).all()):
        raise ValueError("A or y contains NaN or infinite values")
    return A, y


def _per_run(value, P, name, dtype):
    """A positive number, K numbers (one per run of every problem) or [P, K] numbers, as a [P, K] tensor."""
    t = torch.as_tensor(value, dtype=dtype)
    if t.ndim == 0:
        t = t.reshape(1, 1)
    if t.ndim == 1:
        t = t.unsqueeze(0)
    if t.ndim != 2 or t.shape[0] not in (1, P):
        raise ValueError(f"{name} must be a number, [K] or [P={P}, K]; got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t <= 0).any():
        raise ValueError(f"{name} must be positive and finite; got {t.tolist()}")
    return t.expand(P, t.shape[1])


def _depth(depth):
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 2:
        raise ValueError(f"depth must be an integer >= 2, got {depth!r}")
    return depth


# ----------------------------------------------------------------------------- the problem


def sparse_recovery_problem(M: int, N: int, s, seeds, *, dtype=torch.float64):
    """R = len(seeds) problems: A_ij ~ N(0, 1/M), x* with s nonzeros ±(1 + U[0, 1]) on a random support.

    ``s`` is one sparsity or one per seed. Returns A [P, M, N], x* [P, N], y = A x* [P, M] (P = len(seeds)).
    """
    seeds = list(seeds)
    ss = [s] * len(seeds) if isinstance(s, int) else list(s)
    if not seeds or len(ss) != len(seeds):
        raise ValueError(f"need at least one seed and one sparsity per seed; got {len(seeds)} seeds, s={s!r}")
    if not (isinstance(M, int) and isinstance(N, int) and 1 <= M and 1 <= N):
        raise ValueError(f"M and N must be positive integers, got M={M!r}, N={N!r}")
    if any(not isinstance(k, int) or k < 1 or k > N for k in ss):
        raise ValueError(f"every sparsity must be an integer in [1, N={N}], got {ss}")
    As, xs = [], []
    for seed, k in zip(seeds, ss):
        g = torch.Generator().manual_seed(int(seed))
        As.append(torch.randn(M, N, generator=g, dtype=dtype) / math.sqrt(M))
        x = torch.zeros(N, dtype=dtype)
        support = torch.randperm(N, generator=g)[:k]
        signs = torch.randint(0, 2, (k,), generator=g).to(dtype) * 2 - 1
        x[support] = signs * (1 + torch.rand(k, generator=g, dtype=dtype))
        xs.append(x)
    A, x_star = torch.stack(As), torch.stack(xs)
    return A, x_star, torch.einsum("rmn,rn->rm", A, x_star)


def basis_pursuit(A, y) -> torch.Tensor:
    """The minimum-ℓ1 interpolant argmin ‖x‖₁ s.t. Ax = y, exactly, as a linear program (scipy HiGHS).

    x = p − q with p, q ≥ 0: minimize 1ᵀp + 1ᵀq subject to A p − A q = y. Batched: [P, N].
    """
    from scipy.optimize import linprog

    A, y = _as_batch(A, y)
    out = []
    for Ar, yr in zip(A.detach().cpu().double().numpy(), y.detach().cpu().double().numpy()):
        N = Ar.shape[1]
        res = linprog(np.ones(2 * N), A_eq=np.hstack([Ar, -Ar]), b_eq=yr, bounds=(0, None), method="highs")
        if res.status != 0:
            raise ValueError(f"basis pursuit failed: {res.message}")
        out.append(res.x[:N] - res.x[N:])
    return torch.as_tensor(np.stack(out), dtype=A.dtype)


def min_l2_interpolant(A, y) -> torch.Tensor:
    """argmin ‖x‖₂ s.t. Ax = y: x = A⁺ y (A of full row rank). Batched: [P, N]."""
    A, y = _as_batch(A, y)
    return (torch.linalg.pinv(A) @ y.unsqueeze(-1)).squeeze(-1)


def relative_error(x, x_ref) -> torch.Tensor:
    """‖x − x_ref‖ / ‖x_ref‖ per run."""
    return torch.linalg.vector_norm(x - x_ref, dim=-1) / torch.linalg.vector_norm(x_ref, dim=-1)


# ----------------------------------------------------------------------------- the network and its invariants


def diagonal_net(u, v, depth: int) -> torch.Tensor:
    """x = u^{⊙L} − v^{⊙L}."""
    L = _depth(depth)
    return u ** L - v ** L


def effective_scale(u, v, depth: int) -> torch.Tensor:
    """a_i: √(u_i v_i) for L = 2, ((u_i^{2−L} + v_i^{2−L})/2)^{1/(2−L)} for L > 2 (= α at u = v = α)."""
    L = _depth(depth)
    if L == 2:
        return torch.sqrt(u * v)
    return ((u ** (2 - L) + v ** (2 - L)) / 2) ** (1.0 / (2 - L))


def radius(u, v) -> torch.Tensor:
    """r = ‖(u, v)‖₂ per run."""
    return torch.sqrt((u ** 2).sum(-1) + (v ** 2).sum(-1))


METHODS = ("gd", "wn", "rp")


def _method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return method


def _last_axis(value, dtype):
    """A number or a [...] tensor, broadcastable against [..., N]."""
    t = torch.as_tensor(value, dtype=dtype)
    return t.unsqueeze(-1) if t.ndim else t


def log_invariant(u, v, depth: int, method: str, *, ratio=None, r0=None) -> torch.Tensor:
    """log I_i of the quantity the method's gradient flow conserves, coordinate by coordinate: [..., N].

        gd:  log a_i                                  (I = a_i)
        rp:  log a_i + (ρ − 1) log r                  (I = a_i r^{ρ−1}, ratio = ρ)
        wn:  log a_i − log r + λ r² / (2 r₀²)         (I = a_i e^{λr²/2r₀²}/r, ratio = λ, r0 = ‖w₀‖)

    (wn: one (g, q) for the whole of w = (u, v)). ratio and r0: numbers or [...]."""
    _method(method)
    la = effective_scale(u, v, depth).log()
    if method == "gd":
        return la
    if ratio is None or (method == "wn" and r0 is None):
        raise ValueError(f"the {method} invariant needs ratio" + (" and r0" if method == "wn" else ""))
    lam = _last_axis(ratio, u.dtype)
    r = radius(u, v).unsqueeze(-1)
    if method == "rp":
        return la + (lam - 1) * r.log()
    return la - r.log() + lam * r ** 2 / (2 * _last_axis(r0, u.dtype) ** 2)


def implied_scale(alpha, r, method: str, *, ratio=None, r0=None) -> torch.Tensor:
    """The effective scale a(t) the invariant implies from a(0) = α, radius r₀ → r (elementwise):

        gd: α;   rp: α (r₀/r)^{ρ−1};   wn: α (r/r₀) exp(−λ (r² − r₀²) / (2 r₀²))."""
    _method(method)
    alpha, r = torch.as_tensor(alpha, dtype=torch.float64), torch.as_tensor(r, dtype=torch.float64)
    if method == "gd":
        return alpha * torch.ones_like(r)
    r0 = torch.as_tensor(r0, dtype=torch.float64)
    if method == "rp":
        return alpha * (r0 / r) ** (ratio - 1)
    return alpha * (r / r0) * torch.exp(-ratio * (r ** 2 - r0 ** 2) / (2 * r0 ** 2))


def critical_alpha(x, N: int, depth: int) -> torch.Tensor:
    """α_c = √(Σ_i |x_i|^{2/L} / (2N)): below it the radius must grow on the way to an interpolant with small
    products (‖w₀‖² = 2Nα² < ‖w_∞‖² ≈ Σ_i |x_i|^{2/L}), and the WN and rp invariants shrink the effective
    scale; above it the radius shrinks and they enlarge it."""
    L = _depth(depth)
    return torch.sqrt((x.abs() ** (2.0 / L)).sum(-1) / (2 * N))


def safe_lr(A, x_star, alpha, depth: int, *, factor: float = 1.0) -> torch.Tensor:
    """A step of ``factor``/λ̂ with λ̂ ≥ λ_max of the Hessian of L in w = (u, v) all along a run that ends near x*:

        λ_max ≲ L² ‖A‖₂² · 2 B^{2L−2},   B = max(α, ‖x*‖_∞^{1/L}) (the largest |u_i|, |v_i| expected),
    so factor = 1 is half of the stability limit 2/λ̂.  A: [P, M, N], x*: [P, N], α: [K] or [P, K] → [P, K]."""
    L = _depth(depth)
    A = torch.as_tensor(A)
    opnorm2 = torch.linalg.matrix_norm(A, ord=2) ** 2
    alpha = _per_run(alpha, A.shape[0], "alpha", A.dtype)
    B = torch.maximum(alpha, (x_star.abs().amax(-1) ** (1.0 / L)).unsqueeze(-1))
    return factor / (L ** 2 * opnorm2.unsqueeze(-1) * 2 * B ** (2 * L - 2))


# ----------------------------------------------------------------------------- the three updates


def _gradient(A, At, y1, w, L):
    """x [P, K, N], loss ½‖Ax − y‖² [P, K] and ∇_w L at w = (u, v) [P, K, 2N]; g = Aᵀ(Ax − y) as one matrix
    product per problem (At = Aᵀ, y1 = y[:, None]): ∇_u L = L u^{L−1} g, ∇_v L = −L v^{L−1} g."""
    N = A.shape[-1]
    u, v = w[..., :N], w[..., N:]
    x = u * u - v * v if L == 2 else u ** L - v ** L
    res = torch.bmm(x, At) - y1                                      # [P, K, M]
    g = torch.bmm(res, A)                                            # [P, K, N]
    dw = L * w if L == 2 else L * w ** (L - 1)
    return x, 0.5 * (res * res).sum(-1), dw * torch.cat([g, -g], -1)


def _polar_step_w(w, gw, lr, ratio_lr, strict=True):
    """``polar_step`` on w = (u, v) [..., 2N] with gradient gw; lr, ratio_lr = ρ·lr: [..., 1].
    A non-positive new radius raises DivergenceError (strict) or makes that run NaN."""
    r = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    z = w / r
    dLdr = (z * gw).sum(-1, keepdim=True)
    z = z - (ratio_lr / r) * (gw - dLdr * z)
    nz = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    r = r - lr * dLdr
    if bool((r <= 0).any()):
        if strict:
            raise DivergenceError("the radius became non-positive, the step on it overshot: lower lr (now at "
                                  f"most {float(torch.as_tensor(lr).max()):.3g})")
        r = r.masked_fill(r <= 0, math.nan)
    return (r / nz) * z


def polar_step(u, v, gu, gv, lr, ratio):
    """One radius-preconditioned step on w = (u, v) = r z (lr, ratio: [..., 1]):

        r' = r − η ⟨z, ∇_w L⟩,    z' = normalize(z − (ρη/r²) · r (∇_w L − ⟨z, ∇_w L⟩ z)).
    """
    N = u.shape[-1]
    lr = torch.as_tensor(lr, dtype=u.dtype)
    w = _polar_step_w(torch.cat([u, v], -1), torch.cat([gu, gv], -1), lr, torch.as_tensor(ratio) * lr)
    return w[..., :N], w[..., N:]


def wn_step(g, q, gw, lr, ratio):
    """One weight-normalization step on w = g·q/‖q‖ (per block: g [..., 1], q [..., n], gw = ∇_w L [..., n]):

        s = q/‖q‖,   g' = g − η ⟨s, ∇_w L⟩,   q' = q − λη (g/‖q‖)(I − s sᵀ) ∇_w L     (λ = ratio)

    (∇_g L = ⟨s, ∇_w L⟩ and ∇_q L = (g/‖q‖)(I − s sᵀ)∇_w L, Salimans & Kingma 2016). lr, ratio: [..., 1]."""
    nq = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    s = q / nq
    dg = (s * gw).sum(-1, keepdim=True)
    return g - lr * dg, q - (ratio * lr) * (g / nq) * (gw - dg * s)


class _Rule:
    """A method as a step rule: its state (a tuple of tensors), the weights w = (u, v) [P, K, 2N] it
    gives, and one step from ∇_w L. GD and RP keep w itself; WN keeps (g, q) per block."""

    def __init__(self, w0, lr, ratio, granularity, strict):
        self.strict = strict
        self.eta = lr.unsqueeze(-1)                                  # [P, K, 1]
        self.lam = None if ratio is None else ratio.unsqueeze(-1)
        P, K, D = w0.shape
        self.blocks = (P, K, 1, D) if granularity == "joint" else (P, K, 2, D // 2)
        self.state = (w0.clone(),)

    def weights(self, state=None):
        return (self.state if state is None else state)[0]

    def direction_norm(self):
        """max over blocks of ‖q‖/‖q₀‖ (1 but for wn): [P, K]."""
        return torch.ones(self.blocks[:2], dtype=self.eta.dtype)


class GDRule(_Rule):
    """gd: w ← w − η ∇_w L."""

    def step(self, gw):
        return (self.state[0] - self.eta * gw,)


class RPRule(_Rule):
    """rp: the radius-preconditioned step (``polar_step``), ratio ρ."""

    def step(self, gw):
        return (_polar_step_w(self.state[0], gw, self.eta, self.lam * self.eta, self.strict),)


class WNRule(_Rule):
    """wn: weight normalization w = g·q/‖q‖ per block (``wn_step``), g₀ = ‖w₀‖, q₀ = w₀, ratio λ."""

    def __init__(self, w0, lr, ratio, granularity, strict):
        super().__init__(w0, lr, ratio, granularity, strict)
        q = w0.reshape(self.blocks).clone()
        self.state = (torch.linalg.vector_norm(q, dim=-1, keepdim=True), q)
        self.q0 = self.state[0].clone()

    def weights(self, state=None):
        g, q = self.state if state is None else state
        return (g * q / torch.linalg.vector_norm(q, dim=-1, keepdim=True)).reshape(self.blocks[:2] + (-1,))

    def direction_norm(self):
        return (torch.linalg.vector_norm(self.state[1], dim=-1, keepdim=True) / self.q0).amax((-2, -1))

    def step(self, gw):
        g, q = self.state
        return wn_step(g, q, gw.reshape(self.blocks), self.eta.unsqueeze(-1), self.lam.unsqueeze(-1))


STEP_RULES = {"gd": GDRule, "wn": WNRule, "rp": RPRule}


def _check_loss(loss, t, lr, alpha):
    """DivergenceError naming lr if a run's loss is non-finite or above HUGE."""
    bad = ~torch.isfinite(loss) | (loss > HUGE)
    if bool(bad.any()):
        p, k = bad.nonzero()[0].tolist()
        raise DivergenceError(f"run (problem {p}, setting {k}) diverged at step {t} (loss "
                              f"{float(loss[p, k]):.3g}, lr={float(lr[p, k]):.3g}, "
                              f"alpha={float(alpha[p, k]):.3g}); lower lr")


def _common_runs(P, **values):
    """Expand [P, K_i] settings (None passes through) to one common K."""
    K = max(v.shape[1] for v in values.values() if v is not None)
    try:
        return K, {k: None if v is None else v.expand(P, K) for k, v in values.items()}
    except RuntimeError:
        shapes = {k: None if v is None else v.shape[1] for k, v in values.items()}
        raise ValueError(f"alpha, lr and ratio must have one common number of runs K; got {shapes}") from None


def _train(A, y, *, method, alpha, depth, lr, ratio, granularity, steps, tol, record_every, stop_at,
           x_star, err_tol, on_divergence) -> Trajectory:
    """Checks, then the loop behind ``gd``, ``wn_gd`` and ``rp_gd`` under ``cpu_settings``; returns
    the Trajectory described in the module docstring."""
    A, y = _as_batch(A, y)
    P, N, dt = A.shape[0], A.shape[-1], A.dtype
    L = _depth(depth)
    K, s = _common_runs(P, alpha=_per_run(alpha, P, "alpha", dt), lr=_per_run(lr, P, "lr", dt),
                        ratio=None if method == "gd" else _per_run(ratio, P, "ratio", dt))
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(record_every, int) and record_every >= 1):
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if granularity not in ("joint", "separate"):
        raise ValueError(f"granularity must be 'joint' or 'separate', got {granularity!r}")
    if stop_at not in ("loss", "error", "never"):
        raise ValueError(f"stop_at must be 'loss', 'error' or 'never', got {stop_at!r}")
    if on_divergence not in ("raise", "mark"):
        raise ValueError(f"on_divergence must be 'raise' or 'mark', got {on_divergence!r}")
    if (x_star is None) != (err_tol is None) or (stop_at == "error" and x_star is None):
        raise ValueError("x_star and err_tol go together, and stop_at='error' needs both")
    if x_star is not None:
        x_star = torch.as_tensor(x_star, dtype=dt).reshape(P, 1, N)
        if not (isinstance(err_tol, (int, float)) and err_tol > 0):
            raise ValueError(f"err_tol must be a positive number, got {err_tol!r}")
    w0 = s["alpha"].unsqueeze(-1).expand(P, K, 2 * N)                # w₀ = (u₀, v₀) = α·1
    stepper = STEP_RULES[method](w0, s["lr"], s["ratio"], granularity, on_divergence == "raise")
    inv = dict(ratio=s["ratio"], r0=s["alpha"] * math.sqrt(2 * N))
    invariant = (None if method == "wn" and granularity == "separate" else
                 lambda w: log_invariant(w[..., :N], w[..., N:], L, method, **inv))
    with cpu_settings(threads=1):
        t0 = time.perf_counter()
        rec = _loop(A, y, stepper, invariant, s, L, steps, tol, record_every, stop_at, x_star, err_tol)
        seconds = time.perf_counter() - t0
    C = P * K
    flat = {k: torch.stack(v).reshape(len(v), C, *v[0].shape[2:]) for k, v in rec.items() if k != "t" and v}
    config = {"method": method, "depth": L, "problems": P, "runs": K, "alpha": s["alpha"].reshape(C),
              "lr": s["lr"].reshape(C), "ratio": None if method == "gd" else s["ratio"].reshape(C),
              "granularity": granularity if method == "wn" else None, "tol": tol, "err_tol": err_tol,
              "steps": steps, "steps_run": rec["t"][-1], "seconds": seconds}
    metrics = {k: flat[k] for k in ("radius", "drift", "steps_to_tol", "diverged", "direction_norm")}
    if x_star is not None:
        metrics.update(error=flat["error"], steps_to_err=flat["steps_to_err"])
    return Trajectory(steps=torch.tensor(rec["t"]), params={"u": flat["u"], "v": flat["v"]},
                      loss=flat["loss"], reg=None, metrics=metrics, config=config)


def _first_hit(hit, reached, t):
    return torch.where((hit < 0) & reached, t, hit)


def _loop(A, y, stepper, invariant, s, L, steps, tol, record_every, stop_at, x_star, err_tol):
    P, _, N = A.shape
    K = s["alpha"].shape[1]
    At, y1 = A.transpose(1, 2).contiguous(), y.unsqueeze(1)
    I0 = None if invariant is None else invariant(stepper.weights())
    hit = torch.full((P, K), -1, dtype=torch.long)
    hit_err = hit.clone()
    diverged = torch.zeros(P, K, dtype=torch.bool)
    rec = {k: [] for k in ("t", "u", "v", "loss", "radius", "drift", "steps_to_tol", "diverged",
                           "direction_norm", "error", "steps_to_err")}
    prev = stepper.state
    for t in range(steps + 1):
        w = stepper.weights()
        x, loss, gw = _gradient(A, At, y1, w, L)
        if not float(loss.max()) <= HUGE:                           # NaN, inf or huge somewhere
            if stepper.strict:
                _check_loss(loss, t, s["lr"], s["alpha"])
            diverged = diverged | ~(loss <= HUGE)                   # freeze those runs at their last state
            stepper.state = tuple(torch.where(diverged.view(P, K, *[1] * (a.ndim - 2)), b, a)
                                  for a, b in zip(stepper.state, prev))
            w = stepper.weights()
            x, loss, gw = _gradient(A, At, y1, w, L)
        ok = ~diverged
        hit = _first_hit(hit, ok & (loss <= tol), t)
        err = None
        if x_star is not None:
            err = torch.linalg.vector_norm(x - x_star, dim=-1) / torch.linalg.vector_norm(x_star, dim=-1)
            hit_err = _first_hit(hit_err, ok & (err <= err_tol), t)
        target = {"loss": hit, "error": hit_err, "never": None}[stop_at]
        done = target is not None and bool(((target >= 0) | diverged).all())
        if t % record_every == 0 or t == steps or done:
            u, v = w[..., :N], w[..., N:]
            rec["t"].append(t)
            rec["u"].append(u)
            rec["v"].append(v)
            rec["loss"].append(loss)
            rec["radius"].append(radius(u, v))
            rec["drift"].append(torch.full((P, K), math.nan, dtype=A.dtype) if invariant is None else
                                (invariant(w) - I0).abs().amax(-1))
            rec["steps_to_tol"].append(hit)
            rec["diverged"].append(diverged)
            rec["direction_norm"].append(stepper.direction_norm())
            if err is not None:
                rec["error"].append(err)
                rec["steps_to_err"].append(hit_err)
        if t == steps or done:
            break
        prev = stepper.state
        new = stepper.step(gw)
        if bool(diverged.any()):
            new = tuple(torch.where(diverged.view(P, K, *[1] * (a.ndim - 2)), b, a)
                        for a, b in zip(new, stepper.state))
        stepper.state = new
    return rec


_RUN_DOC = """
    K settings (alpha, lr, ratio: numbers, [K] or [P, K]) on each of P problems, from u = v = α.
    Stops (stop_at) when every run has loss ½‖Ax − y‖² ≤ tol ("loss", the default), or reconstruction error
    ‖x − x*‖/‖x*‖ ≤ err_tol ("error", needs x_star [P, N] and err_tol), or has diverged; "never": after
    ``steps``. A diverging run raises DivergenceError naming lr (on_divergence="raise"), or is frozen at its
    last finite state and flagged in metrics["diverged"] ("mark"). Returns a Trajectory over C = P·K chains
    (see the module docstring)."""


def gd(A, y, *, alpha, depth: int = 2, lr, steps: int, tol: float = 1e-10, record_every: int = 100,
       stop_at: str = "loss", x_star=None, err_tol=None, on_divergence: str = "raise") -> Trajectory:
    return _train(A, y, method="gd", alpha=alpha, depth=depth, lr=lr, ratio=None, granularity="joint",
                  steps=steps, tol=tol, record_every=record_every, stop_at=stop_at, x_star=x_star,
                  err_tol=err_tol, on_divergence=on_divergence)


def wn_gd(A, y, *, alpha, depth: int = 2, lr, ratio, granularity: str = "joint", steps: int,
          tol: float = 1e-10, record_every: int = 100, stop_at: str = "loss", x_star=None, err_tol=None,
          on_divergence: str = "raise") -> Trajectory:
    return _train(A, y, method="wn", alpha=alpha, depth=depth, lr=lr, ratio=ratio, granularity=granularity,
                  steps=steps, tol=tol, record_every=record_every, stop_at=stop_at, x_star=x_star,
                  err_tol=err_tol, on_divergence=on_divergence)


def rp_gd(A, y, *, alpha, depth: int = 2, lr, ratio, steps: int, tol: float = 1e-10, record_every: int = 100,
          stop_at: str = "loss", x_star=None, err_tol=None, on_divergence: str = "raise") -> Trajectory:
    return _train(A, y, method="rp", alpha=alpha, depth=depth, lr=lr, ratio=ratio, granularity="joint",
                  steps=steps, tol=tol, record_every=record_every, stop_at=stop_at, x_star=x_star,
                  err_tol=err_tol, on_divergence=on_divergence)


gd.__doc__ = "Plain GD on w = (u, v): w ← w − η ∇_w L (lr = η)." + _RUN_DOC
wn_gd.__doc__ = ("Weight-normalized GD: w = g·q/‖q‖ (g₀ = ‖w₀‖, q₀ = w₀), g ← g − η ∂L/∂g, q ← q − λη ∇_q L\n"
                 "    (lr = η, ratio = λ); granularity 'joint' (one (g, q) for w = (u, v)) or 'separate' (one for u,\n"
                 "    one for v; no coordinatewise invariant: metrics['drift'] is NaN)." + _RUN_DOC)
rp_gd.__doc__ = ("Radius-preconditioned GD: GD on the radius r (step lr) and on the direction z (step ρ·lr/r²,\n"
                 "    renormalized); ratio = ρ." + _RUN_DOC)


# ----------------------------------------------------------------------------- reading a run


def _shape(run):
    return run.config["problems"], run.config["runs"]


def by_problem(run, name: str) -> torch.Tensor:
    """A recorded series as [T, P, K]: ``name`` is "loss" or a metric ("radius", "drift", "steps_to_tol",
    "diverged", "direction_norm", "error", "steps_to_err")."""
    values = run.loss if name == "loss" else run.metrics[name]
    return values.reshape(values.shape[0], *_shape(run))


def final_x(run) -> torch.Tensor:
    """The network's x = u^{⊙L} − v^{⊙L} at the end of the run, [P, K, N]."""
    u, v = run.final()["u"], run.final()["v"]
    return diagonal_net(u, v, run.config["depth"]).reshape(*_shape(run), u.shape[-1])


def steps_to_tol(run) -> torch.Tensor:
    """[P, K]: the first step at which the loss was ≤ tol (−1 where it never was)."""
    return by_problem(run, "steps_to_tol")[-1]


def steps_to_err(run) -> torch.Tensor:
    """[P, K]: the first step at which ‖x − x*‖/‖x*‖ was ≤ err_tol (−1 where it never was or the run diverged)."""
    if "steps_to_err" not in run.metrics:
        raise ValueError("the run has no reconstruction error: pass x_star and err_tol")
    return by_problem(run, "steps_to_err")[-1]


def loss_rate(steps, loss, lo: float, hi: float):
    """Fit ln loss_t = c − κ t by least squares over the records with lo ≤ loss_t ≤ hi, run by run.

    steps: [T]; loss: [T, ...]. Returns (κ, R², n) each [...]: the rate per step (the loss falls as e^{−κt}:
    linear convergence), the coefficient of determination of the straight line in (t, ln loss), and the
    number of records in the window. κ and R² are NaN where fewer than 3 records lie in the window."""
    if not (0 < lo < hi):
        raise ValueError(f"need 0 < lo < hi, got lo={lo!r}, hi={hi!r}")
    loss = torch.as_tensor(loss, dtype=torch.float64)
    t = torch.as_tensor(steps, dtype=torch.float64).reshape(-1, *[1] * (loss.ndim - 1)).expand_as(loss)
    m = ((loss >= lo) & (loss <= hi)).double()
    n = m.sum(0)
    ln = loss.clamp_min(1e-300).log()
    tm, lm = (m * t).sum(0) / n, (m * ln).sum(0) / n
    stt = (m * (t - tm) ** 2).sum(0)
    slope = (m * (t - tm) * (ln - lm)).sum(0) / stt
    resid = (m * (ln - lm - slope * (t - tm)) ** 2).sum(0)
    r2 = 1 - resid / (m * (ln - lm) ** 2).sum(0)
    few = n < 3
    return (-slope).masked_fill(few, math.nan), r2.masked_fill(few, math.nan), n.long()


# ----------------------------------------------------------------------------- reading a sweep


def crossing_scale(alphas, err, level: float, *, last: bool = False) -> torch.Tensor:
    """The largest α up to which ``err`` stays ≤ ``level``, interpolated between the grid points.

    alphas: [K] increasing and positive; err: [..., K] (one error curve per leading index). At the first grid
    point where err exceeds ``level``, log err is interpolated linearly in log α between that point and the one
    before it, and the α where it equals ``level`` is returned: [...]. NaN where err exceeds ``level`` already at
    the first α (no scale of the grid is near); +inf where it never does (the crossing lies beyond the grid).
    last=True: the crossing after the *largest* grid point with err ≤ level instead (for curves that start
    above the level, e.g. runs that have not left a saddle at the smallest α); NaN where no point is ≤ level.
    """
    a = torch.as_tensor(alphas, dtype=torch.float64)
    e = torch.as_tensor(err, dtype=torch.float64)
    if a.ndim != 1 or a.numel() < 2 or not bool((a > 0).all()) or not bool((a.diff() > 0).all()):
        raise ValueError(f"alphas must be at least two increasing positive numbers, got {a.tolist()}")
    if e.shape[-1:] != a.shape:
        raise ValueError(f"err must end with one value per alpha ({a.numel()}), got shape {tuple(e.shape)}")
    if not (isinstance(level, (int, float)) and level > 0):
        raise ValueError(f"level must be a positive number, got {level!r}")
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError("err must be finite and non-negative")
    above = e > level
    if last:                                                       # mask everything up to the last point below
        below = ~above
        idx = torch.arange(a.numel())
        last_below = torch.where(below, idx, -1).amax(-1, keepdim=True)
        above = above & (idx > last_below)
        above = torch.where(last_below >= 0, above, torch.ones_like(above))
    first = above.to(torch.int64).argmax(-1)                       # first index above the level (0 if none)
    i1 = first.clamp_min(1)
    le = e.clamp_min(1e-300).log()
    la = a.log()
    e0, e1 = le.gather(-1, (i1 - 1).unsqueeze(-1)).squeeze(-1), le.gather(-1, i1.unsqueeze(-1)).squeeze(-1)
    t = (math.log(level) - e0) / (e1 - e0)
    out = torch.exp(la[i1 - 1] + t * (la[i1] - la[i1 - 1]))
    out = torch.where(above.any(-1), out, torch.full_like(out, math.inf))
    return torch.where(above[..., 0], torch.full_like(out, math.nan), out)
