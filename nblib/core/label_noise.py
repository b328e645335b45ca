"""Label-noise SGD on many independent chains at once, and the explicit flow it follows: one loop.

Convention (Blanc et al. 2020, no ½): one step of chain c on a minibatch b of size B is

    θ ← θ − η_c ∇_θ [ (1/B) Σ_{i∈b} (h(x_i; θ) − y_i − σ_c Z_i)²  +  λ_c · reg(θ) ],

Z_i drawn fresh at every step (Var Z = 1), reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖² over all n examples.
With λ = 0 this is label-noise SGD (σ = 0: plain SGD); near the zero-error manifold it drifts like
gradient descent on loss + λ·reg with λ = η·σ²/B (``implicit_lambda``). With σ = 0, λ > 0 and B = n it
*is* that explicit flow (``regularized_gd``), so prediction and simulation run in one batched call.

Every chain has its own η, σ, λ (a number for all, or one per chain). All chains advance as one
tensor computation: parameters carry a leading chain dimension C. A model with a ``ClosedForm``
(``nblib.core.regularizer``) gets the closed-form batched step (``compile=True`` fuses it with torch.compile);
any other model the torch.func step (vmap over chains and examples, grad).

The model is a function h(params, x) with one scalar output per example, or any ``torch.nn.Module``
with k outputs per example (module(X): [n] or [n, k]; y of the same shape, and the loss sums over the
outputs, ‖h(x_i; θ) − y_i − σZ_i‖² with independent noise on each). A module's chains run through
``nblib.core.module_chains``: stacked parameters, vmapped forward passes, and reg per chain from the
per-layer rules. With ``per_chain_data=True``, X [C, n, *x] and y [C, n(, k)] give every chain its own
data set (replicates on different splits); X [G, n, *x] and y [G, n(, k)] with G dividing C give one to
each group of C/G consecutive chains (replicate problems, several chains each). A closed form declared
``grouped`` reads each group's data once per full-batch step for all its chains.

Randomness: ``seed`` (one int) drives all chains from one generator; ``seeds=[s_0, …, s_{G−1}]`` splits
the C chains into G consecutive groups, group g drawing from its own generator seeded s_g. So chain c of a
run with one seed per chain follows exactly the path of a one-chain run with seed s_c (tested). Draws
come in chunks of ``CHUNK`` steps (minibatch indices, then noise), fixed, so recording never changes a
trajectory; the minibatch itself is gathered step by step (no [steps, C, B, *x] copy of the data).
"""
from __future__ import annotations

import os
import shutil
from typing import Callable

import torch
from torch import nn
from torch.func import grad, vmap

from . import validate
from .module_chains import ModuleChains
from .regularizer import (_sq_norms_generic, check_model_output, closed_form_of,
                          implicit_regularizer, trainable_sq_grad_norms)
from .runtime import cpu_settings
from .trajectory import DivergenceError, Trajectory, check_finite

CHUNK = 256          # steps of randomness drawn at once; fixed, so records never change a trajectory
GATHER_LIMIT = 2 ** 22   # a chunk's minibatches are gathered at once when they hold fewer numbers

__all__ = ["CHUNK", "DivergenceError", "Trajectory", "batched_forward", "full_data_loss",
           "implicit_lambda", "label_noise_sgd", "regularized_gd"]


def implicit_lambda(lr: float, noise_std: float, batch_size: int = 1) -> float:
    """λ = η·Var(Z)/B: the weight of reg in the flow that label-noise SGD follows."""
    return lr * noise_std ** 2 / batch_size


# ----------------------------------------------------------------------------- batched pieces

