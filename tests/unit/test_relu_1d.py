"""nblib.relu_1d: closed forms vs autograd (gradients, reg, the paper's R, reg's gradient), frozen layers,
the shape measurements (kinks, convexity changes, lengths, lines), the projection, and clear errors."""
import pytest
import torch
from torch.func import grad, vmap

import nblib
from nblib import relu_1d as R
from nblib.models import two_layer_relu

DT = torch.float64
MASKS = [(1.0, 1.0), (0.0, 1.0), (1.0, 0.0)]


def stacked(width=7, chains=3, seed=0, t_in=1.0, t_out=1.0):
    P = R.init_chains(width, chains, scale_ab=1.0, scale_c=0.7, seed=seed, dtype=DT)
    P["a0"] += 0.3
    P["b0"] -= 0.2
    return R.with_trainable(P, t_in, t_out)


def data():
    return R.chapter_data(DT)


def autograd_grads(P, X):
    """{name: [C, n, ...]}: ∇θ f(x_j) by torch.func, chain by chain."""
    return vmap(vmap(grad(R.masked_relu), in_dims=(None, 0)), in_dims=(0, None))(P, X)


@pytest.mark.parametrize("t_in,t_out", MASKS)
def test_masked_vjp_matches_autograd(t_in, t_out):
    P, (X, _) = stacked(t_in=t_in, t_out=t_out), data()
    r = torch.randn(3, len(X), generator=torch.Generator().manual_seed(1), dtype=DT)
    g = autograd_grads(P, X)
    vjp = R.masked_relu.closed_form.vjp(P, X.expand(3, -1), r)
    for k in P:
        expected = torch.einsum("cn,cn...->c...", r, g[k])
        assert torch.allclose(vjp[k], expected, atol=1e-12), k
    if t_in == 0:
        assert torch.equal(vjp["a"], torch.zeros_like(vjp["a"]))
    if t_out == 0:
        assert torch.equal(vjp["c"], torch.zeros_like(vjp["c"]))


@pytest.mark.parametrize("t_in,t_out", MASKS)
def test_masked_sq_grad_norms_and_jacobian_match_autograd(t_in, t_out):
    P, (X, _) = stacked(t_in=t_in, t_out=t_out), data()
    fast = nblib.per_example_sq_grad_norms(R.masked_relu, P, X, stacked=True, fast=True)
    slow = nblib.per_example_sq_grad_norms(R.masked_relu, P, X, stacked=True, fast=False)
    assert torch.allclose(fast, slow, rtol=1e-12)
    J = R.jacobian(P, X)
    g = autograd_grads(P, X)
    Ja = torch.cat([g["a"], g["b"], g["c"], g["a0"][..., None], g["b0"][..., None]], 2)
    assert torch.allclose(J, Ja, atol=1e-12)


def test_masked_reg_grad_matches_autograd_when_both_layers_train():
    P, (X, _) = stacked(), data()
    single = {k: v[0].clone().requires_grad_(k in R.PARAM_NAMES) for k, v in P.items()}
    reg = nblib.implicit_regularizer(R.masked_relu, single, X, fast=False)
    reg.backward()
    closed = R.masked_relu.closed_form.reg_grad(P, X)
    for k in R.PARAM_NAMES:
        expected = single[k].grad if single[k].grad is not None else torch.zeros_like(single[k])  # a0, b0: unused
        assert torch.allclose(closed[k][0], expected, atol=1e-10), k


@pytest.mark.parametrize("t_in,t_out", MASKS[1:])
def test_masked_reg_grad_vanishes_on_trainable_part_with_one_layer(t_in, t_out):
    P, (X, _) = stacked(t_in=t_in, t_out=t_out), data()
    g = R.masked_relu.closed_form.reg_grad(P, X)
    trainable = ["c"] if t_out else ["a", "b"]
    for k in trainable + ["a0", "b0"]:
        assert torch.equal(g[k], torch.zeros_like(g[k])), k


