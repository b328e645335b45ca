"""The naive reference the classifier trainer is tested against: one nn.Sequential, one torch optimizer,
a plain loop over minibatches (randperm(n) of a generator seeded once, every epoch)."""
import torch
from torch import nn


def reference_train(net, optimizer, X, y, *, epochs: int, batch_size: int, seed: int,
                    loss_target: float | None = None):
    """Train ``net`` in place; returns (the epoch it reached ``loss_target``, or None; the training
    cross-entropy after every epoch run). The target rule: the size-weighted mean of the epoch's
    minibatch losses and the loss on the whole training set both below it."""
    g = torch.Generator().manual_seed(seed)
    n, losses = len(y), []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=g)
        seen = 0.0
        for s in range(0, n, batch_size):
            idx = order[s:s + batch_size]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
            loss.backward()
            optimizer.step()
            seen += len(idx) * loss.item()
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(net(X), y)))
        if loss_target is not None and seen / n < loss_target and losses[-1] < loss_target:
            return epoch, losses
    return None, losses
