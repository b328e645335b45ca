"""label_noise_sgd and regularized_gd on an nn.Module: C chains through the one loop against the naive
reference (a copy of the module per chain, a Python loop over steps, torch.autograd and the same draws),
reg per chain against nblib.implicit_regularizer on a copy, per-chain data, frozen parameters, errors."""
import copy

import pytest
import torch
from torch import nn

import nblib
from nblib.core.label_noise import CHUNK

DT = torch.float64


def mlp(seed, k=3, d=4, width=8):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).to(DT)


class Squeezed(nn.Module):
    """One output per example, returned as [n]."""

    def __init__(self):
        super().__init__()
        self.net = mlp(5, k=1)

    def forward(self, x):
        return self.net(x).squeeze(-1)


def data(n=10, d=4, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=DT)
    return X, torch.randn(n, k, generator=g, dtype=DT) if k else torch.randn(n, generator=g, dtype=DT)


def naive(net, X, y, *, lr, sigma, steps, seed, batch_size, lam=0.0):
    """One chain: the module itself, trained by hand with the loop's draws (seed: this chain's own)."""
    net = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in net.parameters() if p.requires_grad]
    n, out = X.shape[0], tuple(y.shape[1:])
    full = batch_size == n                    # every example once per step: no indices drawn
    for t in range(steps):
        if t % CHUNK == 0:
            idx = None if full else torch.randint(n, (CHUNK, 1, batch_size), generator=gen)
            Z = torch.randn(CHUNK, 1, batch_size, *out, generator=gen, dtype=DT)
        i = torch.arange(n) if full else idx[t % CHUNK, 0]
        r = net(X[i]) - y[i] - sigma * Z[t % CHUNK, 0]
        obj = r.pow(2).reshape(batch_size, -1).sum(1).mean()
        if lam:
            obj = obj + lam * nblib.implicit_regularizer(net, X)
        grads = torch.autograd.grad(obj, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    return net


def chain(tr, net, c, t=-1):
    """Chain c of a module run, at record t, as a copy of the module."""
    out = copy.deepcopy(net)
    out.load_state_dict({k: v[t, c] for k, v in tr.params.items()})
    return out


def close(a: nn.Module, b: nn.Module, tol=1e-10):
    for (k, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=tol, atol=tol), k


@pytest.mark.parametrize("k", [3, 0])
def test_chains_follow_the_naive_loop(k):
    net = mlp(1) if k else Squeezed().to(DT)
    X, y = data(k=k)
    seeds = [11, 12, 13]
    tr = nblib.label_noise_sgd(net, X=X, y=y, lr=0.05, noise_std=[0.5, 0.2, 0.0], steps=300, chains=3,
                               seeds=seeds, batch_size=4, record_every=100)
    for c, (s, sigma) in enumerate(zip(seeds, [0.5, 0.2, 0.0])):
        close(chain(tr, net, c), naive(net, X, y, lr=0.05, sigma=sigma, steps=300, seed=s, batch_size=4))
    assert tr.params["0.weight"].shape == (4, 3, 8, 4) if k else True
    assert tr.loss.shape == tr.reg.shape == (4, 3)


def test_recorded_loss_and_reg_are_those_of_each_chain():
    net, (X, y) = mlp(2), data()
    tr = nblib.label_noise_sgd(net, X=X, y=y, lr=0.05, noise_std=0.5, steps=200, chains=2, seed=3,
                               record_every=100)
    for t in range(3):
        for c in range(2):
            m = chain(tr, net, c, t)
            assert torch.allclose(tr.reg[t, c], nblib.implicit_regularizer(m, X), rtol=1e-12)
            loss = (m(X) - y).pow(2).sum(1).mean()
            assert torch.allclose(tr.loss[t, c], loss, rtol=1e-12)


def test_explicit_flow_on_a_module_is_gd_on_loss_plus_lam_reg():
    net, (X, y) = mlp(3), data(n=6)
    tr = nblib.regularized_gd(net, X=X, y=y, lr=0.02, lam=[0.1, 0.0], steps=40, chains=2)
    with_reg = naive(net, X, y, lr=0.02, sigma=0.0, steps=40, seed=0, batch_size=6, lam=0.1)
    plain = naive(net, X, y, lr=0.02, sigma=0.0, steps=40, seed=0, batch_size=6)
    close(chain(tr, net, 0), with_reg, tol=1e-9)
    close(chain(tr, net, 1), plain, tol=1e-9)


def test_stacked_initializations_and_per_chain_data():
    """Chain c of a run on stacked modules and per-chain data is a one-chain run on its own data."""
    nets = [mlp(10), mlp(20)]
    (X0, y0), (X1, y1) = data(seed=1), data(seed=2)
    kw = dict(lr=0.05, noise_std=0.3, steps=150, batch_size=3)
    tr = nblib.label_noise_sgd(nets[0], nblib.stack_modules(nets), torch.stack([X0, X1]),
                               torch.stack([y0, y1]), stacked=True, per_chain_data=True, seeds=[5, 6], **kw)
    for c, (X, y, s) in enumerate([(X0, y0, 5), (X1, y1, 6)]):
        one = nblib.label_noise_sgd(nets[c], X=X, y=y, seed=s, **kw)
        for name in tr.params:
            assert torch.allclose(tr.params[name][-1, c], one.params[name][-1, 0], rtol=1e-12, atol=1e-12)
        assert torch.allclose(tr.reg[-1, c], one.reg[-1, 0], rtol=1e-12)


def test_frozen_module_parameters_never_move():
    net, (X, y) = mlp(4), data()
    net[0].weight.requires_grad_(False)
    tr = nblib.label_noise_sgd(net, X=X, y=y, lr=0.05, noise_std=0.5, steps=100, chains=2)
    assert torch.equal(tr.params["0.weight"][-1], tr.params["0.weight"][0])
    assert not torch.equal(tr.params["2.weight"][-1], tr.params["2.weight"][0])
    m = chain(tr, net, 1)
    m[0].weight.requires_grad_(False)
    assert torch.allclose(tr.reg[-1, 1], nblib.implicit_regularizer(m, X), rtol=1e-12)


def test_module_errors_say_what_is_wrong():
    net, (X, y) = mlp(0), data()
    kw = dict(lr=0.05, noise_std=0.5, steps=10)
    with pytest.raises(ValueError, match=r"y must match the module's output.*\[n, 3\]"):
        nblib.label_noise_sgd(net, X=X, y=y[:, 0], **kw)
    with pytest.raises(ValueError, match="needs the data"):
        nblib.label_noise_sgd(net, X=X, **kw)
    with pytest.raises(ValueError, match="carries its own parameters"):
        nblib.label_noise_sgd(net, dict(net.named_parameters()), X, y, **kw)
    with pytest.raises(ValueError, match="requires_grad_"):
        nblib.label_noise_sgd(net, X=X, y=y, trainable={"0.weight": 0}, **kw)
    with pytest.raises(ValueError, match="leading dimension of 2 data sets"):
        nblib.label_noise_sgd(net, X=X, y=y, chains=2, per_chain_data=True, **kw)
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(DT)
    with pytest.raises(ValueError, match="module.eval"):
        nblib.label_noise_sgd(bn, X=X, y=y, **kw)
    with pytest.raises(nblib.DivergenceError, match="Lower lr"):
        nblib.label_noise_sgd(net, X=X * 100, y=y, lr=10.0, noise_std=0.5, steps=50)


def models_with_a_chain_forward():
    torch.manual_seed(0)
    return {
        "mlp": (mlp(0), torch.randn(6, 4, dtype=DT)),
        "cnn2d": (nn.Sequential(nn.Unflatten(1, (1, 4, 4)), nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(),
                                nn.Conv2d(3, 2, 2, stride=2, bias=False), nn.Flatten(), nn.Linear(8, 3)).to(DT),
                  torch.randn(6, 16, dtype=DT)),
        "cnn1d+layernorm": (nn.Sequential(nn.Conv1d(2, 3, 3, dilation=2), nn.LayerNorm([3, 1]), nn.Tanh(),
                                          nn.Sequential(nn.Flatten(), nn.Linear(3, 2))).to(DT),
                            torch.randn(6, 2, 5, dtype=DT)),
    }


@pytest.mark.parametrize("name", list(models_with_a_chain_forward()))
def test_layer_by_layer_chain_forward_agrees_with_vmap(name):
    """An nn.Sequential of layers with a chain forward runs each layer once for all chains (batched
    products, grouped convolutions); that forward and its gradients equal the vmapped functional_call."""
    from nblib.core.module_chains import ModuleChains, run_plan
    net, X = models_with_a_chain_forward()[name]
    chains = ModuleChains(net)
    assert chains.plan is not None
    P = {k: v + 0.1 * torch.randn_like(v) for k, v in chains.stack(3).items()}
    Xb = torch.stack([X, X.flip(0), 2 * X])
    assert torch.allclose(run_plan(chains.plan, P, Xb), chains.forward(P, Xb), rtol=1e-12, atol=1e-12)
    Yb = torch.randn_like(chains.forward(P, Xb))
    fast, r1 = chains.loss_grad(shared=False)(P, Xb, Yb)
    assert chains.plan is not None                      # the first batch agreed: the plan stays
    chains.plan = None
    ref, r2 = chains.loss_grad(shared=False)(P, Xb, Yb)
    assert torch.allclose(r1, r2, rtol=1e-12, atol=1e-12)
    for k in ref:
        assert torch.allclose(fast[k], ref[k], rtol=1e-10, atol=1e-12), k


def test_other_modules_take_the_vmapped_forward():
    from nblib.core.module_chains import ModuleChains
    assert ModuleChains(Squeezed().to(DT)).plan is None                   # a forward of its own
    assert ModuleChains(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 1)).to(DT)).plan is None
    bn = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).to(DT).eval()
    assert ModuleChains(bn).plan is None                                  # buffers: not per chain
