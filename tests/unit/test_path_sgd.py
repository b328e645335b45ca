"""Path-norm, κ and Path-SGD against brute-force sums over paths; rescaling invariance and equivariance;
the one training loop (its Trajectory, its loss hook, the width bank against separate training,
divergence); the network stack (each of its SGD, AdaGrad and Path-SGD networks against ``train`` alone, and
a diverging network dropped); clear errors."""
import copy

import pytest
import torch
from torch import nn

from nblib import DivergenceError, Trajectory
from nblib.chapters.path_sgd import (PathSGD, WidthBank, corrupt_labels, digits_split, error_rate, layered_relu_mlp,
                            linear_layers, network_norms, path_kappa, path_norm, random_rescaling_factors,
                            rescale_hidden_units, summed_cross_entropy, train, train_in_lockstep,
                            unbalance, weight_decay_norm)
from nblib.chapters.path_sgd import (NetStack, StackOptimizer, stack_kappa, stack_outputs, stack_path_norm,
                            train_stack)

DT = torch.float64


def tiny_net(sizes=(3, 4, 2, 2), seed=1):
    net = layered_relu_mlp(list(sizes), seed=seed, dtype=DT)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=DT))   # nonzero biases too
    return net


def all_paths(net):
    """Every path input→output and bias→output, as a list of (parameter, index) edges."""
    lins = linear_layers(net)

    def extend(layer, unit, edges):
        if layer == len(lins):
            yield edges
            return
        for v in range(lins[layer].out_features):
            yield from extend(layer + 1, v, edges + [(lins[layer].weight, (v, unit))])

    for i in range(lins[0].in_features):
        yield from extend(0, i, [])
    for l, lin in enumerate(lins):
        for v in range(lin.out_features):
            yield from extend(l + 1, v, [(lin.bias, (v,))])


def brute_force(net):
    """φ₂² = Σ_paths Π w², and κ_e = Σ_{paths ∋ e} Π_{e' ≠ e} w²_{e'}, by enumeration."""
    total = 0.0
    kappa = {p: torch.zeros_like(p) for p in net.parameters()}
    for path in all_paths(net):
        sq = [float(p.detach()[idx]) ** 2 for p, idx in path]
        total += float(torch.tensor(sq, dtype=DT).prod())
        for j, (p, idx) in enumerate(path):
            kappa[p][idx] += float(torch.tensor(sq[:j] + sq[j + 1:], dtype=DT).prod())
    return total, kappa


def test_path_norm_and_kappa_match_brute_force_sum_over_paths():
    for sizes in [(3, 4, 2, 2), (2, 3, 2), (2, 2, 3, 2, 1)]:
        net = tiny_net(sizes)
        total, kappa_bf = brute_force(net)
        assert float(path_norm(net)) ** 2 == pytest.approx(total, rel=1e-12)
        kappa = path_kappa(net)
        for p in net.parameters():
            torch.testing.assert_close(kappa[p], kappa_bf[p], rtol=1e-12, atol=1e-14)


def test_kappa_without_biases_counts_only_input_paths():
    net = tiny_net()
    k = path_kappa(net, include_bias=False)
    no_bias = copy.deepcopy(net)
    with torch.no_grad():
        for lin in linear_layers(no_bias):
            lin.bias.zero_()
    _, kappa_bf = brute_force(no_bias)
    for p, q in zip(net.parameters(), no_bias.parameters()):
        if p.ndim == 2:
            torch.testing.assert_close(k[p], kappa_bf[q], rtol=1e-12, atol=1e-14)
        else:
            assert torch.equal(k[p], torch.ones_like(p))


def test_rescaling_keeps_function_and_path_norm_but_not_weight_decay():
    net = tiny_net((5, 6, 4, 3))
    other = unbalance(net, 1.5, seed=2)
    x = torch.randn(20, 5, dtype=DT)
    torch.testing.assert_close(other(x), net(x), rtol=1e-12, atol=1e-12)
    assert float(path_norm(other)) == pytest.approx(float(path_norm(net)), rel=1e-12)
    assert abs(float(weight_decay_norm(other)) / float(weight_decay_norm(net)) - 1) > 0.1


