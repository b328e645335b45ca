"""Sparse recovery with a diagonal linear network: plain GD against weight-normalized GD (Chou, Rauhut, Ward).

    y = A x*,  A ∈ R^{M×N},  x* s-sparse,  L(x) = ½‖Ax − y‖²,  x = u^{⊙L} − v^{⊙L},  u₀ = v₀ = α·1.

Plain GD on w = (u, v):   w ← w − η ∇_w L.
Weight-normalized GD (WN-GD) on the polar coordinates w = r·z, ‖z‖ = 1:

    r ← r − η_r ∂L/∂r,           ∂L/∂r = ⟨z, ∇_w L⟩
    z ← normalize(z − η_z P_z ∇_z L),   ∇_z L = r ∇_w L,   P_z = I − z zᵀ
    η_z = ρ η_r / r²                     (ρ: the learning-rate ratio; ρ = 1 is plain GD to first order in η)

The flow conserves, coordinate by coordinate, a_i(w)·r^{ρ−1} where a_i is the *effective scale*

    L = 2:  a_i = √(u_i v_i)            L > 2:  a_i = ((u_i^{2−L} + v_i^{2−L})/2)^{1/(2−L)}

(a_i = α at the start). So a growing radius shrinks the effective initialization by (r₀/r)^{ρ−1}.
This is the book's reconstruction of "gradient descent on polar coordinates" (the paper's abstract), not the
paper's stated algorithm.

Every run is batched: P problems (A: [P, M, N], y: [P, M]; seeds, sparsities) times K runs on each (α's,
step sizes, ratios: [K] or [P, K]) advance as one tensor computation, x: [P, K, N], so that each step is
one batched matrix product x Aᵀ per problem. ``gd`` and ``wn_gd`` return a ``Trajectory`` whose
C = P·K chains are the (problem, setting) pairs, flattened problem-major (c = p·K + k), recorded at
t = 0, record_every, 2·record_every, ... and the last step:

    params   {"u": [T, C, N], "v": [T, C, N]}   (the final x is u^{⊙L} − v^{⊙L} of the last record)
    loss     [T, C]  ½‖Ax − y‖²
    metrics  {"radius": [T, C] r = ‖(u, v)‖,
              "drift": [T, C] max_i |I_i(t)/I_i(0) − 1| of the invariant I = a·r^{ρ−1} (ρ = 1 for GD),
              "steps_to_tol": [T, C] (int64) the first step with loss ≤ tol so far (−1: not yet)}
    config   {"method": "gd" | "wn_gd", "depth", "problems": P, "runs": K, "alpha": [C], "lr": [C],
              "ratio": [C] or None, "tol", "steps"}

``final_x`` [P, K, N], ``by_problem`` [T, P, K] and ``steps_to_tol`` [P, K] give them back per problem;
``crossing_scale`` reads off a sweep the largest α at which an error stays below a level, interpolated
between the grid points.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .runtime import cpu_settings
from .trajectory import HUGE, DivergenceError, Trajectory

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


def wn_invariant(u, v, depth: int, ratio) -> torch.Tensor:
    """I_i = a_i · r^{ρ−1}: conserved by the WN flow (ρ = 1: a_i itself, conserved by plain gradient flow).
    u, v: [..., N]; ratio: a number or [...]; returns [..., N]."""
    rho = torch.as_tensor(ratio, dtype=u.dtype)
    return effective_scale(u, v, depth) * (radius(u, v) ** (rho - 1)).unsqueeze(-1)


def critical_alpha(x, N: int, depth: int) -> torch.Tensor:
    """α_c = √(Σ_i |x_i|^{2/L} / (2N)): below it the radius must grow (‖w₀‖² = 2Nα² < ‖w_∞‖²) and WN shrinks the
    effective scale by (r₀/r_∞)^{ρ−1}; above it the radius shrinks and WN *enlarges* it."""
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


# ----------------------------------------------------------------------------- training


def _gradient(A, At, y1, w, L):
    """loss ½‖Ax − y‖² [P, K] and ∇_w L at w = (u, v) [P, K, 2N]; g = Aᵀ(Ax − y) as one matrix product per
    problem (At = Aᵀ, y1 = y[:, None]): ∇_u L = L u^{L−1} g, ∇_v L = −L v^{L−1} g."""
    N = A.shape[-1]
    u, v = w[..., :N], w[..., N:]
    x = u * u - v * v if L == 2 else u ** L - v ** L
    res = torch.bmm(x, At) - y1                                      # [P, K, M]
    g = torch.bmm(res, A)                                            # [P, K, N]
    dw = L * w if L == 2 else L * w ** (L - 1)
    return 0.5 * (res * res).sum(-1), dw * torch.cat([g, -g], -1)


def _polar_step_w(w, gw, lr, ratio_lr):
    """``polar_step`` on w = (u, v) [..., 2N] with gradient gw; lr, ratio_lr = ρ·lr: [..., 1]."""
    r = torch.linalg.vector_norm(w, dim=-1, keepdim=True)
    z = w / r
    dLdr = (z * gw).sum(-1, keepdim=True)
    z = z - (ratio_lr / r) * (gw - dLdr * z)
    nz = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    r = r - lr * dLdr
    if bool((r <= 0).any()):
        raise DivergenceError("the radius became non-positive, the step on it overshot: lower lr (now at "
                              f"most {float(torch.as_tensor(lr).max()):.3g})")
    return (r / nz) * z


def polar_step(u, v, gu, gv, lr, ratio):
    """One WN-GD step on w = (u, v) = r z (lr, ratio: [..., 1]):

        r' = r − η ⟨z, ∇_w L⟩,    z' = normalize(z − (ρη/r²) · r (∇_w L − ⟨z, ∇_w L⟩ z)).
    """
    N = u.shape[-1]
    lr = torch.as_tensor(lr, dtype=u.dtype)
    w = _polar_step_w(torch.cat([u, v], -1), torch.cat([gu, gv], -1), lr, torch.as_tensor(ratio) * lr)
    return w[..., :N], w[..., N:]


def _check_loss(loss, t, lr, alpha):
    """DivergenceError naming lr if a run's loss is non-finite or above HUGE."""
    bad = ~torch.isfinite(loss) | (loss > HUGE)
    if bool(bad.any()):
        p, k = bad.nonzero()[0].tolist()
        raise DivergenceError(f"run (problem {p}, setting {k}) diverged at step {t} (loss "
                              f"{float(loss[p, k]):.3g}, lr={float(lr[p, k]):.3g}, "
                              f"alpha={float(alpha[p, k]):.3g}); lower lr")


