"""label_noise_sgd and regularized_gd: reproducibility, independence of chains, fixed points,
agreement of the fast and generic paths, the theory's invariants, and clear errors."""
import pytest
import torch

import nblib
from nblib.chapters.models import init_two_layer_relu, product, two_layer_relu

DT = torch.float64


def relu_problem(width=30, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = init_two_layer_relu(width, generator=g, dtype=DT)
    X = torch.linspace(-1, 1, n, dtype=DT)
    return params, X, torch.sin(3 * X)


def run(**kw):
    params, X, y = relu_problem()
    args = dict(lr=0.01, noise_std=0.3, steps=300, chains=4, seed=7, record_every=50)
    args.update(kw)
    return nblib.label_noise_sgd(two_layer_relu, params, X, y, **args)


def test_same_seed_same_result_and_different_seed_differs():
    a, b, c = run(), run(), run(seed=8)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k])
    assert not torch.equal(a.params["c"], c.params["c"])


def test_recording_does_not_change_the_trajectory():
    a, b = run(record_every=50), run(record_every=7)
    for k in a.params:
        assert torch.equal(a.params[k][-1], b.params[k][-1])
    assert a.steps[-1] == b.steps[-1] == 300


def test_trajectory_shapes():
    tr = run()
    assert tr.steps.tolist() == [0, 50, 100, 150, 200, 250, 300]
    assert tr.params["a"].shape == (7, 4, 30) and tr.params["b0"].shape == (7, 4)
    assert tr.loss.shape == (7, 4) and tr.reg.shape == (7, 4)
    assert tr.final()["c"].shape == (4, 30)


def test_chains_are_independent():
    """A chain's path does not depend on another chain's state, and different chains see different noise."""
    params, X, y = relu_problem()
    stacked = {k: v.unsqueeze(0).repeat(3, *([1] * v.ndim)) for k, v in params.items()}
    perturbed = {k: v.clone() for k, v in stacked.items()}
    perturbed["c"][1] += 0.5
    kw = dict(lr=0.01, noise_std=0.3, steps=200, seed=3, stacked=True)
    a = nblib.label_noise_sgd(two_layer_relu, stacked, X, y, **kw)
    b = nblib.label_noise_sgd(two_layer_relu, perturbed, X, y, **kw)
    for k in a.params:
        assert torch.equal(a.params[k][:, 0], b.params[k][:, 0])
        assert torch.equal(a.params[k][:, 2], b.params[k][:, 2])
    assert not torch.equal(a.params["c"][-1, 0], a.params["c"][-1, 2])


def test_noise_across_chains_is_uncorrelated():
    """On h = a·b·x the per-step change of ab is driven by the noise: across chains it is uncorrelated."""
    X = torch.ones(1, dtype=DT)
    tr = nblib.label_noise_sgd(product, {"a": torch.tensor(1.0, dtype=DT), "b": torch.tensor(1.0, dtype=DT)},
                               X, X.clone(), lr=0.01, noise_std=1.0, steps=2000, chains=2, seed=0,
                               record_every=1, record_reg=False)
    ab = tr.params["a"] * tr.params["b"]
    inc = ab[1:] - ab[:-1]
    corr = torch.corrcoef(inc.T)[0, 1]
    assert abs(float(corr)) < 0.1     # 2000 samples: standard error ≈ 0.022


def test_plain_sgd_at_a_zero_loss_point_does_not_move():
    X = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    start = {"a": torch.tensor(2.0, dtype=DT), "b": torch.tensor(0.5, dtype=DT)}
    for fast in (True, False):
        tr = nblib.label_noise_sgd(product, start, X, X.clone(), lr=0.05, noise_std=0.0, steps=500, chains=3,
                                   fast=fast)
        assert torch.equal(tr.params["a"][-1], torch.full((3,), 2.0, dtype=DT))
        assert torch.equal(tr.params["b"][-1], torch.full((3,), 0.5, dtype=DT))
        assert float(tr.loss.abs().max()) == 0.0


