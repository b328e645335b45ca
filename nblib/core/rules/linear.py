"""nn.Linear, z_t = W a_t + b at the positions t of one example (sequence steps, repeated calls):

    ‖∇_W h‖² = Σ_{t,t'} (g_t·g_t')(a_t·a_t')   (one position: ‖g‖² ‖a‖²),     ‖∇_b h‖² = ‖Σ_t g_t‖²

with a_t the layer's input and g_t = ∂h(x_i)/∂z_t its output gradient at position t. C chains at once:
z = a W_cᵀ + b_c on chain c's rows, one batched matrix product.
"""
from __future__ import annotations

import torch
from torch import nn

from . import Rule, register


def gram(a, g):
    """Σ_{t,t'} (g_t·g_t')(a_t·a_t') per example, a: [n, T, p], g: [n, T, q], by the cheaper route:

        Σ_{t,t'} (g_t·g_t')(a_t·a_t') = Σ_{t,t'} (G Gᵀ)_{tt'} (A Aᵀ)_{tt'}   Gram matrices: T²(p + q) products
                                      = ‖Σ_t g_t a_tᵀ‖²_F                  per-example gradient: Tpq + pq

    (G: [T, q] and A: [T, p] one example's rows g_t and a_t; one position: ‖g‖² ‖a‖²).
    """
    n, T, p = a.shape
    q = g.shape[-1]
    if T == 1:
        return (g[:, 0] ** 2).sum(-1) * (a[:, 0] ** 2).sum(-1)
    if T * T * (p + q) < T * p * q + p * q:                          # Gram matrices
        return ((g @ g.transpose(1, 2)) * (a @ a.transpose(1, 2))).sum((1, 2))
    return (torch.einsum("ntq,ntp->nqp", g, a) ** 2).sum((1, 2))      # per-example gradient


def weight_and_bias(m, a, g):
    """‖∇_W h‖² + ‖∇_b h‖² per example of z_t = W a_t + b (a: [n, T, p], g: [n, T, q]), for the parameters
    that require grad: gram(a, g) + ‖Σ_t g_t‖²."""
    out = gram(a, g) if m.weight.requires_grad else 0.0
    if m.bias is not None and m.bias.requires_grad:
        out = out + (g.sum(1) ** 2).sum(-1)
    return out


@register(nn.Linear)
class LinearRule(Rule):
    def features(self, m, inputs):
        """The inputs as [n, T, in_features]."""
        return torch.cat([x.reshape(x.shape[0], -1, m.in_features) for x in inputs], 1)

    def sq_norms(self, m, feat, grads):
        n = feat.shape[0]
        g = torch.cat([x.reshape(n, -1, m.out_features) for x in grads], 1)
        return weight_and_bias(m, feat, g)

    def forward_chains(self, m, p, x, C):
        h = x.reshape(C, -1, m.in_features)
        W = p["weight"].transpose(1, 2)
        out = torch.baddbmm(p["bias"].unsqueeze(1), h, W) if "bias" in p else torch.bmm(h, W)
        return out.reshape(*x.shape[:-1], m.out_features)