def test_reg_equals_paper_R_over_n_closed_form_and_autograd():
    P, (X, _) = stacked(width=11, chains=4, seed=3), data()
    plain = {k: P[k] for k in R.PARAM_NAMES}
    target = R.paper_R(plain, X) / len(X)
    for fast in (True, False):
        reg = nblib.implicit_regularizer(two_layer_relu, plain, X, stacked=True, fast=fast)
        assert torch.allclose(reg, target, rtol=1e-12)
    both = nblib.implicit_regularizer(R.masked_relu, P, X, stacked=True)
    assert torch.allclose(both, target, rtol=1e-12)


def test_outer_only_label_noise_keeps_inner_layer_and_reg():
    P, (X, y) = stacked(t_in=0.0), data()
    tr = nblib.label_noise_sgd(R.masked_relu, P, X, y, lr=0.01, noise_std=0.3, steps=200, stacked=True,
                               batch_size=12, record_every=50)
    for k in ("a", "b", "t_in", "t_out"):
        assert torch.equal(tr.params[k][-1], P[k]), k
    assert not torch.equal(tr.params["c"][-1], P["c"])
    assert torch.allclose(tr.reg, tr.reg[0].expand_as(tr.reg), rtol=1e-12)


def test_masked_and_two_layer_agree_when_both_layers_train():
    P, (X, y) = stacked(), data()
    plain = {k: P[k] for k in R.PARAM_NAMES}
    kw = dict(lr=0.01, noise_std=0.2, steps=100, stacked=True, batch_size=4, seed=5, record_every=100)
    a = nblib.label_noise_sgd(R.masked_relu, P, X, y, **kw)
    b = nblib.label_noise_sgd(two_layer_relu, plain, X, y, **kw)
    for k in R.PARAM_NAMES:
        assert torch.allclose(a.params[k], b.params[k], atol=1e-12), k


# ----------------------------------------------------------------------------- data and shape

def test_chapter_data_runs_and_forced_changes():
    X, y = data()
    assert R.collinear_runs(X, y) == [(0, 3), (8, 11)]
    assert R.min_convexity_changes(X, y) == 3
    assert R.polyline_length(X, y) == pytest.approx(float(torch.sqrt(X.diff() ** 2 + y.diff() ** 2).sum()))
    X32, y32 = R.chapter_data(torch.float32)
    assert R.collinear_runs(X32, y32) == [(0, 3), (8, 11)] and R.min_convexity_changes(X32, y32) == 3


def test_min_convexity_changes_simple_cases():
    X = torch.arange(6, dtype=DT)
    assert R.min_convexity_changes(X, X ** 2) == 0                  # convex
    assert R.min_convexity_changes(X, 2 * X + 1) == 0               # a line
    assert R.min_convexity_changes(X, torch.tensor([0, 1, 0, 1, 0, 1], dtype=DT)) == 3
    assert R.collinear_runs(X, 2 * X + 1) == [(0, 5)]


def one_unit_params(a, b, c, a0=0.0, b0=0.0):
    """Stacked params (one chain) from lists of units."""
    t = lambda v: torch.tensor([v], dtype=DT)                        # noqa: E731
    return {"a": t(a), "b": t(b), "c": t(c), "a0": torch.tensor([a0], dtype=DT), "b0": torch.tensor([b0], dtype=DT)}


