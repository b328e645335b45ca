"""reg(θ) = (1/n) Σ_i ‖∇_θ h(x_i; θ)‖² and ∇reg: nblib against the libraries people would use instead.

    python benchmarks/regularizer.py [--quick]

Models: an MLP 64-256-256-10 with summed outputs (``nblib.chapters.models.mlp``) and the two-layer ReLU net on
1-D data, width 1000 (``nblib.chapters.models.two_layer_relu``); n ∈ {64, 256, 1024}; float32.
Methods, each timed as a ratio to the floor (one batched forward+backward of the plain squared loss on
the equivalent nn.Module):
  nblib                 closed forms: ‖a_i‖²‖g_i‖² per linear layer; ∇reg by hand (implicit_regularizer_and_grad)
  per-example loop      one autograd call per example (create_graph for ∇reg)
  torch.func            vmap(grad(h)), ∇reg by autograd through it (nblib's generic reference, fast=False)
  BackPACK              BatchL2Grad extension (backpack-for-pytorch); ∇reg via create_graph if it agrees
  Opacus                GradSampleModule per-sample gradients, value only
Two nn.Modules the book's chapters do not use, run through nblib's generic module path
(``implicit_regularizer_and_grad(module, X)``: per-layer rules), at n = 1024: a tanh MLP 32-384-384-1 and a
small CNN on 1×8×8 inputs (Conv2d 1→16 3×3, tanh, Conv2d 16→16 3×3 stride 2, tanh, Linear 256→1); against
torch.func on the same module (fast=False), BackPACK and Opacus.
Every method is checked against nblib (value and gradient) before it is timed; a disagreement stops the
benchmark. A missing optional library is reported and its rows are skipped.
Timing: rounds that interleave the methods; each round times every method for a short block; the
reported ratio is the median over rounds of (method time / floor time in the same round), which
cancels most of a noisy machine's drift. Writes benchmarks/results/regularizer.json.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import statistics
import time
import warnings

import torch

import nblib
from nblib.chapters.models import init_mlp, init_two_layer_relu, mlp, two_layer_relu

from _common import RESULTS, TwoLayerReLU, machine

warnings.filterwarnings("ignore", category=UserWarning)   # BackPACK/Opacus hook warnings
SIZES = (64, 256, 1024)
MLP_SIZES = [64, 256, 256, 10]
WIDTH = 1000


# ----------------------------------------------------------------------------- the models as nn.Modules

def mlp_module(params):
    L = len(params) // 2
    layers = []
    for l in range(1, L + 1):
        lin = torch.nn.Linear(params[f"W{l}"].shape[1], params[f"W{l}"].shape[0])
        with torch.no_grad():
            lin.weight.copy_(params[f"W{l}"]), lin.bias.copy_(params[f"b{l}"])
        layers += [lin, torch.nn.ReLU()] if l < L else [lin]
    return torch.nn.Sequential(*layers)


def backpack_module(kind, params):
    from backpack import extend
    from backpack.custom_module.branching import Parallel
    if kind == "mlp":
        return extend(mlp_module(params))
    net = TwoLayerReLU(params)
    return extend(Parallel(torch.nn.Sequential(net.hidden, torch.nn.ReLU(), net.outer), net.skip), use_converter=False)


def module_grads_as_params(kind, net, grads):
    """Map nn.Module parameter gradients to nblib's parameter names."""
    if kind == "mlp":
        lins = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        out = {}
        for l, (lin, (gw, gb)) in enumerate(zip(lins, zip(grads[0::2], grads[1::2])), start=1):
            out[f"W{l}"], out[f"b{l}"] = gw, gb
        return out
    ga, gb, gc, ga0, gb0 = grads
    return {"a": ga[:, 0], "b": gb, "c": gc[0], "a0": ga0.reshape(()), "b0": gb0.reshape(())}