def batched_forward(model: Callable, P: dict, Xb: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
    """h(θ_c, x) for stacked params P ([C, ...]): per-chain inputs Xb [C, B, *x], or with
    ``shared=True`` one batch X [n, *x] for every chain. Returns [C, B]."""
    cf = closed_form_of(model)
    if cf is not None:
        return cf.forward(P, Xb)
    return vmap(vmap(model, in_dims=(None, 0)), in_dims=(0, None if shared else 0))(P, Xb)


def full_data_loss(model: Callable, P: dict, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[C]: (1/n) Σ_i (h(x_i; θ_c) − y_i)² for every chain."""
    return (batched_forward(model, P, X, shared=True) - y).pow(2).mean(1)


def _per_chain(value, C: int, name: str, *, dtype, positive: bool = False):
    """A number (returned as a float) or one value per chain (returned as a [C] tensor)."""
    check = validate.positive if positive else validate.nonnegative
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return check(value, name)
    values = value.tolist() if isinstance(value, torch.Tensor) else list(value)
    if len(values) != C:
        raise ValueError(f"{name} must be one number or one per chain ({C}); got {len(values)} values")
    values = [check(v, name) for v in values]
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, dtype=dtype)


def _scale(value, t: torch.Tensor) -> torch.Tensor:
    """value · t for a float value, or a per-chain [C] value broadcast over t's trailing dims."""
    if isinstance(value, float):
        return value * t
    return value.reshape(-1, *([1] * (t.ndim - 1))) * t


def _per_param(value, p: torch.Tensor):
    """value (a float, or a [C] tensor) shaped to multiply a stacked parameter p ([C, *shape])."""
    if isinstance(value, float):
        return value
    return value.reshape(-1, *([1] * (p.ndim - 1)))


def _scale_chunk(value, Z: torch.Tensor) -> torch.Tensor:
    """value · Z for a chunk Z [K, C, B(, k)]: a float, or one value per chain [C]."""
    if isinstance(value, float):
        return value * Z
    return value.reshape(1, -1, *([1] * (Z.ndim - 2))) * Z


def _as_list(value) -> list[float]:
    return value.tolist() if isinstance(value, torch.Tensor) else [value]


# ----------------------------------------------------------------------------- the two steps

def _update(P, grads, lr, masks):
    """θ ← θ − η·(m ⊙ g): lr {name: a number or [C, 1, …]}, masks {name: 0/1} or None."""
    if masks is not None:
        grads = {k: g * masks[k] if k in masks else g for k, g in grads.items()}
    return {k: P[k] - lr[k] * grads[k] for k in P}


def _closed_form_step(model: Callable, X, any_lam: bool, lr, lam, masks) -> Callable:
    """One step (P, Xb, Yb) -> (P', residuals [C, B]) from the model's closed forms.

    lr, lam: {name: a number or a per-chain [C, 1, …] tensor}; the update is part of the step, so
    that torch.compile fuses it with the gradient."""
    cf = closed_form_of(model)

    def step(P, Xb, Yb):
        if cf.loss_grad is not None:
            grads, r = cf.loss_grad(P, Xb, Yb)
        else:
            r = cf.forward(P, Xb) - Yb                              # [C, B]
            grads = cf.vjp(P, Xb, r * (2.0 / r.shape[1]))           # ∇ (1/B) Σ_b r_b²
        if any_lam:
            g_reg = cf.reg_grad(P, X)
            grads = {k: grads[k] + lam[k] * g_reg[k] for k in P}
        return _update(P, grads, lr, masks), r

    return step


def _generic_step(model: Callable, X, any_lam: bool, shared: bool, lr, lam_c, masks, *,
                  per_chain: bool = False) -> Callable:
    """The same step from torch.func: vmap over chains (and examples) of grad; lam_c: [C]; X the data
    of reg ([n, *x], or [C, n, *x] with ``per_chain``)."""
    def chain_objective(p, xb, yb, lam, x_reg):
        r = vmap(model, in_dims=(None, 0))(p, xb) - yb
        loss = r.pow(2).mean()
        if any_lam:
            return loss + lam * _sq_norms_generic(model, p, x_reg).mean(), r
        return loss, r

    grad_obj = vmap(grad(chain_objective, has_aux=True),
                    in_dims=(0, None if shared else 0, 0, 0, 0 if per_chain else None))

    def step(P, Xb, Yb):
        grads, r = grad_obj(P, Xb, Yb, lam_c, X)
        return _update(P, grads, lr, masks), r

    return step


def _module_step(chains: ModuleChains, X, any_lam: bool, shared: bool, per_chain: bool, fast: bool,
                 lr, lam, masks) -> Callable:
    """The step of an nn.Module's chains: vmap over chains of grad of the batch loss (torch.func), and
    with lam > 0 ∇reg per chain from the per-layer rules."""
    loss_grad = chains.loss_grad(shared)

    def step(P, Xb, Yb):
        grads, r = loss_grad(P, Xb, Yb)
        if any_lam:
            g_reg = chains.reg_grad(P, X, per_chain=per_chain, fast=fast)
            grads = {k: grads[k] + lam[k] * g_reg[k] for k in P}
        if masks is None and all(isinstance(v, float) for v in lr.values()):
            for k in P:                          # in place: the loop owns P (records are copies)
                P[k].add_(grads[k], alpha=-lr[k])
            return P, r
        return _update(P, grads, lr, masks), r

    return step


def _require_compiler() -> None:
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None and shutil.which("c++") is None:
        raise RuntimeError(
            f"compile=True needs a C++ compiler for torch.compile's CPU backend, and none was found "
            f"(looked for {cxx!r} and 'c++'). Install one (e.g. `apt-get install g++`) or pass compile=False."
        )


# ----------------------------------------------------------------------------- set-up helpers

def _stack(params: dict, chains: int | None, stacked: bool) -> tuple[dict, int]:
    if stacked:
        C = validate.stacked_chains(params)
        if chains is not None and chains != C:
            raise ValueError(f"chains={chains} but the stacked params hold {C} chains")
        return {k: v.detach().clone() for k, v in params.items()}, C
    C = validate.count(1 if chains is None else chains, "chains")
    return {k: v.detach().unsqueeze(0).repeat(C, *([1] * v.ndim)) for k, v in params.items()}, C


def _groups(seed, seeds, C: int) -> list[int]:
    """The seed of every group of consecutive chains: [seed], or ``seeds`` (its length must divide C)."""
    if seeds is None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}; pass a list as seeds=[...]")
        return [seed]
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    if C % len(seeds):
        raise ValueError(f"{len(seeds)} seeds do not split {C} chains into equal groups; "
                         "give one seed per chain or per equal group of chains")
    return seeds


def _masks(trainable, P: dict, C: int) -> dict[str, torch.Tensor] | None:
    """{name: 0/1 tensor broadcastable to [C, *shape]}; a [C] mask freezes a tensor per chain."""
    if trainable is None:
        return None
    if not isinstance(trainable, dict) or not set(trainable) <= set(P):
        raise ValueError(f"trainable must be a dict whose keys are parameter names {sorted(P)}; "
                         f"got {trainable!r}")
    masks = {}
    for k, m in trainable.items():
        m = torch.as_tensor(m, dtype=P[k].dtype)
        if m.ndim == 1 and m.shape[0] == C:
            m = m.reshape(C, *([1] * (P[k].ndim - 1)))
        try:
            torch.broadcast_shapes(m.shape, P[k].shape)
        except RuntimeError:
            raise ValueError(f"trainable[{k!r}] of shape {tuple(m.shape)} does not broadcast to the "
                             f"stacked parameter's shape {tuple(P[k].shape)}") from None
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"trainable[{k!r}] must hold 0 (frozen) or 1 (trainable)")
        masks[k] = m
    return masks


