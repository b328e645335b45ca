"""The regularizer of any nn.Module: the per-layer rules of nblib/rules (Linear, Conv1d, Conv2d, Embedding,
LayerNorm; every registered rule exercised, a new layer type added by one registration) and the torch.func
path for everything else, against a per-example autograd loop in float64 (relative error < 1e-10), ∇reg
against the reference's double backward, the definition for k outputs, and clear errors."""
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize, parametrizations

import nblib
from nblib.core import module_reg
from nblib.core.module_reg import module_regularizer_and_grad, module_sq_grad_norms, reference_sq_grad_norms
from nblib.core.rules import Rule, register, registered, rule_for

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


# ----------------------------------------------------------------------------- the rule registry

# a test model for each registered layer type: (name in models(), the layer's name in that model)
RULE_MODELS = {nn.Linear: ("sequence", "0"), nn.Conv1d: ("conv1d", "0"), nn.Conv2d: ("cnn", "0"),
               nn.Embedding: ("embedding", "emb"), nn.LayerNorm: ("embedding", "norm")}


@pytest.fixture
def generic_names(monkeypatch):
    """The parameter names module_reg sends to the generic torch.func path, call after call."""
    seen = []
    original = module_reg._generic_sq_norms

    def record(module, X, names, create_graph):
        seen.extend(names)
        return original(module, X, names, create_graph)

    monkeypatch.setattr(module_reg, "_generic_sq_norms", record)
    return seen


def _assert_matches_reference(model, X):
    out, ref = module_sq_grad_norms(model, X), reference_sq_grad_norms(model, X)
    assert out.shape == ref.shape == (X.shape[0],)
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-10


def _own_names(model, layer_name):
    return {f"{layer_name}.{k}" for k, p in model.get_submodule(layer_name).named_parameters() if p.requires_grad}


@pytest.mark.parametrize("layer_type", sorted(registered(), key=lambda t: t.__name__), ids=lambda t: t.__name__)
def test_every_registered_rule_matches_the_per_example_loop(layer_type, generic_names):
    if layer_type not in RULE_MODELS:
        pytest.fail(f"no test model for the rule of {layer_type.__name__}: add one to RULE_MODELS")
    name, layer_name = RULE_MODELS[layer_type]
    model, X = _cast(*models()[name])
    layer = model.get_submodule(layer_name)
    assert type(layer) is layer_type and rule_for(layer) is registered()[layer_type]
    _assert_matches_reference(model, X)
    assert not _own_names(model, layer_name) & set(generic_names)      # the rule, not torch.func, did them


class Scale(nn.Module):
    """x * w over the last axis, a layer no rule of nblib knows."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d))

    def forward(self, x):
        return x * self.weight


@pytest.fixture
def scale_rule():
    """A rule for Scale, registered for one test: z_t = w ⊙ x_t, ‖∇_w h‖² = ‖Σ_t g_t ⊙ x_t‖²."""

    @register(Scale)
    class ScaleRule(Rule):
        def features(self, m, inputs):
            return torch.cat([x.reshape(x.shape[0], -1, m.weight.shape[0]) for x in inputs], 1)

        def sq_norms(self, m, feat, grads):
            if not m.weight.requires_grad:
                return 0.0
            g = torch.cat([x.reshape(feat.shape[0], -1, m.weight.shape[0]) for x in grads], 1)
            return ((g * feat).sum(1) ** 2).sum(-1)

    yield registered()[Scale]
    registered().pop(Scale)


def test_a_new_layer_type_is_one_registration(scale_rule, generic_names):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(3, 4), Scale(4), nn.Tanh(), nn.Linear(4, 2), nn.Flatten(1)).to(DT)
    X = torch.randn(6, 5, 3, dtype=DT)
    assert rule_for(model[1]) is scale_rule
    _assert_matches_reference(model, X)
    assert generic_names == []                       # Scale's weight "1.weight" included: all went by rules
    reg_ref, grad_ref = _reference_reg_and_grad(model, X)
    reg, grads = module_regularizer_and_grad(model, X)
    assert abs(float(reg - reg_ref)) < 1e-10 * float(reg_ref)
    for (k, g), r in zip(grads.items(), grad_ref):
        assert float((g - r).abs().max()) <= 1e-10 * (1 + float(r.abs().max())), k


def test_the_registration_does_not_outlive_its_test():
    assert Scale not in registered() and rule_for(Scale(3)) is None


class _MyLinear(nn.Linear):
    """A subclass: found through type(m).__mro__."""


class _Double(nn.Module):
    def forward(self, w):
        return 2 * w


def test_rule_lookup_follows_subclasses_not_parametrizations(generic_names):
    assert rule_for(_MyLinear(3, 2)) is registered()[nn.Linear]
    assert rule_for(parametrizations.weight_norm(nn.Linear(3, 2))) is None
    lin = nn.Linear(3, 2)
    parametrize.register_parametrization(lin, "weight", _Double())
    assert rule_for(lin) is None
    for m in (nn.Conv1d(2, 4, 3, groups=2), nn.Conv2d(2, 2, 3, padding="same"), nn.Embedding(5, 2, max_norm=1.0),
              nn.LayerNorm(3, elementwise_affine=False), nn.Tanh()):
        assert rule_for(m) is None, m
    torch.manual_seed(3)
    model = nn.Sequential(_MyLinear(3, 4), nn.Tanh(), nn.Linear(4, 1)).to(DT)
    _assert_matches_reference(model, torch.randn(5, 3, dtype=DT))
    assert generic_names == []
