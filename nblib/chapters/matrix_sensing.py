"""Matrix sensing with a full factor (Blanc et al. 2020, §4.1): the problem and its measurements.

    h(A; U) = ⟨A, UUᵀ⟩,   U ∈ R^{d×d},   ∇_U h = (A + Aᵀ)U      (``nblib.chapters.models.matrix_sensing``)

For symmetric S = (A + Aᵀ)/2 only the symmetric part of A matters: h = ⟨S, X⟩ with X = UUᵀ. The implicit
regularizer is linear in X:

    reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩,   M = (1/n) Σ_i (A_i + A_iᵀ)²,   ∇_U reg = 2MU,

and for A with i.i.d. N(0, 1) entries E[(A + Aᵀ)²] = 2(d+1)·I, so reg(U) ≈ 2(d+1)‖U‖_F² = 2(d+1) tr UUᵀ:
a nuclear-norm penalty on the PSD matrix UUᵀ.

Label-noise SGD, plain SGD and the explicit flow run as chains of one ``nblib.label_noise_sgd`` call on
``nblib.chapters.models.matrix_sensing`` (its closed forms make every step a few d²-sized matrix products).
Here: the Gaussian problem, the measurements of a run (errors, spectrum, nuclear norm, reg) and the
predicted training-error floor of the Ornstein–Uhlenbeck picture.

Replicates with their own data: ``sensing_problems`` stacks R problems (problem r is exactly
``sensing_problem(..., seed=seeds[r])``) along a leading dimension, and ``full_batch_runs`` runs
full-batch label-noise SGD (B = n) on C chains of every problem at once, as one ``nblib.label_noise_sgd``
call on the packed model ``matrix_sensing_packed`` with one data set per problem. Its chain c of problem r takes
exactly the steps of chain c of ``nblib.label_noise_sgd`` on that problem alone with ``seed=seeds[r]``
(the same draws; tested), so a replicate is (problem, noise) and R replicates are one batched loop. The
measurements accept a stacked problem with U of shape [..., R, C, d, d].
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core import validate
from ..core.label_noise import label_noise_sgd
from ..core.trajectory import Trajectory
from .models import _triangle, matrix_sensing, matrix_sensing_packed, pack_sensing, sensing_metric

__all__ = ["SensingProblem", "effective_rank", "expected_reg", "full_batch_runs", "gram",
           "matrix_sensing", "matrix_sensing_packed", "nuclear_norm", "ou_train_floor", "pack_sensing",
           "packed_data", "predictions", "reg", "reg_closed_form",
           "sensing_metric", "sensing_problem", "sensing_problems", "spectrum", "test_error",
           "train_error"]


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

    A *stacked* problem (``sensing_problems``) holds R problems of one size: every tensor has a leading
    replicate dimension (A [R, n, d, d], y [R, n], ...); ``replicates`` is R (None for one problem) and
    ``replicate(r)`` is problem r on its own.
    """

    A: torch.Tensor
    U_star: torch.Tensor
    X_star: torch.Tensor
    y: torch.Tensor
    sym_flat: torch.Tensor
    metric: torch.Tensor

    @property
    def d(self) -> int:
        return self.X_star.shape[-1]

    @property
    def n(self) -> int:
        return self.y.shape[-1]

    @property
    def rank(self) -> int:
        return self.U_star.shape[-1]

    @property
    def replicates(self) -> int | None:
        """R for a stacked problem, None for a single one."""
        return self.y.shape[0] if self.y.ndim == 2 else None

    @property
    def shared_sensing(self) -> bool:
        """True for a stacked problem whose R problems share one set of sensing matrices A_i."""
        return self.replicates is not None and self.A.ndim == 3

    def replicate(self, r: int) -> "SensingProblem":
        """Problem r of a stacked problem, as a single problem."""
        if self.replicates is None:
            raise ValueError("replicate(r) needs a stacked problem (nblib.chapters.matrix_sensing.sensing_problems)")
        if not isinstance(r, int) or isinstance(r, bool) or not 0 <= r < self.replicates:
            raise ValueError(f"r must be an integer in [0, {self.replicates}), got {r!r}")
        return SensingProblem(**{f: getattr(self, f)[r] if getattr(self, f).ndim == _EVENT_DIMS[f] + 1
                                 else getattr(self, f) for f in _FIELDS})

    def to(self, dtype: torch.dtype | None = None, device=None) -> "SensingProblem":
        """The same data (A, U*, X*, y converted, e.g. to float64 for measurements), with sym_flat and
        the metric M recomputed from the converted A, so that they are exact in the new precision."""
        A, U_star, X_star, y = (getattr(self, f).to(dtype=dtype, device=device)
                                for f in ("A", "U_star", "X_star", "y"))
        sym = (A + A.transpose(-1, -2)) / 2
        return SensingProblem(A=A, U_star=U_star, X_star=X_star, y=y,
                              sym_flat=sym.reshape(*sym.shape[:-2], -1).contiguous(),
                              metric=(4 * sym @ sym).mean(-3))


