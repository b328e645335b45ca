"""Matrix sensing with a full factor (Blanc et al. 2020, §4.1), with closed forms and a fast batched loop.

    h(A; U) = ⟨A, UUᵀ⟩,   U ∈ R^{d×d},   ∇_U h = (A + Aᵀ)U.

For symmetric S = (A + Aᵀ)/2 only the symmetric part of A matters: h = ⟨S, X⟩ with X = UUᵀ. The implicit
regularizer is linear in X:

    reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩,   M = (1/n) Σ_i (A_i + A_iᵀ)²,   ∇_U reg = 2MU,

and for A with i.i.d. N(0, 1) entries E[(A + Aᵀ)²] = 2(d+1)·I, so reg(U) ≈ 2(d+1)‖U‖_F² = 2(d+1) tr UUᵀ:
a nuclear-norm penalty on the PSD matrix UUᵀ.

``matrix_sensing`` is the one-example model for nblib's generic tools (it carries a ``ClosedForm``);
``run_sensing`` is the same update as ``nblib.label_noise_sgd`` (same random draws, so the same
trajectory for the same seed) with per-chain noise levels and an optional λ·reg term, so that plain
SGD, label-noise SGD and the explicit flow run as one batched computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import _validate
from .label_noise import DivergenceError, Trajectory
from .regularizer import with_closed_form

_CHUNK = 256          # as nblib.label_noise: random draws per chunk, so the streams coincide
_HUGE = 1e30


# ----------------------------------------------------------------------------- the model

def matrix_sensing(params: dict, A: torch.Tensor) -> torch.Tensor:
    """h(A; U) = ⟨A, UUᵀ⟩ (Blanc et al. §4.1); ∇_U h = (A + Aᵀ)U."""
    U = params["U"]
    return (A * (U @ U.T)).sum()


def _gram(U: torch.Tensor) -> torch.Tensor:
    """X = UUᵀ for stacked U: [C, d, d]."""
    return U @ U.transpose(-1, -2)


def _forward(P, Ab):
    """[C, B]: ⟨A_cb, U_c U_cᵀ⟩."""
    return torch.einsum("cbij,cij->cb", Ab, _gram(P["U"]))


def _vjp(P, Ab, r):
    """{U: [C, d, d]}: Σ_b r_cb (A_cb + A_cbᵀ) U_c."""
    S = torch.einsum("cb,cbij->cij", r, Ab)
    return {"U": (S + S.transpose(-1, -2)) @ P["U"]}


def _sq_grad_norms(P, A):
    """[C, n]: ‖(A_i + A_iᵀ)U_c‖_F²."""
    sym = A + A.transpose(-1, -2)                                   # [n, d, d]
    return torch.einsum("nij,cjk->cnik", sym, P["U"]).pow(2).sum((-2, -1))


def _reg_grad(P, A):
    """{U: [C, d, d]}: ∇_U reg = 2MU with M = (1/n) Σ_i (A_i + A_iᵀ)²."""
    return {"U": 2 * sensing_metric(A) @ P["U"]}


with_closed_form(matrix_sensing, forward=_forward, vjp=_vjp, sq_grad_norms=_sq_grad_norms, reg_grad=_reg_grad)


def sensing_metric(A: torch.Tensor) -> torch.Tensor:
    """M = (1/n) Σ_i (A_i + A_iᵀ)², so that reg(U) = ⟨M, UUᵀ⟩ exactly. A: [n, d, d] -> [d, d]."""
    A = _as_sensing_matrices(A)
    sym = A + A.transpose(-1, -2)
    return (sym @ sym).mean(0)


def reg_closed_form(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩: a scalar for U [d, d], [C] for U [C, d, d]."""
    M = sensing_metric(A)
    return (M * _gram(U)).sum((-2, -1))


