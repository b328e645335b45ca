"""Path-norm, κ and Path-SGD against brute-force sums over paths; rescaling invariance and equivariance;
the width bank against separate training; clear errors."""
import copy

import pytest
import torch
from torch import nn

from nblib.path_sgd import (PathSGD, WidthBank, corrupt_labels, digits_split, layered_relu_mlp, linear_layers,
                            network_norms, path_kappa, path_norm, random_rescaling_factors, rescale_hidden_units,
                            train, train_bank, unbalance, weight_decay_norm)

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
        gap = max(float((p - q).detach().abs().max() / p.detach().abs().max()) for p, q in zip(a.parameters(), b_back.parameters()))
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
    (X, y), = digits_split([60], seed=0, dtype=DT)
    widths, seeds = [3, 7, 12], [10, 11, 12]
    bank = WidthBank(widths, d_in=64, n_out=10, seeds=seeds, dtype=DT)
    train_bank(bank, torch.optim.SGD(bank.parameters(), lr=0.05, momentum=0.9), X, y, epochs=3, batch_size=20,
               seed=1)
    for k, (h, s) in enumerate(zip(widths, seeds)):
        alone = layered_relu_mlp([64, h, 10], seed=s, dtype=DT)
        train(alone, torch.optim.SGD(alone.parameters(), lr=0.05, momentum=0.9), X, y, epochs=3, batch_size=20,
              seed=1)
        for p, q in zip(bank.network(k).parameters(), alone.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


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
])
def test_bad_input_raises_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_divergence_is_reported():
    (X, y), = digits_split([50], seed=0, dtype=torch.float32)
    net = layered_relu_mlp([64, 16, 10], dtype=torch.float32)
    with pytest.raises(ValueError, match="step size"):
        train(net, torch.optim.SGD(net.parameters(), lr=1e20), X, y, epochs=3, batch_size=50)