def test_rescale_with_inverse_factors_restores_the_parameters():
    net = tiny_net()
    c = random_rescaling_factors(net, 1.0, seed=4)
    back = rescale_hidden_units(rescale_hidden_units(net, c), [1 / f for f in c])
    for p, q in zip(net.parameters(), back.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def run_steps(net, make_opt, X, y, steps):
    opt = make_opt(net)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(X), y).backward()
        opt.step()
    return net


def test_path_sgd_is_rescaling_equivariant_and_sgd_is_not():
    """Path-SGD from w and from ρ_c(w) stays on ρ_c of one trajectory (float64, 50 steps); SGD does not."""
    net = tiny_net((5, 6, 4, 3))
    c = random_rescaling_factors(net, 1.0, seed=5)
    X = torch.randn(16, 5, dtype=DT)
    y = torch.randint(0, 3, (16,))
    for make_opt, equivariant in [(lambda m: PathSGD(m, lr=0.05), True),
                                  (lambda m: torch.optim.SGD(m.parameters(), lr=0.05), False)]:
        a = run_steps(copy.deepcopy(net), make_opt, X, y, 50)
        b = run_steps(rescale_hidden_units(net, c), make_opt, X, y, 50)
        b_back = rescale_hidden_units(b, [1 / f for f in c])
        gap = max(float((p - q).detach().abs().max() / p.detach().abs().max())
                  for p, q in zip(a.parameters(), b_back.parameters()))
        if equivariant:
            assert gap < 1e-11
        else:
            assert gap > 1e-3
        moved = max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), net.parameters()))
        assert moved > 1e-3                                    # the optimizer did move the weights


def test_path_sgd_step_is_gradient_over_kappa():
    net = tiny_net()
    X, y = torch.randn(8, 3, dtype=DT), torch.randint(0, 2, (8,))
    before = copy.deepcopy(net)
    nn.functional.cross_entropy(net(X), y).backward()
    grads = [p.grad.clone() for p in net.parameters()]
    kappa = path_kappa(net)
    PathSGD(net, lr=0.1).step()
    for p0, p1, g in zip(before.parameters(), net.parameters(), grads):
        torch.testing.assert_close(p1, p0 - 0.1 * g / kappa[p1], rtol=1e-12, atol=1e-14)


