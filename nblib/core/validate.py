"""Input checks shared by nblib's loops and chapter modules: each failure is a ValueError
that says what was wrong."""
from __future__ import annotations

import math

import torch


def as_params(params, *, name: str = "params") -> dict[str, torch.Tensor]:
    """params must be a non-empty dict of finite floating tensors with one common dtype."""
    if not isinstance(params, dict) or not params:
        raise ValueError(f"{name} must be a non-empty dict of tensors, got {type(params).__name__}")
    dtypes = set()
    for key, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{name}[{key!r}] must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{name}[{key!r}] must be a floating tensor, got dtype {value.dtype}")
        if not torch.isfinite(value).all():
            raise ValueError(f"{name}[{key!r}] contains NaN or infinite values")
        dtypes.add(value.dtype)
    if len(dtypes) > 1:
        raise ValueError(f"{name} mixes dtypes {sorted(map(str, dtypes))}; use one dtype for all tensors")
    return params


def as_data(X, y=None, *, dtype: torch.dtype, outputs: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """X: [n, ...] inputs, y: [n] targets (with ``outputs``: [n] or [n, k], one target per output);
    both finite, same n, n >= 1."""
    X = torch.as_tensor(X, dtype=dtype)
    if X.ndim == 0 or X.shape[0] == 0:
        raise ValueError(f"X must have a leading dimension of examples, n >= 1; got shape {tuple(X.shape)}")
    if not torch.isfinite(X).all():
        raise ValueError("X contains NaN or infinite values")
    if y is None:
        return X, None
    y = torch.as_tensor(y, dtype=dtype)
    if outputs and y.ndim not in (1, 2):
        raise ValueError(f"y must be [n] or [n, k] (k outputs per example); got shape {tuple(y.shape)}")
    if not outputs and y.ndim != 1:
        raise ValueError(f"y must be a 1-D tensor of n targets; got shape {tuple(y.shape)}")
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} examples but y has {y.shape[0]}; they must match")
    if not torch.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    return X, y


def as_chain_data(X, y, chains: int, *, dtype: torch.dtype, outputs: bool = False):
    """Data per group of chains: X [G, n, ...], y [G, n] (with ``outputs``: [G, n] or [G, n, k]), G dividing
    the number of chains C (G = C: one data set per chain; G < C: group g of C/G consecutive chains
    shares X[g], y[g]). X may be an expanded view (X0.expand(G, ...)): inputs shared, labels not."""
    X, y = torch.as_tensor(X, dtype=dtype), torch.as_tensor(y, dtype=dtype)
    for name, T in (("X", X), ("y", y)):
        if T.ndim < 2 or T.shape[0] == 0 or chains % T.shape[0]:
            raise ValueError(f"with per_chain_data=True, {name} needs a leading dimension of {chains} data "
                             f"sets (one per chain) or of a number of groups dividing {chains}; got shape "
                             f"{tuple(T.shape)}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"with per_chain_data=True, X and y need the same leading dimension; got "
                         f"{X.shape[0]} and {y.shape[0]}")
    G = X.shape[0]
    return X, torch.stack([as_data(X[g], y[g], dtype=dtype, outputs=outputs)[1] for g in range(G)])


def positive(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def nonnegative(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def count(value, name: str, *, minimum: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def stacked_chains(params: dict[str, torch.Tensor]) -> int:
    """Number of chains of params stacked along a leading dimension (the same for every tensor)."""
    sizes = {key: (v.shape[0] if v.ndim else None) for key, v in params.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise ValueError(
            "stacked params need one common leading chain dimension on every tensor; "
            f"got leading sizes {sizes}"
        )
    return next(iter(sizes.values()))
