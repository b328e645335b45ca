"""The implicit regularizer of any ``torch.nn.Module``, exactly, from per-layer rules:

    reg(θ) = (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ)‖²

for a model with k outputs per example (h(X): [n] or [n, k]); the sum over k is what independent label
noise on each output gives (k = 1: Blanc et al.'s reg). Examples must not interact: a BatchNorm layer in
training mode (anything that mixes the batch) raises ValueError; call ``module.eval()`` first.

The fast path needs no per-example gradient of any layer a rule covers. For each output k one backward
pass of Σ_i h_k(x_i) gives every covered layer's output gradient g = ∂h_k(x_i)/∂z (examples are
independent), and its input a was recorded on the forward pass; the layer's rule turns them into
Σ ‖∇_θ h_k(x_i)‖² over its own parameters, per example, with positions t (sequence steps, conv patches, or
repeated calls of the same layer) summed inside (e.g. nn.Linear: ‖∇_W h‖² = Σ_{t,t'} (g_t·g_t')(a_t·a_t')).
The rules live in ``nblib/rules``, one file per layer type (Linear, Conv1d/2d, Embedding, LayerNorm), each
with its formula; a new layer type is one new file there with a ``Rule`` subclass under
``@register(LayerType)``.

A rule applies only when the layer's own calls are the only uses of its parameters in the autograd
graph (a weight tied to another layer, or used directly elsewhere, sends that layer to the generic path).
Any other parameter (a bare nn.Parameter, a layer with a parametrization, grouped or padded-mode
convolutions, Embedding with max_norm or scale_grad_by_freq) goes through the torch.func reference,
``vmap(grad)`` of ``functional_call``, for those parameters only. ∇reg is one more backward through all of
it (double backward). ``reference_sq_grad_norms`` is the plain per-example autograd loop the tests compare
against.

One PyTorch limitation shapes the generic path: in torch 2.13 the double backward of ``vmap(grad)``
through a normalization layer (layer_norm, group_norm, ...) is wrong (the values are right, ∇reg is not;
a per-example loop gives the right one). Normalization layers not covered by a rule therefore make ∇reg of
the generic path loop over examples (exact, slower).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from . import rules


# ----------------------------------------------------------------------------- checks


def check_module(module: nn.Module) -> None:
    """ValueError if any layer mixes the examples of a batch (BatchNorm in training mode)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"expected a torch.nn.Module, got {type(module).__name__}")
    for name, m in module.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(f"layer {name or type(m).__name__!r} ({type(m).__name__}) is in training mode and "
                             "mixes the examples of a batch, so per-example gradients are not defined: "
                             "call module.eval() first")
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError("the module has no trainable parameters (requires_grad=True)")


def _outputs(out: torch.Tensor, n: int) -> torch.Tensor:
    """h(X) as [n, k]."""
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != n:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"module(X) must return one output row per example, [n={n}] or [n, k]; got {shape}")
    return out.reshape(n, -1)


NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm, nn.modules.batchnorm._BatchNorm)
if hasattr(nn, "RMSNorm"):
    NORMS = NORMS + (nn.RMSNorm,)


