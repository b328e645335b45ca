"""Two-layer logistic/tanh on one point: closed forms against torch.func, the paper's R, the stationarity
relations at the closed-form optimum, the exact 1-D reduction of a one-point run, clustering, merge heights,
the rule that continues chains until their count is final, errors."""
import pytest
import torch

import nblib
from nblib.chapters.one_point import (ACTIVATIONS, MODELS, along_x, cluster_diameter, continue_until_final,
                             count_clusters, init_unit_net, merge_heights, merge_tolerance, paper_R_unit,
                             predicted_optimum, reduced_r, stationarity_residual, stationary_h, unit_pairs)

DT = torch.float64


def setup(activation, m=4, d=3, chains=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d, generator=g, dtype=DT)
    P = init_unit_net(m, d, chains=chains, generator=g, dtype=DT, scale=1.5)
    return MODELS[activation], P, x


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_closed_forms_match_torch_func(activation):
    model, P, x = setup(activation)
    X = torch.stack([x, 0.5 * x + 0.1])                     # two examples: the closed forms are general in n
    fast = nblib.per_example_sq_grad_norms(model, P, X, stacked=True, fast=True)
    slow = nblib.per_example_sq_grad_norms(model, P, X, stacked=True, fast=False)
    assert torch.allclose(fast, slow, rtol=1e-12, atol=1e-12)
    Pg = {k: v.clone().requires_grad_() for k, v in P.items()}
    nblib.implicit_regularizer(model, Pg, X, stacked=True, fast=False).sum().backward()
    rg = model.closed_form.reg_grad(P, X)
    for k in P:
        assert torch.allclose(rg[k], Pg[k].grad, rtol=1e-10, atol=1e-12)
    Xb = X.expand(3, *X.shape)
    r = torch.randn(3, 2, dtype=DT)
    out = model.closed_form.forward(P, Xb)
    for c in range(3):
        single = {k: v[c].clone().requires_grad_() for k, v in P.items()}
        vals = torch.stack([model(single, X[j]) for j in range(2)])
        assert torch.allclose(out[c], vals.detach(), atol=1e-12)
        (vals * r[c]).sum().backward()
        vj = model.closed_form.vjp(P, Xb, r)
        for k in P:
            assert torch.allclose(vj[k][c], single[k].grad, atol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reg_equals_paper_R(activation):
    model, P, x = setup(activation, m=6, d=4, chains=5, seed=3)
    reg = nblib.implicit_regularizer(model, P, x[None], stacked=True, fast=False)
    c, h = unit_pairs(P, x, activation)
    assert torch.allclose(paper_R_unit(c, h, float(x @ x), activation), reg, rtol=1e-12)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_stationary_h_minimizes_R_at_fixed_output(activation):
    a = 1.7
    for o in (-2.0, -0.3, 0.2, 1.5):
        h = torch.linspace(-0.999, 0.999, 200001, dtype=DT) if activation == "tanh" else \
            torch.linspace(1e-6, 1 - 1e-6, 200001, dtype=DT)
        h = h[h.abs() > 1e-3]
        R = paper_R_unit((o / h)[:, None], h[:, None], a, activation)
        h_best = h[R.argmin()]
        h_pred = stationary_h(torch.tensor(o, dtype=DT), a, activation)
        assert abs(abs(float(h_best)) - abs(float(h_pred))) < 1e-4          # tanh: ±h give the same R
        assert float(R.min()) == pytest.approx(float(reduced_r(torch.tensor(o, dtype=DT), a, activation)), abs=1e-7)
        res = stationarity_residual(torch.tensor(o, dtype=DT) / h_pred, h_pred, a, activation)
        assert abs(float(res)) < 1e-12


def test_predicted_optimum_is_stationary_and_on_the_manifold():
    for act, y, m in (("logistic", 3.0, 10), ("tanh", 1.0, 10), ("tanh", -2.0, 5)):
        opt = predicted_optimum(y, m, 1.3, act)
        assert opt["active"] * opt["c"] * opt["h"] == pytest.approx(y)
        res = stationarity_residual(torch.tensor(opt["c"], dtype=DT), torch.tensor(opt["h"], dtype=DT), 1.3, act)
        assert abs(float(res)) < 1e-12
        c = torch.tensor([opt["c"]] * opt["active"], dtype=DT)
        h = torch.tensor([opt["h"]] * opt["active"], dtype=DT)
        assert float(paper_R_unit(c, h, 1.3, act)) == pytest.approx(opt["R"])
    # logistic: a small move along Σ o = y away from the symmetric point raises R (local minimum)
    opt = predicted_optimum(3.0, 10, 1.0, "logistic")
    o = torch.full((10,), opt["o"], dtype=DT)
    o[0] += 0.01
    o[1] -= 0.01
    assert float(reduced_r(o, 1.0, "logistic").sum()) > opt["R"]
    with pytest.raises(ValueError, match="1/3"):
        predicted_optimum(10.0, 2, 1.0, "logistic")


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reduction_to_the_line_of_x_is_exact_for_label_noise(activation):
    """A run in d dimensions equals the run on the 1-D input ‖x‖ with weights w_iᵀx̂ (same noise stream)."""
    model, P, x = setup(activation, m=5, d=3, chains=4, seed=1)
    y = torch.tensor([0.8], dtype=DT)
    kw = dict(lr=0.05, noise_std=0.7, steps=600, stacked=True, seed=11, record_every=600, record_reg=False)
    full = nblib.label_noise_sgd(model, P, x[None], y, **kw)
    P1, X1 = along_x(P, x)
    line = nblib.label_noise_sgd(model, P1, X1, y, **kw)
    c_full, h_full = unit_pairs(full.final(), x, activation)
    c_line, h_line = unit_pairs(line.final(), X1[0], activation)
    assert torch.allclose(c_line, c_full, atol=1e-10)
    assert torch.allclose(h_line, h_full, atol=1e-10)
    assert torch.allclose(line.loss, full.loss, atol=1e-10)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_reduction_to_the_line_of_x_is_exact_for_the_flow(activation):
    model, P, x = setup(activation, m=5, d=3, chains=4, seed=2)
    y = torch.tensor([0.8], dtype=DT)
    kw = dict(lr=0.05, lam=0.1, steps=300, stacked=True, record_every=300)
    full = nblib.regularized_gd(model, P, x[None], y, **kw)
    P1, X1 = along_x(P, x)
    line = nblib.regularized_gd(model, P1, X1, y, **kw)
    c_full, h_full = unit_pairs(full.final(), x, activation)
    c_line, h_line = unit_pairs(line.final(), X1[0], activation)
    assert torch.allclose(c_line, c_full, atol=1e-10) and torch.allclose(h_line, h_full, atol=1e-10)
    assert torch.allclose(line.reg, full.reg, atol=1e-10)


def test_count_clusters():
    pts = torch.tensor([[[0.0, 0.0], [0.05, 0.0], [0.1, 0.0], [1.0, 1.0]],      # chain of links + one apart
                        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]], dtype=DT)
    assert count_clusters(pts, 0.06).tolist() == [2, 1, 4]
    assert count_clusters(pts, 0.01).tolist() == [4, 1, 4]
    assert count_clusters(pts, 1.0).tolist() == [2, 1, 1]
    assert torch.allclose(cluster_diameter(pts, 0.06), torch.tensor([0.1, 0.0, 0.0], dtype=DT))