_FIELDS = ("A", "U_star", "X_star", "y", "sym_flat", "metric")
_EVENT_DIMS = dict(A=3, U_star=2, X_star=2, y=1, sym_flat=2, metric=2)


def _per_replicate(problem: SensingProblem, t: torch.Tensor, event_dims: int) -> torch.Tensor:
    """A problem tensor shaped to broadcast against [..., R, C, *event]: a chain axis after the
    replicate axis of a stacked tensor; a single (or shared) tensor as it is."""
    return t.unsqueeze(-event_dims - 1) if problem.replicates is not None and t.ndim == event_dims + 1 else t


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


def sensing_problems(d: int, rank: int, n: int, *, seeds, sensing_seed: int | None = None,
                     dtype: torch.dtype = torch.float64, device=None) -> SensingProblem:
    """R = len(seeds) problems of one size, stacked along a leading dimension.

    sensing_seed=None: problem r is exactly ``sensing_problem(d, rank, n, seed=seeds[r])``: its own
    sensing matrices A_i, ground truth U* and labels y. sensing_seed=s: one set of sensing matrices,
    drawn from s as ``sensing_problem(..., seed=s)`` draws them, is shared by all problems (A, sym_flat
    and metric carry no replicate dimension); problem r draws its U* from seeds[r] (first the A it
    discards, then U*, so problem r has the ground truth of ``sensing_problem(..., seed=seeds[r])``)
    and has its own labels y_r = ⟨A_i, X*_r⟩."""
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of integers, got {seeds!r}")
    parts = [sensing_problem(d, rank, n, seed=s, dtype=dtype, device=device) for s in seeds]
    if sensing_seed is None:
        return SensingProblem(**{f: torch.stack([getattr(p, f) for p in parts]) for f in _FIELDS})
    shared = sensing_problem(d, rank, n, seed=sensing_seed, dtype=dtype, device=device)
    U_star = torch.stack([p.U_star for p in parts])
    X_star = U_star @ U_star.transpose(-1, -2)
    y = X_star.reshape(len(seeds), -1) @ shared.A.reshape(n, -1).T
    return SensingProblem(A=shared.A, U_star=U_star, X_star=X_star, y=y, sym_flat=shared.sym_flat,
                          metric=shared.metric)


# ----------------------------------------------------------------------------- measurements

def gram(U: torch.Tensor) -> torch.Tensor:
    """X = UUᵀ ([..., d, d])."""
    return _gram(U)


