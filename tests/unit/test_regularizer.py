"""implicit_regularizer against a per-example autograd loop and against closed forms (float64)."""
import math

import pytest
import torch

import nblib
from nblib.chapters.models import init_mlp, init_two_layer_relu, matrix_sensing, mlp, product, two_layer_relu

DT = torch.float64


def loop_reg(model, params, X):
    """The reference: one autograd call per example, create_graph so that the result is differentiable."""
    total = 0.0
    for x in X:
        out = model(params, x)
        grads = torch.autograd.grad(out, list(params.values()), create_graph=True)
        total = total + sum(g.pow(2).sum() for g in grads)
    return total / len(X)


def leaf(params):
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def cases():
    g = torch.Generator().manual_seed(0)
    d = 6
    A = torch.randn(12, d, d, generator=g, dtype=DT)
    return {
        "mlp": (mlp, init_mlp([5, 16, 16, 3], generator=g, dtype=DT), torch.randn(10, 5, generator=g, dtype=DT)),
        "two_layer_relu": (two_layer_relu, init_two_layer_relu(40, generator=g, dtype=DT),
                           torch.linspace(-2, 2, 9, dtype=DT)),
        "matrix_sensing": (matrix_sensing, {"U": torch.randn(d, d, generator=g, dtype=DT)}, A),
        "product": (product, {"a": torch.tensor(1.7, dtype=DT), "b": torch.tensor(-0.4, dtype=DT)},
                    torch.tensor([0.5, 1.0, -2.0], dtype=DT)),
    }


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("fast", [False, True])
def test_value_and_gradient_match_per_example_loop(name, fast):
    model, params, X = cases()[name]
    p_ref, p = leaf(params), leaf(params)
    ref = loop_reg(model, p_ref, X)
    val = nblib.implicit_regularizer(model, p, X, fast=fast)
    assert abs(val.item() - ref.item()) <= 1e-10 * abs(ref.item())
    g_ref = torch.autograd.grad(ref, list(p_ref.values()), allow_unused=True)
    g = torch.autograd.grad(val, list(p.values()), allow_unused=True)
    for k, a, b in zip(p, g_ref, g):
        a = torch.zeros_like(p[k]) if a is None else a
        b = torch.zeros_like(p[k]) if b is None else b
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), k


def test_per_example_norms_and_stacked_chains():
    model, params, X = cases()["two_layer_relu"]
    single = nblib.per_example_sq_grad_norms(model, params, X, fast=False)
    assert single.shape == (len(X),)
    stacked = {k: torch.stack([v, 2 * v]) for k, v in params.items()}
    for fast in (False, True):
        both = nblib.per_example_sq_grad_norms(model, stacked, X, stacked=True, fast=fast)
        assert both.shape == (2, len(X))
        assert torch.allclose(both[0], single, rtol=1e-12)
        second = nblib.per_example_sq_grad_norms(model, {k: v[1] for k, v in stacked.items()}, X, fast=False)
        assert torch.allclose(both[1], second, rtol=1e-12)


def test_relu_closed_form_is_the_papers_R():
    """Blanc et al. Thm 2: R = Σ_{i,j}[σ(a_i x_j + b_i)² + c_i²(1 + x_j²)1{a_i x_j + b_i > 0}] + Σ_j (1 + x_j²)."""
    _, p, X = cases()["two_layer_relu"]
    pre = p["a"][:, None] * X[None, :] + p["b"][:, None]
    R = (torch.relu(pre) ** 2).sum() + ((p["c"] ** 2)[:, None] * (1 + X ** 2) * (pre > 0)).sum() + (1 + X ** 2).sum()
    assert torch.allclose(nblib.implicit_regularizer(two_layer_relu, p, X) * len(X), R, rtol=1e-12)


def test_matrix_sensing_expectation_closed_form():
    """E‖(A + Aᵀ)U‖_F² = 2(d+1)‖U‖_F² for A with i.i.d. N(0, 1) entries (Blanc et al. §4.1)."""
    g = torch.Generator().manual_seed(1)
    d, n = 5, 40000
    U = torch.randn(d, d, generator=g, dtype=DT)
    A = torch.randn(n, d, d, generator=g, dtype=DT)
    reg = nblib.implicit_regularizer(matrix_sensing, {"U": U}, A)
    closed_per_example = ((A + A.transpose(1, 2)) @ U).pow(2).sum((1, 2)).mean()
    assert torch.allclose(reg, closed_per_example, rtol=1e-12)
    expected = 2 * (d + 1) * U.pow(2).sum()
    # Monte Carlo: relative standard error ~ 1/sqrt(n) times a modest constant
    assert abs(float(reg / expected) - 1) < 0.03


def test_product_closed_form():
    p = {"a": torch.tensor(2.0, dtype=DT), "b": torch.tensor(0.5, dtype=DT)}
    X = torch.tensor([0.8, 1.0, 1.2], dtype=DT)
    expected = (X ** 2).mean() * (2.0 ** 2 + 0.5 ** 2)
    assert math.isclose(float(nblib.implicit_regularizer(product, p, X)), float(expected), rel_tol=1e-14)


def test_gradient_descent_on_reg_lowers_it():
    model, params, X = cases()["mlp"]
    p = leaf(params)
    before = nblib.implicit_regularizer(model, p, X)
    grads = torch.autograd.grad(before, list(p.values()), allow_unused=True)   # the last bias has no effect on ∇h
    with torch.no_grad():
        stepped = {k: v if g is None else v - 1e-4 * g for (k, v), g in zip(p.items(), grads)}
    assert nblib.implicit_regularizer(model, stepped, X) < before