def problem(kind, n):
    g = torch.Generator().manual_seed(n)
    if kind == "mlp":
        params = init_mlp(MLP_SIZES, generator=g)
        X = torch.randn(n, MLP_SIZES[0], generator=g)
        return mlp, params, X, X, mlp_module(params)
    params = init_two_layer_relu(WIDTH, generator=g)
    params["a0"], params["b0"] = torch.tensor(0.3), torch.tensor(-0.2)
    X = torch.linspace(-1, 1, n)
    return two_layer_relu, params, X, X[:, None], TwoLayerReLU(params)


# ----------------------------------------------------------------------------- the methods
# Each maker returns (value_fn, grad_fn or None, why_no_grad); value_fn() -> reg, grad_fn() -> (reg, grads).

def floor_fn(net, Xm):
    y = torch.zeros(Xm.shape[0])

    def run():
        net.zero_grad(set_to_none=True)
        loss = (net(Xm).sum(-1) - y).pow(2).mean()
        loss.backward()
        return loss
    return run


def make_nblib(kind, model, params, X, Xm):
    def value():
        with torch.no_grad():
            return nblib.implicit_regularizer(model, params, X)
    return value, lambda: nblib.implicit_regularizer_and_grad(model, params, X), None


def make_loop(kind, model, params, X, Xm):
    names = list(params)

    def run(create_graph):
        P = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        total = 0.0
        for x in X:
            grads = torch.autograd.grad(model(P, x), list(P.values()), create_graph=create_graph)
            total = total + sum(g.pow(2).sum() for g in grads)
        return total / len(X), P

    def value():
        return run(False)[0]

    def with_grad():
        reg, P = run(True)
        g = torch.autograd.grad(reg, list(P.values()), allow_unused=True)
        return reg.detach(), {k: torch.zeros_like(params[k]) if gk is None else gk for k, gk in zip(names, g)}
    return value, with_grad, None


def make_torch_func(kind, model, params, X, Xm):
    def value():
        with torch.no_grad():
            return nblib.implicit_regularizer(model, params, X, fast=False)
    return value, lambda: nblib.implicit_regularizer_and_grad(model, params, X, fast=False), None


def backpack_fns(net, X, grads_as):
    """(value, with_grad) of reg by BackPACK's BatchL2Grad on an extended module; ∇reg via create_graph,
    its parameter gradients mapped to the reference's names by ``grads_as(list)``."""
    from backpack import backpack
    from backpack.extensions import BatchL2Grad

    def run(create_graph):
        net.zero_grad(set_to_none=True)
        with backpack(BatchL2Grad()):
            net(X).sum().backward(create_graph=create_graph)
        return sum(p.batch_l2 for p in net.parameters()).mean()

    def with_grad():
        reg = run(True)
        grads = torch.autograd.grad(reg, list(net.parameters()), allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(net.parameters(), grads)]
        for p in net.parameters():        # break the parameter ↔ .grad reference cycle of create_graph
            p.grad = None
        return reg.detach(), grads_as(grads)
    return lambda: run(False).detach(), with_grad


def opacus_value(base, X):
    """reg from Opacus' per-sample gradients (value only)."""
    from opacus import GradSampleModule
    net = GradSampleModule(base, loss_reduction="sum")

    def value():
        net.zero_grad(set_to_none=True)
        for p in net.parameters():
            p.grad_sample = None
        net(X).sum().backward()
        return sum(p.grad_sample.pow(2).reshape(p.grad_sample.shape[0], -1).sum(1) for p in net.parameters()).mean()
    return value


OPACUS_WHY = "Opacus computes per-sample gradients, not their derivative"


def make_backpack(kind, model, params, X, Xm):
    net = backpack_module(kind, params)
    value, with_grad = backpack_fns(net, Xm, lambda grads: module_grads_as_params(kind, net, grads))
    return value, with_grad, None


def make_opacus(kind, model, params, X, Xm):
    base = mlp_module(params) if kind == "mlp" else TwoLayerReLU(params)
    return opacus_value(base, Xm), None, OPACUS_WHY


METHODS = {
    "nblib": (make_nblib, None),
    "per-example loop": (make_loop, None),
    "torch.func vmap(grad)": (make_torch_func, None),
    "BackPACK BatchL2Grad": (make_backpack, "backpack"),
    "Opacus GradSampleModule": (make_opacus, "opacus"),
}


