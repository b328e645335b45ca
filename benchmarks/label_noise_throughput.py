"""Label-noise SGD throughput on each chapter's model: nblib against the standard loop, side by side.

    python benchmarks/label_noise_throughput.py [--quick]

For every model a Part I chapter runs label-noise SGD on, measures chain-steps per second (one SGD
step of one chain = one chain-step) of
  * the standard loop: nn.Module + optim.SGD, one chain, fresh label noise every step (the baseline);
  * nblib.label_noise_sgd, generic torch.func path (the tested reference), many chains;
  * nblib's closed-form batched step, eager;
  * the same step fused with torch.compile (where a C++ compiler is present; otherwise the row is skipped);
and, for two ordinary nn.Modules (the digits chapter's MLP and a small CNN on the same 8×8 images),
C chains through the one loop against C separate nn.Module + optim.SGD loops (module_rows);
and reports each as a ratio to the baseline re-measured next to it (the baseline at its faster thread
setting, one thread or all; nblib's runs on all cores) (machines are noisy: ratios travel,
absolute numbers do not). Each chapter's own settings (width, points, batch size, dtype, lr, σ).
Writes benchmarks/results/label_noise_throughput.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

import nblib
from nblib.chapters import matrix_sensing as ms
from nblib.chapters.models import init_two_layer_relu, product, two_layer_relu
from nblib.chapters.one_point import MODELS, init_unit_net

from _common import RESULTS, TwoLayerReLU, machine


# ----------------------------------------------------------------------------- the chapters' settings

def theorem_case():
    X = torch.tensor([0.8, 1.0, 1.2])
    params = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    module = lambda: _Product(params)                                           # noqa: E731
    return dict(model=product, params=params, X=X, y=X.clone(), lr=0.01, noise_std=1.0, batch_size=1,
                module=module, about="h = a·b·x, 3 points, batch 1, η = 0.01, σ = 1 (theorem chapter)")


def relu_case(width, n, batch_size, lr, noise_std, about):
    X = torch.linspace(-1, 1, n)
    y = torch.sin(3 * X)
    params = init_two_layer_relu(width, scale=0.32 if width == 100 else 1.0, generator=torch.Generator().manual_seed(0))
    return dict(model=two_layer_relu, params=params, X=X, y=y, lr=lr, noise_std=noise_std, batch_size=batch_size,
                module=lambda: _TwoLayerReLU(params), about=about)


def one_point_case():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, generator=g)
    x = x / x.norm()
    params = {k: v[0].float() for k, v in init_unit_net(10, 5, chains=1, generator=g).items()}
    return dict(model=MODELS["tanh"], params=params, X=x[None], y=torch.tensor([1.0]), lr=0.1, noise_std=1.0,
                batch_size=1, module=lambda: _TanhNet(params),
                about="tanh net, m = 10, d = 5, one point, η = 0.1, σ = 1 (one-point chapter)")


class _Product(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.a, self.b = torch.nn.Parameter(p["a"].clone()), torch.nn.Parameter(p["b"].clone())

    def forward(self, x):
        return self.a * self.b * x


class _TwoLayerReLU(TwoLayerReLU):
    def forward(self, x):                 # x: [B] scalars
        return super().forward(x[:, None])[:, 0]


class _TanhNet(torch.nn.Module):
    def __init__(self, p):
        super().__init__()
        self.W, self.c = torch.nn.Parameter(p["W"].clone()), torch.nn.Parameter(p["c"].clone())

    def forward(self, x):
        return torch.tanh(x @ self.W.T) @ self.c


# ----------------------------------------------------------------------------- the runs

def standard_loop(case, steps: int) -> float:
    """The baseline at its best: the faster of one torch thread and all of them (tiny models run faster
    on one thread; the loop is overhead-bound)."""
    threads = torch.get_num_threads()
    rates = []
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        rates.append(_standard_loop(case, steps))
    torch.set_num_threads(threads)
    return max(rates)


def _standard_loop(case, steps: int) -> float:
    """The loop people write: nn.Module, optim.SGD, fresh label noise on a random minibatch each step."""
    torch.manual_seed(0)
    X, y, B = case["X"], case["y"], case["batch_size"]
    net = case["module"]()
    opt = torch.optim.SGD(net.parameters(), lr=case["lr"])
    start = time.perf_counter()
    for _ in range(steps):
        i = torch.randint(len(X), (B,))
        target = y[i] + case["noise_std"] * torch.randn(B)
        opt.zero_grad()
        loss = (net(X[i]) - target).pow(2).mean()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def nblib_run(case, chains: int, steps: int, *, fast: bool, compile: bool) -> float:
    kw = dict(lr=case["lr"], noise_std=case["noise_std"], batch_size=case["batch_size"], chains=chains, seed=0,
              record_reg=False, fast=fast, compile=compile, threads=None)
    args = (case["model"], case["params"], case["X"], case["y"])
    if compile:   # compile once (same shapes and lr) before timing
        nblib.label_noise_sgd(*args, steps=300, record_every=300, **kw)
    start = time.perf_counter()
    nblib.label_noise_sgd(*args, steps=steps, record_every=steps, **kw)
    return chains * steps / (time.perf_counter() - start)


def sensing_rows(scale):
    """Matrix sensing (d = 40, r = 2, n = 400, full batch): nblib's closed-form step vs the standard loop."""
    d, rank, n = 40, 2, 400
    problem = ms.sensing_problem(d, rank, n, seed=0, dtype=torch.float32)
    lr, sigma = 0.03, 1.0
    torch.manual_seed(0)
    U = torch.nn.Parameter(torch.eye(d))
    opt = torch.optim.SGD([U], lr=lr)
    steps = max(20, int(300 * scale))
    start = time.perf_counter()
    for _ in range(steps):
        target = problem.y + sigma * torch.randn(n)
        opt.zero_grad()
        loss = ((problem.A * (U @ U.T)).sum((-2, -1)) - target).pow(2).mean()
        loss.backward()
        opt.step()
    base = steps / (time.perf_counter() - start)
    chains, nsteps = 8, max(20, int(600 * scale))
    start = time.perf_counter()
    nblib.label_noise_sgd(ms.matrix_sensing, {"U": torch.eye(d)}, problem.A, problem.y, lr=lr,
                          noise_std=sigma, chains=chains, batch_size=n, steps=nsteps,
                          record_every=nsteps, record_reg=False, threads=None)
    fast = chains * nsteps / (time.perf_counter() - start)
    about = f"matrix sensing d = {d}, r = {rank}, n = {n}, full batch, η = {lr}, σ = {sigma} (matrix-sensing chapter)"
    return [row("matrix sensing", about, "standard loop (nn.Module + optim.SGD)", 1, base, base),
            row("matrix sensing", about, "nblib closed-form step, eager", chains, fast, base)]


