"""The per-layer rules of the fast path of ``nblib.core.module_reg``: a registry, one file per layer type.

A rule computes, for every example i, Σ over one layer's own trainable parameters θ of ‖∇_θ h(x_i)‖² from
two things the fast path already has: the inputs of the layer's calls (recorded on the forward pass) and
the gradients g = ∂Σ_i h(x_i)/∂z of its calls' outputs z (one backward pass per model output). A new layer
type is one new file in this folder holding a ``Rule`` subclass decorated with ``@register(LayerType)``:
every module of this package is imported, in name order, at the bottom of this file. Code outside nblib
registers a rule of its own the same way.
"""
from __future__ import annotations

import importlib
import pkgutil

from torch import nn
from torch.nn.utils import parametrize


class Rule:
    """How the squared per-example gradient norm of one layer type's parameters follows from its calls.

    The contract, for a layer m of a registered type, whose calls in the forward pass are the only uses of
    its parameters in the autograd graph (``nblib.core.module_reg`` checks that, and that m is not parametrized):

    * ``covers(m) -> bool``: whether this instance follows the rule (e.g. Conv only with groups == 1 and
      zeros padding); an instance not covered goes through the generic torch.func path. Default: True.
    * ``features(m, inputs) -> Tensor``: what the rule needs of ``inputs``, the list of the first
      positional argument of each of m's calls ([n, ...] each), concatenated over calls along the position
      axis: [n, T, ·] (or token indices [n, T]). Computed once for all outputs k.
    * ``sq_norms(m, feat, grads) -> Tensor [n] | 0.0``: Σ over m's own trainable parameters of
      ‖∇_θ h(x_i)‖² for every example, from ``feat = features(m, inputs)`` and ``grads``, the list of the
      gradients of one output Σ_i h_k(x_i) with respect to the outputs of m's calls, in call order (same
      shapes as the outputs); 0.0 when none of m's parameters requires grad. It must be differentiable
      (it is double-backwarded for ∇reg).
    * ``forward_chains(m, p, x, C) -> Tensor`` (optional): the layer applied to C chains at once, chain c
      with its own parameters p[name][c] ({name: [C, *shape]}, the layer's own parameter names) on its
      rows of x ([C·B, ...], chain-major); returns [C·B, ...]. Lets ``nblib.core.module_chains`` run C copies
      of an nn.Sequential as a few batched products under plain autograd. Default: None (not provided).

    Positions t run over everything the layer's parameters are shared across within one example: sequence
    steps, conv output positions, and repeated calls of the same layer.
    """

    def covers(self, m: nn.Module) -> bool:
        return True

    def features(self, m: nn.Module, inputs: list):
        raise NotImplementedError

    def sq_norms(self, m: nn.Module, feat, grads: list):
        raise NotImplementedError

    forward_chains = None


_RULES: dict[type, Rule] = {}


def register(*layer_types: type):
    """Class decorator: ``@register(nn.Linear)`` makes one instance of the Rule subclass the rule of those
    layer types (and of their subclasses, unless one of those has a rule of its own)."""
    def deco(cls):
        if not (isinstance(cls, type) and issubclass(cls, Rule)):
            raise TypeError(f"register expects a subclass of Rule, got {cls!r}")
        rule = cls()
        for t in layer_types:
            _RULES[t] = rule
        return cls
    return deco


def rule_for(m: nn.Module) -> Rule | None:
    """The rule of the nearest registered class in type(m).__mro__, or None: none registered, m has a
    parametrization (its parameters are not the tensors the layer computes with), or the rule does not
    cover this instance."""
    if parametrize.is_parametrized(m):
        return None
    for t in type(m).__mro__:
        rule = _RULES.get(t)
        if rule is not None:
            return rule if rule.covers(m) else None
    return None


def registered() -> dict[type, Rule]:
    """The registry itself, layer type → rule (for tests: one may pop an entry it registered)."""
    return _RULES


for _name in sorted(info.name for info in pkgutil.iter_modules(__path__)):   # the rule files register themselves
    importlib.import_module(f"{__name__}.{_name}")
