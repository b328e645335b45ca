"""Matrix sensing pieces: closed forms vs autograd / torch.func, the closed-form step of nblib's loop vs its
torch.func step, per-chain noise levels, the explicit flow as a chain, the noise-off tail, clear errors."""
import math

import pytest
import torch

import nblib
from nblib.chapters import matrix_sensing as ms
from nblib.chapters.models import matrix_sensing as model_from_models

DT = torch.float64


def small_problem(d=5, rank=2, n=30, seed=0):
    return ms.sensing_problem(d, rank, n, seed=seed, dtype=DT)


def random_U(d, seed=1, C=None):
    g = torch.Generator().manual_seed(seed)
    shape = (d, d) if C is None else (C, d, d)
    return torch.randn(*shape, generator=g, dtype=DT)


def test_models_reexports_the_same_model():
    assert model_from_models is ms.matrix_sensing
    assert nblib.core.regularizer.closed_form_of(model_from_models) is not None


def test_closed_form_gradient_matches_autograd():
    """∇_U ⟨A, UUᵀ⟩ = (A + Aᵀ)U, and the batched vjp Σ_b r_b (A_b + A_bᵀ)U."""
    P = small_problem()
    U = random_U(P.d).requires_grad_(True)
    for i in range(3):
        (g,) = torch.autograd.grad(ms.matrix_sensing({"U": U}, P.A[i]), U)
        assert torch.allclose(g, (P.A[i] + P.A[i].T) @ U, rtol=1e-12, atol=1e-12)
    cf = nblib.core.regularizer.closed_form_of(ms.matrix_sensing)
    Uc = random_U(P.d, C=2)
    Ab = P.A[:4].expand(2, 4, P.d, P.d)
    r = torch.randn(2, 4, dtype=DT, generator=torch.Generator().manual_seed(3))
    out = cf.forward({"U": Uc}, Ab)
    ref = torch.stack([torch.stack([ms.matrix_sensing({"U": Uc[c]}, Ab[c, b]) for b in range(4)]) for c in range(2)])
    assert torch.allclose(out, ref, rtol=1e-12)
    Ul = Uc.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad((cf.forward({"U": Ul}, Ab) * r).sum(), Ul)
    assert torch.allclose(cf.vjp({"U": Uc}, Ab, r)["U"], g_ref, rtol=1e-12, atol=1e-12)


def test_closed_form_reg_and_its_gradient_match_torch_func():
    P = small_problem()
    U = random_U(P.d)
    fast = nblib.per_example_sq_grad_norms(ms.matrix_sensing, {"U": U}, P.A, fast=True)
    slow = nblib.per_example_sq_grad_norms(ms.matrix_sensing, {"U": U}, P.A, fast=False)
    assert torch.allclose(fast, slow, rtol=1e-12)
    reg_generic = nblib.implicit_regularizer(ms.matrix_sensing, {"U": U}, P.A, fast=False)
    assert torch.allclose(ms.reg_closed_form(P.A, U), reg_generic, rtol=1e-12)
    assert torch.allclose(ms.reg(P, U), reg_generic, rtol=1e-12)
    Ul = U.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(nblib.implicit_regularizer(ms.matrix_sensing, {"U": Ul}, P.A, fast=False), Ul)
    g = nblib.core.regularizer.closed_form_of(ms.matrix_sensing).reg_grad({"U": U[None]}, P.A)["U"][0]
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-10)


def test_metric_is_near_2_d_plus_1_identity():
    """E (A + Aᵀ)² = 2(d+1)I; for finite n the deviation is within the semicircle edge (+ slack for finite d)."""
    d, n = 8, 4000
    P = ms.sensing_problem(d, 1, n, seed=2, dtype=DT)
    dev = torch.linalg.matrix_norm(P.metric - 2 * (d + 1) * torch.eye(d, dtype=DT), ord=2) / (2 * (d + 1))
    edge = math.sqrt(d * (4 * d + 8) / n) / (d + 1)
    assert float(dev) < 1.5 * edge
    U = random_U(d)
    ratio = float(ms.reg(P, U) / ms.expected_reg(U))
    assert abs(ratio - 1) <= float(dev) + 1e-12


def run(P, **kw):
    args = dict(lr=0.01, noise_std=0.5, steps=300, seed=7, record_every=50)
    args.update(kw)
    return nblib.label_noise_sgd(ms.matrix_sensing, {"U": torch.eye(P.d, dtype=DT)}, P.A, P.y, **args)


