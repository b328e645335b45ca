"""Label-noise SGD on many independent chains at once, and the explicit flow it follows.

Convention (Blanc et al. 2020, no ½): one step on a minibatch b of size B is

    θ ← θ − η ∇_θ (1/B) Σ_{i∈b} (h(x_i; θ) − y_i − Z_i)²,    Z_i drawn fresh at every step,

with Var Z = noise_std². Near the zero-error manifold this drifts along the manifold like gradient
descent on loss + λ·reg with λ = η·Var(Z)/B (``implicit_lambda``): a drift of −η²·Var(Z)/B·∇reg per step.
``regularized_gd`` runs that explicit flow so that a chapter can overlay prediction and simulation.

All chains run as one batched computation: parameters carry a leading chain dimension C. The generic
step uses torch.func (vmap over chains and examples, grad); a model with a ``ClosedForm`` (see
``nblib.regularizer``) gets the fast closed-form step, which ``compile=True`` also fuses with torch.compile.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from typing import Callable

import torch
from torch.func import grad, grad_and_value, vmap

from . import _validate
from .regularizer import _sq_norms_generic, check_model_output, closed_form_of, per_example_sq_grad_norms

_CHUNK = 256          # steps of randomness drawn at once; fixed, so records never change a trajectory
_HUGE = 1e30          # a loss above this counts as divergence before it overflows


class DivergenceError(FloatingPointError):
    """A run produced a non-finite or exploding loss; the message names the hyperparameters to lower."""


@dataclass
class Trajectory:
    """What a run recorded, at ``steps`` (T record points) for C chains.

    params: {name: [T, C, *shape]};  loss: [T, C], the clean full-data loss (1/n) Σ_i (h(x_i; θ) − y_i)²;
    reg: [T, C], reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖² (None when not recorded).
    """

    steps: torch.Tensor
    params: dict[str, torch.Tensor]
    loss: torch.Tensor
    reg: torch.Tensor | None

    def final(self) -> dict[str, torch.Tensor]:
        """Parameters at the last record, {name: [C, *shape]}."""
        return {k: v[-1] for k, v in self.params.items()}


def implicit_lambda(lr: float, noise_std: float, batch_size: int = 1) -> float:
    """λ = η·Var(Z)/B: the weight of reg in the flow that label-noise SGD follows (this module's convention)."""
    return lr * noise_std ** 2 / batch_size


# ----------------------------------------------------------------------------- batched pieces

def batched_forward(model: Callable, P: dict, Xb: torch.Tensor) -> torch.Tensor:
    """h(θ_c, x_cb) for stacked params P ([C, ...]) and per-chain inputs Xb ([C, B, ...]) -> [C, B]."""
    cf = closed_form_of(model)
    if cf is not None:
        return cf.forward(P, Xb)
    return vmap(vmap(model, in_dims=(None, 0)))(P, Xb)


def full_data_loss(model: Callable, P: dict, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[C]: (1/n) Σ_i (h(x_i; θ_c) − y_i)² for every chain."""
    C = next(iter(P.values())).shape[0]
    out = batched_forward(model, P, X.expand(C, *X.shape))
    return (out - y).pow(2).mean(1)


def _generic_step(model: Callable) -> Callable:
    def chain_loss(p, xb, yb):
        return (vmap(model, in_dims=(None, 0))(p, xb) - yb).pow(2).mean()

    grad_loss = vmap(grad_and_value(chain_loss))

    def step(P, Xb, Yb, lr):
        grads, loss = grad_loss(P, Xb, Yb)
        return {k: P[k] - lr * grads[k] for k in P}, loss

    return step


def _closed_form_step(model: Callable) -> Callable:
    cf = closed_form_of(model)

    def step(P, Xb, Yb, lr):
        r = cf.forward(P, Xb) - Yb                                  # [C, B]
        grads = cf.vjp(P, Xb, r * (2.0 / r.shape[1]))               # ∇ (1/B) Σ_b r_b²
        return {k: P[k] - lr * grads[k] for k in P}, r.pow(2).mean(1)

    return step


def _require_compiler() -> None:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None and shutil.which("c++") is None:
        raise RuntimeError(
            f"compile=True needs a C++ compiler for torch.compile's CPU backend, and none was found "
            f"(looked for {cxx!r} and 'c++'). Install one (e.g. `apt-get install g++`) or pass compile=False."
        )


def _stack(params: dict, chains: int | None, stacked: bool) -> tuple[dict, int]:
    if stacked:
        C = _validate.stacked_chains(params)
        if chains is not None and chains != C:
            raise ValueError(f"chains={chains} but the stacked params hold {C} chains")
        return {k: v.detach().clone() for k, v in params.items()}, C
    C = _validate.count(1 if chains is None else chains, "chains")
    return {k: v.detach().unsqueeze(0).repeat(C, *([1] * v.ndim)) for k, v in params.items()}, C


def _check_finite(loss: torch.Tensor, step: int, hint: str) -> None:
    bad = ~torch.isfinite(loss) | (loss.abs() > _HUGE)
    if bad.any():
        c = int(bad.nonzero()[0, 0]) if loss.ndim else 0
        value = float(loss.reshape(-1)[c])
        raise DivergenceError(f"the run diverged by step {step}: chain {c} has loss {value:.3g}. {hint}")


class _Recorder:
    def __init__(self, model, X, y, record_reg, fast):
        self.model, self.X, self.y, self.record_reg, self.fast = model, X, y, record_reg, fast
        self.steps, self.params, self.loss, self.reg = [], [], [], []

    def __call__(self, t: int, P: dict, hint: str) -> None:
        with torch.no_grad():
            loss = full_data_loss(self.model, P, self.X, self.y)
        _check_finite(loss, t, hint)
        self.steps.append(t)
        self.params.append({k: v.clone() for k, v in P.items()})
        self.loss.append(loss)
        if self.record_reg:
            reg = per_example_sq_grad_norms(self.model, P, self.X, stacked=True, fast=self.fast).mean(-1)
            self.reg.append(reg.detach())

    def trajectory(self) -> Trajectory:
        keys = self.params[0].keys()
        return Trajectory(
            steps=torch.tensor(self.steps),
            params={k: torch.stack([p[k] for p in self.params]) for k in keys},
            loss=torch.stack(self.loss),
            reg=torch.stack(self.reg) if self.record_reg else None,
        )


def _record_points(steps: int, record_every: int | None) -> int:
    if record_every is None:
        return max(1, steps // 100)
    return _validate.count(record_every, "record_every")


# ----------------------------------------------------------------------------- label-noise SGD

def label_noise_sgd(model: Callable, params: dict, X, y, *, lr: float, noise_std: float, steps: int,
                    chains: int | None = None, batch_size: int = 1, noise: str = "gaussian", seed: int = 0,
                    record_every: int | None = None, stacked: bool = False, record_reg: bool = True,
                    fast: bool = True, compile: bool = False) -> Trajectory:
    """Run label-noise SGD on ``chains`` independent chains at once and return their trajectories.

    θ ← θ − lr·∇_θ (1/B) Σ_{i∈b} (h(x_i; θ) − y_i − Z_i)², Z ~ N(0, noise_std²) or noise_std·Rademacher,
    fresh at every step. With batch_size < n each chain draws its own minibatch uniformly with
    replacement; batch_size == n uses every example once per step. noise_std = 0 is plain SGD.

    params: {name: tensor} for one model, copied to every chain; or, with ``stacked=True``, already
    stacked along a leading chain dimension (one initialization per chain).
    The same seed gives the same result; recording (``record_every``) never changes the trajectory.
    fast: use the model's closed form when it has one (else the torch.func reference step);
    compile: fuse the closed-form step with torch.compile (needs a C++ compiler).
    Raises ValueError on bad input and DivergenceError (naming lr and noise_std) if a chain diverges.
    """
    _validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    X, y = _validate.as_data(X, y, dtype=dtype)
    lr = _validate.positive(lr, "lr")
    noise_std = _validate.nonnegative(noise_std, "noise_std")
    steps = _validate.count(steps, "steps", minimum=0)
    n = X.shape[0]
    batch_size = _validate.count(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of examples n={n}")
    if noise not in ("gaussian", "rademacher"):
        raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
    every = _record_points(steps, record_every)
    P, C = _stack(params, chains, stacked)
    check_model_output(model, {k: v[0] for k, v in P.items()}, X[0])

    use_closed_form = fast and closed_form_of(model) is not None
    step = _closed_form_step(model) if use_closed_form else _generic_step(model)
    if compile:
        if not use_closed_form:
            raise ValueError("compile=True needs a model with a closed form (model.closed_form) and fast=True")
        _require_compiler()
        step = torch.compile(step, dynamic=False)

    hint = f"Lower lr (now {lr:g}) or noise_std (now {noise_std:g})."
    gen = torch.Generator().manual_seed(seed)
    record = _Recorder(model, X, y, record_reg, fast)
    record(0, P, hint)
    t = 0
    with torch.no_grad():
        while t < steps:
            K = min(_CHUNK, steps - t)
            if batch_size == n:
                idx = torch.arange(n).expand(K, C, n)
            else:
                idx = torch.randint(n, (_CHUNK, C, batch_size), generator=gen)[:K]
            if noise == "gaussian":
                Z = torch.randn(_CHUNK, C, batch_size, generator=gen, dtype=dtype)[:K]
            else:
                Z = torch.randint(0, 2, (_CHUNK, C, batch_size), generator=gen).to(dtype)[:K] * 2 - 1
            Xb, Yb = X[idx], y[idx] + noise_std * Z
            for k in range(K):
                P, batch_loss = step(P, Xb[k], Yb[k], lr)
                t += 1
                if t % every == 0 or t == steps:
                    record(t, P, hint)
            _check_finite(batch_loss, t, hint)
    return record.trajectory()


# ----------------------------------------------------------------------------- the explicit flow

def regularized_gd(model: Callable, params: dict, X, y, *, lr: float, lam: float, steps: int,
                   record_every: int | None = None, stacked: bool = False, record_reg: bool = True,
                   fast: bool = True) -> Trajectory:
    """Full-batch gradient descent on L(θ) + λ·reg(θ), L = (1/n) Σ_i (h(x_i; θ) − y_i)².

    With λ = implicit_lambda(lr, noise_std, batch_size) this is the flow label-noise SGD follows near
    the zero-error manifold. Same conventions, records and errors as ``label_noise_sgd``.
    """
    _validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    X, y = _validate.as_data(X, y, dtype=dtype)
    lr = _validate.positive(lr, "lr")
    lam = _validate.nonnegative(lam, "lam")
    steps = _validate.count(steps, "steps", minimum=0)
    every = _record_points(steps, record_every)
    P, C = _stack(params, None, stacked)
    check_model_output(model, {k: v[0] for k, v in P.items()}, X[0])
    n = X.shape[0]

    cf = closed_form_of(model)
    if fast and cf is not None and cf.reg_grad is not None:
        XC = X.expand(C, *X.shape)

        def total_grad(P):
            r = cf.forward(P, XC) - y
            g_loss = cf.vjp(P, XC, r * (2.0 / n))
            g_reg = cf.reg_grad(P, X)
            return {k: g_loss[k] + lam * g_reg[k] for k in P}
    else:
        def objective(p):
            out = vmap(model, in_dims=(None, 0))(p, X)
            return (out - y).pow(2).mean() + lam * _sq_norms_generic(model, p, X).mean()

        total_grad = vmap(grad(objective))

    hint = f"Lower lr (now {lr:g}) or lam (now {lam:g})."
    record = _Recorder(model, X, y, record_reg, fast)
    record(0, P, hint)
    for t in range(1, steps + 1):
        g = total_grad(P)
        with torch.no_grad():
            P = {k: P[k] - lr * g[k] for k in P}
        if t % every == 0 or t == steps:
            record(t, P, hint)
        elif t % _CHUNK == 0:
            _check_finite(full_data_loss(model, P, X, y), t, hint)
    return record.trajectory()
