"""The network, its path-norm, Path-SGD and rescaling (Neyshabur, Salakhutdinov, Srebro 2015).

A layered ReLU MLP here is a ``torch.nn.Sequential`` of ``Linear, ReLU, Linear, ReLU, ..., Linear``.
Biases are edges from a constant unit (value 1) into their unit, so a path starts at an input or at a bias.

    γ²_in(v)  = Σ_u γ²_in(u) w²_{u→v} + b²_v           (γ²_in = 1 at the inputs)
    γ²_out(u) = Σ_v w²_{u→v} γ²_out(v)                  (γ²_out = 1 at the outputs)
    φ₂(w)²    = Σ_paths Π_e w_e² = Σ_outputs γ²_in(out)                          path_norm
    κ_{u→v}   = Σ_{paths ∋ u→v} Π_{e' ≠ u→v} w²_{e'} = γ²_in(u) γ²_out(v),  κ_{b_v} = γ²_out(v)
    Path-SGD:   w_e ← w_e − η ∂L/∂w_e / κ_e                                     PathSGD

Both γ's, and so κ, come from ONE forward and ONE backward pass: run the network with every weight and
bias squared and no ReLU on an all-ones input, sum the outputs (= φ₂²), and differentiate with respect to
the squared parameters: ∂φ₂²/∂(w²_{u→v}) = γ²_in(u) γ²_out(v) = κ_{u→v} and ∂φ₂²/∂(b²_v) = γ²_out(v).
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

# ----------------------------------------------------------------------------- the network


def layered_relu_mlp(sizes, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                     bias: bool = True) -> nn.Sequential:
    """Linear, ReLU, ..., Linear with widths ``sizes`` (input first, output last).

    Balanced initialization: every weight ~ N(0, 1/fan_in), biases 0 (the same scale into every unit).
    """
    sizes = list(sizes)
    if len(sizes) < 2 or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sizes):
        raise ValueError(f"sizes must be >= 2 positive integers (input, hidden..., output), got {sizes!r}")
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(fan_in, fan_out, bias=bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(fan_out, fan_in, generator=g, dtype=dtype) / math.sqrt(fan_in))
            if bias:
                lin.bias.zero_()
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linear_layers(model) -> list[nn.Linear]:
    """The Linear layers of a layered ReLU MLP; ValueError if ``model`` is not one."""
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ValueError(f"model must be a non-empty torch.nn.Sequential, got {type(model).__name__}")
    mods = list(model)
    for i, m in enumerate(mods):
        want = nn.Linear if i % 2 == 0 else nn.ReLU
        if not isinstance(m, want):
            raise ValueError(f"layer {i} of the model is {type(m).__name__}; a layered ReLU MLP alternates "
                             "Linear and ReLU and starts and ends with Linear")
    if not isinstance(mods[-1], nn.Linear):
        raise ValueError("a layered ReLU MLP must end with a Linear layer")
    lins = mods[::2]
    for a, b in zip(lins[:-1], lins[1:]):
        if a.out_features != b.in_features:
            raise ValueError(f"Linear layers do not chain: {a.out_features} outputs feed {b.in_features} inputs")
    return lins


def _squared_forward(lins, sq_w, sq_b, dtype):
    """Σ_outputs of the network with squared parameters and identity activations, on an all-ones input."""
    z = torch.ones(lins[0].in_features, dtype=dtype)
    for w2, b2 in zip(sq_w, sq_b):
        z = w2 @ z
        if b2 is not None:
            z = z + b2
    return z.sum()


def path_norm(model, *, include_bias: bool = True) -> torch.Tensor:
    """φ₂(w) = (Σ_paths Π_e w_e²)^{1/2}, paths from every input (and every bias when include_bias) to
    every output. Invariant under rescaling hidden units. Returns a 0-d tensor (no gradient)."""
    lins = linear_layers(model)
    with torch.no_grad():
        sq_w = [lin.weight ** 2 for lin in lins]
        sq_b = [(lin.bias ** 2 if (include_bias and lin.bias is not None) else None) for lin in lins]
        return _squared_forward(lins, sq_w, sq_b, lins[0].weight.dtype).sqrt()


def path_kappa(model, *, include_bias: bool = True) -> dict[nn.Parameter, torch.Tensor]:
    """κ_e for every weight and bias (one forward and one backward pass on squared parameters).

    κ_{u→v} = γ²_in(u)·γ²_out(v); κ_{b_v} = γ²_out(v) (or 1 when include_bias is False, i.e. plain SGD on
    biases, which then also do not enter γ_in). Returns {parameter: κ of the same shape}.
    """
    lins = linear_layers(model)
    sq_w = [lin.weight.detach().pow(2).requires_grad_(True) for lin in lins]
    sq_b = [(lin.bias.detach().pow(2).requires_grad_(True) if (include_bias and lin.bias is not None) else None)
            for lin in lins]
    with torch.enable_grad():
        total = _squared_forward(lins, sq_w, sq_b, lins[0].weight.dtype)
        leaves = sq_w + [b for b in sq_b if b is not None]
        grads = torch.autograd.grad(total, leaves)
    kappa = {}
    for lin, g in zip(lins, grads[:len(lins)]):
        kappa[lin.weight] = g
    it = iter(grads[len(lins):])
    for lin, b2 in zip(lins, sq_b):
        if lin.bias is not None:
            kappa[lin.bias] = next(it) if b2 is not None else torch.ones_like(lin.bias)
    return kappa


class PathSGD(torch.optim.Optimizer):
    """Path-SGD (p = 2): w_e ← w_e − lr · ∂L/∂w_e / κ_e, κ recomputed from the current weights each step.

    Takes the MODEL (a layered ReLU MLP), not its parameters, because κ needs the layer structure.
    Where κ_e = 0 (a unit with no path to an output) the gradient is 0 too and the step is 0.
    """

    def __init__(self, model, lr: float, *, include_bias: bool = True):
        linear_layers(model)
        if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        self.model = model
        self.include_bias = include_bias
        super().__init__(list(model.parameters()), dict(lr=float(lr)))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        kappa = path_kappa(self.model, include_bias=self.include_bias)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                k = kappa[p]
                step = torch.where(k > 0, p.grad / torch.where(k > 0, k, torch.ones_like(k)), torch.zeros_like(k))
                p.add_(step, alpha=-group["lr"])
        return loss


# ----------------------------------------------------------------------------- rescaling


def rescale_hidden_units(model, factors) -> nn.Sequential:
    """A copy of ``model`` with hidden unit j of hidden layer l rescaled by c = factors[l][j] > 0:
    its incoming weights and bias × c, its outgoing weights × 1/c. The function is unchanged (ReLU is
    positively homogeneous). ``factors``: one 1-D tensor per hidden layer."""
    lins = linear_layers(model)
    factors = list(factors)
    if len(factors) != len(lins) - 1:
        raise ValueError(f"need one factor vector per hidden layer ({len(lins) - 1}), got {len(factors)}")
    out = copy.deepcopy(model)
    new = linear_layers(out)
    with torch.no_grad():
        for l, c in enumerate(factors):
            c = torch.as_tensor(c, dtype=new[l].weight.dtype)
            if c.shape != (new[l].out_features,):
                raise ValueError(f"factors[{l}] must have shape ({new[l].out_features},), got {tuple(c.shape)}")
            if not torch.isfinite(c).all() or (c <= 0).any():
                raise ValueError(f"factors[{l}] must be positive and finite")
            new[l].weight.mul_(c[:, None])
            if new[l].bias is not None:
                new[l].bias.mul_(c)
            new[l + 1].weight.div_(c[None, :])
    return out


def random_rescaling_factors(model, imbalance: float, *, seed: int = 0) -> list[torch.Tensor]:
    """Log-normal factors c = exp(imbalance · z), z ~ N(0, 1), one per hidden unit."""
    if not isinstance(imbalance, (int, float)) or not math.isfinite(imbalance) or imbalance < 0:
        raise ValueError(f"imbalance must be a non-negative finite number, got {imbalance!r}")
    lins = linear_layers(model)
    g = torch.Generator().manual_seed(seed)
    return [torch.exp(imbalance * torch.randn(lin.out_features, generator=g, dtype=torch.float64)).to(
        lin.weight.dtype) for lin in lins[:-1]]


def unbalance(model, imbalance: float, *, seed: int = 0) -> nn.Sequential:
    """The same function, unbalanced: every hidden unit rescaled by a log-normal factor exp(imbalance·z)."""
    return rescale_hidden_units(model, random_rescaling_factors(model, imbalance, seed=seed))


def weight_decay_norm(model) -> torch.Tensor:
    """μ_{2,2}² = Σ of squared weights and biases (what weight decay penalizes); NOT rescaling invariant."""
    with torch.no_grad():
        return sum((p ** 2).sum() for p in model.parameters())


def network_norms(model) -> dict[str, float]:
    """Norms of a trained network: path-norm φ₂, ℓ2 norm √μ_{2,2}, product of Frobenius norms and of
    spectral norms of the weight matrices, and the number of parameters."""
    lins = linear_layers(model)
    with torch.no_grad():
        return {
            "path": float(path_norm(model)),
            "l2": float(weight_decay_norm(model).sqrt()),
            "frobenius_product": float(np.prod([float(torch.linalg.matrix_norm(l.weight)) for l in lins])),
            "spectral_product": float(np.prod([float(torch.linalg.matrix_norm(l.weight, ord=2)) for l in lins])),
            "parameters": float(sum(p.numel() for p in model.parameters())),
        }
