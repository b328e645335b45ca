"""top_hessian_eigenvalue against the eigenvalues of the explicit Hessian of each chain's loss."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

import nblib
from nblib.core.sharpness import top_hessian_eigenvalue

DT = torch.float64


def test_power_iteration_finds_each_chains_largest_eigenvalue():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(DT) for _ in range(3)]
    X, y = torch.randn(2, 7, 3, dtype=DT), torch.randn(2, 7, 2, dtype=DT)
    P = nblib.stack_modules(nets)
    Xc, yc = torch.stack([X[0], X[1], X[0]]), torch.stack([y[0], y[1], y[0]])
    top, change = top_hessian_eigenvalue(nets[0], P, Xc, yc, per_chain_data=True, iters=300)
    assert (change < 1e-8).all()
    for c in range(3):
        shapes = {k: v.shape[1:] for k, v in P.items()}
        flat = torch.cat([v[c].reshape(-1) for v in P.values()])

        def loss(theta):
            p, i = {}, 0
            for k, s in shapes.items():
                p[k] = theta[i:i + s.numel()].reshape(s)
                i += s.numel()
            return (functional_call(nets[0], p, (Xc[c],)) - yc[c]).pow(2).sum(-1).mean()

        eig = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))
        biggest = eig[eig.abs().argmax()]
        assert torch.allclose(top[c], biggest, rtol=1e-6)


def test_too_few_iterations_is_an_error():
    net = nn.Linear(2, 1).to(DT)
    with pytest.raises(ValueError, match="iters"):
        top_hessian_eigenvalue(net, nblib.stack_modules([net]), torch.zeros(3, 2, dtype=DT),
                               torch.zeros(3, 1, dtype=DT), iters=3)
