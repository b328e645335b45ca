"""nn.Embedding (no max_norm, no scale_grad_by_freq): z_t = E[i_t], so ∇_E h = Σ_t e_{i_t} g_tᵀ and

    ‖∇_E h‖² = Σ_{t,t'} [i_t = i_t'] (g_t·g_t')

with i_t the token at position t and g_t its output gradient (zero at padding_idx, whose row gets no
gradient).
"""
from __future__ import annotations

import torch
from torch import nn

from . import Rule, register


@register(nn.Embedding)
class EmbeddingRule(Rule):
    def covers(self, m):
        return m.max_norm is None and not m.scale_grad_by_freq

    def features(self, m, inputs):
        """The token indices as [n, T]."""
        return torch.cat([i.reshape(i.shape[0], -1) for i in inputs], 1)

    def sq_norms(self, m, feat, grads):
        n = feat.shape[0]
        if not m.weight.requires_grad:
            return 0.0
        g = torch.cat([x.reshape(n, -1, m.embedding_dim) for x in grads], 1)      # [n, T, D]
        if m.padding_idx is not None:
            g = g * (feat != m.padding_idx).unsqueeze(-1)
        same = (feat.unsqueeze(2) == feat.unsqueeze(1)).to(g.dtype)
        return (same * (g @ g.transpose(1, 2))).sum((1, 2))