def expected_reg(U: torch.Tensor) -> torch.Tensor:
    """E_A reg(U) = 2(d+1)‖U‖_F² for A with i.i.d. N(0, 1) entries."""
    d = U.shape[-1]
    return 2 * (d + 1) * U.pow(2).sum((-2, -1))


# ----------------------------------------------------------------------------- the problem

@dataclass(frozen=True)
class SensingProblem:
    """Gaussian sensing matrices A [n, d, d], ground truth X* = U*U*ᵀ (rank r) and labels y_i = ⟨A_i, X*⟩.

    sym_flat: [n, d²], the rows vec((A_i + A_iᵀ)/2) (the fast path's only copy of the data);
    metric: M = (1/n) Σ (A_i + A_iᵀ)², so reg(U) = ⟨M, UUᵀ⟩.
    """

    A: torch.Tensor
    U_star: torch.Tensor
    X_star: torch.Tensor
    y: torch.Tensor
    sym_flat: torch.Tensor
    metric: torch.Tensor

    @property
    def d(self) -> int:
        return self.X_star.shape[0]

    @property
    def n(self) -> int:
        return self.y.shape[0]

    @property
    def rank(self) -> int:
        return self.U_star.shape[1]


def _as_sensing_matrices(A) -> torch.Tensor:
    if not isinstance(A, torch.Tensor) or A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] == 0:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"sensing matrices must be a tensor of shape [n, d, d] with n >= 1; got {shape}")
    if not torch.isfinite(A).all():
        raise ValueError("sensing matrices contain NaN or infinite values")
    return A


def sensing_problem(d: int, rank: int, n: int, *, seed: int = 0, dtype: torch.dtype = torch.float64,
                    device=None) -> SensingProblem:
    """A_i with i.i.d. N(0, 1) entries; U* ∈ R^{d×r} with i.i.d. N(0, 1/d) entries, so the r nonzero
    eigenvalues of X* = U*U*ᵀ are ≈ 1, the scale of the initialization U₀ = I_d on each direction."""
    d = _validate.count(d, "d")
    rank = _validate.count(rank, "rank")
    n = _validate.count(n, "n")
    if rank > d:
        raise ValueError(f"rank={rank} exceeds d={d}")
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, d, generator=g, dtype=dtype)
    U_star = torch.randn(d, rank, generator=g, dtype=dtype) / math.sqrt(d)
    A, U_star = A.to(device), U_star.to(device)
    X_star = U_star @ U_star.T
    sym = (A + A.transpose(1, 2)) / 2
    y = torch.einsum("nij,ij->n", A, X_star)
    metric = (4 * sym @ sym).mean(0)
    return SensingProblem(A=A, U_star=U_star, X_star=X_star, y=y, sym_flat=sym.reshape(n, d * d).contiguous(),
                          metric=metric)


# ----------------------------------------------------------------------------- measurements

def gram(U: torch.Tensor) -> torch.Tensor:
    """X = UUᵀ ([..., d, d])."""
    return _gram(U)