def test_kinks_and_convexity_changes_of_a_known_function():
    # f = σ(x + 0.5) − 2σ(x) + σ(x − 0.5): kinks at −0.5 (+1), 0 (−2), 0.5 (+1): two convexity changes.
    P = one_unit_params([1.0, 1.0, 1.0], [0.5, 0.0, -0.5], [1.0, -2.0, 1.0])
    m = R.kink_masses(P, -1.0, 1.0, bins=8)
    assert torch.allclose(m.sum(), torch.tensor(0.0, dtype=DT))
    assert torch.allclose(m[m != 0], torch.tensor([1.0, -2.0, 1.0], dtype=DT))
    assert R.convexity_changes(P, -1.0, 1.0, bins=8, threshold=0.1).tolist() == [2]
    assert R.kink_count(P, -1.0, 1.0, bins=8, threshold=0.1).tolist() == [3]
    # a negative a flips the side but not the sign of the slope jump c|a|
    Q = one_unit_params([-2.0], [1.0], [0.5])
    assert torch.allclose(R.kink_masses(Q, 0.0, 1.0, bins=4).sum(), torch.tensor(1.0, dtype=DT))


def test_kink_masses_sum_to_the_slope_change():
    P = {k: v for k, v in stacked(width=40).items() if k in R.PARAM_NAMES}
    lo, hi, eps = -1.0, 1.0, 1e-6
    slope = lambda x: (R.evaluate(P, torch.tensor([x + eps], dtype=DT))                      # noqa: E731
                       - R.evaluate(P, torch.tensor([x - eps], dtype=DT)))[:, 0] / (2 * eps)
    total = R.kink_masses(P, lo, hi, bins=50).sum(1)
    assert torch.allclose(total, slope(hi - 1e-3) - slope(lo - 1e-3), atol=1e-5) or \
        torch.allclose(total, slope(hi - 1e-4) - slope(lo - 1e-4), atol=1e-5)


def test_curve_length_and_line_deviation_of_a_line():
    X, y = data()
    P = one_unit_params([1.0], [-5.0], [0.0], a0=0.5, b0=0.1)       # f = 0.5x + 0.1 on [−1.1, 1.1]
    assert R.curve_length(P, -1.0, 1.0).item() == pytest.approx(2 * (1 + 0.25) ** 0.5, rel=1e-9)
    Xl, yl = X, 0.5 * X + 0.1
    assert R.line_deviation(P, Xl, yl, (0, 11)).item() == pytest.approx(0.0, abs=1e-12)


def test_projection_interpolates_and_leaves_interpolants_alone():
    X, y = data()
    P = stacked(width=60, chains=2, seed=4)
    fit = R.project_to_interpolant(P, X, y)
    assert nblib.full_data_loss(R.masked_relu, fit, X, y).max() < 1e-12
    again = R.project_to_interpolant(fit, X, y)
    for k in P:
        assert torch.allclose(again[k], fit[k], atol=1e-10), k
    outer = R.project_to_interpolant(stacked(width=60, chains=2, seed=4, t_in=0.0), X, y)
    assert torch.equal(outer["a"], P["a"]) and torch.equal(outer["b"], P["b"])


# ----------------------------------------------------------------------------- errors

def test_errors_are_value_errors_that_say_what_is_wrong():
    X, y = data()
    with pytest.raises(ValueError, match="strictly increasing"):
        R.min_convexity_changes(X.flip(0), y)
    with pytest.raises(ValueError, match="must match"):
        R.polyline_length(X, y[:5])
    with pytest.raises(ValueError, match="NaN"):
        R.polyline_length(X, y * float("nan"))
    P = stacked()
    with pytest.raises(ValueError, match="stacked"):
        R.paper_R({k: v[0] for k, v in P.items()}, X)
    with pytest.raises(ValueError, match="lack"):
        R.curve_length({"a": P["a"]}, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        R.curve_length(P, 1.0, 0.0)
    with pytest.raises(ValueError, match="0 \\(frozen\\) or 1"):
        R.with_trainable({k: P[k] for k in R.PARAM_NAMES}, 0.5, 1.0)
    with pytest.raises(ValueError, match="run"):
        R.line_deviation(P, X, y, (3, 1))
    with pytest.raises(ValueError, match="width and chains"):
        R.init_chains(0, 2, scale_ab=1.0, scale_c=1.0)
