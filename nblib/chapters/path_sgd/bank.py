"""Many widths at once: K independent one-hidden-layer ReLU networks as one module."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .optim import layered_relu_mlp


class WidthBank(nn.Module):
    """K independent one-hidden-layer ReLU networks 64–H_k–C trained as one module.

    The hidden layers are concatenated (one matmul for all widths); network k's output uses only its own
    hidden units. Trained with the summed cross-entropy (``train``'s default loss for a list of outputs),
    each network's gradient, and hence its SGD (with or without momentum) trajectory, is exactly what it
    would be trained alone on the same minibatches. Initialization: each network is
    ``layered_relu_mlp([d, H_k, C], seed=seeds[k])``.
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