def _hint(lr, noise_std, lam) -> str:
    def show(v):
        vals = _as_list(v)
        return f"{vals[0]:g}" if len(vals) == 1 else "[" + ", ".join(f"{x:g}" for x in vals) + "]"

    hint = f"Lower lr (now {show(lr)}) or noise_std (now {show(noise_std)})"
    if any(v > 0 for v in _as_list(lam)):
        hint += f" or lam (now {show(lam)})"
    return hint + "."


def _loss_and_reg(model, X, y, *, per_chain: bool, fast: bool, masks, chains: ModuleChains | None,
                  grouped: bool = False):
    """(loss(P) -> [C], reg(P) -> [C]): the clean full-data loss of every chain and its regularizer
    (with frozen entries: the regularizer of the trainable ones, (1/n) Σ_i ‖m ⊙ ∇_θ h(x_i; θ)‖²).
    grouped: X holds data per group of chains, read by the model's grouped closed form."""
    if grouped:
        cf = closed_form_of(model)
        return lambda P: (cf.forward(P, X) - y).pow(2).mean(1), lambda P: cf.reg(P, X)
    if chains is not None:
        def loss(P):
            r = chains.forward(P, X, shared=not per_chain) - y
            return r.pow(2).reshape(r.shape[0], r.shape[1], -1).sum(-1).mean(1)
        return loss, lambda P: chains.reg(P, X, per_chain=per_chain, fast=fast)
    if per_chain:
        def loss(P):
            return (batched_forward(model, P, X) - y).pow(2).mean(1)
        return loss, lambda P: vmap(lambda p, x: _sq_norms_generic(model, p, x).mean())(P, X)
    if masks is not None:
        return (lambda P: full_data_loss(model, P, X, y),
                lambda P: trainable_sq_grad_norms(model, P, X, masks).mean(-1))
    return (lambda P: full_data_loss(model, P, X, y),
            lambda P: implicit_regularizer(model, P, X, stacked=True, fast=fast))


