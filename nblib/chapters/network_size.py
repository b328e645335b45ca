"""The network-size chapter's experiment: one-hidden-layer ReLU networks of many widths, trained to a loss target.

    width_stacks    the networks d–H_k–C of M problems (one replicate's training set and labels each)
                    and K widths, as a few ``NetStack``s (``WidthStacks``); network (m, k) is
                    initialized as ``layered_relu_mlp([d, H_k, C], seed=init_seeds[m][k])``
    train_to_loss   every stack through the classifiers' one trainer, ``train_stack``: SGD with
                    momentum, problem m on its own data in its own minibatch order; every network stops
                    after the first epoch where its training cross-entropy is below ``loss_target`` (as
                    SGD saw it during the epoch, the stopping rule of the Path-SGD authors' code, and on
                    the whole training set after it), or at ``max_epochs``
    evaluate        cross-entropy and error rate of every network on every problem's (X, y): [M, K]
    predict         the class every network predicts for every example: [M, K, n]
    first_fit       per problem, the smallest width from which on every network reached the target
    stack_norms     path-norm φ₂, ℓ2 norm √μ₂,₂, product of spectral norms, parameter count: [M, K]

The networks are independent, so training the stacks one after another gives every network the
trajectory it would have trained alone (``train_stack`` sums the networks' own losses; a narrow network
padded with zero units trains exactly as it does unpadded).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .path_sgd import (NetStack, StackOptimizer, evaluate_stack, layered_relu_mlp, stack_outputs,
                       train_stack)


GROUP_WIDTH = 32       # widths up to this share one stack, padded to the widest of them


@dataclass
class WidthStacks:
    """M problems × K widths of networks d–H_k–C, as one ``NetStack`` per group of widths: the widths up
    to ``GROUP_WIDTH`` in one stack (padded to the widest of them), every wider width in a stack of its
    own. In the stack of group g, network j = i·M + m is problem m's network of width
    widths[groups[g][i]]."""

    widths: list[int]
    M: int
    groups: list[list[int]]
    stacks: list[NetStack]

    def network(self, m: int, k: int) -> nn.Sequential:
        """Network (m, k) as a standalone layered ReLU MLP (a copy)."""
        g = next(g for g, ks in enumerate(self.groups) if k in ks)
        return self.stacks[g].network(self.groups[g].index(k) * self.M + m)

    def columns(self, per_stack) -> torch.Tensor:
        """[M, K]: one value per network, from one [len(stack)] tensor per stack."""
        out = [None] * len(self.widths)
        for ks, v in zip(self.groups, per_stack):
            for i, k in enumerate(ks):
                out[k] = torch.as_tensor(v)[i * self.M:(i + 1) * self.M]
        return torch.stack(out, 1)

    def replicate(self, g: int) -> torch.Tensor:
        """The problem of every network of stack g."""
        return torch.arange(self.M).repeat(len(self.groups[g]))


def width_stacks(widths, init_seeds, *, d_in: int, n_out: int, dtype: torch.dtype = torch.float32,
                 group_width: int = GROUP_WIDTH) -> WidthStacks:
    """The networks of M problems × K widths; init_seeds[m][k] seeds network (m, k), initialized as
    ``layered_relu_mlp([d_in, widths[k], n_out], seed=init_seeds[m][k])``."""
    widths = list(widths)
    if not widths or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in widths):
        raise ValueError(f"widths must be a non-empty list of positive integers, got {widths!r}")
    seeds = [list(row) for row in init_seeds]
    if not seeds or any(len(row) != len(widths) for row in seeds):
        raise ValueError(f"init_seeds must be M rows of {len(widths)} seeds (one per width)")
    narrow = [k for k, h in enumerate(widths) if h <= group_width]
    groups = ([narrow] if narrow else []) + [[k] for k, h in enumerate(widths) if h > group_width]
    stacks = [NetStack([layered_relu_mlp([d_in, widths[k], n_out], seed=row[k], dtype=dtype)
                        for k in ks for row in seeds]) for ks in groups]
    return WidthStacks(widths=widths, M=len(seeds), groups=groups, stacks=stacks)


def evaluate(bank: WidthStacks, X: torch.Tensor, y: torch.Tensor):
    """(loss, err): cross-entropy and error rate of network (m, k) on problem m's (X[m], y[m]),
    [M, K] float64 each."""
    with torch.no_grad():
        pairs = [evaluate_stack(stack, bank.replicate(g), X, y) for g, stack in enumerate(bank.stacks)]
    return bank.columns([p[0] for p in pairs]), bank.columns([p[1] for p in pairs])


def predict(bank: WidthStacks, X: torch.Tensor) -> torch.Tensor:
    """[M, K, n] int64: the class network (m, k) predicts for example i of problem m (X [M, n, d])."""
    return bank.columns([stack_outputs(stack, bank.replicate(g), X).argmax(-1)
                         for g, stack in enumerate(bank.stacks)])


def first_fit(reached: torch.Tensor) -> torch.Tensor:
    """[M] the index k of the smallest width from which on every network of problem m reached the
    loss target (reached[m, k:] all True); K where even the widest did not."""
    M, K = reached.shape
    tail = reached.flip(1).to(torch.int64).cumprod(1).flip(1).bool()          # all of reached[m, k:]
    return torch.where(tail.any(1), tail.to(torch.int64).argmax(1), torch.full((M,), K))


def train_to_loss(bank: WidthStacks, X: torch.Tensor, y: torch.Tensor, *, batch_seeds, lr: float,
                  momentum: float, batch_size: int, loss_target: float, max_epochs: int) -> dict:
    """SGD with momentum on every network, each until the end of the first epoch where its training
    cross-entropy is below ``loss_target`` (see the module docstring), or for ``max_epochs`` (all of
    them, with ``loss_target`` = 0): one ``train_stack`` call per stack.

    X [M, n, d], y [M, n]: problem m's training set. batch_seeds[m]: the seed of problem m's minibatch
    order. Returns {"epochs": [M, K] epochs trained, "reached": [M, K] bool (stopped by the target),
    "loss", "err": [M, K] cross-entropy and error on the whole training set after the stop}. Raises
    DivergenceError (naming lr) if a network diverges."""
    M = bank.M
    if X.ndim != 3 or X.shape[0] != M or y.shape != X.shape[:2]:
        raise ValueError(f"X must be [M={M}, n, d] and y [M, n]; got {tuple(X.shape)}, {tuple(y.shape)}")
    if len(batch_seeds) != M:
        raise ValueError(f"need one minibatch seed per problem: {M} problems, {len(batch_seeds)} seeds")
    if not (isinstance(loss_target, (int, float)) and loss_target >= 0):
        raise ValueError(f"loss_target must be a number >= 0, got {loss_target!r}")
    stopped = []
    for g, stack in enumerate(bank.stacks):
        opt = StackOptimizer(stack, ["SGD"] * len(stack), [lr] * len(stack), momentum=momentum)
        run = train_stack(stack, opt, X, y, replicate=bank.replicate(g), seeds=batch_seeds,
                          epochs=max_epochs, batch_size=batch_size, record_every=max_epochs,
                          loss_target=loss_target or None, on_divergence="raise")
        stopped.append(torch.tensor([-1 if e is None else e for e in run.config["stopped_at"]]))
    stopped = bank.columns(stopped)
    loss, err = evaluate(bank, X, y)
    return {"epochs": torch.where(stopped < 0, max_epochs, stopped), "reached": stopped >= 0,
            "loss": loss, "err": err}


def stack_norms(bank: WidthStacks) -> dict[str, torch.Tensor]:
    """Norms of every network, [M, K] float64: path-norm φ₂ (biases as edges from a constant unit, as
    ``nblib.chapters.path_sgd.path_norm``), ℓ2 norm √μ₂,₂, product of the spectral norms of W₁ and W₂,
    and the number of parameters (as ``nblib.chapters.path_sgd.network_norms``). Padded units, all zero,
    add nothing to a norm and are not counted."""
    cols = {key: [] for key in ("path", "l2", "spectral_product", "parameters")}
    with torch.no_grad():
        for stack in bank.stacks:
            (W1, W2), (b1, b2) = ([p.double() for p in ps] for ps in (stack.weights, stack.biases))
            into = (W1 ** 2).sum(2) + b1 ** 2                                    # [K, H]
            cols["path"].append(((into * (W2 ** 2).sum(1)).sum(1) + (b2 ** 2).sum(1)).sqrt())
            cols["l2"].append(sum((p ** 2).flatten(1).sum(1) for p in (W1, b1, W2, b2)).sqrt())
            cols["spectral_product"].append(torch.linalg.matrix_norm(W1, ord=2)
                                            * torch.linalg.matrix_norm(W2, ord=2))
            d, C = stack.sizes[0], stack.sizes[-1]
            cols["parameters"].append(torch.tensor([float(h * (d + 1) + C * (h + 1))
                                                    for (h,) in stack.hidden], dtype=torch.float64))
    return {key: bank.columns(v) for key, v in cols.items()}