@pytest.mark.parametrize("bad, message", [
    (lambda p, X: (p, X[:, :2]), "size|shape|mat"),
    (lambda p, X: ({**p, "W1": p["W1"] * float("nan")}, X), "NaN"),
    (lambda p, X: (p, X * float("inf")), "NaN or infinite"),
    (lambda p, X: ([1, 2], X), "dict"),
    (lambda p, X: ({**p, "W1": p["W1"].float()}, X), "dtype"),
])
def test_bad_input_raises_clear_errors(bad, message):
    model, params, X = cases()["mlp"]
    p, X = bad(params, X)
    with pytest.raises((ValueError, RuntimeError), match=message):
        nblib.implicit_regularizer(model, p, X)


def test_model_must_return_a_scalar():
    with pytest.raises(ValueError, match="scalar"):
        nblib.implicit_regularizer(lambda p, x: p["w"] * x, {"w": torch.ones(3, dtype=DT)},
                                   torch.ones(4, 3, dtype=DT))


def test_mlp_closed_form_pieces_match_torch_func_over_chains():
    """forward, vjp, ‖a‖²‖g‖² norms and ∇reg of the summed-output MLP, stacked over 3 chains."""
    g = torch.Generator().manual_seed(1)
    P = {k: torch.stack([v, 0.5 * v, -v]) for k, v in init_mlp([4, 7, 5, 2], generator=g, dtype=DT).items()}
    X = torch.randn(6, 4, generator=g, dtype=DT)
    Xb = torch.randn(3, 5, 4, generator=g, dtype=DT)
    r = torch.randn(3, 5, generator=g, dtype=DT)
    cf = nblib.core.regularizer.closed_form_of(mlp)
    for c in range(3):
        p = {k: v[c] for k, v in P.items()}
        out = torch.func.vmap(mlp, in_dims=(None, 0))(p, Xb[c])
        assert torch.allclose(cf.forward(P, Xb)[c], out, rtol=1e-12)
        grads = nblib.core.regularizer.per_example_grads(mlp, p, Xb[c])
        vjp = cf.vjp(P, Xb, r)
        for k in p:
            assert torch.allclose(vjp[k][c], torch.einsum("b,b...->...", r[c], grads[k]), rtol=1e-10), k
        assert torch.allclose(cf.sq_grad_norms(P, X)[c],
                              nblib.per_example_sq_grad_norms(mlp, p, X, fast=False), rtol=1e-12)
        q = leaf(p)
        ref = torch.autograd.grad(nblib.implicit_regularizer(mlp, q, X, fast=False), list(q.values()),
                                  allow_unused=True)
        for k, a in zip(q, ref):
            a = torch.zeros_like(q[k]) if a is None else a
            assert torch.allclose(cf.reg_grad(P, X)[k][c], a, rtol=1e-10, atol=1e-12), k


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("fast", [False, True])
def test_regularizer_and_grad_match_per_example_loop(name, fast):
    model, params, X = cases()[name]
    p_ref = leaf(params)
    ref = loop_reg(model, p_ref, X)
    g_ref = torch.autograd.grad(ref, list(p_ref.values()), allow_unused=True)
    val, g = nblib.implicit_regularizer_and_grad(model, params, X, fast=fast)
    assert abs(val.item() - ref.item()) <= 1e-10 * abs(ref.item())
    for k, a in zip(params, g_ref):
        a = torch.zeros_like(params[k]) if a is None else a
        assert g[k].shape == params[k].shape and torch.allclose(g[k], a, rtol=1e-10, atol=1e-12), k
    stacked = {k: torch.stack([v, -0.5 * v]) for k, v in params.items()}
    vals, gs = nblib.implicit_regularizer_and_grad(model, stacked, X, stacked=True, fast=fast)
    assert vals.shape == (2,) and torch.allclose(vals[0], val, rtol=1e-12)
    second, g2 = nblib.implicit_regularizer_and_grad(model, {k: v[1] for k, v in stacked.items()}, X, fast=False)
    assert torch.allclose(vals[1], second, rtol=1e-10)
    for k in params:
        assert torch.allclose(gs[k][1], g2[k], rtol=1e-10, atol=1e-12), k


@pytest.mark.parametrize("sizes", [[3, 2], [3, 5, 2], [4, 7, 6, 5, 2], [2, 4, 4, 4, 4, 1]])
def test_mlp_closed_form_gradient_at_every_depth(sizes):
    g = torch.Generator().manual_seed(len(sizes))
    params = init_mlp(sizes, generator=g, dtype=DT)
    X = torch.randn(7, sizes[0], generator=g, dtype=DT)
    val, grads = nblib.implicit_regularizer_and_grad(mlp, params, X)
    ref, ref_grads = nblib.implicit_regularizer_and_grad(mlp, params, X, fast=False)
    assert torch.allclose(val, ref, rtol=1e-12)
    for k in params:
        assert torch.allclose(grads[k], ref_grads[k], rtol=1e-10, atol=1e-12), k


def test_the_core_imports_no_chapter_and_no_book_helper():
    """nblib.core stands alone: none of its modules imports nblib.book or nblib.chapters, and the top-level
    namespace is the core's API."""
    import ast
    import pathlib

    core = pathlib.Path(nblib.__file__).parent / "core"
    for path in core.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                assert not any(part in ("book", "chapters") for part in target.split(".")), (path, target)
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith(("nblib.book", "nblib.chapters")) for a in node.names), path
    assert all(getattr(nblib, name).__module__.startswith("nblib.core") for name in nblib.__all__)
