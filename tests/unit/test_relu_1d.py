"""nblib.chapters.relu_1d: closed forms vs autograd (gradients, reg, the paper's R, reg's gradient), frozen layers,
the shape measurements (kinks, convexity changes, lengths, lines), the projection, and clear errors."""
import pytest
import torch
from torch.func import grad, vmap

import nblib
from nblib.chapters import relu_1d as R
from nblib.chapters.models import init_two_layer_relu, two_layer_relu

DT = torch.float64


def stacked(width=7, chains=3, seed=0):
    P = init_two_layer_relu(width, chains=chains, scale=1.0, scale_c=0.7, dtype=DT,
                            generator=torch.Generator().manual_seed(seed))
    P["a0"] += 0.3
    P["b0"] -= 0.2
    return P


def data():
    return R.chapter_data(DT)


def autograd_grads(P, X):
    """{name: [C, n, ...]}: ∇θ f(x_j) by torch.func, chain by chain."""
    return vmap(vmap(grad(two_layer_relu), in_dims=(None, 0)), in_dims=(0, None))(P, X)


@pytest.mark.parametrize("inner", [1.0, 0.0])
def test_jacobian_matches_autograd_and_zeroes_a_frozen_inner_layer(inner):
    P, (X, _) = stacked(), data()
    J = R.jacobian(P, X, inner_trainable=inner)
    g = autograd_grads(P, X)
    Ja = torch.cat([inner * g["a"], inner * g["b"], g["c"], g["a0"][..., None], g["b0"][..., None]], 2)
    assert torch.allclose(J, Ja, atol=1e-12)


def test_reg_equals_paper_R_over_n_closed_form_and_autograd():
    P, (X, _) = stacked(width=11, chains=4, seed=3), data()
    target = R.paper_R_relu(P, X) / len(X)
    for fast in (True, False):
        reg = nblib.implicit_regularizer(two_layer_relu, P, X, stacked=True, fast=fast)
        assert torch.allclose(reg, target, rtol=1e-12)


def test_outer_only_label_noise_keeps_inner_layer():
    P, (X, y) = stacked(), data()
    frozen = R.inner_frozen([0.0, 1.0, 0.0], 3, DT)
    tr = nblib.label_noise_sgd(two_layer_relu, P, X, y, lr=0.01, noise_std=0.3, steps=200, stacked=True,
                               batch_size=12, record_every=50, trainable=frozen)
    for c in (0, 2):
        assert torch.equal(tr.params["a"][-1, c], P["a"][c]) and torch.equal(tr.params["b"][-1, c], P["b"][c])
        assert not torch.equal(tr.params["c"][-1, c], P["c"][c])
    assert not torch.equal(tr.params["a"][-1, 1], P["a"][1])


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
    assert nblib.full_data_loss(two_layer_relu, fit, X, y).max() < 1e-12
    again = R.project_to_interpolant(fit, X, y)
    for k in P:
        assert torch.allclose(again[k], fit[k], atol=1e-10), k
    outer = R.project_to_interpolant(P, X, y, inner_trainable=0.0)
    assert torch.equal(outer["a"], P["a"]) and torch.equal(outer["b"], P["b"])


def test_curve_length_and_line_deviation_are_exact_for_a_piecewise_linear_fit():
    P = {k: v for k, v in stacked(width=30, chains=3, seed=5).items()}
    X, y = data()
    x = torch.linspace(-1.0, 1.0, 200_001, dtype=DT)
    f = R.evaluate(P, x)
    fine = torch.sqrt(x.diff() ** 2 + f.diff(dim=1) ** 2).sum(1)
    exact = R.curve_length(P, -1.0, 1.0)                 # a grid's chords only cut corners
    assert bool((exact >= fine).all()) and torch.allclose(exact, fine, atol=1e-4)
    xr = torch.linspace(float(X[0]), float(X[3]), 200_001, dtype=DT)
    line = y[0] + (y[3] - y[0]) / (X[3] - X[0]) * (xr - X[0])
    grid_dev = (R.evaluate(P, xr) - line).abs().max(1).values
    dev = R.line_deviation(P, X, y, (0, 3))
    assert bool((dev >= grid_dev - 1e-12).all()) and torch.allclose(dev, grid_dev, atol=1e-6)


