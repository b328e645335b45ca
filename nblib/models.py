"""Scalar models h(params, x) used in the book, each a plain function of one example.

Where a chapter runs many steps, the model also carries closed forms (``model.closed_form``, see
``nblib.regularizer.ClosedForm``); tests compare them with the torch.func reference.
"""
from __future__ import annotations

import math

import torch

from .regularizer import with_closed_form


# ----------------------------------------------------------------------------- h(x; a, b) = a·b·x

def product(params: dict, x: torch.Tensor) -> torch.Tensor:
    """h(x; a, b) = a·b·x: the smallest overparameterized model (zero-error set ab = β is a hyperbola)."""
    return params["a"] * params["b"] * x


def _product_forward(P, Xb):
    return (P["a"] * P["b"])[:, None] * Xb


def _product_vjp(P, Xb, r):
    s = (r * Xb).sum(1)
    return {"a": P["b"] * s, "b": P["a"] * s}


def _product_sq_grad_norms(P, X):
    """‖∇h(x_i)‖² = x_i²(a² + b²)."""
    return (P["a"] ** 2 + P["b"] ** 2)[:, None] * X[None, :] ** 2


def _product_reg_grad(P, X):
    m2 = (X ** 2).mean()
    return {"a": 2 * m2 * P["a"], "b": 2 * m2 * P["b"]}


with_closed_form(product, forward=_product_forward, vjp=_product_vjp,
                 sq_grad_norms=_product_sq_grad_norms, reg_grad=_product_reg_grad)


# ----------------------------------------------------------------------------- two-layer ReLU, 1-D input

def two_layer_relu(params: dict, x: torch.Tensor) -> torch.Tensor:
    """f_θ(x) = Σ_i c_i σ(a_i x + b_i) + a0·x + b0, σ = ReLU, x a scalar (Blanc et al. Theorem 2).

    params: a, b, c of shape [m] (hidden units), a0 and b0 scalars (the linear part).
    """
    pre = params["a"] * x + params["b"]
    return (params["c"] * torch.relu(pre)).sum() + params["a0"] * x + params["b0"]


def _relu_pre(P, Xb):
    """[C, B, m]: a_i x_b + b_i for every chain."""
    return torch.baddbmm(P["b"].unsqueeze(1), Xb.unsqueeze(2), P["a"].unsqueeze(1))


def _relu_forward(P, Xb):
    act = torch.relu(_relu_pre(P, Xb))
    return torch.bmm(act, P["c"].unsqueeze(2)).squeeze(2) + P["a0"][:, None] * Xb + P["b0"][:, None]


def _relu_vjp(P, Xb, r):
    pre = _relu_pre(P, Xb)
    act = torch.relu(pre)
    on = (pre > 0).to(pre.dtype)
    rr = r.unsqueeze(1)                                             # [C, 1, B]
    g_c = torch.bmm(rr, act).squeeze(1)
    g_b = P["c"] * torch.bmm(rr, on).squeeze(1)
    g_a = P["c"] * torch.bmm((r * Xb).unsqueeze(1), on).squeeze(1)
    return {"a": g_a, "b": g_b, "c": g_c, "a0": (r * Xb).sum(1), "b0": r.sum(1)}


def _relu_sq_grad_norms(P, X):
    """‖∇h(x_j)‖² = Σ_i [σ(a_i x_j + b_i)² + c_i²(1 + x_j²)·1{a_i x_j + b_i > 0}] + (1 + x_j²)."""
    C = P["a"].shape[0]
    pre = _relu_pre(P, X.expand(C, -1))
    on = (pre > 0).to(pre.dtype)
    one_x2 = 1 + X ** 2
    return (torch.relu(pre) ** 2).sum(-1) + one_x2 * torch.bmm(on, (P["c"] ** 2).unsqueeze(2)).squeeze(2) + one_x2


def _relu_reg_grad(P, X):
    """∇ of (1/n) Σ_j ‖∇h(x_j)‖² (the indicator has zero derivative almost everywhere)."""
    C, n = P["a"].shape[0], X.shape[0]
    pre = _relu_pre(P, X.expand(C, -1))
    act = torch.relu(pre)
    on = (pre > 0).to(pre.dtype)
    one_x2 = (1 + X ** 2).expand(C, 1, n)
    zeros = torch.zeros_like(P["a0"])
    return {
        "a": (2.0 / n) * torch.bmm(X.expand(C, 1, n), act).squeeze(1),
        "b": (2.0 / n) * act.sum(1),
        "c": (2.0 / n) * P["c"] * torch.bmm(one_x2, on).squeeze(1),
        "a0": zeros, "b0": zeros.clone(),
    }


with_closed_form(two_layer_relu, forward=_relu_forward, vjp=_relu_vjp,
                 sq_grad_norms=_relu_sq_grad_norms, reg_grad=_relu_reg_grad)


def init_two_layer_relu(width: int, *, scale: float = 1.0, generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """a_i, b_i ~ N(0, scale²), c_i ~ N(0, scale²/width), a0 = b0 = 0."""
    g = dict(generator=generator, dtype=dtype)
    return {
        "a": scale * torch.randn(width, **g),
        "b": scale * torch.randn(width, **g),
        "c": scale * torch.randn(width, **g) / math.sqrt(width),
        "a0": torch.zeros((), dtype=dtype),
        "b0": torch.zeros((), dtype=dtype),
    }


# ----------------------------------------------------------------------------- MLP with summed outputs

def mlp(params: dict, x: torch.Tensor) -> torch.Tensor:
    """h(x) = Σ_k [W_L σ(… σ(W_1 x + b_1) …) + b_L]_k: a ReLU MLP whose outputs are summed.

    params: W1, b1, …, WL, bL with W_l of shape [out, in].
    """
    L = len(params) // 2
    for l in range(1, L + 1):
        x = params[f"W{l}"] @ x + params[f"b{l}"]
        if l < L:
            x = torch.relu(x)
    return x.sum()


def init_mlp(sizes: list[int], *, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """He-style init: W_l ~ N(0, 2/fan_in), b_l ~ N(0, 0.01)."""
    params = {}
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = torch.randn(fan_out, fan_in, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        params[f"b{l}"] = 0.1 * torch.randn(fan_out, generator=generator, dtype=dtype)
    return params


# ----------------------------------------------------------------------------- matrix sensing

# h(A; U) = ⟨A, UUᵀ⟩ (Blanc et al. §4.1), with closed forms (∇_U h = (A + Aᵀ)U, reg = ⟨M, UUᵀ⟩):
# defined in nblib.matrix_sensing, re-exported here.
from .matrix_sensing import matrix_sensing  # noqa: E402,F401