def _graph_uses(out: torch.Tensor, params) -> dict[int, int]:
    """How many operations of the autograd graph of ``out`` consume each parameter (by id)."""
    uses = {id(p): 0 for p in params}
    seen, stack = set(), [out.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        for nxt, _ in fn.next_functions:
            if nxt is None:
                continue
            var = getattr(nxt, "variable", None)
            if var is not None and id(var) in uses:
                uses[id(var)] += 1
            stack.append(nxt)
    return uses


# ----------------------------------------------------------------------------- the regularizer


def _generic_sq_norms(module, X, names, create_graph):
    """Σ_k ‖∇_θ h_k(x_i)‖² over the parameters ``names`` only, per example: torch.func vmap(grad)."""
    if not names:
        return 0.0
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    free = {k: v for k, v in params.items() if k not in names}
    own = {k: params[k] for k in names}
    if not create_graph:
        own = {k: v.detach() for k, v in own.items()}
        free = {k: v.detach() for k, v in free.items()}

    def out_k(p, x, k):
        return functional_call(module, ({**free, **p}, buffers), (x.unsqueeze(0),)).reshape(-1)[k]

    k_out = _outputs(module(X[:1]), 1).shape[1]
    per_example_loop = create_graph and any(isinstance(m, NORMS) for m in module.modules())

    def sq(p, x, k):
        return sum(g.pow(2).sum() for g in grad(out_k)(p, x, k).values())

    total = 0.0
    for k in range(k_out):
        if per_example_loop:                               # see the module docstring
            total = total + torch.stack([sq(own, x, k) for x in X])
        else:
            total = total + vmap(sq, in_dims=(None, 0, None))(own, X, k)
    return total


def _sq_norms(module, X, *, fast, create_graph):
    check_module(module)
    trainable = {k for k, p in module.named_parameters() if p.requires_grad}
    named = dict(module.named_modules()) if fast else {}
    rule = {name: r for name, m in named.items()
            if (r := rules.rule_for(m)) is not None and any(p.requires_grad for p in m.parameters())}
    layers = {name: named[name] for name in rule}
    inputs = {name: [] for name in layers}
    outputs = {name: [] for name in layers}

    def record(name):
        def hook(m, args, out):
            inputs[name].append(args[0])
            outputs[name].append(out)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in layers.items()]
    try:
        with torch.enable_grad():
            h = _outputs(module(X), X.shape[0])
    finally:
        for hd in handles:
            hd.remove()
    # a rule holds only if the layer's calls are the only uses of its parameters (not tied elsewhere)
    uses = _graph_uses(h, [p for m in layers.values() for p in m.parameters(recurse=False)])
    used = [name for name, m in layers.items() if outputs[name] and all(
        uses[id(p)] == len(outputs[name]) for p in m.parameters(recurse=False) if p.requires_grad)]
    covered = {f"{ln}.{pn}" if ln else pn for ln in used
               for pn, p in layers[ln].named_parameters(recurse=False) if p.requires_grad}
    total = torch.zeros(X.shape[0], dtype=h.dtype, device=h.device)
    zs = [z for name in used for z in outputs[name]]
    feats = {name: rule[name].features(layers[name], inputs[name]) for name in used}
    for k in range(h.shape[1] if used else 0):
        gz = torch.autograd.grad(h[:, k].sum(), zs, retain_graph=True, create_graph=create_graph,
                                 allow_unused=True)
        gz = [torch.zeros_like(z) if g is None else g for z, g in zip(zs, gz)]
        j = 0
        for name in used:
            c = len(outputs[name])
            total = total + rule[name].sq_norms(layers[name], feats[name], gz[j:j + c])
            j += c
    return total + _generic_sq_norms(module, X, sorted(trainable - covered), create_graph)


def module_sq_grad_norms(module: nn.Module, X: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """[n]: Σ_k ‖∇_θ h_k(x_i; θ)‖² for every example, over the module's trainable parameters."""
    return _sq_norms(module, X, fast=fast, create_graph=False).detach()


def module_regularizer(module: nn.Module, X: torch.Tensor, *, fast: bool = True) -> torch.Tensor:
    """reg(θ) = (1/n) Σ_i Σ_k ‖∇_θ h_k(x_i; θ)‖², differentiable with respect to the module's parameters."""
    return _sq_norms(module, X, fast=fast, create_graph=True).mean()


def module_regularizer_and_grad(module: nn.Module, X: torch.Tensor, *, fast: bool = True):
    """(reg(θ), {name: ∇reg}) for the module's trainable parameters (one double backward)."""
    reg = module_regularizer(module, X, fast=fast)
    named = [(k, p) for k, p in module.named_parameters() if p.requires_grad]
    gs = (torch.autograd.grad(reg, [p for _, p in named], allow_unused=True) if reg.requires_grad
          else [None] * len(named))                      # reg free of θ (e.g. a linear model)
    return reg.detach(), {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(named, gs)}


def reference_sq_grad_norms(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """The naive reference: a Python loop over examples and outputs, autograd on each h_k(x_i)."""
    check_module(module)
    params = [p for p in module.parameters() if p.requires_grad]
    out = []
    for i in range(X.shape[0]):
        h = _outputs(module(X[i:i + 1]), 1)[0]
        total = 0.0
        for k in range(h.shape[0]):
            gs = torch.autograd.grad(h[k], params, retain_graph=True, allow_unused=True)
            total = total + sum((g ** 2).sum() for g in gs if g is not None)
        out.append(torch.as_tensor(total, dtype=h.dtype))
    return torch.stack(out)