def test_fast_path_matches_torch_func_reference():
    for batch_size in (1, 3, 8):
        for noise in ("gaussian", "rademacher"):
            a = run(batch_size=batch_size, noise=noise, fast=True)
            b = run(batch_size=batch_size, noise=noise, fast=False)
            for k in a.params:
                assert torch.allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12), (batch_size, noise, k)
            assert torch.allclose(a.reg, b.reg, rtol=1e-10)


def test_flow_fast_path_matches_reference():
    params, X, y = relu_problem()
    a = nblib.regularized_gd(two_layer_relu, params, X, y, lr=0.01, lam=0.05, steps=100, fast=True)
    b = nblib.regularized_gd(two_layer_relu, params, X, y, lr=0.01, lam=0.05, steps=100, fast=False)
    for k in a.params:
        assert torch.allclose(a.params[k], b.params[k], rtol=1e-10, atol=1e-12), k


def test_balance_identity_holds_exactly():
    """On h = a·b·x, every label-noise step multiplies D = a² − b² by (1 − 4η²r²x²) ∈ (0, 1]: |D| never grows."""
    X = torch.tensor([0.8, 1.0, 1.2], dtype=DT)
    tr = nblib.label_noise_sgd(product, {"a": torch.tensor(2.0, dtype=DT), "b": torch.tensor(0.5, dtype=DT)},
                               X, X.clone(), lr=0.01, noise_std=1.0, steps=500, chains=50, record_every=1,
                               record_reg=False)
    D = tr.params["a"] ** 2 - tr.params["b"] ** 2
    assert bool((D[1:] <= D[:-1] + 1e-12).all()) and bool((D > 0).all())


def test_label_noise_follows_the_explicit_flow():
    """Drift of the balance matches GD on L + ησ²·reg (the chapter's claim 2, smaller; O(η) ≈ 5% correction)."""
    X = torch.tensor([0.8, 1.0, 1.2], dtype=DT)
    start = {"a": torch.tensor(2.0, dtype=DT), "b": torch.tensor(0.5, dtype=DT)}
    kw = dict(lr=0.01, steps=3000, record_every=3000)
    noisy = nblib.label_noise_sgd(product, start, X, X.clone(), noise_std=1.0, chains=1000, seed=0, **kw)
    flow = nblib.regularized_gd(product, start, X, X.clone(), lam=nblib.implicit_lambda(0.01, 1.0), **kw)
    D_noisy = (noisy.params["a"][-1] ** 2 - noisy.params["b"][-1] ** 2).mean()
    D_flow = flow.params["a"][-1, 0] ** 2 - flow.params["b"][-1, 0] ** 2
    assert abs(float(D_noisy / D_flow) - 1) < 0.1


def test_implicit_lambda():
    assert nblib.implicit_lambda(0.1, 2.0, batch_size=4) == pytest.approx(0.1)


def test_divergence_raises_naming_the_hyperparameters():
    with pytest.raises(nblib.DivergenceError, match=r"lr \(now 5\).*noise_std \(now 0\.3\)"):
        run(lr=5.0, steps=2000)
    params, X, y = relu_problem()
    with pytest.raises(nblib.DivergenceError, match="lam"):
        nblib.regularized_gd(two_layer_relu, params, X, y, lr=5.0, lam=0.1, steps=500)


@pytest.mark.parametrize("kw, message", [
    (dict(lr=0.0), "lr must be a positive"),
    (dict(lr=-1e-3), "lr must be a positive"),
    (dict(lr=float("nan")), "lr must be a positive"),
    (dict(noise_std=-0.1), "noise_std must be a non-negative"),
    (dict(steps=-1), "steps must be an integer"),
    (dict(chains=0), "chains must be an integer"),
    (dict(batch_size=100), "exceeds the number of examples"),
    (dict(noise="uniform"), "noise must be"),
    (dict(record_every=0), "record_every"),
    (dict(compile=True, fast=False), "closed form"),
])
def test_bad_arguments_raise_clear_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        run(**kw)


