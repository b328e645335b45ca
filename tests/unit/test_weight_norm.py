"""Diagonal linear networks: GD, weight-normalized GD (Salimans & Kingma) and the radius-preconditioned
update, against step-by-step references; their invariants (first-order drift), the ρ = 1 limit, the exact
baselines (basis pursuit, minimum-ℓ2 interpolant), the Trajectory a run returns, divergence marking, the
stopping rules, the readers of a sweep (crossing scale, loss rate), and clear errors."""
import math

import pytest
import torch

from nblib import DivergenceError, Trajectory
from nblib.chapters.weight_norm import (basis_pursuit, by_problem, critical_alpha, crossing_scale, diagonal_net,
                               effective_scale, final_x, gd, implied_scale, log_invariant, loss_rate,
                               min_l2_interpolant, polar_step, radius, relative_error, rp_gd, safe_lr,
                               sparse_recovery_problem, steps_to_err, steps_to_tol, wn_gd, wn_step)

DT = torch.float64


def problem(P=2, M=12, N=30, s=2):
    return sparse_recovery_problem(M, N, s, range(P), dtype=DT)


def test_problem_shapes_sparsity_and_consistency():
    A, x, y = problem()
    assert A.shape == (2, 12, 30) and x.shape == (2, 30) and y.shape == (2, 12)
    assert ((x != 0).sum(-1) == 2).all()
    assert torch.allclose(y, torch.einsum("pmn,pn->pm", A, x))


def test_baselines_interpolate_and_are_minimal():
    A, x, y = problem()
    x1, x2 = basis_pursuit(A, y), min_l2_interpolant(A, y)
    for z in (x1, x2):
        assert torch.allclose(torch.einsum("pmn,pn->pm", A, z), y, atol=1e-8)
    assert (x1.abs().sum(-1) <= x2.abs().sum(-1) + 1e-8).all()
    assert (x2.norm(dim=-1) <= x1.norm(dim=-1) + 1e-10).all()
    # any other interpolant (x2 + a null-space direction) has a larger ℓ2 norm
    null = torch.linalg.svd(A[0]).Vh[-1]
    assert (x2[0] + 0.1 * null).norm() > x2[0].norm()


def test_effective_scale_is_alpha_at_init_and_invariant_formula():
    u = torch.full((3, 5), 0.4, dtype=DT)
    for L in (2, 3, 4):
        assert torch.allclose(effective_scale(u, u, L), u)
    r = (2 * 5 * 0.16) ** 0.5
    lam = torch.tensor([3.0, 3.0, 3.0], dtype=DT)
    I = log_invariant(u, u, 2, "rp", ratio=lam).exp()
    assert torch.allclose(I, torch.full_like(u, 0.4 * r ** 2))
    J = log_invariant(u, u, 2, "wn", ratio=lam, r0=r)             # log α − log r₀ + λ/2 at the start
    assert torch.allclose(J, torch.full_like(u, math.log(0.4 / r) + 1.5))
    assert torch.allclose(log_invariant(u, u, 3, "gd").exp(), u)
    with pytest.raises(ValueError, match="needs ratio and r0"):
        log_invariant(u, u, 2, "wn", ratio=lam)
    with pytest.raises(ValueError, match="method"):
        log_invariant(u, u, 2, "adam")


def test_implied_scale_keeps_the_invariant_constant():
    """log I(a(t), r) = log I(α, r₀) for the a(t) that implied_scale gives at radius r."""
    alpha, lam, r0 = 0.1, 4.0, 0.1 * 10 ** 0.5
    for r in (0.5 * r0, 2 * r0):
        a = {m: math.log(float(implied_scale(alpha, r, m, ratio=lam, r0=r0))) for m in ("gd", "rp", "wn")}
        la = math.log(alpha)
        assert a["gd"] == pytest.approx(la)
        assert a["rp"] + (lam - 1) * math.log(r) == pytest.approx(la + (lam - 1) * math.log(r0))
        assert a["wn"] - math.log(r) + lam * r ** 2 / (2 * r0 ** 2) == pytest.approx(la - math.log(r0) + lam / 2)