def test_width_bank_trains_each_width_exactly_as_alone():
    """The one loop gives each network of a bank the trajectory it follows trained alone: the same
    weights and the same recorded losses and errors, up to rounding (the bank's matmuls are larger)."""
    (X, y), (Xv, yv) = digits_split([60, 40], seed=0, dtype=DT)
    widths, seeds = [3, 7, 12], [10, 11, 12]
    bank = WidthBank(widths, d_in=64, n_out=10, seeds=seeds, dtype=DT)
    run = train(bank, torch.optim.SGD(bank.parameters(), lr=0.05, momentum=0.9), X, y, epochs=3,
                batch_size=20, seed=1, evals={"val": (Xv, yv)})
    assert run.chains == 3 and run.config["networks"] == 3
    for k, (h, s) in enumerate(zip(widths, seeds)):
        alone = layered_relu_mlp([64, h, 10], seed=s, dtype=DT)
        one = train(alone, torch.optim.SGD(alone.parameters(), lr=0.05, momentum=0.9), X, y, epochs=3,
                    batch_size=20, seed=1, evals={"val": (Xv, yv)})
        for p, q in zip(bank.network(k).parameters(), alone.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        assert torch.equal(one.steps, run.steps)
        torch.testing.assert_close(run.loss[:, k], one.loss[:, 0], rtol=1e-10, atol=0)
        for name in ("train_err", "val_loss", "val_err"):
            torch.testing.assert_close(run.metrics[name][:, k], one.metrics[name][:, 0], rtol=1e-10, atol=0)


def test_train_returns_a_trajectory_of_the_recorded_epochs():
    (X, y), (Xt, yt) = digits_split([50, 30], seed=2, dtype=DT)
    net = layered_relu_mlp([64, 8, 10], seed=0, dtype=DT)
    run = train(net, torch.optim.Adagrad(net.parameters(), lr=0.05), X, y, epochs=7, batch_size=10,
                seed=3, evals={"test": (Xt, yt)}, record_every=3)
    assert isinstance(run, Trajectory)
    assert run.steps.tolist() == [0, 3, 6, 7]
    assert run.params == {} and run.reg is None and run.loss.shape == (4, 1)
    assert set(run.metrics) == {"train_err", "test_loss", "test_err"}
    assert all(v.shape == (4, 1) and v.dtype == torch.float64 for v in run.metrics.values())
    assert run.config == {"optimizer": "Adagrad", "lr": 0.05, "batch_size": 10, "epochs": 7, "seed": 3,
                          "record_every": 3, "networks": 1, "loss_fn": "summed_cross_entropy"}
    assert float(run.metrics["test_err"][-1, 0]) == error_rate(net, Xt, yt)
    with torch.no_grad():
        assert float(run.loss[-1, 0]) == float(nn.functional.cross_entropy(net(X), y))
    assert float(run.loss[-1, 0]) < float(run.loss[0, 0])


def test_same_seed_same_batches_and_the_loss_hook_is_used():
    (X, y), = digits_split([40], seed=0, dtype=DT)

    def fit(loss_fn=None, seed=0):
        net = layered_relu_mlp([64, 5, 10], seed=0, dtype=DT)
        train(net, torch.optim.SGD(net.parameters(), lr=0.1), X, y, epochs=2, batch_size=8, seed=seed,
              loss_fn=loss_fn)
        return torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    assert torch.equal(fit(), fit())
    assert torch.equal(fit(), fit(summed_cross_entropy))
    assert not torch.equal(fit(), fit(seed=1))
    calls = []

    def halved(outputs, yb):
        calls.append(len(yb))
        return 0.5 * nn.functional.cross_entropy(outputs, yb)

    assert not torch.equal(fit(), fit(halved))
    assert calls == [8] * 10                        # 2 epochs × 5 minibatches of 8


def test_stop_at_zero_training_error():
    (X, y), = digits_split([30], seed=0, dtype=DT)
    net = layered_relu_mlp([64, 64, 10], seed=0, dtype=DT)
    run = train(net, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), X, y, epochs=200,
                batch_size=30, stop_at_zero_error=True)
    assert float(run.metrics["train_err"][-1, 0]) == 0.0
    assert float(run.metrics["train_err"][-2, 0]) > 0.0 and int(run.steps[-1]) < 200


def test_lockstep_runs_share_minibatches_and_measure_the_function_gap():
    """Two parametrizations of one network, trained side by side: Path-SGD keeps them one function,
    SGD does not; model 0 follows exactly the plain loop on randperm(n, g)[:B] minibatches."""
    net = tiny_net((5, 6, 4, 3))
    other = unbalance(net, 1.0, seed=5)
    X, y = torch.randn(40, 5, dtype=DT), torch.randint(0, 3, (40,))
    Xe = torch.randn(25, 5, dtype=DT)
    runs = {}
    for name, make in (("path", lambda m: PathSGD(m, lr=0.05)),
                       ("sgd", lambda m: torch.optim.SGD(m.parameters(), lr=0.05))):
        a, b = copy.deepcopy(net), copy.deepcopy(other)
        runs[name] = train_in_lockstep([a, b], [make(a), make(b)], X, y, steps=20, batch_size=8,
                                       X_eval=Xe, seed=3)
    path, sgd = runs["path"], runs["sgd"]
    assert path.steps.tolist() == list(range(1, 21)) and path.loss.shape == (20, 2)
    assert set(path.metrics) == {"output_gap"} and path.metrics["output_gap"].shape == (20, 2)
    assert (path.metrics["output_gap"][:, 0] == 0).all()
    assert float(path.metrics["output_gap"][:, 1].max()) < 1e-11
    assert float(sgd.metrics["output_gap"][-1, 1]) > 1e-3
    assert path.config["optimizer"] == "PathSGD" and path.config["networks"] == 2

    alone = copy.deepcopy(net)
    opt, g = PathSGD(alone, lr=0.05), torch.Generator().manual_seed(3)
    for _ in range(20):
        idx = torch.randperm(40, generator=g)[:8]
        opt.zero_grad()
        nn.functional.cross_entropy(alone(X[idx]), y[idx]).backward()
        opt.step()
    a, b = copy.deepcopy(net), copy.deepcopy(other)
    train_in_lockstep([a, b], [PathSGD(a, lr=0.05), PathSGD(b, lr=0.05)], X, y, steps=20, batch_size=8,
                      X_eval=Xe, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), alone.parameters()))


