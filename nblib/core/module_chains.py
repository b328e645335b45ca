"""C copies of one ``nn.Module`` as one functional model: the chains of ``label_noise_sgd`` on a module.

    P = {name: [C, *shape]}                    the parameters, stacked along a leading chain dimension
    h(x; θ_c) = functional_call(module, P[c], x)    one forward pass per chain on its own batch, vmapped
                                                    over chains (torch.func's ensemble idiom)
    h(x; θ_c) for an nn.Sequential of layers whose rules have ``forward_chains`` (Linear, Conv1d/2d,
    LayerNorm) and of parameter-free layers: each layer once for all chains (a batched product, a grouped
    convolution), and the step's gradient by plain autograd; used when it agrees with the vmapped
    forward on the first batch (else the vmapped one is)
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

from . import module_reg, rules


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


def sequential_plan(module: nn.Module, prefix: str = ""):
    """[(layer, its parameter names' prefix, rule or None)] when the module is an nn.Sequential (nested
    ones allowed) of layers that either have a rule with ``forward_chains`` or hold no parameters,
    buffers or children; None otherwise."""
    if not isinstance(module, nn.Sequential):
        return None
    plan = []
    for name, m in module.named_children():
        if isinstance(m, nn.Sequential):
            inner = sequential_plan(m, f"{prefix}{name}.")
            if inner is None:
                return None
            plan += inner
            continue
        has_state = any(True for _ in m.parameters()) or any(True for _ in m.buffers())
        if not has_state and not any(True for _ in m.children()):
            plan.append((m, None, None))
            continue
        rule = rules.rule_for(m)
        if rule is None or rule.forward_chains is None or any(True for _ in m.buffers()):
            return None
        plan.append((m, f"{prefix}{name}.", rule))
    return plan


def run_plan(plan, P: dict, x: torch.Tensor) -> torch.Tensor:
    """[C, B, ...]: the layers of ``plan`` on x [C, B, *x], chain c with parameters P[·][c]."""
    C, B = x.shape[:2]
    h = x.reshape(C * B, *x.shape[2:])
    for m, prefix, rule in plan:
        if rule is None:
            h = m(h)
        else:
            own = {k[len(prefix):]: v for k, v in P.items() if k.startswith(prefix) and "." not in k[len(prefix):]}
            h = rule.forward_chains(m, own, h, C)
    return h.reshape(C, B, *h.shape[1:])


class ModuleChains:
    """The functional view of ``module`` that the loop runs: forward, loss gradient and reg per chain."""

    def __init__(self, module: nn.Module):
        module_reg.check_module(module)
        self.module = module
        self.names = [k for k, _ in module.named_parameters()]
        self.trainable = {k for k, p in module.named_parameters() if p.requires_grad}
        self.buffers = dict(module.named_buffers())
        self.plan = sequential_plan(module)
        self.plan_checked = False

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

    def use_plan(self, P: dict, Xb: torch.Tensor) -> bool:
        """Whether the layer-by-layer chain forward applies: the first time, it must agree with the vmapped
        forward on this batch (a layer that mixes positions of the batch dimension would not)."""
        if self.plan is not None and not self.plan_checked:
            self.plan_checked = True
            with torch.no_grad():
                a, b = run_plan(self.plan, P, Xb), self.forward(P, Xb)
            tol = 1e-4 if a.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-9
            if a.shape != b.shape or not torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max() + 1)):
                self.plan = None
        return self.plan is not None

    def loss_grad(self, shared: bool):
        """(P, Xb, Yb) -> ({name: ∇ (1/B) Σ_b ‖h(x_b; θ_c) − Y_b‖²} over trainable names, residuals)."""
        names = [k for k in self.names if k in self.trainable]

        def plan_loss_grad(P, Xb, Yb):                 # plain autograd through the chains' layers
            C = next(iter(P.values())).shape[0]
            if shared:
                Xb = Xb.expand(C, *Xb.shape)
            with torch.enable_grad():
                Q = {k: v.detach().requires_grad_(k in self.trainable) for k, v in P.items()}
                r = run_plan(self.plan, Q, Xb) - Yb
                loss = r.pow(2).reshape(C, r.shape[1], -1).sum(-1).mean(1).sum()
                gs = torch.autograd.grad(loss, [Q[k] for k in names])
            grads = dict(zip(names, gs))
            return {k: grads[k] if k in grads else torch.zeros_like(P[k]) for k in P}, r.detach()

        def objective(p, xb, yb):
            r = self.h(p, xb) - yb
            return r.pow(2).reshape(r.shape[0], -1).sum(1).mean(), r

        g = vmap(grad(objective, has_aux=True), in_dims=(0, None if shared else 0, 0))

        def vmap_loss_grad(P, Xb, Yb):
            grads, r = g(P, Xb, Yb)
            return {k: grads[k] if k in self.trainable else torch.zeros_like(P[k]) for k in P}, r

        def loss_grad(P, Xb, Yb):
            x = Xb.expand(next(iter(P.values())).shape[0], *Xb.shape) if shared else Xb
            return (plan_loss_grad if self.use_plan(P, x) else vmap_loss_grad)(P, Xb, Yb)
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