def test_plain_gd_depth2_uv_drift_vanishes_with_the_step():
    """u'v' = uv(1 − 4η²g²): at a fixed time the drift of √(uv) is O(η)."""
    A, x, y = problem()
    lr = safe_lr(A, x, 0.3, 2)
    a = gd(A, y, alpha=0.3, lr=lr, steps=300, record_every=300, stop_at="never").metrics["drift"][-1].max()
    b = gd(A, y, alpha=0.3, lr=lr / 2, steps=600, record_every=600, stop_at="never").metrics["drift"][-1].max()
    assert 1.8 < a / b < 2.2, (a, b)


@pytest.mark.parametrize("method", [rp_gd, wn_gd])
@pytest.mark.parametrize("depth", [2, 3])
def test_invariant_drift_vanishes_with_the_step(depth, method):
    """a_i r^{ρ−1} (rp) and a_i e^{λr²/2r₀²}/r (wn) are conserved by the flows: the discrete drift at a fixed
    time halves with the step."""
    A, x, y = problem()
    lr = 0.3 * safe_lr(A, x, 0.2, depth)
    a = method(A, y, alpha=0.2, depth=depth, lr=lr, ratio=5.0, steps=300, record_every=300, stop_at="never")
    b = method(A, y, alpha=0.2, depth=depth, lr=lr / 2, ratio=5.0, steps=600, record_every=600, stop_at="never")
    da, db = a.metrics["drift"][-1].max(), b.metrics["drift"][-1].max()
    assert db < da and 1.6 < da / db < 2.5, (da, db)


def test_wn_direction_norm_grows_exactly_by_the_orthogonal_step():
    """q' = q − η_q ∇_q L with ∇_q L ⟂ q: ‖q'‖² = ‖q‖² + η_q² ‖∇_q L‖² (so ‖q‖ is conserved by the flow)."""
    g0 = torch.Generator().manual_seed(1)
    g, q = torch.rand(3, 1, generator=g0, dtype=DT) + 0.5, torch.randn(3, 7, generator=g0, dtype=DT)
    gw = torch.randn(3, 7, generator=g0, dtype=DT)
    lr, lam = torch.full((3, 1), 0.05, dtype=DT), torch.full((3, 1), 4.0, dtype=DT)
    g2, q2 = wn_step(g, q, gw, lr, lam)
    dq = (q - q2) / (lam * lr)                                     # ∇_q L
    assert torch.allclose((dq * q).sum(-1), torch.zeros(3, dtype=DT), atol=1e-12)
    assert torch.allclose((q2 ** 2).sum(-1), (q ** 2).sum(-1) + ((lam * lr) ** 2 * dq ** 2).sum(-1))
    s = q / q.norm(dim=-1, keepdim=True)
    assert torch.allclose(g2, g - lr * (s * gw).sum(-1, keepdim=True))
    # ∇_q L is the chain rule through w = g q/‖q‖: for L(w) = ⟨gw, w⟩, ⟨∇_q L, δ⟩ = dL/dε along q + εδ
    eps = 1e-6
    w = lambda g_, q_: g_ * q_ / q_.norm(dim=-1, keepdim=True)  # noqa: E731
    fd = ((w(g, q + eps * gw) - w(g, q - eps * gw)) * gw).sum(-1) / (2 * eps)
    assert torch.allclose(fd, (dq * gw).sum(-1), atol=1e-8)


def test_wn_run_records_the_growth_of_the_direction():
    A, x, y = problem()
    run = wn_gd(A, y, alpha=0.1, lr=safe_lr(A, x, 0.1, 2), ratio=10.0, steps=400, stop_at="never")
    dn = run.metrics["direction_norm"]
    assert torch.all(dn[0] == 1) and torch.all(dn.diff(dim=0) >= -1e-12) and torch.all(dn[-1] > 1)
    assert torch.isnan(wn_gd(A, y, alpha=0.1, lr=0.01, ratio=2.0, granularity="separate", steps=5,
                             stop_at="never").metrics["drift"]).all()