def predictions(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """[..., n]: ⟨A_i, UUᵀ⟩ for U [..., d, d] (a stacked problem: U [..., R, C, d, d] -> [..., R, C, n])."""
    X = _gram(U)
    return X.reshape(*X.shape[:-2], -1) @ problem.sym_flat.transpose(-1, -2)


def train_error(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """(1/n) Σ_i (⟨A_i, UUᵀ⟩ − y_i)² (the clean training MSE, no ½)."""
    return (predictions(problem, U) - _per_replicate(problem, problem.y, 1)).pow(2).mean(-1)


def test_error(problem: SensingProblem, U: torch.Tensor) -> torch.Tensor:
    """‖UUᵀ − X*‖_F / ‖X*‖_F."""
    X_star = _per_replicate(problem, problem.X_star, 2)
    return torch.linalg.matrix_norm(_gram(U) - X_star) / torch.linalg.matrix_norm(X_star)


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
    return (_per_replicate(problem, problem.metric, 2) * _gram(U)).sum((-2, -1))


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
    if problem.replicates is not None:
        raise ValueError("ou_train_floor takes a single problem: use problem.replicate(r)")
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


# ----------------------------------------------------------------------------- replicates, one loop

def packed_data(problems: SensingProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """(X, y) of R stacked problems for ``matrix_sensing_packed`` with ``per_chain_data=True``: X [R, n, m]
    the upper triangles of (A_i + A_iᵀ)/2 (m = d(d+1)/2; problems sharing their A_i: one [n, m]
    expanded, no copy) and y [R, n]."""
    if problems.replicates is None:
        raise ValueError("problems must be stacked (nblib.chapters.matrix_sensing.sensing_problems)")
    upper, _, _ = _triangle(problems.d, problems.y.device)
    X = problems.sym_flat[..., upper].contiguous()
    if X.ndim == 2:
        X = X.expand(problems.replicates, *X.shape)
    return X, problems.y


def full_batch_runs(problems: SensingProblem, U0: torch.Tensor, *, lr: float, noise_std, lam=0.0,
                    steps: int, seeds, noise_off_after: int | None = None, record_every: int | None = None,
                    threads: int | None = 1) -> Trajectory:
    """Full-batch label-noise SGD (B = n) on C chains of each of the R stacked ``problems`` at once:
    one call of ``nblib.label_noise_sgd`` on ``matrix_sensing_packed`` with one data set per problem.

    Chain c of problem r: U ← U − η ∇_U [(1/n) Σ_i (⟨A_i, UUᵀ⟩ − y_i − σ_c Z_i)² + λ_c·reg(U)], Z fresh
    at every step from the generator seeded ``seeds[r]``: the very steps of chain c of
    ``label_noise_sgd(matrix_sensing, {"U": U0}, A_r, y_r, lr=lr, noise_std=noise_std, lam=lam,
    chains=C, batch_size=n, seed=seeds[r], noise_off_after=...)``. noise_std and lam: one number or
    one per chain (C = their length); σ = 0, λ > 0 is the explicit flow, σ = λ = 0 plain GD.

    Each step applies every problem's measurement operator twice (predictions, then the gradient), with
    the data stored once as the upper triangle of (A_i + A_iᵀ)/2 (d(d+1)/2 numbers per measurement).
    R problems with their own A_i cost about R times one problem; problems that share their A_i
    (``sensing_problems(..., sensing_seed=s)``) need one matrix product for all R·C chains.

    Returns a Trajectory with params {"U": [T, R·C, d, d]} ordered [problem][chain], loss [T, R·C] (the
    clean training MSE) and reg [T, R·C].
    """
    R = problems.replicates
    if R is None:
        raise ValueError("problems must be stacked (nblib.chapters.matrix_sensing.sensing_problems)")
    seeds = list(seeds)
    if len(seeds) != R or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be {R} integers, one per problem; got {seeds!r}")
    C = len(noise_std) if not isinstance(noise_std, (int, float)) else (
        len(lam) if not isinstance(lam, (int, float)) else 1)
    sig, lam_ = _per_chain_list(noise_std, C, "noise_std"), _per_chain_list(lam, C, "lam")
    d, dtype = problems.d, problems.y.dtype
    if not isinstance(U0, torch.Tensor) or U0.shape != (d, d) or not torch.isfinite(U0).all():
        raise ValueError(f"U0 must be a finite tensor of shape [{d}, {d}]")
    X, y = packed_data(problems)
    run = label_noise_sgd(matrix_sensing_packed, {"U": U0.to(dtype=dtype, device=y.device)}, X, y,
                          lr=lr, noise_std=sig * R, lam=lam_ * R, chains=R * C, steps=steps,
                          batch_size=problems.n, seeds=seeds, noise_off_after=noise_off_after,
                          record_every=record_every, threads=threads, per_chain_data=True)
    run.config["chains_per_problem"] = C
    return run


def _per_chain_list(value, C: int, name: str) -> list[float]:
    values = [value] * C if isinstance(value, (int, float)) and not isinstance(value, bool) else list(value)
    if len(values) != C:
        raise ValueError(f"{name} must be one number or one per chain ({C}); got {len(values)} values")
    return [validate.nonnegative(v, name) for v in values]
