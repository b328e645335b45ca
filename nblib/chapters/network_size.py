"""The network-size chapter's experiment: many one-hidden-layer ReLU networks, trained to a loss target.

    ReplicateBank   M problems (one replicate's training set and labels each) × K widths: M·K
                    independent networks d–H_k–C, network (m, k) initialized as
                    ``layered_relu_mlp([d, H_k, C], seed=init_seeds[m][k])``
    train_to_loss   SGD with momentum, problem m on its own data in its own minibatch order; every
                    network stops after the first epoch where its training cross-entropy is below
                    ``loss_target`` (as SGD saw it during the epoch, the stopping rule of the Path-SGD
                    authors' code, and on the whole training set after it), or at ``max_epochs``
    evaluate        cross-entropy and error rate of every network on every problem's (X, y): [M, K]
    predict         the class every network predicts for every example: [M, K, n]
    first_fit       per problem, the smallest width from which on every network reached the target
    bank_norms      path-norm φ₂, ℓ2 norm √μ₂,₂, product of spectral norms, parameter count: [M, K]

Layout: the widths are cut into groups of consecutive widths (each wide width alone, the narrow ones
together, so that a step costs few tensor operations); group g holds, for all M problems at once, its
widths' hidden units side by side, W1 [M, ΣH, d], b1 [M, ΣH], and a block-diagonal output layer
W2 [M, K_g·C, ΣH] (network j reads only its own units; the off-block entries are zero and stay zero),
b2 [M, K_g·C]. Every network's loss is its own mean cross-entropy and the bank's loss is their sum, so
each network follows exactly the trajectory it would follow trained alone by ``nblib.chapters.path_sgd.train``
with ``torch.optim.SGD(lr, momentum)`` and the same minibatch seed, until it stops.
"""
from __future__ import annotations

import torch
from torch import nn

from .path_sgd import layered_relu_mlp
from ..core.runtime import cpu_settings
from ..core.trajectory import HUGE, DivergenceError

GROUP_UNITS = 64       # consecutive widths share a group while its hidden units number at most this


def width_groups(widths, group_units: int = GROUP_UNITS) -> list[list[int]]:
    """Indices of ``widths`` cut into runs of consecutive widths with at most ``group_units`` hidden
    units in all (a wider width is a group of its own)."""
    groups, units = [], group_units + 1
    for k, h in enumerate(widths):
        if units + h > group_units:
            groups.append([])
            units = 0
        groups[-1].append(k)
        units += h
    return groups