def test_ratio_one_reproduces_gd_to_first_order():
    A, x, y = problem()
    lr = safe_lr(A, x, 0.2, 2)
    gaps = []
    for k in (1, 2, 4):
        g = gd(A, y, alpha=0.2, lr=lr / k, steps=200 * k, stop_at="never")
        w = rp_gd(A, y, alpha=0.2, lr=lr / k, ratio=1.0, steps=200 * k, stop_at="never")
        gaps.append(float((final_x(g) - final_x(w)).norm() / final_x(g).norm()))
    assert gaps[0] < 1e-2
    assert 1.6 < gaps[0] / gaps[1] < 2.5 and 1.6 < gaps[1] / gaps[2] < 2.5, gaps


def test_single_polar_step_matches_gd_step_when_ratio_is_one():
    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(1, 1, 6, generator=g, dtype=DT) + 0.5, torch.rand(1, 1, 6, generator=g, dtype=DT) + 0.5
    gu, gv = torch.randn(1, 1, 6, generator=g, dtype=DT), torch.randn(1, 1, 6, generator=g, dtype=DT)
    for eta in (1e-3, 1e-4):
        u2, v2 = polar_step(u, v, gu, gv, torch.tensor(eta, dtype=DT), torch.tensor(1.0, dtype=DT))
        err = torch.cat([u2 - (u - eta * gu), v2 - (v - eta * gv)]).abs().max()
        assert err < 10 * eta ** 2


def test_batched_runs_are_independent():
    A, x, y = problem(P=3)
    alphas = torch.tensor([0.05, 0.2], dtype=DT)
    lr = safe_lr(A, x, alphas, 2)
    for method in (wn_gd, rp_gd):
        both = method(A, y, alpha=alphas, lr=0.3 * lr, ratio=4.0, steps=150, stop_at="never")
        one = method(A[1:2], y[1:2], alpha=0.2, lr=0.3 * lr[1:2, 1:2], ratio=4.0, steps=150, stop_at="never")
        assert torch.allclose(final_x(both)[1, 1], final_x(one)[0, 0], atol=1e-12)


def test_small_alpha_gd_approaches_min_l1_and_large_alpha_min_l2():
    A, x, y = problem(P=2, M=15, N=30, s=2)
    alphas = torch.tensor([0.01, 3.0], dtype=DT)
    run = gd(A, y, alpha=alphas, lr=safe_lr(A, x, alphas, 2), steps=20000, tol=1e-14)
    x1, x2, x = basis_pursuit(A, y), min_l2_interpolant(A, y), final_x(run)
    assert (relative_error(x[:, 0], x1) < 0.5 * relative_error(x[:, 0], x2)).all()
    assert (relative_error(x[:, 1], x2) < 0.5 * relative_error(x[:, 1], x1)).all()
    assert (steps_to_tol(run)[:, 1] > 0).all()


def test_a_run_is_a_trajectory_of_p_times_k_chains():
    """C = P·K chains, problem-major (c = p·K + k); every recorded series is [T, C]."""
    A, x, y = problem(P=3)
    alphas = torch.tensor([0.05, 0.2], dtype=DT)
    run = rp_gd(A, y, alpha=alphas, lr=0.3 * safe_lr(A, x, alphas, 2), ratio=4.0, steps=230, record_every=100,
                stop_at="never")
    assert isinstance(run, Trajectory) and run.chains == 6
    assert run.steps.tolist() == [0, 100, 200, 230]
    assert run.params["u"].shape == run.params["v"].shape == (4, 6, 30)
    assert run.loss.shape == (4, 6) and run.reg is None
    assert {k: tuple(v.shape) for k, v in run.metrics.items()} == {
        "radius": (4, 6), "drift": (4, 6), "steps_to_tol": (4, 6), "diverged": (4, 6), "direction_norm": (4, 6)}
    assert run.config["steps_run"] == 230 and run.config["seconds"] > 0
    assert run.config["method"] == "rp" and run.config["problems"] == 3 and run.config["runs"] == 2
    assert run.config["alpha"].tolist() == [0.05, 0.2] * 3 and run.config["ratio"].tolist() == [4.0] * 6
    u, v = run.params["u"][:, 2 * 1 + 1], run.params["v"][:, 2 * 1 + 1]      # problem 1, setting 1
    assert torch.equal(run.metrics["radius"][:, 3], radius(u, v))
    assert torch.equal(by_problem(run, "radius")[:, 1, 1], radius(u, v))
    assert torch.equal(final_x(run)[1, 1], diagonal_net(u[-1], v[-1], 2))
    assert torch.equal(run.params["u"][0], torch.full((6, 30), 0.05, dtype=DT).index_fill(
        0, torch.tensor([1, 3, 5]), 0.2))
    assert torch.equal(by_problem(run, "loss")[:, 2], run.loss[:, 4:6])
    assert (steps_to_tol(run) == -1).all()                       # 230 steps do not reach 1e-10