def test_closed_form_step_matches_torch_func_step_full_and_minibatch():
    P = small_problem(d=4, rank=1, n=20)
    for B in (20, 5):
        ref = run(P, chains=2, batch_size=B, fast=False)
        fast = run(P, chains=2, batch_size=B, fast=True)
        assert torch.equal(ref.steps, fast.steps)
        assert torch.allclose(ref.params["U"], fast.params["U"], rtol=1e-9, atol=1e-11)
        assert torch.allclose(ref.loss, fast.loss, rtol=1e-8, atol=1e-12)
        assert torch.allclose(ref.reg, fast.reg, rtol=1e-9)


def test_flow_chain_matches_regularized_gd_and_torch_func():
    P = small_problem(d=4, rank=1, n=20)
    U0 = {"U": torch.eye(4, dtype=DT)}
    ref = nblib.regularized_gd(ms.matrix_sensing, U0, P.A, P.y, lr=0.01, lam=0.002, steps=200,
                               record_every=50, fast=False)
    both = run(P, noise_std=[0.5, 0.0], lam=[0.0, 0.002], chains=2, batch_size=20, steps=200)
    assert torch.allclose(ref.params["U"][:, 0], both.params["U"][:, 1], rtol=1e-9, atol=1e-11)


def test_per_chain_noise_levels_and_noise_off_tail():
    P = small_problem(d=4, rank=1, n=20)
    mixed = run(P, noise_std=[0.0, 0.5], chains=2, batch_size=20, steps=100, seed=3)
    plain = run(P, noise_std=0.0, batch_size=20, steps=100, seed=3)
    assert torch.allclose(mixed.params["U"][:, 0], plain.params["U"][:, 0], rtol=1e-12)
    assert not torch.allclose(mixed.params["U"][:, 1], plain.params["U"][:, 0])
    off = run(P, noise_std=0.5, batch_size=20, steps=100, seed=3, noise_off_after=0)
    assert torch.allclose(off.params["U"], plain.params["U"], rtol=1e-12)
    assert mixed.config["noise_std"] == [0.0, 0.5] and mixed.config["model"] == "matrix_sensing"


def test_ou_floor_is_lambda_reg_for_small_steps():
    P = small_problem(d=6, rank=1, n=40)
    U = random_U(6)
    lr, sigma = 1e-6, 0.7
    floor = ms.ou_train_floor(P, U, lr=lr, noise_std=sigma)
    lam_reg = nblib.implicit_lambda(lr, sigma, P.n) * float(ms.reg(P, U))
    assert abs(floor / lam_reg - 1) < 1e-3


def test_spectrum_effective_rank_and_nuclear_norm():
    Q, _ = torch.linalg.qr(random_U(6))
    U = Q[:, :2] @ torch.eye(2, 6, dtype=DT)                         # UUᵀ = orthogonal projector of rank 2
    assert torch.allclose(ms.spectrum(U)[:2], torch.ones(2, dtype=DT), atol=1e-12)
    assert float(ms.spectrum(U)[2:].abs().max()) < 1e-12
    assert abs(float(ms.effective_rank(U)) - 2) < 1e-9
    assert abs(float(ms.nuclear_norm(U)) - 2) < 1e-12
    P = small_problem()
    assert float(ms.test_error(P, torch.cat([P.U_star, torch.zeros(P.d, P.d - P.rank, dtype=DT)], 1))) < 1e-12
    assert float(ms.train_error(P, torch.cat([P.U_star, torch.zeros(P.d, P.d - P.rank, dtype=DT)], 1))) < 1e-24


def test_bad_input_raises_value_error():
    P = small_problem(d=4, rank=1, n=20)
    U0 = torch.eye(4, dtype=DT)
    with pytest.raises(ValueError, match="noise_std"):
        run(P, chains=2, noise_std=[0.1, 0.1, 0.1])
    with pytest.raises(ValueError, match="batch_size"):
        run(P, batch_size=21)
    with pytest.raises(ValueError, match="rank"):
        ms.sensing_problem(3, 4, 10)
    with pytest.raises(ValueError, match="shape"):
        ms.sensing_metric(torch.zeros(3, 4, 5))
    with pytest.raises(ValueError, match="stability"):
        ms.ou_train_floor(P, 10 * U0, lr=10.0, noise_std=1.0)


def test_divergence_names_the_learning_rate():
    P = small_problem(d=4, rank=1, n=20)
    with pytest.raises(nblib.DivergenceError, match="lr"):
        run(P, lr=1.0, noise_std=1.0, steps=200, record_every=10, batch_size=20)


# ----------------------------------------------------------------------------- replicates: stacked problems