def predictions(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """[..., n]: ⟨A_i, UUᵀ⟩ for U [..., d, d]."""
    X = _gram(U)
    return X.reshape(*X.shape[:-2], -1) @ problem.sym_flat.T


def train_error(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """(1/n) Σ_i (⟨A_i, UUᵀ⟩ − y_i)² (the clean training MSE, no ½)."""
    return (predictions(problem, U) - problem.y).pow(2).mean(-1)


def test_error(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """‖UUᵀ − X*‖_F / ‖X*‖_F."""
    X = _gram(U)
    return torch.linalg.matrix_norm(X - problem.X_star) / torch.linalg.matrix_norm(problem.X_star)


def spectrum(U: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of the PSD matrix UUᵀ (= its singular values), largest first: [..., d]."""
    return torch.linalg.eigvalsh(_gram(U)).flip(-1).clamp_min(0)


def effective_rank(U: torch.Tensor) -> torch.Tensor:
    """exp(entropy of p_k = λ_k / Σλ) over the eigenvalues λ_k of UUᵀ (Roy & Vetterli 2007)."""
    lam = spectrum(U)
    p = lam / lam.sum(-1, keepdim=True)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum(-1))


def nuclear_norm(U: torch.Tensor) -> torch.Tensor:
    """‖UUᵀ‖_* = tr UUᵀ = ‖U‖_F²."""
    return U.pow(2).sum((-2, -1))


def reg(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """reg(U) = ⟨M, UUᵀ⟩ = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² (closed form, any leading dims)."""
    return (problem.metric * _gram(U)).sum((-2, -1))


# ----------------------------------------------------------------------------- the fast batched loop

def _per_chain(value, C: int, name: str, *, dtype, device) -> torch.Tensor:
    values = [value] * C if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if len(values) != C:
        raise ValueError(f"{name} must be one number or one per chain ({C}); got {len(values)} values")
    for v in values:
        _validate.nonnegative(v, name)
    return torch.tensor([float(v) for v in values], dtype=dtype, device=device)


def run_sensing(problem: SensingProblem, U0: torch.Tensor, *, lr: float, noise_std, steps: int, lam=0.0,
                batch_size: int | None = None, seed: int = 0, record_every: int | None = None,
                noise_off_after: int | None = None) -> Trajectory:
    """Label-noise SGD (and, with lam > 0, the explicit flow) for matrix sensing, C chains at once.

    Per chain c, one step on a minibatch b of size B (B = n: every measurement, each with its own noise):

        U ← U − lr·∇_U [ (1/B) Σ_{i∈b} (⟨A_i, UUᵀ⟩ − y_i − σ_c Z_i)² + λ_c·reg(U) ]
          = U − lr·[ (4/B) Σ_b r_b S_b + 2λ_c M ] U,      S_b = (A_b + A_bᵀ)/2,

    with Z ~ N(0, 1) fresh at every step. noise_std (σ_c) and lam (λ_c): one number or one per chain.
    U0: [d, d] (copied to every chain; C = number of noise levels) or [C, d, d].
    The random draws are those of ``nblib.label_noise_sgd``, so a chain with λ = 0 follows exactly the
    trajectory that function gives for the same seed. noise_off_after: steps after which σ = 0 (an
    annealing tail). Returns an nblib ``Trajectory`` (params {"U": [T, C, d, d]}, loss, reg = ⟨M, UUᵀ⟩).
    """
    d, n = problem.d, problem.n
    dtype, device = problem.sym_flat.dtype, problem.sym_flat.device
    if not isinstance(U0, torch.Tensor) or U0.ndim not in (2, 3) or U0.shape[-2:] != (d, d):
        shape = tuple(U0.shape) if isinstance(U0, torch.Tensor) else type(U0).__name__
        raise ValueError(f"U0 must have shape [d, d] or [C, d, d] with d={d}; got {shape}")
    if not torch.isfinite(U0).all():
        raise ValueError("U0 contains NaN or infinite values")
    lr = _validate.positive(lr, "lr")
    steps = _validate.count(steps, "steps", minimum=0)
    C = U0.shape[0] if U0.ndim == 3 else (1 if isinstance(noise_std, (int, float)) else len(list(noise_std)))
    sigma = _per_chain(noise_std, C, "noise_std", dtype=dtype, device=device)
    lam_c = _per_chain(lam, C, "lam", dtype=dtype, device=device)
    B = n if batch_size is None else _validate.count(batch_size, "batch_size")
    if B > n:
        raise ValueError(f"batch_size={B} exceeds the number of measurements n={n}")
    every = max(1, steps // 100) if record_every is None else _validate.count(record_every, "record_every")
    off = steps if noise_off_after is None else _validate.count(noise_off_after, "noise_off_after", minimum=0)

    U = (U0.expand(C, d, d) if U0.ndim == 2 else U0).to(dtype=dtype, device=device).clone()
    S, y, M = problem.sym_flat, problem.y, problem.metric
    hint = f"Lower lr (now {lr:g}) or noise_std (now {sigma.tolist()})."
    gen = torch.Generator().manual_seed(seed)
    rec_steps, rec_U, rec_loss = [], [], []

    def record(t):
        loss = train_error(problem, U)
        bad = ~torch.isfinite(loss) | (loss > _HUGE)
        if bad.any():
            c = int(bad.nonzero()[0, 0])
            raise DivergenceError(f"the run diverged by step {t}: chain {c} has loss {float(loss[c]):.3g}. {hint}")
        rec_steps.append(t)
        rec_U.append(U.clone())
        rec_loss.append(loss)

    record(0)
    t = 0
    with torch.no_grad():
        while t < steps:
            K = min(_CHUNK, steps - t)
            if B < n:
                idx = torch.randint(n, (_CHUNK, C, B), generator=gen)[:K].to(device)
            Z = torch.randn(_CHUNK, C, B, generator=gen, dtype=dtype)[:K].to(device)
            for k in range(K):
                X = _gram(U).reshape(C, d * d)
                noisy = sigma[:, None] * Z[k] if t < off else 0.0
                if B == n:
                    r = X @ S.T - y - noisy                                      # [C, n]
                    G = r @ S                                                    # [C, d²]
                else:
                    Sb = S[idx[k]]                                               # [C, B, d²]
                    r = torch.bmm(Sb, X.unsqueeze(2)).squeeze(2) - y[idx[k]] - noisy
                    G = torch.bmm(r.unsqueeze(1), Sb).squeeze(1)
                step = (4.0 / B) * G.reshape(C, d, d) + 2 * lam_c[:, None, None] * M
                U = U - lr * (step @ U)
                t += 1
                if t % every == 0 or t == steps:
                    record(t)
    Us = torch.stack(rec_U)
    return Trajectory(steps=torch.tensor(rec_steps), params={"U": Us}, loss=torch.stack(rec_loss),
                      reg=reg(problem, Us))


def ou_train_floor(problem: SensingProblem, U: torch.Tensor, *, lr: float, noise_std: float) -> float:
    """Predicted stationary training MSE of full-batch label-noise SGD (B = n) near a zero-error U.

    Linearized, the residuals r = (⟨A_i, UUᵀ⟩ − y_i)_i follow r ← (I − (2η/n)K) r + (2η/n) σ K Z with the
    Gram matrix K_ij = ⟨∇h_i, ∇h_j⟩ = 4⟨S_i U, S_j U⟩ (S_i = (A_i + A_iᵀ)/2). In the eigenbasis of K
    (eigenvalues κ_k, a_k = 2ηκ_k/n) each mode is an AR(1) process with stationary variance
    σ² a_k / (2 − a_k), so E[(1/n)‖r‖²] = (σ²/n) Σ_k a_k/(2 − a_k) ≈ (ησ²/n)·reg(U) = λ·reg(U) for small η.
    """
    lr = _validate.positive(lr, "lr")
    sigma = _validate.nonnegative(noise_std, "noise_std")
    d, n = problem.d, problem.n
    if not isinstance(U, torch.Tensor) or U.shape != (d, d):
        raise ValueError(f"U must have shape [{d}, {d}]")
    SU = (problem.sym_flat.reshape(n, d, d) @ U.to(problem.sym_flat.dtype)).reshape(n, -1)
    K = 4 * SU @ SU.T
    a = 2 * lr * torch.linalg.eigvalsh(K.double()).clamp_min(0) / n
    if (a >= 2).any():
        raise ValueError(f"lr={lr:g} is beyond the stability limit of full-batch GD at this U (max 2ηκ/n = "
                         f"{float(a.max()):.3g} >= 2)")
    return float(sigma ** 2 / n * (a / (2 - a)).sum())