def test_steps_to_tol_is_the_first_step_below_tol():
    A, x, y = problem(P=1)
    run = gd(A, y, alpha=1.0, lr=safe_lr(A, x, 1.0, 2), steps=5000, tol=1e-6, record_every=1)
    hit = int(steps_to_tol(run)[0, 0])
    assert hit == int(run.steps[-1])                            # the run stopped there
    assert float(run.loss[-1, 0]) <= 1e-6 < float(run.loss[-2, 0])
    assert (run.metrics["steps_to_tol"][:-1] == -1).all()


def test_critical_alpha_and_net():
    x = torch.tensor([[4.0, 0.0, -1.0, 0.0]], dtype=DT)
    assert torch.allclose(critical_alpha(x, 4, 2), torch.tensor([(5 / 8) ** 0.5], dtype=DT))
    u, v = torch.tensor([2.0], dtype=DT), torch.tensor([1.0], dtype=DT)
    assert float(diagonal_net(u, v, 3)) == 7.0


def test_errors_are_clear():
    A, x, y = problem()
    with pytest.raises(ValueError, match="depth"):
        gd(A, y, alpha=0.1, depth=1, lr=0.01, steps=10)
    with pytest.raises(ValueError, match="lr"):
        gd(A, y, alpha=0.1, lr=-1.0, steps=10)
    with pytest.raises(ValueError, match="alpha"):
        gd(A, y, alpha=float("nan"), lr=0.01, steps=10)
    with pytest.raises(ValueError, match="do not match"):
        gd(A, y[:, :5], alpha=0.1, lr=0.01, steps=10)
    with pytest.raises(ValueError, match="steps"):
        wn_gd(A, y, alpha=0.1, lr=0.01, ratio=2.0, steps=0)
    with pytest.raises(ValueError, match="sparsity"):
        sparse_recovery_problem(5, 10, 11, [0])
    with pytest.raises(DivergenceError, match=r"lr=50.*lower lr"):
        gd(A, y, alpha=1.0, lr=50.0, steps=200)
    with pytest.raises(DivergenceError, match="lower lr"):
        rp_gd(A, y, alpha=1.0, lr=50.0, ratio=2.0, steps=200)
    with pytest.raises(DivergenceError, match="lower lr"):
        wn_gd(A, y, alpha=1.0, lr=50.0, ratio=2.0, steps=200)
    with pytest.raises(ValueError, match="granularity"):
        wn_gd(A, y, alpha=0.1, lr=0.01, ratio=2.0, steps=5, granularity="per-coordinate")
    with pytest.raises(ValueError, match="stop_at"):
        gd(A, y, alpha=0.1, lr=0.01, steps=5, stop_at="never!")
    with pytest.raises(ValueError, match="x_star and err_tol"):
        gd(A, y, alpha=0.1, lr=0.01, steps=5, stop_at="error")
    with pytest.raises(ValueError, match="on_divergence"):
        gd(A, y, alpha=0.1, lr=0.01, steps=5, on_divergence="ignore")
    with pytest.raises(ValueError, match="no reconstruction error"):
        steps_to_err(gd(A, y, alpha=0.1, lr=0.01, steps=5))


