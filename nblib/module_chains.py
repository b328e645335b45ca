"""C copies of one ``nn.Module`` as one functional model: the chains of ``label_noise_sgd`` on a module.

    P = {name: [C, *shape]}                    the parameters, stacked along a leading chain dimension
    h(x; θ_c) = functional_call(module, P[c], x)    one forward pass per chain on its own batch, vmapped
                                                    over chains (torch.func's ensemble idiom)
    reg(θ_c) = (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ_c)‖²   from the per-layer rules, with chain c's parameters
                                                    swapped into the module (no copies of it)

A module's parameters with ``requires_grad=False`` are carried along but never change. Buffers (a
BatchNorm's running statistics in eval mode) are shared by every chain.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.stateless import _reparametrize_module

from . import module_reg


def stack_modules(modules) -> dict[str, torch.Tensor]:
    """{name: [C, *shape]}: the parameters of C modules of one architecture, one chain each."""
    modules = list(modules)
    if not modules or not all(isinstance(m, nn.Module) for m in modules):
        raise ValueError("stack_modules needs a non-empty list of nn.Modules")
    names = [[k for k, _ in m.named_parameters()] for m in modules]
    if any(n != names[0] for n in names):
        raise ValueError("the modules do not share one architecture (their parameter names differ)")
    return {k: torch.stack([dict(m.named_parameters())[k].detach() for m in modules])
            for k in names[0]}


class ModuleChains:
    """The functional view of ``module`` that the loop runs: forward, loss gradient and reg per chain."""

    def __init__(self, module: nn.Module):
        module_reg.check_module(module)
        self.module = module
        self.names = [k for k, _ in module.named_parameters()]
        self.trainable = {k for k, p in module.named_parameters() if p.requires_grad}
        self.buffers = dict(module.named_buffers())

    def stack(self, chains: int) -> dict[str, torch.Tensor]:
        """The module's own parameters, copied to every chain."""
        return {k: p.detach().unsqueeze(0).repeat(chains, *([1] * p.ndim))
                for k, p in self.module.named_parameters()}

    def check_stacked(self, P: dict) -> None:
        if sorted(P) != sorted(self.names):
            raise ValueError(f"stacked params must have the module's parameter names {sorted(self.names)}; "
                             f"got {sorted(P)}")
        own = dict(self.module.named_parameters())
        for k, v in P.items():
            if tuple(v.shape[1:]) != tuple(own[k].shape):
                raise ValueError(f"stacked params[{k!r}] has shape {tuple(v.shape)}; expected "
                                 f"[C, {', '.join(map(str, own[k].shape))}] (the module's shape per chain)")

    def h(self, p: dict, x: torch.Tensor) -> torch.Tensor:
        """h(x; θ) for one chain's parameters p on a batch x [B, *x]: [B] or [B, k]."""
        return functional_call(self.module, (p, self.buffers), (x,))

    def forward(self, P: dict, Xb: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        """[C, B(, k)]: every chain on its own batch Xb [C, B, *x], or on one batch X [n, *x] (shared)."""
        return vmap(self.h, in_dims=(0, None if shared else 0))(P, Xb)

    def loss_grad(self, shared: bool):
        """(P, Xb, Yb) -> ({name: ∇ (1/B) Σ_b ‖h(x_b; θ_c) − Y_b‖²} over trainable names, residuals)."""
        def objective(p, xb, yb):
            r = self.h(p, xb) - yb
            return r.pow(2).reshape(r.shape[0], -1).sum(1).mean(), r

        g = vmap(grad(objective, has_aux=True), in_dims=(0, None if shared else 0, 0))

        def loss_grad(P, Xb, Yb):
            grads, r = g(P, Xb, Yb)
            return {k: grads[k] if k in self.trainable else torch.zeros_like(P[k]) for k in P}, r
        return loss_grad

    @contextlib.contextmanager
    def chain(self, P: dict, c: int, *, requires_grad: bool = False):
        """The module with chain c's parameters in place (as leaves), restored on exit."""
        p = {k: v[c].detach().requires_grad_(requires_grad and k in self.trainable) for k, v in P.items()}
        with _reparametrize_module(self.module, p):
            yield self.module

    def reg(self, P: dict, X: torch.Tensor, *, per_chain: bool, fast: bool = True) -> torch.Tensor:
        """[C]: reg(θ_c) over the module's trainable parameters, on X [n, *x] (or X[c] per chain)."""
        out = []
        for c in range(next(iter(P.values())).shape[0]):
            with torch.enable_grad(), self.chain(P, c, requires_grad=True) as m:
                out.append(module_reg.module_sq_grad_norms(m, X[c] if per_chain else X, fast=fast).mean())
        return torch.stack(out)

    def reg_grad(self, P: dict, X: torch.Tensor, *, per_chain: bool, fast: bool = True) -> dict:
        """{name: [C, *shape]}: ∇_θ reg(θ_c) for every chain (zero for frozen parameters)."""
        grads = {k: torch.zeros_like(v) for k, v in P.items()}
        for c in range(next(iter(P.values())).shape[0]):
            with torch.enable_grad(), self.chain(P, c, requires_grad=True) as m:
                _, g = module_reg.module_regularizer_and_grad(m, X[c] if per_chain else X, fast=fast)
            for k, v in g.items():
                grads[k][c] = v
        return grads