def _train(A, y, *, alpha, depth, lr, ratio, steps, tol, record_every, stop_at_tol) -> Trajectory:
    """Checks, then the loop behind ``gd`` (ratio None) and ``wn_gd`` under ``cpu_settings``; returns
    the Trajectory described in the module docstring."""
    A, y = _as_batch(A, y)
    P = A.shape[0]
    L = _depth(depth)
    dt = A.dtype
    alpha = _per_run(alpha, P, "alpha", dt)
    lr = _per_run(lr, P, "lr", dt)
    rho = None if ratio is None else _per_run(ratio, P, "ratio", dt)
    K = max(alpha.shape[1], lr.shape[1], 1 if rho is None else rho.shape[1])
    try:
        alpha, lr = alpha.expand(P, K), lr.expand(P, K)
        rho = None if rho is None else rho.expand(P, K)
    except RuntimeError:
        raise ValueError(f"alpha, lr and ratio must have one common number of runs K; got "
                         f"{alpha.shape[1]}, {lr.shape[1]}, {None if rho is None else rho.shape[1]}") from None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (isinstance(record_every, int) and record_every >= 1):
        raise ValueError(f"record_every must be a positive integer, got {record_every!r}")
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    with cpu_settings(threads=1):
        rec = _loop(A, y, alpha, lr, rho, L, steps, tol, record_every, stop_at_tol)
    t, us, vs, losses, radii, drifts, hits = rec
    C = P * K

    def flat(xs):
        return torch.stack(xs).reshape(len(xs), C, *xs[0].shape[2:])

    config = {"method": "gd" if rho is None else "wn_gd", "depth": L, "problems": P, "runs": K,
              "alpha": alpha.reshape(C), "lr": lr.reshape(C), "ratio": None if rho is None else rho.reshape(C),
              "tol": tol, "steps": steps}
    return Trajectory(steps=torch.tensor(t), params={"u": flat(us), "v": flat(vs)}, loss=flat(losses),
                      reg=None, metrics={"radius": flat(radii), "drift": flat(drifts), "steps_to_tol": flat(hits)},
                      config=config)


