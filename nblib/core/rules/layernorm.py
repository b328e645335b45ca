"""nn.LayerNorm (elementwise_affine): z_t = γ ⊙ x̂_t + β, so

    ‖∇_γ h‖² = ‖Σ_t g_t ⊙ x̂_t‖²,     ‖∇_β h‖² = ‖Σ_t g_t‖²

with x̂_t the normalized input (no affine) and g_t the output gradient at position t, both flattened over
normalized_shape. C chains at once: the normalization is the same for all, then γ_c and β_c per chain.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Rule, register


def _size(m):
    out = 1
    for d in m.normalized_shape:
        out *= d
    return out


def _normalized(m, a):
    """LayerNorm's x̂ (no affine) as [n, T, D]."""
    xh = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
    return xh.reshape(a.shape[0], -1, _size(m))


@register(nn.LayerNorm)
class LayerNormRule(Rule):
    def covers(self, m):
        return m.elementwise_affine

    def features(self, m, inputs):
        return torch.cat([_normalized(m, x) for x in inputs], 1)

    def sq_norms(self, m, feat, grads):
        n = feat.shape[0]
        g = torch.cat([x.reshape(n, -1, _size(m)) for x in grads], 1)
        out = ((g * feat).sum(1) ** 2).sum(-1) if m.weight is not None and m.weight.requires_grad else 0.0
        if m.bias is not None and m.bias.requires_grad:
            out = out + (g.sum(1) ** 2).sum(-1)
        return out

    def forward_chains(self, m, p, x, C):
        xh = F.layer_norm(x, m.normalized_shape, None, None, m.eps)
        lead = (C, 1) + (1,) * (x.ndim - 1 - len(m.normalized_shape))
        out = xh.reshape(C, -1, *x.shape[1:])
        if "weight" in p:
            out = out * p["weight"].reshape(*lead, *m.normalized_shape)
        if "bias" in p:
            out = out + p["bias"].reshape(*lead, *m.normalized_shape)
        return out.reshape(x.shape)