class _Recorder:
    def __init__(self, loss, reg, record_reg):
        self.loss_of, self.reg_of, self.record_reg = loss, reg, record_reg
        self.steps, self.params, self.loss, self.reg = [], [], [], []

    def __call__(self, t: int, P: dict, hint: str) -> None:
        loss = self.loss_of(P)
        check_finite(loss, t, hint)
        self.steps.append(t)
        self.params.append({k: v.clone() for k, v in P.items()})
        self.loss.append(loss)
        if self.record_reg:
            self.reg.append(self.reg_of(P))

    def trajectory(self, config: dict) -> Trajectory:
        keys = self.params[0].keys()
        return Trajectory(
            steps=torch.tensor(self.steps),
            params={k: torch.stack([p[k] for p in self.params]) for k in keys},
            loss=torch.stack(self.loss),
            reg=torch.stack(self.reg) if self.record_reg else None,
            config=config,
        )


def _record_points(steps: int, record_every: int | None) -> int:
    if record_every is None:
        return max(1, steps // 100)
    return validate.count(record_every, "record_every")


def _draw(gens, C: int, n: int, B: int, noise: str, dtype, full_batch: bool, needs_noise: bool,
          out: tuple = ()):
    """One chunk of randomness: indices [CHUNK, C, B] (None for a full batch) and noise Z [CHUNK, C, B,
    *out] (one draw per output; None when no chain of a full-batch run has noise: then nothing random
    happens)."""
    if not needs_noise:
        return None, None
    Cg = C // len(gens)
    idx, Z = [], []
    for gen in gens:
        if not full_batch:
            idx.append(torch.randint(n, (CHUNK, Cg, B), generator=gen))
        if noise == "gaussian":
            Z.append(torch.randn(CHUNK, Cg, B, *out, generator=gen, dtype=dtype))
        else:
            Z.append(torch.randint(0, 2, (CHUNK, Cg, B, *out), generator=gen).to(dtype) * 2 - 1)
    cat = (lambda ts: ts[0]) if len(gens) == 1 else (lambda ts: torch.cat(ts, 1))
    return (None if full_batch else cat(idx)), cat(Z)


# ----------------------------------------------------------------------------- the loop

def _setup_data(model, chains: ModuleChains | None, P: dict, X, y, per_chain: bool, dtype):
    """X, y as tensors, checked against the model: X [n, *x] and y [n] (a module: [n] or [n, k], as the
    module's output), or with ``per_chain`` a leading chain dimension on both. Returns X, y, n."""
    C = next(iter(P.values())).shape[0]
    if not per_chain:
        X, y = validate.as_data(X, y, dtype=dtype, outputs=chains is not None)
    else:
        X, y = validate.as_chain_data(X, y, C, dtype=dtype, outputs=chains is not None)
    X0 = X[0] if per_chain else X
    y_tail = tuple(y.shape[2:] if per_chain else y.shape[1:])
    if chains is None:
        check_model_output(model, {k: v[0] for k, v in P.items()}, X0[0])
        return X, y, X0.shape[0]
    out = chains.h({k: v[0] for k, v in P.items()}, X0[:1])
    if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != 1:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"module(X) must return one output row per example, [n] or [n, k]; got {got} "
                         "for one example")
    if tuple(out.shape[1:]) != y_tail:
        lead = "[C, n" if per_chain else "[n"
        want = lead + "".join(f", {d}" for d in out.shape[1:]) + "]"
        raise ValueError(f"y must match the module's output per example: y of shape {want}; got "
                         f"{tuple(y.shape)}")
    return X, y, X0.shape[0]