def module_nets():
    """The two nn.Modules of the module rows: (name, about, maker)."""
    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                   torch.nn.Tanh(), torch.nn.Linear(64, 10))

    def cnn():
        return torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 8, 3, padding=1),
                                   torch.nn.Tanh(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.Tanh(),
                                   torch.nn.Flatten(), torch.nn.Linear(512, 10))
    setting = "500 images 8×8, 10 outputs, batch 32, σ = 0.5"
    return [("MLP 64-64-64-10 tanh", f"the digits chapter's network; {setting}, η = 0.05", mlp, 0.05),
            ("CNN conv 8, conv 8, linear 10", f"3×3 convolutions, tanh; {setting}, η = 0.01", cnn, 0.01)]


def separate_loops(nets, X, Y, steps: int, lr: float) -> float:
    """C separate loops, as people write them: per chain an nn.Module, optim.SGD and its own minibatch and
    label noise every step; chain-steps per second (the faster of one thread and all)."""
    threads = torch.get_num_threads()
    rates = []
    for t in sorted({1, threads}):
        torch.set_num_threads(t)
        opts = [torch.optim.SGD(net.parameters(), lr=lr) for net in nets]
        start = time.perf_counter()
        for _ in range(steps):
            for net, opt in zip(nets, opts):
                i = torch.randint(len(X), (32,))
                target = Y[i] + 0.5 * torch.randn(32, Y.shape[1])
                opt.zero_grad()
                (net(X[i]) - target).pow(2).sum(-1).mean().backward()
                opt.step()
        rates.append(len(nets) * steps / (time.perf_counter() - start))
    torch.set_num_threads(threads)
    return max(rates)