# ----------------------------------------------------------------------------- agreement, timing

def rel_error(a, b) -> float:
    """‖a − b‖ / ‖b‖ for a number or a dict of tensors."""
    if isinstance(b, dict):
        return max(float((a[k] - g).norm() / g.norm().clamp_min(1e-12)) for k, g in b.items())
    return abs(float(a) - float(b)) / abs(float(b))


def block_time(fn, budget):
    """Seconds per call of fn, timed over a block of about `budget` seconds (at least one call)."""
    start = time.perf_counter()
    fn()
    one = time.perf_counter() - start
    reps = max(1, int(budget / max(one, 1e-6)))
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def timed_rows(kind, n, timed, errors, rounds, budget, slow=()):
    """Time every method in interleaved rounds (``slow`` ones on a fifth of the budget) and report each as
    the median over rounds of its time ÷ the floor's in the same round; the floor's own row last."""
    times = {key: [] for key in timed}
    for _ in range(rounds):
        for key, fn in timed.items():
            times[key].append(block_time(fn, budget * (0.2 if key != "floor" and key[0] in slow else 1)))
    floor_times = times.pop("floor")
    rows = [dict(model=kind, n=n, method=name, quantity=quantity, status="ok", seconds=statistics.median(ts),
                 ratio_to_floor=statistics.median(t / f for t, f in zip(ts, floor_times)),
                 rel_error_vs_reference=errors[(name, quantity)])
            for (name, quantity), ts in times.items()]
    rows.append(dict(model=kind, n=n, method="floor: forward+backward of the loss", quantity="loss+grad",
                     status="ok", seconds=statistics.median(floor_times), ratio_to_floor=1.0))
    return rows


def bench(kind, n, rounds, budget):
    model, params, X, Xm, net = problem(kind, n)
    floor = floor_fn(net, Xm)
    ref_val, ref_grads = nblib.implicit_regularizer_and_grad(model, params, X, fast=False)
    timed, rows, errors = {"floor": floor}, [], {}
    for name, (maker, module) in METHODS.items():
        if module is not None and importlib.util.find_spec(module) is None:
            rows.append(dict(model=kind, n=n, method=name, quantity="reg",
                             status=f"skipped: {module} is not installed"))
            continue
        value, with_grad, why = maker(kind, model, params, X, Xm)
        err = rel_error(value(), ref_val)
        if err > 1e-4:
            raise AssertionError(f"{name} disagrees with nblib on reg ({kind}, n={n}): relative error {err:.1e}")
        timed[(name, "reg")], errors[(name, "reg")] = value, err
        if with_grad is not None:
            reg, grads = with_grad()
            err = max(rel_error(reg, ref_val), rel_error(grads, ref_grads))
            if err <= 1e-3:
                timed[(name, "reg+grad")], errors[(name, "reg+grad")] = with_grad, err
            else:
                why = f"its gradient disagrees with nblib's (relative error {err:.1e})"
        if (name, "reg+grad") not in timed:
            rows.append(dict(model=kind, n=n, method=name, quantity="reg+grad", status=f"unsupported: {why}"))
    rows += timed_rows(kind, n, timed, errors, rounds, budget, slow=("per-example loop",))
    return rows


# ----------------------------------------------------------------------------- any nn.Module

MODULE_N = 1024


def module_problem(kind, n):
    g = torch.Generator().manual_seed(n)
    torch.manual_seed(n)
    if kind == "module_mlp":
        net = torch.nn.Sequential(torch.nn.Linear(32, 384), torch.nn.Tanh(), torch.nn.Linear(384, 384),
                                  torch.nn.Tanh(), torch.nn.Linear(384, 1))
        return net, torch.randn(n, 32, generator=g)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.Tanh(),
                              torch.nn.Conv2d(16, 16, 3, stride=2, padding=1), torch.nn.Tanh(),
                              torch.nn.Flatten(), torch.nn.Linear(256, 1))
    return net, torch.randn(n, 1, 8, 8, generator=g)