def _loop(A, y, alpha, lr, rho, L, steps, tol, record_every, stop_at_tol):
    P, _, N = A.shape
    K = alpha.shape[1]
    w = alpha.unsqueeze(-1).expand(P, K, 2 * N).clone()             # w = (u, v), u = v = α
    At, y1 = A.transpose(1, 2).contiguous(), y.unsqueeze(1)
    rho_rec = torch.ones(P, K, dtype=A.dtype) if rho is None else rho
    eta = lr.unsqueeze(-1)
    ratio_lr = None if rho is None else rho.unsqueeze(-1) * eta
    I0 = wn_invariant(w[..., :N], w[..., N:], L, rho_rec)
    hit = torch.full((P, K), -1, dtype=torch.long)
    pending = torch.ones(P, K, dtype=torch.bool)                     # runs not yet at loss ≤ tol
    done = False
    rec_t, rec_u, rec_v, rec_loss, rec_r, rec_drift, rec_hit = [], [], [], [], [], [], []

    for t in range(steps + 1):
        loss, gw = _gradient(A, At, y1, w, L)
        if not float(loss.max()) <= HUGE:                           # NaN, inf or huge somewhere
            _check_loss(loss, t, lr, alpha)
        if not done and float(torch.where(pending, loss, math.inf).min()) <= tol:
            newly = pending & (loss <= tol)
            hit = torch.where(newly, t, hit)
            pending = pending & ~newly
            done = stop_at_tol and not bool(pending.any())
        if t % record_every == 0 or t == steps or done:
            u, v = w[..., :N], w[..., N:]
            rec_t.append(t)
            rec_u.append(u)
            rec_v.append(v)
            rec_loss.append(loss)
            rec_r.append(radius(u, v))
            rec_drift.append((wn_invariant(u, v, L, rho_rec) / I0 - 1).abs().amax(-1))
            rec_hit.append(hit)
        if t == steps or done:
            break
        if rho is None:                                   # plain GD on w = (u, v)
            w = w - eta * gw
        else:                                             # GD on the polar coordinates (r, z)
            w = _polar_step_w(w, gw, eta, ratio_lr)
    return rec_t, rec_u, rec_v, rec_loss, rec_r, rec_drift, rec_hit


def gd(A, y, *, alpha, depth: int = 2, lr, steps: int, tol: float = 1e-10, record_every: int = 100,
       stop_at_tol: bool = True) -> Trajectory:
    """Plain GD on x = u^L − v^L from u = v = α: K settings (α, lr: numbers, [K] or [P, K]) on each of P problems.

    Stops when every run has loss ½‖Ax − y‖² ≤ tol (unless stop_at_tol=False) or after ``steps``.
    Returns a Trajectory over C = P·K chains (see the module docstring); raises DivergenceError
    (naming lr)."""
    return _train(A, y, alpha=alpha, depth=depth, lr=lr, ratio=None, steps=steps, tol=tol,
                  record_every=record_every, stop_at_tol=stop_at_tol)


def wn_gd(A, y, *, alpha, depth: int = 2, lr, ratio, steps: int, tol: float = 1e-10, record_every: int = 100,
          stop_at_tol: bool = True) -> Trajectory:
    """Weight-normalized GD: GD on the radius r (step lr) and on the direction z (step ρ·lr/r², renormalized).

    ratio = ρ: a number, [K] or [P, K]. Same stopping rule and result as ``gd``."""
    return _train(A, y, alpha=alpha, depth=depth, lr=lr, ratio=ratio, steps=steps, tol=tol,
                  record_every=record_every, stop_at_tol=stop_at_tol)


# ----------------------------------------------------------------------------- reading a run


def _shape(run):
    return run.config["problems"], run.config["runs"]


def by_problem(run, name: str) -> torch.Tensor:
    """A recorded series as [T, P, K]: ``name`` is "loss" or a metric ("radius", "drift", "steps_to_tol")."""
    values = run.loss if name == "loss" else run.metrics[name]
    return values.reshape(values.shape[0], *_shape(run))


def final_x(run) -> torch.Tensor:
    """The network's x = u^{⊙L} − v^{⊙L} at the end of the run, [P, K, N]."""
    u, v = run.final()["u"], run.final()["v"]
    return diagonal_net(u, v, run.config["depth"]).reshape(*_shape(run), u.shape[-1])


def steps_to_tol(run) -> torch.Tensor:
    """[P, K]: the first step at which the loss was ≤ tol (−1 where it never was)."""
    return by_problem(run, "steps_to_tol")[-1]


# ----------------------------------------------------------------------------- reading a sweep


def crossing_scale(alphas, err, level: float) -> torch.Tensor:
    """The largest α up to which ``err`` stays ≤ ``level``, interpolated between the grid points.

    alphas: [K] increasing and positive; err: [..., K] (one error curve per leading index). At the first grid
    point where err exceeds ``level``, log err is interpolated linearly in log α between that point and the one
    before it, and the α where it equals ``level`` is returned: [...]. NaN where err exceeds ``level`` already at
    the first α (no scale of the grid is near); +inf where it never does (the crossing lies beyond the grid).
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
    first = above.to(torch.int64).argmax(-1)                       # first index above the level (0 if none)
    i1 = first.clamp_min(1)
    le = e.clamp_min(1e-300).log()
    la = a.log()
    e0, e1 = le.gather(-1, (i1 - 1).unsqueeze(-1)).squeeze(-1), le.gather(-1, i1.unsqueeze(-1)).squeeze(-1)
    t = (math.log(level) - e0) / (e1 - e0)
    out = torch.exp(la[i1 - 1] + t * (la[i1] - la[i1 - 1]))
    out = torch.where(above.any(-1), out, torch.full_like(out, math.inf))
    return torch.where(above[..., 0], torch.full_like(out, math.nan), out)
