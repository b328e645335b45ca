"""One minibatch training loop for classifiers: one network, or a bank of K networks trained at once.

    g = Generator(seed);  for every epoch: order = randperm(n, g), and for every batch B of that order
        optimizer step on loss_fn(model(X_B), y_B)

``model(X)`` returns one network's outputs [n, classes] or a list of K of them (a ``WidthBank``). The
loss hook defaults to the cross-entropy, summed over the networks of a bank, so that each network of a
bank gets exactly the gradient, and follows exactly the trajectory, it would get trained alone on the same
minibatches. The run returns a ``Trajectory`` over the recorded epochs with one column per network:

    steps    [T]     the recorded epochs (0, record_every, 2·record_every, ..., the last)
    params   {}      (not recorded; the model itself holds the trained weights)
    loss     [T, K]  cross-entropy on the training set
    metrics  {"train_err", "<name>_loss", "<name>_err" for every (X, y) of ``evals``}, each [T, K]
    config   {"optimizer", "lr", "batch_size", "epochs", "seed", "record_every", "networks", "loss_fn"}

A non-finite or exploding loss (or non-finite weights) raises ``DivergenceError`` naming lr.

``train_in_lockstep`` is the same minibatch step for several models at once, on one shared sequence of
random minibatches, recording after every step how far each model's outputs are from the first one's:
the test of whether two parametrizations of one network follow one trajectory.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...core.runtime import cpu_settings
from ...core.trajectory import HUGE, DivergenceError, Trajectory, check_finite


def summed_cross_entropy(outputs, y) -> torch.Tensor:
    """Cross-entropy of one network's outputs [n, classes], or its SUM over a list of networks' outputs."""
    if isinstance(outputs, torch.Tensor):
        return nn.functional.cross_entropy(outputs, y)
    return sum(nn.functional.cross_entropy(out, y) for out in outputs)


def _as_list(outputs) -> list[torch.Tensor]:
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def error_rate(model, X, y) -> float:
    """Fraction of misclassified examples (argmax of the outputs) of one network."""
    with torch.no_grad():
        return float((model(X).argmax(1) != y).double().mean())


def cross_entropy(model, X, y) -> float:
    """Cross-entropy of one network on (X, y)."""
    with torch.no_grad():
        return float(nn.functional.cross_entropy(model(X), y))


def evaluate(model, X, y) -> tuple[list[float], list[float]]:
    """Cross-entropy and error rate of each network of ``model`` on (X, y): two lists of K floats."""
    with torch.no_grad():
        outs = _as_list(model(X))
        return ([float(nn.functional.cross_entropy(o, y)) for o in outs],
                [float((o.argmax(1) != y).double().mean()) for o in outs])


def _lr_hint(optimizer) -> tuple[object, str]:
    """The optimizer's step size (one number, or one per parameter group) and the divergence hint."""
    lrs = [group["lr"] for group in optimizer.param_groups]
    lr = lrs[0] if len(set(lrs)) == 1 else lrs
    shown = ", ".join(f"{v:g}" for v in lrs) if isinstance(lr, list) else f"{lr:g}"
    return lr, f"Lower the step size lr (now {shown})."


def _check_epoch(loss, model, epoch: int, hint: str) -> None:
    """DivergenceError if the epoch's last minibatch loss or any weight is non-finite (or huge)."""
    value = loss.item()
    finite_weights = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if math.isfinite(value) and abs(value) <= HUGE and finite_weights:
        return
    weights = "" if finite_weights else " and some weights are not finite"
    raise DivergenceError(f"training diverged in epoch {epoch}: the last minibatch loss is {value:.3g}"
                          f"{weights}. {hint}")


def _step(model, optimizer, loss_fn, Xb, yb) -> torch.Tensor:
    """One optimizer step on the minibatch loss; returns that loss (before the step)."""
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(Xb), yb)
    loss.backward()
    optimizer.step()
    return loss


def _check_inputs(X, y, epochs, batch_size, record_every, loss_fn):
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("record_every", record_every)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if not torch.isfinite(X).all() or X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be a finite [n, d] tensor and y [n] labels; got {tuple(X.shape)}, "
                         f"{tuple(y.shape)}")
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a callable loss_fn(outputs, y), got {loss_fn!r}")