def test_lockstep_divergence_names_lr():
    net = layered_relu_mlp([64, 16, 10], dtype=torch.float32)
    (X, y), = digits_split([50], seed=0, dtype=torch.float32)
    with pytest.raises(DivergenceError, match="lr"):
        train_in_lockstep([net], [torch.optim.SGD(net.parameters(), lr=1e20)], X, y, steps=20,
                          batch_size=25, X_eval=X)


def test_digits_split_and_label_corruption():
    (a, ya), (b, yb) = digits_split([100, 50], seed=3)
    assert a.shape == (100, 64) and b.shape == (50, 64) and float(a.max()) <= 1.0
    noisy = corrupt_labels(ya, 0.1, seed=0)
    assert int((noisy != ya).sum()) == 10
    norms = network_norms(layered_relu_mlp([64, 8, 10]))
    assert norms["parameters"] == 64 * 8 + 8 + 8 * 10 + 10


@pytest.mark.parametrize("bad", [
    lambda: path_norm(nn.Sequential(nn.ReLU(), nn.Linear(2, 2))),
    lambda: path_norm(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(4, 1))),
    lambda: path_norm(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))),
    lambda: PathSGD(layered_relu_mlp([2, 3, 1]), lr=0.0),
    lambda: PathSGD(layered_relu_mlp([2, 3, 1]), lr=float("nan")),
    lambda: rescale_hidden_units(layered_relu_mlp([2, 3, 1]), [torch.tensor([1.0, -1.0, 1.0])]),
    lambda: rescale_hidden_units(layered_relu_mlp([2, 3, 1]), [torch.ones(2)]),
    lambda: layered_relu_mlp([5]),
    lambda: digits_split([2000]),
    lambda: corrupt_labels(torch.zeros(5, dtype=torch.int64), 1.5),
    lambda: WidthBank([4, 0], d_in=3, n_out=2),
    lambda: WidthBank([4, 8], d_in=3, n_out=2).network(2),
    lambda: train(layered_relu_mlp([2, 3, 2]), torch.optim.SGD(layered_relu_mlp([2, 3, 2]).parameters(), lr=0.1),
                  torch.tensor([[float("nan"), 0.0]], dtype=DT), torch.tensor([0]), epochs=1, batch_size=1),
    lambda: train(layered_relu_mlp([2, 3, 2]), torch.optim.SGD(layered_relu_mlp([2, 3, 2]).parameters(), lr=0.1),
                  torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), epochs=1, batch_size=2, record_every=0),
    lambda: train(layered_relu_mlp([2, 3, 2]), torch.optim.SGD(layered_relu_mlp([2, 3, 2]).parameters(), lr=0.1),
                  torch.zeros(4, 2), torch.zeros(4, dtype=torch.int64), epochs=1, batch_size=2, loss_fn=3),
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()


@pytest.mark.parametrize("bank", [False, True])
def test_divergence_raises_divergence_error_naming_lr(bank):
    (X, y), = digits_split([50], seed=0, dtype=torch.float32)
    net = (WidthBank([4, 16], d_in=64, n_out=10, dtype=torch.float32) if bank
           else layered_relu_mlp([64, 16, 10], dtype=torch.float32))
    with pytest.raises(DivergenceError, match=r"Lower the step size lr \(now 1e\+20\)"):
        train(net, torch.optim.SGD(net.parameters(), lr=1e20), X, y, epochs=3, batch_size=50)


