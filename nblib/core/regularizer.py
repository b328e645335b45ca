"""The implicit regularizer of label-noise SGD (Blanc et al. 2020):

    reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖²

A model is a plain function ``h(params, x)`` returning the scalar output for one example, with
``params`` a dict of tensors — or any ``torch.nn.Module`` (called as ``implicit_regularizer(module, X)``),
for which reg sums over the module's k outputs, (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ)‖², from per-layer rules
(``nblib.core.module_reg``). Per-example gradients come from ``torch.func.vmap(torch.func.grad(h))``:
one batched computation, no Python loop over examples, and differentiable with respect to ``params``
(so gradient descent on loss + λ·reg works). A model may carry closed forms (see ``ClosedForm``);
``fast=True`` uses them, ``fast=False`` forces the generic torch.func reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, vmap

from . import module_reg, validate


@dataclass(frozen=True)
class ClosedForm:
    """Closed-form, chain-batched pieces of a scalar model h(θ, x), for the fast path.

    Shapes: ``P`` is params stacked over chains ({name: [C, *shape]}); ``Xb`` is [C, B, *xshape]
    (each chain its own minibatch); ``X`` is [n, *xshape] (shared by all chains).

    forward(P, Xb) -> [C, B]                 h(θ_c, x_cb)
    vjp(P, Xb, r) -> {name: [C, *shape]}     Σ_b r_cb ∇_θ h(θ_c, x_cb)
    sq_grad_norms(P, X) -> [C, n]            ‖∇_θ h(θ_c, x_i)‖²   (optional)
    reg(P, X) -> [C]                         reg(θ_c), when cheaper than the mean of the above (optional)
    reg_grad(P, X) -> {name: [C, *shape]}    ∇_θ reg(θ_c)          (optional)
    reg_and_grad(P, X) -> ([C], {name: ...}) reg and ∇reg in one pass (optional)
    loss_grad(P, Xb, Yb) -> ({name: ...}, r)  ∇ (1/B) Σ_b (h(θ_c, x_cb) − Y_cb)² and the residuals r
                                             [C, B], in one pass (optional: else forward + vjp)

    grouped=True declares that every piece also takes data per group of chains: Xb and X of shape
    [G, B, *xshape] with G dividing C, group g of C/G consecutive chains using Xb[g] (G = C: one data
    set per chain). Then ``label_noise_sgd(..., per_chain_data=True)`` uses the closed form, and a
    full-batch step reads each group's data once for all its chains; ``reg`` is required.
    """

    forward: Callable
    vjp: Callable
    sq_grad_norms: Callable | None = None
    reg: Callable | None = None
    reg_grad: Callable | None = None
    reg_and_grad: Callable | None = None
    loss_grad: Callable | None = None
    grouped: bool = False


def with_closed_form(model: Callable, **pieces) -> Callable:
    """Attach a ``ClosedForm`` to ``model`` (as ``model.closed_form``) and return the model."""
    model.closed_form = ClosedForm(**pieces)
    return model


def closed_form_of(model: Callable) -> ClosedForm | None:
    return getattr(model, "closed_form", None)


def check_model_output(model: Callable, params: dict, x: torch.Tensor) -> None:
    """model(params, x) must return a 0-d tensor for one example."""
    out = model(params, x)
    if not isinstance(out, torch.Tensor) or out.ndim != 0:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model(params, x) must return a scalar (0-d tensor) for one example; got {shape}")


def per_example_grads(model: Callable, params: dict, X: torch.Tensor) -> dict[str, torch.Tensor]:
    """{name: [n, *shape]}: ∇_θ h(x_i; θ) for every example, batched with torch.func."""
    return vmap(grad(model), in_dims=(None, 0))(params, X)


def _sq_norms_generic(model, params, X):
    grads = per_example_grads(model, params, X)
    return sum(g.pow(2).reshape(g.shape[0], -1).sum(1) for g in grads.values())


def _module_args(model, params, X, stacked):
    """For an nn.Module: (module, X) from (module, X) or (module, None, X); ValueError otherwise."""
    if X is None:
        params, X = None, params
    if params is not None:
        raise ValueError("an nn.Module carries its own parameters: call f(module, X), without params")
    if stacked:
        raise ValueError("stacked=True is for functional models h(params, x); an nn.Module has one set of "
                         "parameters")
    if not isinstance(X, torch.Tensor) or X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"X must be a tensor with a leading dimension of n >= 1 examples, got "
                         f"{tuple(X.shape) if isinstance(X, torch.Tensor) else type(X).__name__}")
    if X.is_floating_point() and not torch.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    return model, X


def per_example_sq_grad_norms(model: Callable, params: dict, X=None, *, stacked: bool = False,
                              fast: bool = True) -> torch.Tensor:
    """‖∇_θ h(x_i; θ)‖² for every example: [n], or [C, n] when params are stacked over C chains.
    For an nn.Module (``per_example_sq_grad_norms(module, X)``): Σ_k ‖∇_θ h_k(x_i; θ)‖², [n]."""
    if isinstance(model, torch.nn.Module):
        return module_reg.module_sq_grad_norms(*_module_args(model, params, X, stacked), fast=fast)
    validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    X, _ = validate.as_data(X, dtype=dtype)
    cf = closed_form_of(model)
    if stacked:
        validate.stacked_chains(params)
        if fast and cf is not None and cf.sq_grad_norms is not None:
            return cf.sq_grad_norms(params, X)
        single = {k: v[0] for k, v in params.items()}
        check_model_output(model, single, X[0])
        return vmap(lambda p: _sq_norms_generic(model, p, X))(params)
    if fast and cf is not None and cf.sq_grad_norms is not None:
        return cf.sq_grad_norms({k: v.unsqueeze(0) for k, v in params.items()}, X)[0]
    check_model_output(model, params, X[0])
    return _sq_norms_generic(model, params, X)


def trainable_sq_grad_norms(model: Callable, params: dict, X, trainable: dict) -> torch.Tensor:
    """[C, n]: ‖m ⊙ ∇_θ h(x_i; θ_c)‖² for stacked params, with 0/1 masks m = trainable[name]
    (broadcastable to the stacked shape; names not given count as trainable): the terms of the
    regularizer of a run in which the masked-out parameters are frozen. torch.func per-example
    gradients (no closed form: a frozen layer changes which terms there are)."""
    validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    X, _ = validate.as_data(X, dtype=dtype)
    validate.stacked_chains(params)
    masks = {k: torch.as_tensor(trainable.get(k, 1.0), dtype=dtype).expand_as(v)
             for k, v in params.items()}
    grads = vmap(lambda p: per_example_grads(model, p, X))(params)          # {k: [C, n, *shape]}
    C, n = next(iter(grads.values())).shape[:2]
    return sum((g * masks[k].unsqueeze(1)).pow(2).reshape(C, n, -1).sum(-1) for k, g in grads.items())


def implicit_regularizer(model: Callable, params: dict, X=None, *, stacked: bool = False,
                         fast: bool = True) -> torch.Tensor:
    """reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖²: a scalar, or [C] when params are stacked over C chains.

    Differentiable with respect to ``params``. For an nn.Module, ``implicit_regularizer(module, X)``:
    reg(θ) = (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ)‖² over its k outputs and trainable parameters, differentiable
    with respect to them.
    """
    if isinstance(model, torch.nn.Module):
        return module_reg.module_regularizer(*_module_args(model, params, X, stacked), fast=fast)
    cf = closed_form_of(model)
    if fast and cf is not None and cf.reg is not None:
        validate.as_params(params)
        dtype = next(iter(params.values())).dtype
        X, _ = validate.as_data(X, dtype=dtype)
        if stacked:
            validate.stacked_chains(params)
            return cf.reg(params, X)
        return cf.reg({k: v.unsqueeze(0) for k, v in params.items()}, X)[0]
    return per_example_sq_grad_norms(model, params, X, stacked=stacked, fast=fast).mean(-1)


def implicit_regularizer_and_grad(model: Callable, params: dict, X=None, *, stacked: bool = False,
                                  fast: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(reg(θ), ∇_θ reg(θ)) without building a graph: closed forms where the model has them
    (``reg_and_grad``, else ``sq_grad_norms`` + ``reg_grad``), autograd of the torch.func reference otherwise.
    Shapes as ``implicit_regularizer``; the gradient dict has the shapes of ``params``. For an nn.Module,
    ``implicit_regularizer_and_grad(module, X)`` gives {name: ∇reg} over ``module.named_parameters()``
    (per-layer rules, then one double backward).
    """
    if isinstance(model, torch.nn.Module):
        return module_reg.module_regularizer_and_grad(*_module_args(model, params, X, stacked), fast=fast)
    validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    X, _ = validate.as_data(X, dtype=dtype)
    if stacked:
        validate.stacked_chains(params)
    P = params if stacked else {k: v.unsqueeze(0) for k, v in params.items()}
    P = {k: v.detach() for k, v in P.items()}
    cf = closed_form_of(model)
    if fast and cf is not None and cf.reg_and_grad is not None:
        reg, grads = cf.reg_and_grad(P, X)
    elif fast and cf is not None and cf.sq_grad_norms is not None and cf.reg_grad is not None:
        reg, grads = cf.sq_grad_norms(P, X).mean(-1), cf.reg_grad(P, X)
    else:
        check_model_output(model, {k: v[0] for k, v in P.items()}, X[0])
        with torch.enable_grad():
            Q = {k: v.clone().requires_grad_(True) for k, v in P.items()}
            reg = vmap(lambda p: _sq_norms_generic(model, p, X).mean())(Q)
            g = (torch.autograd.grad(reg.sum(), list(Q.values()), allow_unused=True) if reg.requires_grad
                 else [None] * len(Q))                     # reg free of θ (e.g. a linear model)
        reg = reg.detach()
        grads = {k: torch.zeros_like(P[k]) if gk is None else gk for k, gk in zip(Q, g)}
    if not stacked:
        reg, grads = reg[0], {k: v[0] for k, v in grads.items()}
    return reg, grads