def train(model, optimizer, X, y, *, epochs: int, batch_size: int, seed: int = 0, loss_fn=None,
          evals=None, record_every: int = 1, stop_at_zero_error: bool = False) -> Trajectory:
    """Minibatch training, reshuffling every epoch with a generator seeded by ``seed``; no regularization.

    loss_fn(outputs, y_batch): the minibatch loss (default ``summed_cross_entropy``).
    evals: {name: (X, y)} evaluated (cross-entropy and error of every network) at epoch 0, every
    ``record_every`` epochs and at the last epoch, besides the training set itself.
    stop_at_zero_error: stop at the first record where every network has zero training error.
    Runs with one torch thread and denormals flushed (``cpu_settings``). Returns a ``Trajectory`` (see
    the module docstring); raises ``DivergenceError`` (naming lr) when training diverges.
    """
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    _check_inputs(X, y, epochs, batch_size, record_every, loss_fn)
    evals = {"train": (X, y), **(evals or {})}
    lr, hint = _lr_hint(optimizer)
    recorded: list[int] = []
    series: dict[str, list[list[float]]] = {f"{name}_{q}": [] for name in evals for q in ("loss", "err")}

    def record(epoch):
        recorded.append(epoch)
        for name, (Xe, ye) in evals.items():
            loss_e, err_e = evaluate(model, Xe, ye)
            series[f"{name}_loss"].append(loss_e)
            series[f"{name}_err"].append(err_e)
        check_finite(torch.tensor(series["train_loss"][-1]), epoch, hint, what="network")

    with cpu_settings(threads=1):
        record(0)
        g = torch.Generator().manual_seed(seed)
        n = len(y)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=g)
            for s in range(0, n, batch_size):
                idx = order[s:s + batch_size]
                loss = _step(model, optimizer, loss_fn, X[idx], y[idx])
            _check_epoch(loss, model, epoch, hint)
            if epoch % record_every == 0 or epoch == epochs:
                record(epoch)
                if stop_at_zero_error and max(series["train_err"][-1]) == 0.0:
                    break

    as_tensor = {k: torch.tensor(v, dtype=torch.float64) for k, v in series.items()}
    train_loss = as_tensor.pop("train_loss")
    config = {"optimizer": type(optimizer).__name__, "lr": lr, "batch_size": batch_size, "epochs": epochs,
              "seed": seed, "record_every": record_every, "networks": train_loss.shape[1],
              "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__)}
    return Trajectory(steps=torch.tensor(recorded), params={}, loss=train_loss, reg=None,
                      metrics=as_tensor, config=config)


def train_in_lockstep(models, optimizers, X, y, *, steps: int, batch_size: int, X_eval, seed: int = 0,
                      loss_fn=None) -> Trajectory:
    """Train K models side by side on the same random minibatches, one step each in turn, and measure
    after every step how far each model's function is from model 0's on ``X_eval``.

    Step t draws one minibatch, ``randperm(n, g)[:batch_size]`` (g seeded by ``seed``), and takes one
    optimizer step of model 0, then model 1, ... on it. Returns a ``Trajectory`` with steps 1..``steps``,
    params {}, loss [T, K] (each model's minibatch loss before its step), metrics {"output_gap": [T, K],
    max |f_k − f_0| / max |f_0| over ``X_eval`` and the outputs (column 0 is 0)} and config as ``train``.
    Runs under ``cpu_settings``; raises ``DivergenceError`` (naming lr) when a loss diverges.
    """
    models, optimizers = list(models), list(optimizers)
    loss_fn = summed_cross_entropy if loss_fn is None else loss_fn
    if not models or len(optimizers) != len(models):
        raise ValueError(f"need one optimizer per model: {len(models)} models, {len(optimizers)} optimizers")
    _check_inputs(X, y, steps, batch_size, 1, loss_fn)
    lr, hint = _lr_hint(optimizers[0])
    losses, gaps = [], []
    with cpu_settings(threads=1):
        g = torch.Generator().manual_seed(seed)
        for t in range(1, steps + 1):
            idx = torch.randperm(len(y), generator=g)[:batch_size]
            losses.append([_step(m, opt, loss_fn, X[idx], y[idx]).item() for m, opt in zip(models, optimizers)])
            check_finite(torch.tensor(losses[-1]), t, hint, what="model")
            with torch.no_grad():
                outs = [m(X_eval) for m in models]
            gaps.append([float((outs[0] - f).abs().max() / outs[0].abs().max()) for f in outs])
    config = {"optimizer": type(optimizers[0]).__name__, "lr": lr, "batch_size": batch_size, "steps": steps,
              "seed": seed, "networks": len(models), "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__)}
    return Trajectory(steps=torch.arange(1, steps + 1), params={}, loss=torch.tensor(losses, dtype=torch.float64),
                      reg=None, metrics={"output_gap": torch.tensor(gaps, dtype=torch.float64)}, config=config)
