"""Path-norm, Path-SGD and rescaling for layered ReLU networks (Neyshabur, Salakhutdinov, Srebro 2015).

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


# ----------------------------------------------------------------------------- data


def digits_split(sizes, *, seed: int = 0, dtype: torch.dtype = torch.float64):
    """scikit-learn's bundled 8×8 digits (1797 images, no download), pixels scaled to [0, 1], shuffled with
    ``seed`` and cut into consecutive parts of the given ``sizes`` (e.g. train, validation, test).
    Returns a list of (X [n, 64], y [n] int64) pairs."""
    from sklearn.datasets import load_digits

    data = load_digits()
    sizes = list(sizes)
    if any(not isinstance(s, int) or s < 1 for s in sizes) or sum(sizes) > len(data.target):
        raise ValueError(f"sizes must be positive integers summing to at most {len(data.target)}, got {sizes}")
    order = np.random.default_rng(seed).permutation(len(data.target))
    X = torch.tensor(data.data / 16.0, dtype=dtype)
    y = torch.tensor(data.target, dtype=torch.int64)
    parts, start = [], 0
    for s in sizes:
        idx = torch.as_tensor(order[start:start + s])
        parts.append((X[idx], y[idx]))
        start += s
    return parts


def corrupt_labels(y, fraction: float, *, num_classes: int = 10, seed: int = 0) -> torch.Tensor:
    """A copy of y with a random ``fraction`` of the labels replaced by a different, random class."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    g = torch.Generator().manual_seed(seed)
    y = y.clone()
    k = int(round(fraction * len(y)))
    idx = torch.randperm(len(y), generator=g)[:k]
    y[idx] = (y[idx] + torch.randint(1, num_classes, (k,), generator=g)) % num_classes
    return y


# ----------------------------------------------------------------------------- training


def error_rate(model, X, y) -> float:
    """Fraction of misclassified examples (argmax of the outputs)."""
    with torch.no_grad():
        return float((model(X).argmax(1) != y).double().mean())


def cross_entropy(model, X, y) -> float:
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def train(model, optimizer, X, y, *, epochs: int, batch_size: int, seed: int = 0, evals=None,
          record_every: int = 1, stop_at_zero_error: bool = False):
    """Minibatch training on the cross-entropy loss (no regularization), reshuffling every epoch.

    evals: {name: (X, y)} evaluated (loss and error) every ``record_every`` epochs, plus "train".
    Returns {"epoch": [...], "<name>_loss": [...], "<name>_err": [...]}. Raises ValueError on divergence.
    """
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive integers, got {epochs!r}, {batch_size!r}")
    if not torch.isfinite(X).all() or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be a finite [n, d] tensor and y [n] labels; got {tuple(X.shape)}, {tuple(y.shape)}")
    evals = {"train": (X, y), **(evals or {})}
    hist = {"epoch": []}
    for name in evals:
        hist[f"{name}_loss"], hist[f"{name}_err"] = [], []

    def record(ep):
        hist["epoch"].append(ep)
        for name, (Xe, ye) in evals.items():
            hist[f"{name}_loss"].append(cross_entropy(model, Xe, ye))
            hist[f"{name}_err"].append(error_rate(model, Xe, ye))

    record(0)
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    for ep in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            loss.backward()
            optimizer.step()
        if not math.isfinite(loss.item()) or not all(torch.isfinite(p).all() for p in model.parameters()):
            raise ValueError(f"training diverged at epoch {ep} (loss {loss.item()}): lower the step size")
        if ep % record_every == 0 or ep == epochs:
            record(ep)
            if stop_at_zero_error and hist["train_err"][-1] == 0.0:
                break
    return hist


# ----------------------------------------------------------------------------- many widths at once


class WidthBank(nn.Module):
    """K independent one-hidden-layer ReLU networks 64–H_k–C trained as one module.

    The hidden layers are concatenated (one matmul for all widths); network k's output uses only its own
    hidden units. The loss is the SUM of the K networks' losses, so each network's gradient, and hence its
    SGD (with or without momentum) trajectory, is exactly what it would be trained alone on the same
    minibatches. Initialization: each network is ``layered_relu_mlp([d, H_k, C], seed=seeds[k])``.
    """

    def __init__(self, widths, *, d_in: int, n_out: int, seeds=None, dtype: torch.dtype = torch.float32):
        super().__init__()
        widths = list(widths)
        if not widths or any(not isinstance(h, int) or h < 1 for h in widths):
            raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
        seeds = list(seeds) if seeds is not None else list(range(len(widths)))
        if len(seeds) != len(widths):
            raise ValueError(f"need one seed per width: {len(widths)} widths, {len(seeds)} seeds")
        nets = [layered_relu_mlp([d_in, h, n_out], seed=s, dtype=dtype) for h, s in zip(widths, seeds)]
        self.widths = widths
        self.bounds = np.concatenate([[0], np.cumsum(widths)]).tolist()
        self.W1 = nn.Parameter(torch.cat([n[0].weight.detach() for n in nets]))
        self.b1 = nn.Parameter(torch.cat([n[0].bias.detach() for n in nets]))
        self.W2 = nn.Parameter(torch.cat([n[2].weight.detach() for n in nets], dim=1))
        self.b2 = nn.Parameter(torch.stack([n[2].bias.detach() for n in nets]))

    def forward(self, X) -> list[torch.Tensor]:
        """[outputs of network k, shape [n, C]] for k = 0..K−1."""
        h = torch.relu(X @ self.W1.T + self.b1)
        return [h[:, s:e] @ self.W2[:, s:e].T + self.b2[k]
                for k, (s, e) in enumerate(zip(self.bounds[:-1], self.bounds[1:]))]

    def network(self, k: int) -> nn.Sequential:
        """Network k as a standalone layered ReLU MLP (a copy)."""
        if not isinstance(k, int) or not 0 <= k < len(self.widths):
            raise ValueError(f"k must be an integer in [0, {len(self.widths)}), got {k!r}")
        s, e = self.bounds[k], self.bounds[k + 1]
        net = layered_relu_mlp([self.W1.shape[1], e - s, self.W2.shape[0]], dtype=self.W1.dtype)
        with torch.no_grad():
            net[0].weight.copy_(self.W1[s:e]), net[0].bias.copy_(self.b1[s:e])
            net[2].weight.copy_(self.W2[:, s:e]), net[2].bias.copy_(self.b2[k])
        return net


def train_bank(bank: WidthBank, optimizer, X, y, *, epochs: int, batch_size: int, seed: int = 0):
    """Minibatch training of every network of the bank on the cross-entropy (sum over networks)."""
    if not isinstance(epochs, int) or epochs < 1 or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be positive integers, got {epochs!r}, {batch_size!r}")
    if not torch.isfinite(X).all() or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be a finite [n, d] tensor and y [n] labels; got {tuple(X.shape)}, {tuple(y.shape)}")
    g = torch.Generator().manual_seed(seed)
    n = len(y)
    for ep in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = sum(nn.functional.cross_entropy(out, y[idx]) for out in bank(X[idx]))
            loss.backward()
            optimizer.step()
        if not math.isfinite(loss.item()):
            raise ValueError(f"training diverged at epoch {ep} (loss {loss.item()}): lower the step size")
    return bank
