"""Label-noise SGD throughput on the two-layer ReLU net (width 1000, 16 points), side by side.

    python benchmarks/label_noise_throughput.py [--quick]

Measures chain-steps per second (one SGD step of one chain = one chain-step) of
  1. the standard loop: nn.Module + optim.SGD, one chain, one step at a time (the baseline);
  2. nblib.label_noise_sgd, generic torch.func path (the tested reference), many chains;
  3. nblib.label_noise_sgd, closed-form batched step, eager;
  4. nblib.label_noise_sgd, closed-form batched step fused with torch.compile;
and prints each as a ratio to the baseline (machines are noisy: ratios travel, absolute numbers do not).
Batch size 1 (the paper's SGD: one example per step), Gaussian label noise, float32.
Writes benchmarks/results/label_noise_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

import nblib
from nblib.models import init_two_layer_relu, two_layer_relu

WIDTH, N, LR, NOISE = 1000, 16, 1e-3, 0.1


def data():
    X = torch.linspace(-1, 1, N)
    return X, torch.sin(3 * X)


def standard_loop(steps: int) -> float:
    """The loop people write: nn.Module, optim.SGD, fresh label noise on one random example per step."""
    torch.manual_seed(0)
    X, y = data()
    net = torch.nn.Sequential(torch.nn.Linear(1, WIDTH), torch.nn.ReLU(), torch.nn.Linear(WIDTH, 1))
    skip = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(list(net.parameters()) + list(skip.parameters()), lr=LR)
    start = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(N, (1,))
        x = X[i, None]
        target = y[i] + NOISE * torch.randn(1)
        opt.zero_grad()
        loss = ((net(x) + skip(x)).squeeze(-1) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def nblib_run(chains: int, steps: int, *, fast: bool, compile: bool) -> float:
    X, y = data()
    params = init_two_layer_relu(WIDTH, generator=torch.Generator().manual_seed(0))
    kw = dict(lr=LR, noise_std=NOISE, chains=chains, seed=0, record_reg=False, fast=fast, compile=compile)
    if compile:   # compile once (same shapes and lr) before timing
        nblib.label_noise_sgd(two_layer_relu, params, X, y, steps=300, record_every=300, **kw)
    start = time.perf_counter()
    nblib.label_noise_sgd(two_layer_relu, params, X, y, steps=steps, record_every=steps, **kw)
    return chains * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke test, noisier numbers)")
    args = parser.parse_args()
    scale = 0.2 if args.quick else 1.0
    rows = []
    base = standard_loop(int(3000 * scale))
    rows.append(("standard loop (nn.Module + optim.SGD), 1 chain", 1, base))
    rows.append(("nblib generic torch.func path", 256, nblib_run(256, int(300 * scale), fast=False, compile=False)))
    rows.append(("nblib closed-form step, eager", 256, nblib_run(256, int(1500 * scale), fast=True, compile=False)))
    try:
        rows.append(("nblib closed-form step, torch.compile", 1024,
                     nblib_run(1024, int(3000 * scale), fast=True, compile=True)))
    except RuntimeError as err:   # e.g. no C++ compiler: say so, skip the row
        print(f"skipped the compiled row: {err}")
    print(f"two-layer ReLU, width {WIDTH}, {N} points, batch size 1, torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs, threads {torch.get_num_threads()}")
    print(f"{'method':48s} {'chains':>6s} {'chain-steps/s':>14s} {'× standard':>11s}")
    for name, chains, rate in rows:
        print(f"{name:48s} {chains:6d} {rate:14,.0f} {rate / base:10.1f}×")
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    out = os.path.join(os.path.dirname(__file__), "results", "label_noise_throughput.json")
    with open(out, "w") as f:
        json.dump({"machine": {"cpus": os.cpu_count(), "platform": platform.platform(terse=True),
                               "torch": torch.__version__, "threads": torch.get_num_threads()},
                   "model": {"width": WIDTH, "n": N, "batch_size": 1},
                   "rows": [{"method": n, "chains": c, "chain_steps_per_s": r, "ratio_to_standard": r / base}
                            for n, c, r in rows]}, f, indent=2)
    print(f"wrote {os.path.relpath(out)}")


if __name__ == "__main__":
    main()