# ----------------------------------------------------------------------------- many networks as one stack


def _replicates(R=2, n=60, m=30, seed=0):
    """R small digits data sets (train [R, n, 64], held-out [R, m, 64]) and their labels."""
    parts = [digits_split([n, m], seed=seed + r, dtype=DT) for r in range(R)]
    X, y = torch.stack([p[0][0] for p in parts]), torch.stack([p[0][1] for p in parts])
    Xe, ye = torch.stack([p[1][0] for p in parts]), torch.stack([p[1][1] for p in parts])
    return X, y, Xe, ye


def test_stack_computes_each_network_and_its_kappa_and_path_norm():
    nets = [tiny_net((3, 4, 2, 2), seed=s) for s in range(3)]
    stack = NetStack(nets)
    assert len(stack) == 3 and stack.sizes == [3, 4, 2, 2]
    x = torch.randn(5, 3, dtype=DT)
    out = stack(x)
    per = stack(torch.stack([x, 2 * x, -x]))
    kappa = stack_kappa(stack)
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[k], net(x), rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(per[k], net([x, 2 * x, -x][k]), rtol=1e-13, atol=1e-14)
        for p, q in zip(stack.network(k).parameters(), net.parameters()):
            assert torch.equal(p, q)
        ref = path_kappa(net)
        for P, lin in zip(stack.weights, linear_layers(net)):
            torch.testing.assert_close(kappa[P][k], ref[lin.weight], rtol=1e-12, atol=0)
        for P, lin in zip(stack.biases, linear_layers(net)):
            torch.testing.assert_close(kappa[P][k], ref[lin.bias], rtol=1e-12, atol=0)
        assert float(stack_path_norm(stack)[k]) == pytest.approx(float(path_norm(net)), rel=1e-12)
    sub = stack.subset([2, 0])
    assert len(sub) == 2 and torch.equal(sub(x)[0], out[2]) and torch.equal(sub(x)[1], out[0])
    per_rep = stack_outputs(stack, [1, 0, 1], torch.stack([x, 3 * x]))       # replicate inputs
    for k, r in enumerate([1, 0, 1]):
        torch.testing.assert_close(per_rep[k], nets[k]([x, 3 * x][r]), rtol=1e-13, atol=1e-14)
    single = stack.to(torch.float32)(x.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single, out.float(), rtol=1e-5, atol=1e-6)