def test_stacked_problems_are_the_single_problems():
    own = ms.sensing_problems(5, 2, 30, seeds=[3, 4], dtype=DT)
    assert own.replicates == 2 and not own.shared_sensing and (own.d, own.n, own.rank) == (5, 30, 2)
    for r, s in enumerate([3, 4]):
        single = ms.sensing_problem(5, 2, 30, seed=s, dtype=DT)
        for f in ("A", "U_star", "X_star", "y", "sym_flat", "metric"):
            assert torch.equal(getattr(own.replicate(r), f), getattr(single, f))
    shared = ms.sensing_problems(5, 2, 30, seeds=[3, 4], sensing_seed=9, dtype=DT)
    assert shared.shared_sensing and shared.A.shape == (30, 5, 5) and shared.y.shape == (2, 30)
    base = ms.sensing_problem(5, 2, 30, seed=9, dtype=DT)
    for r, s in enumerate([3, 4]):
        p = shared.replicate(r)
        assert torch.equal(p.A, base.A) and torch.equal(p.metric, base.metric)
        assert torch.equal(p.U_star, ms.sensing_problem(5, 2, 30, seed=s, dtype=DT).U_star)
        assert torch.allclose(p.y, torch.einsum("nij,ij->n", p.A, p.X_star), rtol=1e-12, atol=1e-12)


def test_to_recomputes_the_derived_tensors_exactly():
    P32 = ms.sensing_problems(4, 1, 20, seeds=[1, 2], sensing_seed=5, dtype=torch.float32)
    P64 = P32.to(DT)
    assert P64.y.dtype == DT and torch.equal(P64.y, P32.y.double())
    sym = (P64.A + P64.A.transpose(1, 2)) / 2
    assert torch.equal(P64.sym_flat, sym.reshape(20, 16))
    assert torch.allclose(P64.metric, (4 * sym @ sym).mean(0), rtol=1e-15, atol=0)


