"""What a run returns and how it fails: one result type and one error for every loop in nblib.

    Trajectory    steps [T], params {name: [T, C, *shape]}, loss [T, C], reg [T, C] or None,
                  metrics {name: [T, C]} (any other recorded series), config (what was run)
    DivergenceError   a run's loss became non-finite or exploded; the message names the
                      hyperparameter(s) to lower
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


class DivergenceError(FloatingPointError):
    """A run produced a non-finite or exploding loss; the message names the hyperparameters to lower."""


HUGE = 1e30          # a loss above this counts as divergence before it overflows


def check_finite(loss: torch.Tensor, step: int, hint: str, *, what: str = "chain") -> None:
    """Raise DivergenceError if any entry of ``loss`` is non-finite or above HUGE.

    The message says at which record ``step`` and in which ``what`` (index of the flattened loss), then
    ``hint``, e.g. "Lower lr (now 0.1) or noise_std (now 1)."
    """
    bad = ~torch.isfinite(loss) | (loss.abs() > HUGE)
    if bad.any():
        flat = bad.reshape(-1)
        c = int(flat.nonzero()[0, 0])
        value = float(loss.reshape(-1)[c])
        raise DivergenceError(f"the run diverged by step {step}: {what} {c} has loss {value:.3g}. {hint}")


@dataclass
class Trajectory:
    """What a run recorded, at ``steps`` (T record points) for C chains (or runs, or networks).

    params:  {name: [T, C, *shape]}, the parameters at every record ({} when not recorded);
    loss:    [T, C], the run's clean full-data loss (for label-noise SGD (1/n) Σ_i (h(x_i; θ) − y_i)²);
    reg:     [T, C], reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖², or None when not recorded;
    metrics: {name: [T, C]}, any other recorded series (errors on held-out data, radius, ...);
    config:  what was run, e.g. {"model": "two_layer_relu", "lr": [C], "noise_std": [C], "seeds": [...]}.
    """

    steps: torch.Tensor
    params: dict[str, torch.Tensor]
    loss: torch.Tensor
    reg: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def final(self) -> dict[str, torch.Tensor]:
        """Parameters at the last record, {name: [C, *shape]}."""
        return {k: v[-1] for k, v in self.params.items()}

    @property
    def chains(self) -> int:
        return self.loss.shape[1]