def _reference_run(A, y, alpha, lr, ratio, depth, steps, method="gd", granularity="joint"):
    """GD, rp or WN written out step by step for one problem and one setting, u and v apart."""
    N = A.shape[1]
    u = torch.full((N,), alpha, dtype=DT)
    v = u.clone()
    blocks = [slice(0, 2 * N)] if granularity == "joint" else [slice(0, N), slice(N, 2 * N)]
    q = torch.cat([u, v])
    g = [q[b].norm() for b in blocks]
    for _ in range(steps):
        if method == "wn":
            w = torch.cat([g[j] * q[b] / q[b].norm() for j, b in enumerate(blocks)])
            u, v = w[:N], w[N:]
        G = A.T @ (A @ (u ** depth - v ** depth) - y)
        gu, gv = depth * u ** (depth - 1) * G, -depth * v ** (depth - 1) * G
        if method == "gd":
            u, v = u - lr * gu, v - lr * gv
        elif method == "rp":
            r = torch.sqrt((u ** 2).sum() + (v ** 2).sum())
            zu, zv = u / r, v / r
            dLdr = (zu * gu).sum() + (zv * gv).sum()
            eta_z = ratio * lr / r ** 2                              # step on z, whose gradient is r ∇_w L
            zu, zv = zu - eta_z * r * (gu - dLdr * zu), zv - eta_z * r * (gv - dLdr * zv)
            nz = torch.sqrt((zu ** 2).sum() + (zv ** 2).sum())
            r = r - lr * dLdr
            u, v = r * zu / nz, r * zv / nz
        else:                                                        # Salimans & Kingma, per block
            gw = torch.cat([gu, gv])
            q_new = q.clone()
            for j, b in enumerate(blocks):
                nq = q[b].norm()
                s = q[b] / nq
                dg = (s * gw[b]).sum()
                q_new[b] = q[b] - ratio * lr * (g[j] / nq) * (gw[b] - dg * s)
                g[j] = g[j] - lr * dg
            q = q_new
    if method == "wn":
        w = torch.cat([g[j] * q[b] / q[b].norm() for j, b in enumerate(blocks)])
        u, v = w[:N], w[N:]
    return u ** depth - v ** depth


@pytest.mark.parametrize("depth", [2, 3])
def test_batched_runs_match_a_step_by_step_reference(depth):
    A, x, y = problem(P=2)
    alphas = torch.tensor([0.1, 0.3], dtype=DT)
    lr = 0.3 * safe_lr(A, x, alphas, depth)
    cases = [("gd", "joint", lambda **kw: gd(A, y, **kw)),
             ("rp", "joint", lambda **kw: rp_gd(A, y, ratio=4.0, **kw)),
             ("wn", "joint", lambda **kw: wn_gd(A, y, ratio=4.0, **kw)),
             ("wn", "separate", lambda **kw: wn_gd(A, y, ratio=4.0, granularity="separate", **kw))]
    for method, granularity, train in cases:
        run = train(alpha=alphas, depth=depth, lr=lr, steps=300, stop_at="never")
        for p in range(2):
            for k in range(2):
                ref = _reference_run(A[p], y[p], float(alphas[k]), lr[p, k], 4.0, depth, 300, method, granularity)
                assert torch.allclose(final_x(run)[p, k], ref, rtol=1e-9, atol=1e-12), (method, granularity, p, k)


def test_marked_divergence_freezes_only_that_run():
    """A step far beyond stability diverges; with on_divergence="mark" the other runs are what they would be alone."""
    A, x, y = problem(P=2)
    lr = safe_lr(A, x, 0.2, 2)
    lrs = torch.cat([lr, 500 * lr], dim=1)                          # [P, 2]: a good and a hopeless step
    for train in (gd, lambda *a, **kw: wn_gd(*a, ratio=3.0, **kw), lambda *a, **kw: rp_gd(*a, ratio=3.0, **kw)):
        run = train(A, y, alpha=0.2, lr=lrs, steps=200, stop_at="never", on_divergence="mark")
        alone = train(A, y, alpha=0.2, lr=lr, steps=200, stop_at="never")
        assert by_problem(run, "diverged")[-1].tolist() == [[False, True], [False, True]]
        assert torch.allclose(final_x(run)[:, 0], final_x(alone)[:, 0], atol=1e-12)
        assert torch.isfinite(run.loss).all() and (steps_to_tol(run)[:, 1] == -1).all()


def test_stop_at_error_records_the_first_step_within_err_tol():
    A, x, y = problem(P=2)
    x = basis_pursuit(A, y)                                          # where small-α GD goes
    run = gd(A, y, alpha=0.001, lr=safe_lr(A, x, 0.001, 2), steps=20000, x_star=x, err_tol=0.1,
             stop_at="error", record_every=1)
    hit = steps_to_err(run)
    assert (hit > 0).all() and int(run.steps[-1]) == int(hit.max())
    err = by_problem(run, "error")                                   # [T, P, 1]
    for p in range(2):
        t = int(hit[p, 0])
        assert float(err[t, p, 0]) <= 0.1 < float(err[t - 1, p, 0])
    assert torch.allclose(err[-1], relative_error(final_x(run), x[:, None]))


