"""Sharpness: the top eigenvalue of the Hessian of the clean training loss, for every chain at once.

    L_c(θ) = (1/n) Σ_i ‖h(x_i; θ_c) − y_i‖²,     λ_max(∇²L_c(θ_c))   by power iteration

The chains' losses are independent, so the Hessian of Σ_c L_c is block-diagonal: one Hessian-vector
product (double backward of Σ_c L_c) serves every chain, and each block's Rayleigh quotient converges to
its own eigenvalue of largest magnitude.
"""
from __future__ import annotations

import torch
from torch import nn

from .module_chains import ModuleChains


def top_hessian_eigenvalue(module: nn.Module, P: dict, X: torch.Tensor, y: torch.Tensor, *,
                           per_chain_data: bool = False, iters: int = 100, seed: int = 0):
    """([C] top eigenvalue, [C] relative change over the last 5 iterations) of the loss Hessian of each
    chain of ``module`` at the stacked parameters P ({name: [C, *shape]}, e.g. ``Trajectory.final()``),
    over its trainable parameters; X [n, *x] and y [n(, k)], or [C, n, ...] with ``per_chain_data``."""
    if iters < 6:
        raise ValueError(f"iters must be at least 6 (the change is measured over the last 5), got {iters}")
    chains = ModuleChains(module)
    names = [k for k in chains.names if k in chains.trainable]
    C = next(iter(P.values())).shape[0]
    Q = {k: v.detach().clone().requires_grad_(k in chains.trainable) for k, v in P.items()}

    def grads():
        r = chains.forward(Q, X, shared=not per_chain_data) - y
        loss = r.pow(2).reshape(C, r.shape[1], -1).sum(-1).mean(1).sum()
        return torch.autograd.grad(loss, [Q[k] for k in names], create_graph=True)

    def per_chain(vs):
        return sum(v.reshape(C, -1).pow(2).sum(1) for v in vs).sqrt()

    gen = torch.Generator().manual_seed(seed)
    V = [torch.randn(Q[k].shape, generator=gen, dtype=Q[k].dtype) for k in names]
    history = []
    with torch.enable_grad():
        g = grads()
        for _ in range(iters):
            norm = per_chain(V)
            V = [v / norm.reshape(C, *[1] * (v.ndim - 1)) for v in V]
            HV = torch.autograd.grad(g, [Q[k] for k in names], grad_outputs=V, retain_graph=True)
            history.append(sum((h * v).reshape(C, -1).sum(1) for h, v in zip(HV, V)).detach())
            V = [h.detach() for h in HV]
    top = history[-1]
    return top, ((history[-1] - history[-6]).abs() / top.abs())
