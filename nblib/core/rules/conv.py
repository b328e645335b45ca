"""nn.Conv1d / nn.Conv2d (groups == 1, zeros padding): a Linear layer applied at every output position t,

    ‖∇_W h‖² = Σ_{t,t'} (g_t·g_t')(a_t·a_t'),     ‖∇_b h‖² = ‖Σ_t g_t‖²

with a_t the unfolded input patch [C·kernel] at output position t (over all calls) and g_t the output
gradient there [out_channels]; ``linear.gram`` takes the Gram matrices or the unfolded per-example gradient
Σ_t g_t a_tᵀ, whichever takes fewer products for the shapes. C chains at once: one grouped convolution,
the chains as C groups of channels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import Rule, linear, register


def _patches(m, a):
    """Conv input [n, C, *spatial] → unfolded patches [n, T, C·kernel] at the T output positions."""
    if isinstance(m, nn.Conv1d):
        a = a.unsqueeze(2)
        kernel, dil, pad, stride = (1, *m.kernel_size), (1, *m.dilation), (0, *m.padding), (1, *m.stride)
    else:
        kernel, dil, pad, stride = m.kernel_size, m.dilation, m.padding, m.stride
    return F.unfold(a, kernel, dilation=dil, padding=pad, stride=stride).transpose(1, 2)


@register(nn.Conv1d, nn.Conv2d)
class ConvRule(Rule):
    def covers(self, m):
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)

    def features(self, m, inputs):
        return torch.cat([_patches(m, x) for x in inputs], 1)

    def sq_norms(self, m, feat, grads):
        n = feat.shape[0]
        g = torch.cat([x.reshape(n, m.out_channels, -1).transpose(1, 2) for x in grads], 1)
        return linear.weight_and_bias(m, feat, g)

    def forward_chains(self, m, p, x, C):
        B = x.shape[0] // C
        spatial = x.shape[2:]
        h = x.reshape(C, B, -1, *spatial).transpose(0, 1).reshape(B, -1, *spatial)   # [B, C·in, ...]
        conv = F.conv1d if isinstance(m, nn.Conv1d) else F.conv2d
        W = p["weight"].reshape(-1, *p["weight"].shape[2:])                           # [C·out, in, k...]
        b = p["bias"].reshape(-1) if "bias" in p else None
        out = conv(h, W, b, m.stride, m.padding, m.dilation, groups=C)                 # [B, C·out, ...]
        out = out.reshape(B, C, m.out_channels, *out.shape[2:]).transpose(0, 1)
        return out.reshape(C * B, m.out_channels, *out.shape[3:])
