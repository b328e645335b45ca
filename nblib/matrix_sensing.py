"""Matrix sensing with a full factor (Blanc et al. 2020, §4.1): the problem and its measurements.

    h(A; U) = ⟨A, UUᵀ⟩,   U ∈ R^{d×d},   ∇_U h = (A + Aᵀ)U      (``nblib.models.matrix_sensing``)

For symmetric S = (A + Aᵀ)/2 only the symmetric part of A matters: h = ⟨S, X⟩ with X = UUᵀ. The implicit
regularizer is linear in X:

    reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩,   M = (1/n) Σ_i (A_i + A_iᵀ)²,   ∇_U reg = 2MU,

and for A with i.i.d. N(0, 1) entries E[(A + Aᵀ)²] = 2(d+1)·I, so reg(U) ≈ 2(d+1)‖U‖_F² = 2(d+1) tr UUᵀ:
a nuclear-norm penalty on the PSD matrix UUᵀ.

Label-noise SGD, plain SGD and the explicit flow run as chains of one ``nblib.label_noise_sgd`` call on
``nblib.models.matrix_sensing`` (its closed forms make every step a few d²-sized matrix products).
Here: the Gaussian problem, the measurements of a run (errors, spectrum, nuclear norm, reg) and the
predicted training-error floor of the Ornstein–Uhlenbeck picture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import validate
from .models import matrix_sensing, sensing_metric

__all__ = ["SensingProblem", "effective_rank", "expected_reg", "gram", "matrix_sensing",
           "nuclear_norm", "ou_train_floor", "predictions", "reg", "reg_closed_form",
           "sensing_metric", "sensing_problem", "spectrum", "test_error", "train_error"]


def _gram(U: torch.Tensor) -> torch.Tensor:
    """X = UUᵀ for stacked U: [..., d, d]."""
    return U @ U.transpose(-1, -2)


def reg_closed_form(A: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩: a scalar for U [d, d], [C] for U [C, d, d]."""
    M = sensing_metric(_as_sensing_matrices(A))
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
    d, rank, n = validate.count(d, "d"), validate.count(rank, "rank"), validate.count(n, "n")
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


# ----------------------------------------------------------------------------- the OU floor

def ou_train_floor(problem: SensingProblem, U: torch.Tensor, *, lr: float, noise_std: float) -> float:
    """Predicted stationary training MSE of full-batch label-noise SGD (B = n) near a zero-error U.

    Linearized, the residuals r = (⟨A_i, UUᵀ⟩ − y_i)_i follow r ← (I − (2η/n)K) r + (2η/n) σ K Z with the
    Gram matrix K_ij = ⟨∇h_i, ∇h_j⟩ = 4⟨S_i U, S_j U⟩ (S_i = (A_i + A_iᵀ)/2). In the eigenbasis of K
    (eigenvalues κ_k, a_k = 2ηκ_k/n) each mode is an AR(1) process with stationary variance
    σ² a_k / (2 − a_k), so E[(1/n)‖r‖²] = (σ²/n) Σ_k a_k/(2 − a_k) ≈ (ησ²/n)·reg(U) = λ·reg(U) for small η.
    """
    lr = validate.positive(lr, "lr")
    sigma = validate.nonnegative(noise_std, "noise_std")
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