def test_bad_data_raise_clear_errors():
    params, X, y = relu_problem()
    with pytest.raises(ValueError, match="X has 8 examples but y has 7"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y[:-1], lr=0.01, noise_std=0.1, steps=1)
    with pytest.raises(ValueError, match="y contains NaN"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y * float("nan"), lr=0.01, noise_std=0.1, steps=1)
    with pytest.raises(ValueError, match="1-D"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y[:, None], lr=0.01, noise_std=0.1, steps=1)
    stacked = {k: v.unsqueeze(0).repeat(2, *([1] * v.ndim)) for k, v in params.items()}
    stacked["c"] = stacked["c"][:1]
    with pytest.raises(ValueError, match="leading chain dimension"):
        nblib.label_noise_sgd(two_layer_relu, stacked, X, y, lr=0.01, noise_std=0.1, steps=1, stacked=True)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        run(compile=True)


# ----------------------------------------------------------------------------- one loop: replicates, per-chain settings

def test_chain_c_of_a_batched_run_equals_a_single_run_with_seed_c():
    """seeds=[s_0, …]: each chain's randomness depends on its own seed only (minibatches and noise)."""
    seeds = [11, 12, 13]
    batched = run(chains=3, seeds=seeds, batch_size=3)
    for c, s in enumerate(seeds):
        single = run(chains=1, seed=s, batch_size=3)
        for k in batched.params:
            assert torch.equal(batched.params[k][:, c], single.params[k][:, 0]), (c, k)
    assert batched.config["seeds"] == seeds


def test_seeds_per_group_of_chains():
    grouped = run(chains=4, seeds=[5, 6], batch_size=2)
    pair = run(chains=2, seed=6, batch_size=2)
    for k in grouped.params:
        assert torch.equal(grouped.params[k][:, 2:], pair.params[k]), k
    with pytest.raises(ValueError, match="equal groups"):
        run(chains=4, seeds=[1, 2, 3])


def test_per_chain_hyperparameters_equal_separate_runs():
    params, X, y = relu_problem()
    kw = dict(steps=200, seeds=[3, 4], chains=2, batch_size=4, record_every=200)
    both = nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=[0.01, 0.02], noise_std=[0.3, 0.0], **kw)
    for c, (lr, sd, s) in enumerate([(0.01, 0.3, 3), (0.02, 0.0, 4)]):
        one = nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=lr, noise_std=sd, steps=200, seed=s,
                                    batch_size=4, record_every=200)
        for k in one.params:
            assert torch.allclose(both.params[k][:, c], one.params[k][:, 0], rtol=1e-12, atol=1e-14), (c, k)
    assert both.config["lr"] == [0.01, 0.02] and both.config["noise_std"] == [0.3, 0.0]


def test_gathering_per_step_or_per_chunk_gives_the_same_trajectory(monkeypatch):
    a = run(batch_size=3)
    monkeypatch.setattr(nblib.core.label_noise, "GATHER_LIMIT", 0)
    b = run(batch_size=3)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_frozen_parameters_never_move_and_the_rest_trains():
    params, X, y = relu_problem()
    frozen = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 1.0])}
    tr = nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=0.01, noise_std=0.3, steps=100, chains=2,
                               trainable=frozen, record_every=100)
    assert torch.equal(tr.params["a"][-1, 0], params["a"]) and torch.equal(tr.params["b"][-1, 0], params["b"])
    assert not torch.equal(tr.params["a"][-1, 1], params["a"])
    assert not torch.equal(tr.params["c"][-1, 0], params["c"])
    with pytest.raises(ValueError, match="lam > 0 with frozen"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=0.01, noise_std=0.0, lam=0.1, steps=5,
                              chains=2, trainable=frozen)
    with pytest.raises(ValueError, match="trainable"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=0.01, noise_std=0.0, steps=5,
                              trainable={"nope": 1.0})


def test_explicit_flow_is_a_chain_of_the_same_loop():
    params, X, y = relu_problem()
    flow = nblib.regularized_gd(two_layer_relu, params, X, y, lr=0.01, lam=0.05, steps=100, record_every=100)
    mixed = nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=0.01, noise_std=[0.3, 0.0],
                                  lam=[0.0, 0.05], steps=100, chains=2, batch_size=len(X), record_every=100)
    for k in flow.params:
        assert torch.equal(mixed.params[k][:, 1], flow.params[k][:, 0]), k