class ReplicateBank(nn.Module):
    """M × K independent one-hidden-layer ReLU networks d–H_k–C (see the module docstring).

    init_seeds[m][k]: the seed of network (m, k)'s initialization (N(0, 1/fan-in) weights, zero biases).
    """

    def __init__(self, widths, init_seeds, *, d_in: int, n_out: int, dtype: torch.dtype = torch.float32,
                 group_units: int = GROUP_UNITS):
        super().__init__()
        widths = list(widths)
        if not widths or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in widths):
            raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
        seeds = [list(row) for row in init_seeds]
        if not seeds or any(len(row) != len(widths) for row in seeds):
            raise ValueError(f"init_seeds must be M rows of {len(widths)} seeds (one per width)")
        self.widths, self.M, self.C = widths, len(seeds), n_out
        self.groups = width_groups(widths, group_units)
        self.where = {k: (g, j) for g, ks in enumerate(self.groups) for j, k in enumerate(ks)}
        self.W1, self.b1 = nn.ParameterList(), nn.ParameterList()
        self.W2, self.b2 = nn.ParameterList(), nn.ParameterList()
        self.units, self.block = [], []          # per group: unit → network j; the W2 block mask
        for ks in self.groups:
            nets = [[layered_relu_mlp([d_in, widths[k], n_out], seed=row[k], dtype=dtype) for k in ks]
                    for row in seeds]
            owner = torch.cat([torch.full((widths[k],), j) for j, k in enumerate(ks)])
            block = (torch.arange(len(ks)).repeat_interleave(n_out)[:, None] == owner).to(dtype)
            self.units.append(owner)
            self.block.append(block)
            self.W1.append(nn.Parameter(torch.stack([torch.cat([n[0].weight for n in row])
                                                     for row in nets]).detach()))
            self.b1.append(nn.Parameter(torch.zeros(self.M, len(owner), dtype=dtype)))
            W2 = torch.stack([torch.cat([n[2].weight for n in row], 1) for row in nets]).detach()
            self.W2.append(nn.Parameter(W2.repeat(1, len(ks), 1) * block))
            self.b2.append(nn.Parameter(torch.zeros(self.M, len(ks) * n_out, dtype=dtype)))

    def group(self, g: int) -> list[nn.Parameter]:
        return [self.W1[g], self.b1[g], self.W2[g], self.b2[g]]

    def forward_group(self, g: int, X: torch.Tensor, problems=None) -> torch.Tensor:
        """Outputs [M, n, K_g, C] of group g's networks on X [M, n, d] (problem m's inputs X[m]); with
        ``problems`` (an index tensor of P problems), those problems' networks only, on X [P, n, d]."""
        W1, b1, W2, b2 = self.group(g)
        if problems is not None:
            W1, b1, W2, b2 = (p.index_select(0, problems) for p in (W1, b1, W2, b2))
        h = torch.relu(torch.baddbmm(b1[:, None, :], X, W1.transpose(1, 2)))
        out = torch.baddbmm(b2[:, None, :], h, W2.transpose(1, 2))
        return out.view(*out.shape[:2], len(self.groups[g]), self.C)

    def network(self, m: int, k: int) -> nn.Sequential:
        """Network (m, k) as a standalone layered ReLU MLP (a copy)."""
        g, j = self.where[k]
        units = self.units[g] == j
        rows = slice(j * self.C, (j + 1) * self.C)
        W1 = self.W1[g][m, units]
        net = layered_relu_mlp([W1.shape[1], W1.shape[0], self.C], dtype=W1.dtype)
        with torch.no_grad():
            net[0].weight.copy_(W1), net[0].bias.copy_(self.b1[g][m, units])
            net[2].weight.copy_(self.W2[g][m, rows][:, units]), net[2].bias.copy_(self.b2[g][m, rows])
        return net

    def step_masks(self, g: int, active: torch.Tensor) -> list[torch.Tensor]:
        """Multipliers of group g's updates: 0 for a stopped network's parameters and off-block W2."""
        act = active[:, self.groups[g]].to(self.W1[g].dtype)                    # [M, K_g]
        unit = act[:, self.units[g]]                                             # [M, ΣH]
        row = act.repeat_interleave(self.C, 1)                                   # [M, K_g·C]
        return [unit[:, :, None], unit, row[:, :, None] * self.block[g], row]