def module_methods(kind, net, X):
    """{name: (value_fn, grad_fn or None, why)} for an nn.Module; grads keyed by net.named_parameters()."""
    names = [k for k, _ in net.named_parameters()]
    out = {
        "nblib": (lambda: nblib.per_example_sq_grad_norms(net, X).mean(),
                  lambda: nblib.implicit_regularizer_and_grad(net, X), None),
        "torch.func vmap(grad)": (lambda: nblib.per_example_sq_grad_norms(net, X, fast=False).mean(),
                                  lambda: nblib.implicit_regularizer_and_grad(net, X, fast=False), None),
    }
    if importlib.util.find_spec("backpack") is not None:
        from backpack import extend
        value, with_grad = backpack_fns(extend(copy.deepcopy(net)), X, lambda g: dict(zip(names, g)))
        out["BackPACK BatchL2Grad"] = (value, with_grad, None)
    if importlib.util.find_spec("opacus") is not None:
        out["Opacus GradSampleModule"] = (opacus_value(copy.deepcopy(net), X), None, OPACUS_WHY)
    return out


def bench_module(kind, n, rounds, budget):
    net, X = module_problem(kind, n)
    floor = floor_fn(net, X)
    ref_val, ref_grads = nblib.implicit_regularizer_and_grad(net, X, fast=False)
    timed, rows, errors = {"floor": floor}, [], {}
    for name in ("BackPACK BatchL2Grad", "Opacus GradSampleModule"):
        module = "backpack" if name.startswith("BackPACK") else "opacus"
        if importlib.util.find_spec(module) is None:
            rows.append(dict(model=kind, n=n, method=name, quantity="reg",
                             status=f"skipped: {module} is not installed"))
    for name, (value, with_grad, why) in module_methods(kind, net, X).items():
        err = rel_error(value(), ref_val)
        if err > 1e-4:
            raise AssertionError(f"{name} disagrees with nblib on reg ({kind}, n={n}): relative error {err:.1e}")
        timed[(name, "reg")], errors[(name, "reg")] = value, err
        if with_grad is not None:
            try:
                reg, grads = with_grad()
                err = max(rel_error(reg, ref_val), rel_error(grads, ref_grads))
            except Exception as exc:                     # a library that cannot differentiate its own output
                err, why = float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            if err <= 1e-3:
                timed[(name, "reg+grad")], errors[(name, "reg+grad")] = with_grad, err
            elif why is None:
                why = f"its gradient disagrees with the reference (relative error {err:.1e})"
        if (name, "reg+grad") not in timed:
            rows.append(dict(model=kind, n=n, method=name, quantity="reg+grad", status=f"unsupported: {why}"))
    rows += timed_rows(kind, n, timed, errors, rounds, budget)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke test, noisier numbers)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the chapters run; stabler ratios on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rounds, budget = (3, 0.05) if args.quick else (7, 0.25)
    rows = []
    for kind in ("mlp", "relu"):
        for n in SIZES:
            rows += bench(kind, n, rounds, budget)
    for kind in ("module_mlp", "module_cnn"):
        rows += bench_module(kind, MODULE_N, rounds, budget)
    print(f"{'model':10} {'n':>5}  {'method':38} {'quantity':9} {'ms':>9} {'× floor':>8}")
    for r in rows:
        if r["status"] == "ok":
            print(f"{r['model']:10} {r['n']:5}  {r['method']:38} {r['quantity']:9} {1e3 * r['seconds']:9.2f} "
                  f"{r['ratio_to_floor']:8.2f}")
        else:
            print(f"{r['model']:10} {r['n']:5}  {r['method']:38} {r['quantity']:9} {r['status']}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "regularizer.json"
    out.write_text(json.dumps({"machine": machine(), "rounds": rounds,
                               "models": {"mlp": MLP_SIZES, "relu": {"width": WIDTH},
                                          "module_mlp": "tanh 32-384-384-1 (nn.Module)",
                                          "module_cnn": "Conv2d 1-16 3x3, tanh, Conv2d 16-16 3x3/2, tanh, "
                                                        "Linear 256-1 (nn.Module, 1x8x8 inputs)"},
                               "rows": rows}, indent=1))
    print(f"wrote {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