def test_merge_heights_give_the_count_at_every_tolerance():
    pts = torch.tensor([[[0.0, 0.0], [0.05, 0.0], [0.1, 0.0], [1.0, 1.0]],
                        [[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]],
                        [[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]], dtype=DT)
    assert torch.allclose(merge_heights(pts), torch.tensor([[0.05, 0.05, 1.81 ** 0.5], [0.0, 0.0, 0.0],
                                                            [1.0, 1.0, 1.0]], dtype=DT))
    assert torch.allclose(merge_tolerance(pts, 2), torch.tensor([0.05, 0.0, 1.0], dtype=DT))
    assert merge_tolerance(pts, 4).tolist() == [0.0, 0.0, 0.0]
    g = torch.Generator().manual_seed(7)
    pts = torch.randn(50, 10, 2, generator=g, dtype=DT)
    heights = merge_heights(pts)
    for tol in (0.0, 0.05, 0.2, 0.5, 1.0, 3.0):          # single linkage: count = 1 + heights above tol
        assert torch.equal(count_clusters(pts, tol), 1 + (heights > tol).sum(-1))
    for k in (1, 2, 5):
        t_k = merge_tolerance(pts, k)
        assert (count_clusters_at(pts, t_k) <= k).all()
        assert (count_clusters_at(pts, t_k * (1 - 1e-9)) > k).all()
    assert merge_heights(torch.zeros(3, 1, 2, dtype=DT)).shape == (3, 0)


def count_clusters_at(pts, tols):
    return torch.stack([count_clusters(pts[c:c + 1], float(t))[0] for c, t in enumerate(tols)])


def _toy(stuck):
    """Chains of 6 units: three at one point and three at another, plus a third group of two units whose
    offset from the second shrinks like 1/t (or stays, where stuck)."""
    C = len(stuck)
    base = torch.zeros(C, 6, 2, dtype=DT)
    base[:, 3:, 0] = 1.0
    off = torch.zeros(C, 6, 2, dtype=DT)
    off[:, 4:, 1] = 1.0
    return {"base": base, "off": off, "t": torch.ones(C, dtype=DT), "stuck": torch.tensor(stuck, dtype=DT)}


def _measure(p):
    shrink = torch.where(p["stuck"] > 0, torch.ones_like(p["t"]), p["t"])
    pts = p["base"] + 0.1 * p["off"] / shrink[:, None, None]
    return {"c": pts[..., 0], "h": pts[..., 1], "clusters": count_clusters(pts, 0.03)}


def test_continue_until_final_doubles_until_merged_or_settled():
    calls = []

    def run(sub, idx, n):
        calls.append((idx.tolist(), n))
        return {**sub, "t": sub["t"] + n / 100}                # t = total steps / 100

    p = _toy([0, 1, 0])
    p["off"][0] = 0.0                                           # chain 0: two pairs from the start
    params, meas, report = continue_until_final(p, _measure, run, steps=100, tol=0.03, k=2, rounds=4)
    assert report["chains"] == [1, 2] and report["open"] == []
    assert calls == [([1, 2], 100), ([2], 200)]                 # chain 1 settles after one doubling
    assert meas["clusters"].tolist() == [2, 3, 2]               # chain 1: a settled third pair, reported
    assert report["steps"] == {1: 200, 2: 400}                  # chain 2 merges after two doublings
    assert report["tau_k"][2] == pytest.approx([0.1, 0.05, 0.025])
    assert report["tau_k"][1] == pytest.approx([0.1, 0.1])
    assert float(params["t"][2]) == pytest.approx(4.0) and float(params["t"][0]) == 1.0
    _, meas, report = continue_until_final(_toy([0]), _measure, run, steps=100, tol=0.03, k=2, rounds=1)
    assert report["open"] == [0] and meas["clusters"].tolist() == [3]   # out of rounds: left open
    with pytest.raises(ValueError, match="settled"):
        continue_until_final(p, _measure, run, steps=100, tol=0.03, settled=1.5)
    with pytest.raises(ValueError, match="steps"):
        continue_until_final(p, _measure, run, steps=0, tol=0.03)


def test_bad_input_raises():
    model, P, x = setup("logistic")
    with pytest.raises(ValueError, match="activation"):
        unit_pairs(P, x, "relu")
    with pytest.raises(ValueError, match="do not match"):
        unit_pairs(P, torch.zeros(7, dtype=DT), "logistic")
    with pytest.raises(ValueError, match="tol"):
        count_clusters(torch.zeros(1, 2, 2), -1.0)
    with pytest.raises(ValueError, match="shape"):
        count_clusters(torch.zeros(2, 2), 0.1)
    with pytest.raises(ValueError, match="one finite input vector"):
        along_x(P, torch.zeros(2, 3, dtype=DT))
    with pytest.raises(ValueError, match="width"):
        init_unit_net(0, 3, chains=2)
    P1, X1 = along_x(P, x)
    with pytest.raises(nblib.DivergenceError, match="lr"):
        nblib.label_noise_sgd(model, P1, X1, torch.tensor([1.0], dtype=DT), lr=50.0, noise_std=5.0, steps=500,
                              stacked=True)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dim", [1, 3])
def test_fused_loss_grad_equals_forward_then_vjp(activation, dim):
    """loss_grad (one pass) = vjp of the residuals (2/B)(f − Y) after forward; d = 1 takes the broadcast path."""
    model, P, x = setup(activation, d=dim)
    cf = model.closed_form
    X = torch.stack([x, 0.5 * x + 0.1])
    Y = torch.randn(3, 2, dtype=DT, generator=torch.Generator().manual_seed(4))
    for Xb in (X, X.expand(3, *X.shape)):                     # shared, then per chain
        grads, r = cf.loss_grad(P, Xb, Y)
        r_ref = cf.forward(P, Xb) - Y
        ref = cf.vjp(P, Xb, r_ref * (2.0 / 2))
        assert torch.allclose(r, r_ref, atol=1e-14)
        for k in P:
            assert torch.allclose(grads[k], ref[k], atol=1e-13), k
