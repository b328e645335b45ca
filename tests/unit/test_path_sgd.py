"""Path-norm, κ and Path-SGD against brute-force sums over paths; rescaling invariance and equivariance;
the classifiers' one trainer (each SGD, SGD + momentum, AdaGrad and Path-SGD network of a stack against the
plain loop alone, the loss-target stop, a diverging network dropped or named); clear errors."""
import copy

import pytest
import torch
from torch import nn

from classifier_reference import reference_train
from nblib import DivergenceError
from nblib.chapters.path_sgd import (PathSGD, corrupt_labels, digits_split, layered_relu_mlp,
                            linear_layers, network_norms, path_kappa, path_norm, random_rescaling_factors,
                            rescale_hidden_units, unbalance, weight_decay_norm)
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
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_divergence_raises_divergence_error_naming_lr():
    X, y, _, _ = _replicates(R=1)
    stack = NetStack([layered_relu_mlp([64, 16, 10], dtype=DT, seed=k) for k in range(2)])
    opt = StackOptimizer(stack, ["SGD", "SGD"], [0.1, 1e20])
    with pytest.raises(DivergenceError, match=r"network 1 \(SGD\).*Lower the step size lr \(now 1e\+20\)"):
        train_stack(stack, opt, X, y, replicate=[0, 0], seeds=[0], epochs=3, batch_size=20,
                    on_divergence="raise")


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


def test_train_stack_trains_each_network_exactly_as_the_plain_loop_does_alone():
    """SGD, AdaGrad and Path-SGD networks on two replicates, trained as one stack, follow the runs of
    the plain loop with torch.optim.SGD, torch.optim.Adagrad and PathSGD alone on the same minibatches."""
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
        with torch.no_grad():
            start = nn.functional.cross_entropy(net(X[r]), y[r])
        _, losses = reference_train(net, make[method](net, lr), X[r], y[r], epochs=4, batch_size=16,
                                    seed=seeds[r])
        for p, q in zip(stack.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(run.loss[:, k], torch.tensor([float(start), losses[1], losses[3]],
                                                                dtype=DT), rtol=1e-9, atol=0)
        with torch.no_grad():
            out = net(Xe[r])
        assert float(run.metrics["val_err"][-1, k]) == pytest.approx(float((out.argmax(1) != ye[r]).double()
                                                                           .mean()))
        assert float(run.metrics["val_loss"][-1, k]) == pytest.approx(
            float(nn.functional.cross_entropy(out, ye[r])), rel=1e-9)


def test_momentum_is_torch_sgd_momentum_and_the_loss_target_stops_each_network():
    """SGD with momentum in a stack = torch.optim.SGD(momentum) alone; with a loss target every network
    stops at the epoch the plain loop's rule gives, keeps its weights, and its records stay put."""
    X, y, _, _ = _replicates(R=2, n=40)
    nets = [layered_relu_mlp([64, h, 10], seed=k) for k, h in enumerate([40, 40, 40])]
    stack = NetStack(nets)
    opt = StackOptimizer(stack, ["SGD"] * 3, [0.1, 0.05, 0.1], momentum=0.9)
    run = train_stack(stack, opt, X, y, replicate=[0, 1, 1], seeds=[3, 4], epochs=60, batch_size=10,
                      record_every=60, loss_target=0.05)
    stopped = run.config["stopped_at"]
    assert all(e is not None for e in stopped) and len(set(stopped)) > 1
    for k, (net, lr, r) in enumerate(zip(nets, [0.1, 0.05, 0.1], [0, 1, 1])):
        epoch, _ = reference_train(net, torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9), X[r], y[r],
                                   epochs=60, batch_size=10, seed=[3, 4][r], loss_target=0.05)
        assert epoch == stopped[k]
        for p, q in zip(stack.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        assert float(run.loss[-1, k]) < 0.05
    assert run.steps.tolist() == [0, max(stopped)]


def test_networks_of_different_widths_are_padded_and_train_as_alone():
    """A stack of 64–h1–h2–10 networks of different widths: the padded weights stay exactly zero under
    every step rule, and each network follows its plain loop alone."""
    X, y, _, _ = _replicates(R=1)
    widths = [(3, 5), (8, 2), (6, 6)]
    nets = [layered_relu_mlp([64, a, b, 10], seed=k) for k, (a, b) in enumerate(widths)]
    stack = NetStack(nets)
    assert stack.sizes == [64, 8, 6, 10] and stack.hidden == widths
    methods, lrs = ["SGD", "AdaGrad", "Path-SGD"], [0.05, 0.02, 0.05]
    opt = StackOptimizer(stack, methods, lrs, momentum=0.9)
    train_stack(stack, opt, X, y, replicate=[0, 0, 0], seeds=[5], epochs=3, batch_size=15)
    make = {"SGD": lambda m, lr: torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9),
            "AdaGrad": lambda m, lr: torch.optim.Adagrad(m.parameters(), lr=lr),
            "Path-SGD": lambda m, lr: PathSGD(m, lr=lr)}
    for k, (net, method, lr) in enumerate(zip(nets, methods, lrs)):
        reference_train(net, make[method](net, lr), X[0], y[0], epochs=3, batch_size=15, seed=5)
        for p, q in zip(stack.network(k).parameters(), net.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
        sizes = stack.sizes_of(k)
        for i, (W, b) in enumerate(stack.pairs()):
            pad_w = W[k].detach().clone()
            pad_w[:sizes[i + 1], :sizes[i]] = 0
            assert float(pad_w.abs().max()) == 0 and float(b[k, sizes[i + 1]:].detach().abs().sum()) == 0


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
    lambda: NetStack([layered_relu_mlp([2, 3, 1]), layered_relu_mlp([2, 3, 3, 1])]),
    lambda: NetStack([layered_relu_mlp([2, 3, 1]), layered_relu_mlp([3, 3, 1])]),
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