def test_noise_off_after_ends_the_noise():
    params, X, y = relu_problem()
    kw = dict(lr=0.01, steps=300, batch_size=len(X), seed=2, record_every=100)
    a = nblib.label_noise_sgd(two_layer_relu, params, X, y, noise_std=0.0, **kw)
    b = nblib.label_noise_sgd(two_layer_relu, params, X, y, noise_std=0.5, noise_off_after=0, **kw)
    for k in a.params:
        assert torch.equal(a.params[k], b.params[k]), k


def test_divergence_message_names_what_to_lower():
    params, X, y = relu_problem()
    with pytest.raises(nblib.DivergenceError, match=r"Lower lr \(now \[1, 50\]\) or noise_std"):
        nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=[1.0, 50.0], noise_std=1.0, steps=300,
                              chains=2)
    with pytest.raises(nblib.DivergenceError, match="or lam"):
        nblib.regularized_gd(two_layer_relu, params, X, y, lr=5.0, lam=10.0, steps=300)


def test_recorded_reg_of_a_run_with_frozen_layers_counts_only_trainable_parameters():
    """Outer layer only: reg = (1/n) Σ_j [Σ_i σ(a_i x_j + b_i)² + 1 + x_j²] does not depend on c (closed form)."""
    params, X, y = relu_problem()
    frozen = {"a": torch.tensor([0.0]), "b": torch.tensor([0.0])}
    tr = nblib.label_noise_sgd(two_layer_relu, params, X, y, lr=0.01, noise_std=0.3, steps=100, chains=1,
                               trainable=frozen, record_every=50)
    pre = params["a"] * X[:, None] + params["b"]
    expected = (torch.relu(pre).pow(2).sum(1) + 1 + X ** 2).mean()
    assert torch.allclose(tr.reg, expected.expand_as(tr.reg), rtol=1e-12)


def test_compiled_step_follows_the_eager_trajectory():
    """compile=True fuses gradient and update; the trajectory is the eager one up to float rounding."""
    pytest.importorskip("torch._inductor")
    import shutil
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("no C++ compiler")
    params, X, y = relu_problem(width=20)
    params = {k: v.float() for k, v in params.items()}
    kw = dict(lr=0.01, noise_std=0.3, steps=100, chains=4, seeds=[1, 2, 3, 4], batch_size=2,
              record_every=100, record_reg=False)
    eager = nblib.label_noise_sgd(two_layer_relu, params, X.float(), y.float(), **kw)
    fused = nblib.label_noise_sgd(two_layer_relu, params, X.float(), y.float(), compile=True, **kw)
    for k in eager.params:
        assert torch.allclose(eager.params[k], fused.params[k], atol=1e-5), k


def test_data_per_group_of_chains_is_data_per_chain():
    """X [G, n], y [G, n] with G = 2 groups of 3 chains = the same data repeated for every chain."""
    params, X, y = relu_problem()
    Xg = torch.stack([X, X.flip(0)])
    yg = torch.stack([y, 2 * y])
    kw = dict(lr=0.01, noise_std=0.3, steps=200, chains=6, seeds=[1, 2], batch_size=3, record_every=100,
              per_chain_data=True)
    grouped = nblib.label_noise_sgd(two_layer_relu, params, Xg, yg, **kw)
    each = nblib.label_noise_sgd(two_layer_relu, params, Xg.repeat_interleave(3, 0),
                                 yg.repeat_interleave(3, 0), **kw)
    for k in grouped.params:
        assert torch.equal(grouped.params[k], each.params[k])
    assert torch.equal(grouped.reg, each.reg)
    with pytest.raises(ValueError, match="dividing 6"):
        nblib.label_noise_sgd(two_layer_relu, params, torch.stack([X] * 4), torch.stack([y] * 4), **kw)