@pytest.mark.parametrize("sensing_seed", [None, 9])
def test_stacked_measurements_match_each_replicate(sensing_seed):
    P = ms.sensing_problems(5, 2, 30, seeds=[3, 4, 5], sensing_seed=sensing_seed, dtype=DT)
    U = random_U(5, C=4 * 3 * 2).reshape(4, 3, 2, 5, 5)            # [T, R, C, d, d]
    for fn in (ms.train_error, ms.test_error, ms.reg, ms.predictions):
        stacked = fn(P, U)
        for r in range(3):
            assert torch.allclose(stacked[:, r], fn(P.replicate(r), U[:, r]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sensing_seed", [None, 9])
def test_full_batch_runs_take_the_steps_of_label_noise_sgd(sensing_seed):
    """Chain c of problem r = chain c of label_noise_sgd on problem r alone with seed seeds[r], across
    a chunk boundary of the draws, with a noise-off tail and an explicit-flow chain."""
    P = ms.sensing_problems(5, 2, 30, seeds=[3, 4, 5], sensing_seed=sensing_seed, dtype=DT)
    U0 = torch.eye(5, dtype=DT)
    kw = dict(lr=0.01, noise_std=[0.0, 0.5, 0.0], lam=[0.0, 0.0, 0.002], steps=600, record_every=100,
              noise_off_after=500)
    runs = ms.full_batch_runs(P, U0, seeds=[7, 8, 9], **kw)
    assert runs.params["U"].shape == (7, 9, 5, 5) and runs.config["chains_per_problem"] == 3
    for r, s in enumerate([7, 8, 9]):
        p = P.replicate(r)
        alone = nblib.label_noise_sgd(ms.matrix_sensing, {"U": U0}, p.A, p.y, chains=3, batch_size=30,
                                      seed=s, **kw)
        block = slice(3 * r, 3 * r + 3)
        assert torch.equal(runs.steps, alone.steps)
        assert torch.allclose(runs.params["U"][:, block], alone.params["U"], rtol=1e-12, atol=1e-13)
        assert torch.allclose(runs.loss[:, block], alone.loss, rtol=1e-10, atol=1e-13)
        assert torch.allclose(runs.reg[:, block], alone.reg, rtol=1e-12)


def test_full_batch_runs_plain_chains_do_not_depend_on_the_seed():
    P = ms.sensing_problems(4, 1, 20, seeds=[1, 2], sensing_seed=3, dtype=DT)
    a = ms.full_batch_runs(P, torch.eye(4, dtype=DT), lr=0.01, noise_std=[0.0, 0.5], steps=50,
                           seeds=[1, 2])
    b = ms.full_batch_runs(P, torch.eye(4, dtype=DT), lr=0.01, noise_std=[0.0, 0.5], steps=50,
                           seeds=[5, 6])
    assert torch.equal(a.params["U"][:, 0::2], b.params["U"][:, 0::2])
    assert not torch.allclose(a.params["U"][:, 1::2], b.params["U"][:, 1::2])


def test_full_batch_runs_bad_input_and_divergence():
    P = ms.sensing_problems(4, 1, 20, seeds=[1, 2], dtype=DT)
    U0 = torch.eye(4, dtype=DT)
    with pytest.raises(ValueError, match="stacked"):
        ms.full_batch_runs(small_problem(d=4, rank=1, n=20), U0, lr=0.01, noise_std=0.5, steps=5, seeds=[1])
    with pytest.raises(ValueError, match="seeds"):
        ms.full_batch_runs(P, U0, lr=0.01, noise_std=0.5, steps=5, seeds=[1])
    with pytest.raises(ValueError, match="U0"):
        ms.full_batch_runs(P, torch.eye(3, dtype=DT), lr=0.01, noise_std=0.5, steps=5, seeds=[1, 2])
    with pytest.raises(ValueError, match="lam"):
        ms.full_batch_runs(P, U0, lr=0.01, noise_std=[0.5, 0.0], lam=[0.0], steps=5, seeds=[1, 2])
    with pytest.raises(ValueError, match="replicate"):
        ms.ou_train_floor(P, U0, lr=0.01, noise_std=1.0)
    with pytest.raises(ValueError, match="stacked"):
        small_problem().replicate(0)
    with pytest.raises(nblib.DivergenceError, match="lr"):
        ms.full_batch_runs(P, U0, lr=1.0, noise_std=1.0, steps=200, seeds=[1, 2], record_every=10)


def test_sensing_metric_cache_never_serves_another_tensor():
    """A new tensor at a reused address, or an in-place change, gets its own M."""
    from nblib.chapters.models import sensing_metric
    for k in range(20):
        A = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        sym = A + A.transpose(-1, -2)
        assert torch.allclose(sensing_metric(A), (sym @ sym).mean(0))
        del A, sym
    A = torch.randn(6, 3, 3, dtype=torch.float64)
    sensing_metric(A)
    A.mul_(2.0)
    sym = A + A.transpose(-1, -2)
    assert torch.allclose(sensing_metric(A), (sym @ sym).mean(0))


# ----------------------------------------------------------------------------- the packed model

def test_packed_model_is_matrix_sensing_on_the_upper_triangle():
    """h, ∇_U h (autograd), reg and ∇reg of matrix_sensing_packed equal those of matrix_sensing on A."""
    P = small_problem()
    s = ms.pack_sensing(P.A)
    assert s.shape == (P.n, P.d * (P.d + 1) // 2)
    U = random_U(P.d).requires_grad_(True)
    for i in range(3):
        a, b = ms.matrix_sensing({"U": U}, P.A[i]), ms.matrix_sensing_packed({"U": U}, s[i])
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
        ga, = torch.autograd.grad(a, U)
        gb, = torch.autograd.grad(b, U)
        assert torch.allclose(ga, gb, rtol=1e-12, atol=1e-12)
    Uc = {"U": random_U(P.d, C=3)}
    assert torch.allclose(nblib.implicit_regularizer(ms.matrix_sensing_packed, Uc, s, stacked=True),
                          ms.reg(P, Uc["U"]), rtol=1e-12)
    assert torch.allclose(nblib.implicit_regularizer(ms.matrix_sensing_packed, Uc, s, stacked=True,
                                                     fast=False), ms.reg(P, Uc["U"]), rtol=1e-12)


@pytest.mark.parametrize("sensing_seed", [None, 9])
def test_packed_closed_form_per_group_matches_torch_func(sensing_seed):
    """The grouped closed form (R problems, C chains each, full batch and minibatches, noise, explicit
    flow) takes the steps of the torch.func reference path on one data set per chain."""
    P = ms.sensing_problems(4, 1, 20, seeds=[1, 2], sensing_seed=sensing_seed, dtype=DT)
    X, y = ms.packed_data(P)
    U0 = {"U": torch.eye(4, dtype=DT)}
    for B in (20, 5):
        kw = dict(lr=0.01, noise_std=[0.0, 0.5, 0.0] * 2, lam=[0.0, 0.0, 0.003] * 2, chains=6,
                  steps=300, batch_size=B, seeds=[3, 4], record_every=100, per_chain_data=True)
        fast = nblib.label_noise_sgd(ms.matrix_sensing_packed, U0, X, y, **kw)
        ref = nblib.label_noise_sgd(ms.matrix_sensing_packed, U0, X, y, fast=False, **kw)
        assert torch.allclose(fast.params["U"], ref.params["U"], rtol=1e-10, atol=1e-10)
        assert torch.allclose(fast.loss, ref.loss, rtol=1e-10, atol=1e-12)
        assert torch.allclose(fast.reg, ref.reg, rtol=1e-10)
