"""The regularizer of any nn.Module: the per-layer rules (Linear, Conv1d, Conv2d, Embedding) and the
torch.func path for everything else, against a per-example autograd loop in float64 (relative error
< 1e-10), ∇reg against the reference's double backward, the definition for k outputs, and clear errors."""
import pytest
import torch
from torch import nn

import nblib
from nblib.module_reg import module_regularizer_and_grad, module_sq_grad_norms, reference_sq_grad_norms

DT = torch.float64


class EmbeddingModel(nn.Module):
    """Embedding (with a padding row) → LayerNorm → Linear, summed over positions, times a bare Parameter."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 4, padding_idx=0)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.randn(2))

    def forward(self, x):
        return self.out(torch.tanh(self.norm(self.emb(x)))).sum(1) * self.scale


class Tied(nn.Module):
    """An embedding whose weight is also the output layer (tied weights)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(6, 3)

    def forward(self, x):
        return torch.tanh(self.emb(x)).mean(1) @ self.emb.weight.T


class Reused(nn.Module):
    """One Linear layer applied twice."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(torch.tanh(self.lin(x))).sum(-1)


def models():
    g = torch.Generator().manual_seed(0)
    return {
        "mlp": (nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)),
                torch.randn(12, 5, generator=g)),
        "cnn": (nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, stride=2), nn.Tanh(), nn.Conv2d(4, 3, 2),
                              nn.Tanh(), nn.Flatten(), nn.Linear(27, 2)), torch.randn(6, 2, 8, 8, generator=g)),
        "conv1d": (nn.Sequential(nn.Conv1d(2, 4, 3, padding=2, dilation=2), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(40, 1)), torch.randn(6, 2, 10, generator=g)),
        "embedding": (EmbeddingModel(), torch.randint(0, 7, (9, 5), generator=g)),
        "sequence": (nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1), nn.Flatten(1)),
                     torch.randn(4, 6, 3, generator=g)),
        "mixed": (nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 2)),
                  torch.randn(7, 3, generator=g)),
        "grouped_conv": (nn.Sequential(nn.Conv1d(2, 4, 3, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(24, 1)),
                         torch.randn(5, 2, 8, generator=g)),
        "groupnorm": (nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.Tanh(), nn.Flatten(),
                                    nn.Linear(24, 1)), torch.randn(5, 2, 8, generator=g)),
        "tied": (Tied(), torch.randint(0, 6, (5, 4), generator=g)),
        "reused": (Reused(), torch.randn(8, 4, generator=g)),
        "batchnorm_eval": (nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 1)).eval(),
                           torch.randn(5, 3, generator=g)),
    }


def _cast(model, X):
    torch.manual_seed(1)
    model = model.to(DT)
    return model, (X.to(DT) if X.is_floating_point() else X)


def _reference_reg_and_grad(model, X):
    """reg by the per-example loop, ∇reg by a double backward through it."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for i in range(X.shape[0]):
        h = model(X[i:i + 1]).reshape(-1)
        for k in range(h.shape[0]):
            gs = torch.autograd.grad(h[k], params, retain_graph=True, create_graph=True, allow_unused=True)
            total = total + sum((g ** 2).sum() for g in gs if g is not None)
    reg = total / X.shape[0]
    gs = torch.autograd.grad(reg, params, allow_unused=True)
    return reg.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)]


@pytest.mark.parametrize("name", list(models()))
def test_sq_grad_norms_match_the_per_example_loop(name):
    model, X = _cast(*models()[name])
    ref = reference_sq_grad_norms(model, X)
    for fast in (True, False):
        out = module_sq_grad_norms(model, X, fast=fast)
        assert out.shape == ref.shape == (X.shape[0],)
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-10, (name, fast)


@pytest.mark.parametrize("name", list(models()))
def test_reg_and_grad_match_the_reference_double_backward(name):
    model, X = _cast(*models()[name])
    reg_ref, grad_ref = _reference_reg_and_grad(model, X)
    reg, grads = module_regularizer_and_grad(model, X)
    assert abs(float(reg - reg_ref)) < 1e-10 * float(reg_ref)
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    assert list(grads) == names
    for k, g in zip(names, grad_ref):
        assert float((grads[k] - g).abs().max()) <= 1e-10 * (1 + float(g.abs().max())), (name, k)


def test_public_api_accepts_a_module_and_sums_over_outputs():
    """reg of a k-output model = Σ_k reg of its outputs taken one at a time (independent label noise per output)."""
    model, X = _cast(*models()["mlp"])
    reg = nblib.implicit_regularizer(model, X)
    reg.backward()                                                # differentiable in the module's parameters
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0
    parts = []
    for k in range(3):
        parts.append(float(nblib.implicit_regularizer(_Output(model, k), X).detach()))
    assert float(reg.detach()) == pytest.approx(sum(parts), rel=1e-12)
    assert torch.allclose(nblib.per_example_sq_grad_norms(model, X), reference_sq_grad_norms(model, X))
    r2, g2 = nblib.implicit_regularizer_and_grad(model, X)
    assert float(r2) == pytest.approx(float(reg.detach()), rel=1e-12)
    assert set(g2) == {k for k, _ in model.named_parameters()}


class _BatchSum(nn.Module):
    """Sums over the batch: one output for all examples."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 1).to(DT)

    def forward(self, x):
        return self.lin(x).sum(0)


class _Output(nn.Module):
    def __init__(self, model, k):
        super().__init__()
        self.model, self.k = model, k

    def forward(self, x):
        return self.model(x)[:, self.k]


def test_frozen_parameters_are_left_out():
    model, X = _cast(*models()["mlp"])
    model[0].weight.requires_grad_(False)
    ref = reference_sq_grad_norms(model, X)
    assert torch.allclose(module_sq_grad_norms(model, X), ref, rtol=1e-10)
    _, grads = module_regularizer_and_grad(model, X)
    assert "0.weight" not in grads


def test_errors_are_clear():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).to(DT)
    X = torch.randn(5, 3, dtype=DT)
    with pytest.raises(ValueError, match="training mode.*eval"):
        nblib.implicit_regularizer(bn, X)
    with pytest.raises(ValueError, match="without params"):
        nblib.implicit_regularizer(bn.eval(), {"w": torch.ones(2)}, X)
    with pytest.raises(ValueError, match="stacked"):
        nblib.implicit_regularizer(bn, X, stacked=True)
    with pytest.raises(ValueError, match="one output row per example"):
        nblib.implicit_regularizer(_BatchSum(), X)
    with pytest.raises(ValueError, match="NaN"):
        nblib.implicit_regularizer(bn, X * float("nan"))
    frozen = nn.Linear(3, 1).to(DT).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        nblib.implicit_regularizer(frozen, X)