# ----------------------------------------------------------------------------- replicates and the floor

def test_init_replicates_draws_each_seed_from_its_named_stream():
    P = R.init_replicates(6, 2, [7, 8], scale_ab=1.0, scale_c=0.5, dtype=DT)
    assert P["a"].shape == (4, 6) and P["a0"].shape == (4,)
    for i, s in enumerate([7, 8]):
        g = torch.Generator().manual_seed(nblib.book.substream(s, "init"))
        Q = init_two_layer_relu(6, chains=2, scale=1.0, scale_c=0.5, generator=g, dtype=DT)
        for k in Q:
            assert torch.equal(P[k][2 * i:2 * i + 2], Q[k]), k
    with pytest.raises(ValueError, match="non-empty"):
        R.init_replicates(6, 2, [], scale_ab=1.0, scale_c=1.0)


def test_gram_eigenvalues_sum_to_n_reg():
    P, (X, _) = stacked(width=11, chains=4, seed=2), data()
    ev = R.gram_eigenvalues(P, X)
    reg = nblib.implicit_regularizer(two_layer_relu, P, X, stacked=True)
    assert bool((ev >= -1e-9).all())
    assert torch.allclose(ev.sum(1), len(X) * reg, rtol=1e-10)


def test_label_noise_floor_first_order_and_a_linear_simulation():
    X, y = data()
    P = stacked(width=20, chains=1, seed=6)
    small = R.label_noise_floor(P, X, lr=1e-6, noise_std=0.3, batch_size=12)
    reg = nblib.implicit_regularizer(two_layer_relu, P, X, stacked=True)
    assert torch.allclose(small, nblib.implicit_lambda(1e-6, 0.3, 12) * reg, rtol=1e-5)
    # outer layer only: the model is linear in what trains, so the AR(1) picture is exact
    lr, sigma, chains = 0.02, 0.2, 64
    P = {k: v.expand(chains, *v.shape[1:]).clone() for k, v in P.items()}
    P = R.project_to_interpolant(P, X, y, inner_trainable=0.0)
    pred = R.label_noise_floor(P, X, lr=lr, noise_std=sigma, batch_size=12, inner_trainable=0.0)
    tr = nblib.label_noise_sgd(two_layer_relu, P, X, y, lr=lr, noise_std=sigma, steps=3000,
                               batch_size=12, stacked=True, record_every=20, seed=3,
                               record_reg=False, trainable=R.inner_frozen(0.0, chains, DT))
    measured = tr.loss[len(tr.steps) // 3:].mean()
    assert float(measured / pred[0]) == pytest.approx(1.0, abs=0.08)
    with pytest.raises(ValueError, match="unstable"):
        R.label_noise_floor(P, X, lr=100.0, noise_std=sigma, batch_size=12)
    with pytest.raises(ValueError, match="full-batch"):
        R.label_noise_floor(P, X, lr=lr, noise_std=sigma, batch_size=1)


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
        R.paper_R_relu({k: v[0] for k, v in P.items()}, X)
    with pytest.raises(ValueError, match="lack"):
        R.curve_length({"a": P["a"]}, 0.0, 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        R.curve_length(P, 1.0, 0.0)
    with pytest.raises(ValueError, match="0 \\(frozen\\) or 1"):
        R.inner_frozen([0.5], 1, DT)
    with pytest.raises(ValueError, match="run"):
        R.line_deviation(P, X, y, (3, 1))
    with pytest.raises(ValueError, match="width"):
        init_two_layer_relu(0, chains=2)
    with pytest.raises(ValueError, match="scale_c"):
        init_two_layer_relu(3, chains=2, scale_c=-1.0)