def _gather(T: torch.Tensor, idx: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """Rows idx [..., C, B] of the data T ([n, ...]; or, with ``rows`` [C], the data sets T [G, n, ...],
    chain c reading T[rows[c]])."""
    if rows is None:
        return T[idx]
    return T[rows.reshape(-1, 1), idx]


def label_noise_sgd(model, params: dict | None = None, X=None, y=None, *, lr, noise_std, steps: int,
                    lam=0.0, chains: int | None = None, batch_size: int = 1, noise: str = "gaussian",
                    seed: int = 0, seeds=None, trainable=None, noise_off_after: int | None = None,
                    record_every: int | None = None, stacked: bool = False, record_reg: bool = True,
                    fast: bool = True, compile: bool = False, threads: int | None = 1,
                    per_chain_data: bool = False) -> Trajectory:
    """Run label-noise SGD (and, with lam > 0, the explicit flow) on C chains at once.

    θ_c ← θ_c − lr_c·∇_θ [(1/B) Σ_{i∈b} ‖h(x_i; θ_c) − y_i − noise_std_c·Z_i‖² + lam_c·reg(θ_c)],
    Z ~ N(0, 1) or Rademacher (``noise``), fresh at every step, one draw per output. With batch_size < n
    each chain draws its own minibatch uniformly with replacement; batch_size == n uses every example
    once per step.

    model: a function h(params, x) returning a 0-d tensor for one example, or an ``nn.Module``
        (``label_noise_sgd(module, X=X, y=y, ...)``) with one output or k outputs per example.
    params: {name: tensor} for one model, copied to every chain; or, with ``stacked=True``, already
        stacked along a leading chain dimension (one initialization per chain). For a module: None (its
        own parameters, copied to every chain) or stacked ({name: [C, *shape]}, e.g. from
        ``nblib.stack_modules``); its parameters with requires_grad=False stay fixed.
    X, y: the data, [n, *x] and [n] (a module: [n, k] for k outputs); with ``per_chain_data=True``
        [G, n, *x] and [G, n(, k)], G = C (chain c training on X[c], y[c]) or G dividing C (group g of
        C/G consecutive chains sharing X[g], y[g]; X may be an expanded view of one [n, *x]).
    lr, noise_std, lam: one number for every chain, or one per chain.
    seed / seeds: one generator for all chains, or one per group of chains (see the module docstring).
    trainable: {name: mask} freezes parameters (mask 0) per chain ([C]) or per entry (broadcastable to
        the stacked shape); frozen entries never move. Not combined with lam > 0 (the regularizer of a
        run with frozen parameters sums only over the trainable ones), nor with a module (set
        requires_grad=False on its parameters instead).
    noise_off_after: from this step on σ = 0 (an annealing tail; the draws go on, unused).
    record_every: record every k steps and at the end (default: 100 records); recording never changes
        the trajectory. record_reg: also record reg(θ) (with ``trainable``: the regularizer of the
        trainable parameters, (1/n) Σ_i ‖m ⊙ ∇_θ h(x_i; θ)‖², the one such a run follows).
    fast: use the model's closed form or per-layer rules (else the torch.func reference); compile: fuse
        a closed form with torch.compile.
    threads: torch threads during the run (default 1: these loops are overhead-bound; None: as set).

    Returns a ``Trajectory`` whose config records the model, the per-chain hyperparameters and seeds.
    Raises ValueError on bad input and DivergenceError, naming what to lower, if a chain diverges.
    """
    module = ModuleChains(model) if isinstance(model, nn.Module) else None
    if X is None or y is None:
        raise ValueError("label_noise_sgd needs the data: X and y (for a module, label_noise_sgd(module, "
                         "X=X, y=y, ...))")
    if module is not None:
        if trainable is not None:
            raise ValueError("trainable=... is for functional models; freeze a module's parameters with "
                             "requires_grad_(False)")
        if params is None:
            params = module.stack(1 if chains is None else validate.count(chains, "chains"))
            stacked = True
        elif not stacked:
            raise ValueError("a module carries its own parameters: pass params=None, or params stacked "
                             "over chains ({name: [C, *shape]}, nblib.stack_modules) with stacked=True")
    validate.as_params(params)
    dtype = next(iter(params.values())).dtype
    steps = validate.count(steps, "steps", minimum=0)
    P, C = _stack(params, chains, stacked)
    if module is not None:
        module.check_stacked(P)
    X, y, n = _setup_data(model, module, P, X, y, per_chain_data, dtype)
    batch_size = validate.count(batch_size, "batch_size")
    if batch_size > n:
        raise ValueError(f"batch_size={batch_size} exceeds the number of examples n={n}")
    if noise not in ("gaussian", "rademacher"):
        raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")
    every = _record_points(steps, record_every)
    off = steps if noise_off_after is None else validate.count(noise_off_after, "noise_off_after",
                                                                minimum=0)
    lr = _per_chain(lr, C, "lr", dtype=dtype, positive=True)
    sigma = _per_chain(noise_std, C, "noise_std", dtype=dtype)
    lam = _per_chain(lam, C, "lam", dtype=dtype)
    any_lam = any(v > 0 for v in _as_list(lam))
    gens = [torch.Generator().manual_seed(s) for s in _groups(seed, seeds, C)]
    masks = _masks(trainable, P, C)
    if masks is not None and any_lam:
        raise ValueError("lam > 0 with frozen parameters (trainable=...) is not supported: the "
                         "regularizer of such a run sums only over the trainable parameters")

    cf = None if module is not None else closed_form_of(model)
    if per_chain_data and not (cf is not None and cf.grouped):
        cf = None
    use_closed_form = fast and cf is not None and (not any_lam or cf.reg_grad is not None)
    full_batch = batch_size == n
    shared = full_batch and not per_chain_data
    rows = y_rows = None
    if per_chain_data:             # data set of every chain: G groups of C/G consecutive chains
        rows, y_rows = torch.arange(C) // (C // X.shape[0]), torch.arange(C)
        y = y[rows] if y.shape[0] < C else y
        if X.shape[0] < C and not use_closed_form:     # the generic paths read one data set per chain
            X, rows = X[rows], y_rows
    grouped = use_closed_form and per_chain_data
    lr_ = {k: _per_param(lr, v) for k, v in P.items()}
    lam_ = {k: _per_param(lam, v) for k, v in P.items()}
    if module is not None:
        step = _module_step(module, X, any_lam, shared, per_chain_data, fast, lr_, lam_, masks)
    elif use_closed_form:
        step = _closed_form_step(model, X, any_lam, lr_, lam_, masks)
    else:
        lam_c = torch.as_tensor(_as_list(lam) * (C // len(_as_list(lam))), dtype=dtype)
        step = _generic_step(model, X, any_lam, shared, lr_, lam_c, masks, per_chain=per_chain_data)
    if compile:
        if not use_closed_form:
            raise ValueError("compile=True needs a model with a closed form (model.closed_form) and "
                             "fast=True")
        _require_compiler()
        step = torch.compile(step, dynamic=False)

    hint = _hint(lr, sigma, lam)
    config = dict(model=getattr(model, "__name__", type(model).__name__), lr=_as_list(lr) * (
        C if isinstance(lr, float) else 1), noise_std=_as_list(sigma) * (C if isinstance(sigma, float)
                                                                        else 1),
        lam=_as_list(lam) * (C if isinstance(lam, float) else 1), steps=steps, batch_size=batch_size,
        noise=noise, seeds=[g.initial_seed() for g in gens], noise_off_after=noise_off_after,
        trainable=None if trainable is None else sorted(trainable), per_chain_data=per_chain_data)
    needs_noise = not full_batch or any(v > 0 for v in _as_list(sigma))
    out = tuple(y.shape[2:] if per_chain_data else y.shape[1:])
    x_size = X[0, 0].numel() if per_chain_data else X[0].numel()
    per_chunk = CHUNK * C * batch_size * x_size <= GATHER_LIMIT
    clean = (y if per_chain_data else y.expand(C, *y.shape)) if full_batch else None
    record = _Recorder(*_loss_and_reg(model, X, y, per_chain=per_chain_data, fast=fast, masks=masks,
                                      chains=module, grouped=grouped), record_reg)
    with cpu_settings(threads), torch.no_grad():
        record(0, P, hint)
        t = 0
        while t < steps:
            K = min(CHUNK, steps - t)
            idx, Z = _draw(gens, C, n, batch_size, noise, dtype, full_batch, needs_noise, out)
            if idx is not None and per_chunk:             # small data: gather the chunk at once
                Xc, yc = _gather(X, idx[:K], rows), _gather(y, idx[:K], y_rows)
            if needs_noise and (full_batch or per_chunk):  # noisy labels of the chunk at once
                Yc = (y if full_batch else yc) + _scale_chunk(sigma, Z[:K])
            for k in range(K):
                if full_batch:
                    Xb, yb = X, clean
                elif per_chunk:
                    Xb, yb = Xc[k], yc[k]
                else:                                       # large data: one minibatch at a time
                    Xb, yb = _gather(X, idx[k], rows), _gather(y, idx[k], y_rows)
                if t >= off or not needs_noise:
                    Yb = yb
                elif full_batch or per_chunk:
                    Yb = Yc[k]
                else:
                    Yb = yb + _scale(sigma, Z[k])
                P, r = step(P, Xb, Yb)
                t += 1
                if t % every == 0 or t == steps:
                    record(t, P, hint)
            check_finite(r.pow(2).reshape(C, -1).mean(1), t, hint)
    return record.trajectory(config)


def regularized_gd(model, params: dict | None = None, X=None, y=None, *, lr, lam, steps: int,
                   chains: int | None = None, record_every: int | None = None, stacked: bool = False,
                   record_reg: bool = True, fast: bool = True, threads: int | None = 1,
                   per_chain_data: bool = False) -> Trajectory:
    """Full-batch gradient descent on L(θ) + λ·reg(θ), L = (1/n) Σ_i ‖h(x_i; θ) − y_i‖².

    The same loop as ``label_noise_sgd`` with noise_std = 0 and batch_size = n. With
    λ = implicit_lambda(lr, noise_std, batch_size) it is the flow label-noise SGD follows near the
    zero-error manifold. Same models, conventions, records and errors.
    """
    X_ = torch.as_tensor(X) if X is not None else torch.zeros(())
    n = X_.shape[1 if per_chain_data else 0] if X_.ndim > int(per_chain_data) else 1
    return label_noise_sgd(model, params, X, y, lr=lr, noise_std=0.0, lam=lam, steps=steps,
                           chains=chains, batch_size=n, record_every=record_every, stacked=stacked,
                           record_reg=record_reg, fast=fast, threads=threads, per_chain_data=per_chain_data)