def _per_network_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of every network: out [M, n, K_g, C], y [M, n] -> [M, K_g]. (Written out:
    with 10 classes this is several times faster on a CPU than ``nn.functional.cross_entropy``.)"""
    top = out.detach().amax(3, keepdim=True)
    lse = (out - top).exp().sum(3).log() + top[..., 0]
    picked = out.gather(3, y[:, :, None, None].expand(*out.shape[:3], 1))[..., 0]
    return (lse - picked).mean(1)


def evaluate(bank: ReplicateBank, X: torch.Tensor, y: torch.Tensor):
    """(loss, err): cross-entropy and error rate of every network on its problem's (X[m], y[m]),
    [M, K] float64 each."""
    K = len(bank.widths)
    loss = torch.empty(bank.M, K, dtype=torch.float64)
    err = torch.empty(bank.M, K, dtype=torch.float64)
    with torch.no_grad():
        for g, ks in enumerate(bank.groups):
            out = bank.forward_group(g, X)
            loss[:, ks] = _per_network_ce(out, y).double()
            err[:, ks] = (out.argmax(3) != y[:, :, None]).double().mean(1)
    return loss, err


def predict(bank: ReplicateBank, X: torch.Tensor) -> torch.Tensor:
    """[M, K, n] int64: the class network (m, k) predicts for example i of problem m (X [M, n, d])."""
    out = torch.empty(bank.M, len(bank.widths), X.shape[1], dtype=torch.int64)
    with torch.no_grad():
        for g, ks in enumerate(bank.groups):
            out[:, ks] = bank.forward_group(g, X).argmax(3).transpose(1, 2)
    return out


def first_fit(reached: torch.Tensor) -> torch.Tensor:
    """[M] the index k of the smallest width from which on every network of problem m reached the
    loss target (reached[m, k:] all True); K where even the widest did not."""
    M, K = reached.shape
    tail = reached.flip(1).to(torch.int64).cumprod(1).flip(1).bool()          # all of reached[m, k:]
    return torch.where(tail.any(1), tail.to(torch.int64).argmax(1), torch.full((M,), K))


def _check(bank, X, y, batch_seeds, lr, momentum, batch_size, loss_target, max_epochs):
    M = bank.M
    if X.ndim != 3 or X.shape[0] != M or y.shape != X.shape[:2]:
        raise ValueError(f"X must be [M={M}, n, d] and y [M, n]; got {tuple(X.shape)}, {tuple(y.shape)}")
    if len(batch_seeds) != M:
        raise ValueError(f"need one minibatch seed per problem: {M} problems, {len(batch_seeds)} seeds")
    for name, v in (("batch_size", batch_size), ("max_epochs", max_epochs)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not (lr > 0 and 0 <= momentum < 1 and loss_target >= 0):
        raise ValueError(f"need lr > 0, 0 <= momentum < 1 and loss_target >= 0; got {lr}, {momentum}, "
                         f"{loss_target}")


def _confirm(bank, X, y, candidates, loss_target) -> torch.Tensor:
    """The candidates (networks whose epoch loss is below the target) whose cross-entropy on the whole
    training set, now at the end of the epoch, is below it too."""
    done = torch.zeros_like(candidates)
    with torch.no_grad():
        for g, ks in enumerate(bank.groups):
            r = candidates[:, ks].any(1).nonzero()[:, 0]
            if len(r):
                full = _per_network_ce(bank.forward_group(g, X[r], r), y[r])
                done[r[:, None], ks] = candidates[r[:, None], ks] & (full < loss_target)
    return done


def train_to_loss(bank: ReplicateBank, X: torch.Tensor, y: torch.Tensor, *, batch_seeds, lr: float,
                  momentum: float, batch_size: int, loss_target: float, max_epochs: int) -> dict:
    """SGD with momentum on every network of the bank, each until the end of the first epoch where its
    training cross-entropy is below ``loss_target`` both as SGD saw it (the epoch's mean minibatch loss,
    the stopping rule of the Path-SGD authors' code) and on the whole training set at the end of the
    epoch, or for ``max_epochs`` (all of them, with ``loss_target`` = 0).

    X [M, n, d], y [M, n]: problem m's training set. batch_seeds[m]: the seed of problem m's minibatch
    order (a generator seeded once, ``randperm(n)`` every epoch, as ``nblib.chapters.path_sgd.train``).
    Returns {"epochs": [M, K] epochs trained, "reached": [M, K] bool (stopped by the target), "loss",
    "err": [M, K] cross-entropy and error on the whole training set after the stop}.
    Runs under ``cpu_settings``; raises DivergenceError (naming lr) on a non-finite loss."""
    _check(bank, X, y, batch_seeds, lr, momentum, batch_size, loss_target, max_epochs)
    K, M, n = len(bank.widths), bank.M, X.shape[1]
    active = torch.ones(M, K, dtype=torch.bool)
    epochs = torch.full((M, K), max_epochs, dtype=torch.int64)
    bufs = [[torch.zeros_like(p) for p in bank.group(g)] for g in range(len(bank.groups))]
    gens = [torch.Generator().manual_seed(int(s)) for s in batch_seeds]
    rows = torch.arange(M)[:, None]
    with cpu_settings(threads=1):
        for epoch in range(1, max_epochs + 1):
            live = {}                    # group -> the problems with a network still training in it
            for g, ks in enumerate(bank.groups):
                rows_g = active[:, ks].any(1).nonzero()[:, 0]
                if len(rows_g):
                    live[g] = None if len(rows_g) == M else rows_g
            if not live:
                break
            masks = {g: bank.step_masks(g, active) for g in live}
            order = torch.stack([torch.randperm(n, generator=gen) for gen in gens])
            seen = torch.zeros(M, K, dtype=torch.float64)        # Σ over the epoch of |B| · loss_B
            for s in range(0, n, batch_size):
                idx = order[:, s:s + batch_size]
                Xb, yb = X[rows, idx], y[rows, idx]
                losses = {g: _per_network_ce(bank.forward_group(g, Xb if r is None else Xb[r], r),
                                             yb if r is None else yb[r]) for g, r in live.items()}
                bank.zero_grad(set_to_none=True)
                sum(loss.sum() for loss in losses.values()).backward()
                with torch.no_grad():
                    for g, r in live.items():
                        ks = bank.groups[g]
                        if r is None:
                            seen[:, ks] += idx.shape[1] * losses[g].double()
                        else:
                            seen[r[:, None], ks] += idx.shape[1] * losses[g].double()
                        for p, v, mask in zip(bank.group(g), bufs[g], masks[g]):
                            v.mul_(momentum).add_(p.grad).mul_(mask)
                            p.sub_(lr * v)
            mean = seen / n
            if not (torch.isfinite(mean[active]).all() and (mean[active] <= HUGE).all()):
                raise DivergenceError(f"training diverged in epoch {epoch}: a training loss is not "
                                      f"finite or exploded. Lower the step size lr (now {lr:g}).")
            done = _confirm(bank, X, y, active & (mean < loss_target), loss_target)
            epochs[done] = epoch
            active &= ~done
    loss, err = evaluate(bank, X, y)
    return {"epochs": epochs, "reached": ~active, "loss": loss, "err": err}


def bank_norms(bank: ReplicateBank) -> dict[str, torch.Tensor]:
    """Norms of every network, [M, K] float64: path-norm φ₂ (biases as edges from a constant unit, as
    ``nblib.chapters.path_sgd.path_norm``), ℓ2 norm √μ₂,₂, product of the spectral norms of W₁ and W₂, and the
    number of parameters (as ``nblib.chapters.path_sgd.network_norms``)."""
    K, M, C = len(bank.widths), bank.M, bank.C
    out = {key: torch.empty(M, K, dtype=torch.float64)
           for key in ("path", "l2", "spectral_product", "parameters")}
    with torch.no_grad():
        for k in range(K):
            g, j = bank.where[k]
            units = bank.units[g] == j
            rows = slice(j * C, (j + 1) * C)
            W1, b1 = bank.W1[g][:, units].double(), bank.b1[g][:, units].double()
            W2, b2 = bank.W2[g][:, rows][:, :, units].double(), bank.b2[g][:, rows].double()
            into = (W1 ** 2).sum(2) + b1 ** 2                                    # [M, H]
            out["path"][:, k] = ((into * (W2 ** 2).sum(1)).sum(1) + (b2 ** 2).sum(1)).sqrt()
            out["l2"][:, k] = sum((p ** 2).flatten(1).sum(1) for p in (W1, b1, W2, b2)).sqrt()
            out["spectral_product"][:, k] = (torch.linalg.matrix_norm(W1, ord=2)
                                             * torch.linalg.matrix_norm(W2, ord=2))
            out["parameters"][:, k] = float(sum(p[0].numel() for p in (W1, b1, W2, b2)))
    return out