def module_rows(scale, chains=(1, 16, 64)):
    """nn.Modules: C chains through nblib.label_noise_sgd (one call) against C separate loops."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(500, 64, generator=g)                                   # pixel values in [0, 1]
    Y = torch.nn.functional.one_hot(torch.randint(10, (500,), generator=g), 10).float()
    rows = []
    for name, about, make, lr in module_nets():
        for C in chains:
            torch.manual_seed(0)
            nets = [make() for _ in range(C)]
            steps = max(10, int(400 * scale * 16 / max(C, 16)))
            base = separate_loops(copy.deepcopy(nets), X, Y, max(5, steps // 4), lr)
            start = time.perf_counter()
            nblib.label_noise_sgd(nets[0], nblib.stack_modules(nets), X, Y, stacked=True, lr=lr,
                                  noise_std=0.5, batch_size=32, steps=steps, record_every=steps,
                                  record_reg=False, threads=None)
            rate = C * steps / (time.perf_counter() - start)
            base = (base + separate_loops(copy.deepcopy(nets), X, Y, max(5, steps // 4), lr)) / 2
            rows.append(row(name, about, f"{C} separate loops (nn.Module + optim.SGD)", C, base, base))
            rows.append(row(name, about, "nblib.label_noise_sgd on the nn.Module, one call", C, rate, base))
    return rows


def row(model, about, method, chains, rate, base):
    return dict(model=model, about=about, method=method, chains=chains, chain_steps_per_s=rate,
                ratio_to_standard=rate / base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps (a smoke test, noisier numbers)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads for nblib's runs (default: torch's default, all cores)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    scale = 0.2 if args.quick else 1.0
    cases = {
        "product a·b·x": theorem_case(),
        "two-layer ReLU (chapter)": relu_case(100, 12, 12, 0.05, 0.2,
                                              "width 100, 12 points, full batch, η = 0.05, σ = 0.2 (ReLU chapter)"),
        "two-layer ReLU, width 1000": relu_case(1000, 16, 1, 1e-3, 0.1,
                                                "width 1000, 16 points, batch 1 (issue 2 target)"),
        "tanh, one point": one_point_case(),
    }
    rows = []
    for name, case in cases.items():
        # the baseline is re-measured next to every nblib method, and each ratio uses its neighbour's
        bases = [standard_loop(case, int(3000 * scale))]
        rows.append(row(name, case["about"], "standard loop (nn.Module + optim.SGD)", 1, bases[0], bases[0]))
        methods = [("nblib generic torch.func path", 256, int(300 * scale), False, False),
                   ("nblib closed-form step, eager", 1024, int(1000 * scale), True, False),
                   ("nblib closed-form step, torch.compile", 1024, int(3000 * scale), True, True)]
        for method, chains, steps, fast, compile in methods:
            try:
                rate = nblib_run(case, chains, steps, fast=fast, compile=compile)
            except RuntimeError as err:   # e.g. no C++ compiler: say so, skip the row
                print(f"skipped {method} for {name}: {err}")
                continue
            bases.append(standard_loop(case, int(3000 * scale)))
            rows.append(row(name, case["about"], method, chains, rate, (bases[-2] + bases[-1]) / 2))
    rows += sensing_rows(scale)
    modules = module_rows(scale)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'model':28s} {'method':48s} {'chains':>6s} {'chain-steps/s':>14s} {'× standard':>11s}")
    for r in rows + modules:
        print(f"{r['model']:28s} {r['method']:48s} {r['chains']:6d} {r['chain_steps_per_s']:14,.0f} "
              f"{r['ratio_to_standard']:10.1f}×")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "label_noise_throughput.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows, "module_rows": modules}, indent=1))
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