def test_loss_rate_fits_an_exponential_exactly():
    t = torch.arange(0, 500, 5)
    loss = torch.stack([3.0 * torch.exp(-0.02 * t), 1e-3 * torch.exp(-0.05 * t)], dim=-1)
    kappa, r2, n = loss_rate(t, loss, 1e-12, 1e-2)
    assert torch.allclose(kappa, torch.tensor([0.02, 0.05], dtype=DT)) and torch.allclose(r2, torch.ones(2, dtype=DT))
    assert (n > 3).all()
    plateau = torch.cat([torch.full((50,), 1e-3), 1e-3 * torch.exp(-0.1 * torch.arange(1, 51))])
    assert float(loss_rate(torch.arange(100), plateau, 1e-12, 1e-2)[1]) < 0.9   # not one straight line
    kappa, r2, n = loss_rate(t, torch.full((len(t),), 1.0), 1e-12, 1e-2)      # never in the window
    assert torch.isnan(kappa) and torch.isnan(r2) and int(n) == 0
    with pytest.raises(ValueError, match="lo < hi"):
        loss_rate(t, loss, 1e-2, 1e-3)


def test_crossing_scale_interpolates_log_error_in_log_alpha():
    alphas = torch.tensor([0.01, 0.03, 0.1, 0.3, 1.0], dtype=DT)
    err = 0.5 * alphas ** 2                                    # a power law: the interpolation is exact
    assert torch.allclose(crossing_scale(alphas, err, 0.02), torch.tensor(0.2, dtype=DT))
    # a crossing between grid points is not snapped to either of them
    two = torch.stack([err, 2 * err])
    out = crossing_scale(alphas, two, 0.02)
    assert out.shape == (2,)
    assert torch.allclose(out, torch.tensor([0.2, 0.2 / 2 ** 0.5], dtype=DT))
    # linear in log-log between the bracketing points only: a jump beyond them does not matter
    kink = torch.tensor([1e-4, 1e-3, 1e-1, 0.9, 0.9], dtype=DT)
    assert torch.allclose(crossing_scale(alphas, kink, 1e-2), torch.tensor(0.03 * (10 / 3) ** 0.5, dtype=DT))
    # the first crossing counts, and err at the level is still "near"
    back = torch.tensor([1e-3, 0.2, 1e-3, 0.2, 0.2], dtype=DT)
    assert float(crossing_scale(alphas, back, 0.05)) < 0.03
    assert float(crossing_scale(alphas, torch.full((5,), 0.05, dtype=DT), 0.05)) == float("inf")
    # last=True: the crossing after the largest point below the level (a curve that starts above it)
    late = torch.tensor([0.5, 0.5, 1e-3, 0.02, 0.5], dtype=DT)
    assert torch.isnan(crossing_scale(alphas, late, 0.05))
    out = crossing_scale(alphas, late, 0.05, last=True)
    assert 0.3 < float(out) < 1.0
    assert torch.isnan(crossing_scale(alphas, torch.full((5,), 0.5, dtype=DT), 0.05, last=True))
    assert torch.isinf(crossing_scale(alphas, torch.tensor([0.5, 0.01, 0.01, 0.01, 0.01], dtype=DT), 0.05, last=True))


def test_crossing_scale_edges_and_errors():
    alphas = torch.tensor([0.1, 1.0], dtype=DT)
    assert torch.isnan(crossing_scale(alphas, torch.tensor([0.5, 0.6], dtype=DT), 0.1))
    assert torch.isinf(crossing_scale(alphas, torch.tensor([0.0, 0.01], dtype=DT), 0.1))
    with pytest.raises(ValueError, match="increasing"):
        crossing_scale(torch.tensor([1.0, 0.1]), torch.tensor([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="one value per alpha"):
        crossing_scale(alphas, torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="level"):
        crossing_scale(alphas, torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="finite"):
        crossing_scale(alphas, torch.tensor([0.0, float("nan")]), 0.5)