def test_train_stack_trains_each_network_exactly_as_train_does_alone():
    """SGD, AdaGrad and Path-SGD networks on two replicates, trained as one stack, follow the runs of
    ``train`` with torch.optim.SGD, torch.optim.Adagrad and PathSGD alone on the same minibatches."""
    X, y, Xe, ye = _replicates()
    specs = [("SGD", 0.3, 0), ("SGD", 0.05, 1), ("AdaGrad", 0.02, 0), ("AdaGrad", 0.05, 1),
             ("Path-SGD", 0.1, 1), ("Path-SGD", 0.3, 0)]
    nets = [unbalance(layered_relu_mlp([64, 6, 5, 10], seed=k), 0.5, seed=k) for k in range(len(specs))]
    stack = NetStack(nets)
    opt = StackOptimizer(stack, [m for m, _, _ in specs], [lr for _, lr, _ in specs])
    seeds = [7, 8]
    run = train_stack(stack, opt, X, y, replicate=[r for *_, r in specs], seeds=seeds, epochs=4,
                      batch_size=16, evals={"val": (Xe, ye)}, record_every=2)
    assert run.steps.tolist() == [0, 2, 4] and run.loss.shape == (3, 6)
    assert set(run.metrics) == {"train_err", "val_loss", "val_err"}
    assert run.config["diverged"] == [False] * 6 and run.config["lrs"] == [lr for _, lr, _ in specs]
    make = {"SGD": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr),
            "AdaGrad": lambda m, lr: torch.optim.Adagrad(m.parameters(), lr=lr),
            "Path-SGD": lambda m, lr: PathSGD(m, lr=lr)}
    for k, ((method, lr, r), net) in enumerate(zip(specs, nets)):
        one = train(net, make[method](net, lr), X[r], y[r], epochs=4, batch_size=16, seed=seeds[r],
                    evals={"val": (Xe[r], ye[r])}, record_every=2)
        for p, q in zip(stack.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(run.loss[:, k], one.loss[:, 0], rtol=1e-9, atol=0)
        for name in ("train_err", "val_loss", "val_err"):
            torch.testing.assert_close(run.metrics[name][:, k], one.metrics[name][:, 0], rtol=1e-9, atol=0)


@pytest.mark.parametrize("with_callback", [False, True])
def test_train_stack_drops_a_diverging_network_and_trains_the_others_on(with_callback):
    X, y, _, _ = _replicates(R=1)
    nets = [layered_relu_mlp([64, 8, 10], seed=k) for k in range(3)]
    steps = []

    def fit(lrs, keep):
        stack = NetStack([nets[k] for k in keep])
        opt = StackOptimizer(stack, ["SGD"] * len(keep), lrs)
        cb = (lambda t, s: steps.append(t)) if with_callback else None
        return stack, train_stack(stack, opt, X, y, replicate=[0] * len(keep), seeds=[3], epochs=3,
                                  batch_size=20, callback=cb)

    stack, run = fit([0.1, 1e30, 0.2], [0, 1, 2])
    assert run.config["diverged"] == [False, True, False] and run.config["diverged_at"][1] == 1
    assert torch.isnan(run.loss[1:, 1]).all() and torch.isfinite(run.loss[:, [0, 2]]).all()
    assert all(float(p.detach()[1].abs().max()) == 0 for p in stack.parameters())
    alone, ref = fit([0.1, 0.2], [0, 2])
    torch.testing.assert_close(run.loss[:, [0, 2]], ref.loss, rtol=1e-12, atol=0)
    for P, Q in zip(stack.parameters(), alone.parameters()):
        torch.testing.assert_close(P[[0, 2]], Q, rtol=1e-12, atol=1e-14)
    if with_callback:
        assert steps[:9] == list(range(1, 10)) and len(steps) == 18


@pytest.mark.parametrize("bad", [
    lambda: NetStack([]),
    lambda: NetStack([layered_relu_mlp([2, 3, 1]), layered_relu_mlp([2, 4, 1])]),
    lambda: NetStack([layered_relu_mlp([2, 3, 1], bias=False)]),
    lambda: NetStack([layered_relu_mlp([2, 3, 1])]).network(1),
    lambda: StackOptimizer(NetStack([layered_relu_mlp([2, 3, 1])]), ["Adam"], [0.1]),
    lambda: StackOptimizer(NetStack([layered_relu_mlp([2, 3, 1])]), ["SGD"], [0.1, 0.2]),
    lambda: StackOptimizer(NetStack([layered_relu_mlp([2, 3, 1])]), ["SGD"], [-0.1]),
])
def test_stack_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_train_stack_bad_input_raises_value_error():
    X, y, _, _ = _replicates(R=1)
    stack = NetStack([layered_relu_mlp([64, 4, 10])])
    opt = StackOptimizer(stack, ["SGD"], [0.1])
    ok = dict(replicate=[0], seeds=[0], epochs=1, batch_size=10)
    for change in (dict(replicate=[1]), dict(seeds=[0, 1]), dict(epochs=0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            train_stack(stack, opt, X, y, **{**ok, **change})
    with pytest.raises(ValueError):
        train_stack(stack, opt, X[0], y[0], **ok)
    other = NetStack([layered_relu_mlp([64, 4, 10])])
    with pytest.raises(ValueError):
        train_stack(other, opt, X, y, **ok)
