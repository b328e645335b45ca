"""Two-layer sigmoid / tanh networks on one datapoint (Blanc et al. 2020, Theorem 3).

    f(x) = Σ_i c_i σ(w_iᵀx),    h_i = σ(w_iᵀx),    o_i = c_i h_i,    a = ‖x‖²,

with σ the logistic function or tanh. For one example ∇_{c_i} f = h_i and ∇_{w_i} f = c_i σ'(w_iᵀx) x, so

    reg = ‖∇_θ f‖² = Σ_i [h_i² + c_i² σ'(w_iᵀx)² a],

    logistic (σ' = h(1 − h)):  R = Σ_i [h_i² + c_i² h_i² (1 − h_i)² a]
    tanh     (σ' = 1 − h²):    R = Σ_i [h_i² + c_i² (1 − h_i²)² a]

Minimizing R on the zero-error set Σ_i o_i = y (Lagrange multiplier, h_i free for fixed o_i) gives the
stationarity relations

    logistic:  h_i = o_i² a / (1 + o_i² a)          tanh:  h_i² = sqrt(o_i² a / (o_i² a + 1)),

and, with h_i eliminated, R = Σ_i r(o_i) with r(o) = s/(1 + s) (logistic) or r(o) = 2u/(1 + u),
u = sqrt(s/(1 + s)) (tanh), s = a o². The models carry closed forms (``nblib.with_closed_form``) so that
label-noise SGD runs many chains as one batched tensor computation.
"""
from __future__ import annotations

import math

import torch

from .label_noise import DivergenceError
from .regularizer import with_closed_form

ACTIVATIONS = ("logistic", "tanh")


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def _act(activation: str, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """σ(z), σ'(z), σ''(z), each written through h = σ(z)."""
    if activation == "logistic":
        h = torch.sigmoid(z)
        d1 = h * (1 - h)
        return h, d1, d1 * (1 - 2 * h)
    h = torch.tanh(z)
    d1 = 1 - h * h
    return h, d1, -2 * h * d1


# ----------------------------------------------------------------------------- the models

def _make_model(activation: str):
    def model(params: dict, x: torch.Tensor) -> torch.Tensor:
        z = params["W"] @ x
        h = torch.sigmoid(z) if activation == "logistic" else torch.tanh(z)
        return (params["c"] * h).sum()

    model.__name__ = f"{activation}_net"
    model.__doc__ = (f"f(x) = Σ_i c_i σ(w_iᵀx) with σ = {activation}; params c: [m], W: [m, d] (row i is w_i), "
                     "x: [d].")

    def pre(P, Xb):
        """[C, B, m]: w_iᵀx_b for every chain."""
        return torch.bmm(Xb, P["W"].transpose(1, 2))

    def forward(P, Xb):
        h = _act(activation, pre(P, Xb))[0]
        return torch.bmm(h, P["c"].unsqueeze(2)).squeeze(2)

    def vjp(P, Xb, r):
        h, d1, _ = _act(activation, pre(P, Xb))
        g_c = torch.bmm(r.unsqueeze(1), h).squeeze(1)                          # Σ_b r_b h_bi
        g_W = P["c"].unsqueeze(2) * torch.bmm((r.unsqueeze(2) * d1).transpose(1, 2), Xb)
        return {"c": g_c, "W": g_W}

    def sq_grad_norms(P, X):
        """[C, n]: Σ_i [σ(w_iᵀx_j)² + c_i² σ'(w_iᵀx_j)² ‖x_j‖²]."""
        C = P["c"].shape[0]
        h, d1, _ = _act(activation, pre(P, X.expand(C, *X.shape)))
        a = (X * X).sum(-1)                                                    # [n]
        return (h * h).sum(-1) + a * torch.bmm(d1 * d1, (P["c"] ** 2).unsqueeze(2)).squeeze(2)

    def reg_grad(P, X):
        """∇ of (1/n) Σ_j ‖∇f(x_j)‖²: ∂/∂c_i = (2/n) Σ_j c_i σ'² a_j,
        ∂/∂w_i = (2/n) Σ_j [h σ' + c_i² σ' σ'' a_j] x_j."""
        C, n = P["c"].shape[0], X.shape[0]
        h, d1, d2 = _act(activation, pre(P, X.expand(C, *X.shape)))          # [C, n, m]
        a = (X * X).sum(-1)[None, :, None]                                     # [1, n, 1]
        c2 = (P["c"] ** 2).unsqueeze(1)                                        # [C, 1, m]
        g_c = (2.0 / n) * P["c"] * (d1 * d1 * a).sum(1)
        coef = (2.0 / n) * (h * d1 + c2 * d1 * d2 * a)                         # [C, n, m]
        g_W = torch.bmm(coef.transpose(1, 2), X.expand(C, *X.shape))
        return {"c": g_c, "W": g_W}

    return with_closed_form(model, forward=forward, vjp=vjp, sq_grad_norms=sq_grad_norms, reg_grad=reg_grad)


logistic_net = _make_model("logistic")
tanh_net = _make_model("tanh")
MODELS = {"logistic": logistic_net, "tanh": tanh_net}


def init_params(width: int, dim: int, *, chains: int, scale: float = 1.0, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float64) -> dict[str, torch.Tensor]:
    """One random init per chain, stacked: c ~ N(0, scale²/width) [C, m], W ~ N(0, scale²/dim) [C, m, d]."""
    for value, name in ((width, "width"), (dim, "dim"), (chains, "chains")):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}")
    g = dict(generator=generator, dtype=dtype)
    return {"c": scale * torch.randn(chains, width, **g) / math.sqrt(width),
            "W": scale * torch.randn(chains, width, dim, **g) / math.sqrt(dim)}


# ----------------------------------------------------------------------------- unit coordinates and R

def _check_x(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 1 or x.numel() == 0 or not torch.isfinite(x).all():
        raise ValueError(f"x must be one finite input vector of shape [d]; got shape {tuple(x.shape)}")
    return x


def unit_pairs(params: dict, x, activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_i, h_i = σ(w_iᵀx)) for every unit: two tensors of shape [..., m] (any leading dims of params)."""
    _check_activation(activation)
    x = _check_x(x).to(params["W"].dtype)
    if params["W"].shape[-1] != x.shape[0] or params["W"].shape[:-1] != params["c"].shape:
        raise ValueError(f"params W {tuple(params['W'].shape)} and c {tuple(params['c'].shape)} do not match "
                         f"x of dimension {x.shape[0]}")
    h = _act(activation, params["W"] @ x)[0]
    return params["c"], h


def paper_R(c: torch.Tensor, h: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """The paper's closed form, summed over the last (unit) dimension:
    logistic Σ [h² + c² h² (1 − h)² a];  tanh Σ [h² + c² (1 − h²)² a]   (a = ‖x‖²)."""
    _check_activation(activation)
    if c.shape != h.shape:
        raise ValueError(f"c and h must have the same shape, got {tuple(c.shape)} and {tuple(h.shape)}")
    d1 = h * (1 - h) if activation == "logistic" else 1 - h * h
    return (h * h + c * c * d1 * d1 * x_norm2).sum(-1)


def stationary_h(o: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """The h that minimizes R for a unit with output o = c·h:
    logistic o²a/(1 + o²a); tanh sign(o)·(o²a/(o²a + 1))^{1/4} (the sign of h is free: c flips with it)."""
    _check_activation(activation)
    s = o * o * x_norm2
    if activation == "logistic":
        return s / (1 + s)
    return torch.sign(o) * (s / (s + 1)) ** 0.25


def stationarity_residual(c: torch.Tensor, h: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """Per unit: logistic h − o²a/(1 + o²a); tanh h² − sqrt(o²a/(o²a + 1)); o = c·h. Zero at stationary points."""
    _check_activation(activation)
    s = (c * h) ** 2 * x_norm2
    if activation == "logistic":
        return h - s / (1 + s)
    return h * h - torch.sqrt(s / (s + 1))


def reduced_r(o: torch.Tensor, x_norm2: float, activation: str) -> torch.Tensor:
    """R of one unit at its best h for output o: logistic s/(1 + s); tanh 2u/(1 + u), u = sqrt(s/(1 + s)), s = a o²."""
    _check_activation(activation)
    s = o * o * x_norm2
    if activation == "logistic":
        return s / (1 + s)
    u = torch.sqrt(s / (1 + s))
    return 2 * u / (1 + u)


def predicted_optimum(y: float, width: int, x_norm2: float, activation: str) -> dict[str, float]:
    """A minimizer of R on the zero-error set Σ_i c_i h_i = y, in closed form.

    logistic: the symmetric point, every unit with o = y/m. r(o) = s/(1 + s) is convex for s < 1/3, so when
    a(y/m)² < 1/3 this is a strict local minimizer (one cluster); for small a·y² it is the only stable point
    (a configuration with one large unit needs a·y² large; not checked here).
    tanh: r(o) = 2u/(1 + u) is concave in |o| with r(0) = 0, so the global minimum puts all of y on ONE unit
    (o = y) and sends the others to zero. Returns o, h (> 0 branch), c, R and the number of active units.
    """
    _check_activation(activation)
    if not (math.isfinite(y) and y != 0):
        raise ValueError(f"y must be a finite nonzero number, got {y!r}")
    if not (isinstance(width, int) and width >= 1):
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    if not (math.isfinite(x_norm2) and x_norm2 > 0):
        raise ValueError(f"x_norm2 must be positive and finite, got {x_norm2!r}")
    if activation == "logistic":
        o = y / width
        s = x_norm2 * o * o
        if s >= 1 / 3:
            raise ValueError(f"a·(y/m)² = {s:.3g} >= 1/3: the all-equal point is not the minimizer; "
                             "use a smaller ‖x‖ or |y|, or a larger width")
        h = s / (1 + s)
        return {"o": o, "h": h, "c": o / h, "R": width * s / (1 + s), "active": width}
    s = x_norm2 * y * y
    u = math.sqrt(s / (1 + s))
    h = math.sqrt(u)
    return {"o": y, "h": h, "c": y / h, "R": 2 * u / (1 + u), "active": 1}


# ----------------------------------------------------------------------------- exact dynamics in (c, z)

def _check_run(c, z, x_norm2, y, lr):
    if c.ndim != 2 or c.shape != z.shape:
        raise ValueError(f"c and z must both have shape [chains, units]; got {tuple(c.shape)} and {tuple(z.shape)}")
    if not (torch.isfinite(c).all() and torch.isfinite(z).all()):
        raise ValueError("c or z contains NaN or infinite values")
    for value, name in ((x_norm2, "x_norm2"), (lr, "lr")):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if not (isinstance(y, (int, float)) and math.isfinite(y)):
        raise ValueError(f"y must be a finite number, got {y!r}")


class UnitTrajectory:
    """Records of a run in unit coordinates: steps [T], c and z [T, C, m], loss [T, C] = (f − y)²."""

    def __init__(self, steps, c, z, loss):
        self.steps, self.c, self.z, self.loss = steps, c, z, loss

    def h(self, activation: str) -> torch.Tensor:
        return _act(_check_activation(activation), self.z)[0]


def label_noise_units(activation: str, c: torch.Tensor, z: torch.Tensor, x_norm2: float, y: float, *,
                      lr: float, noise_std: float, steps: int, seed: int = 0,
                      record_every: int | None = None) -> UnitTrajectory:
    """Label-noise SGD on one example, run exactly in the unit coordinates (c_i, z_i = w_iᵀx).

    With r = f − y − Z (Z ~ N(0, noise_std²)), the step w_i ← w_i − 2η r c_i σ'(z_i) x never changes the
    part of w_i orthogonal to x, so it is exactly z_i ← z_i − 2η r c_i σ'(z_i) ‖x‖², c_i ← c_i − 2η r h_i.
    The noise stream is the one ``nblib.label_noise_sgd`` draws for n = B = 1 with the same seed and dtype,
    so the two give the same trajectory (tested). c, z: [C, m].
    """
    _check_activation(activation)
    _check_run(c, z, x_norm2, y, lr)
    if not (isinstance(noise_std, (int, float)) and math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be a non-negative finite number, got {noise_std!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    every = max(1, steps // 100) if record_every is None else int(record_every)
    if every < 1:
        raise ValueError(f"record_every must be >= 1, got {record_every!r}")
    C = c.shape[0]
    c, z = c.clone(), z.clone()
    gen = torch.Generator().manual_seed(seed)
    chunk = 256                                   # as nblib.label_noise_sgd draws its noise
    rec_t, rec_c, rec_z = [0], [c.clone()], [z.clone()]
    t = 0
    two_lr = 2 * lr
    with torch.no_grad():
        while t < steps:
            K = min(chunk, steps - t)
            Y = y + noise_std * torch.randn(chunk, C, 1, generator=gen, dtype=c.dtype)[:K]
            for k in range(K):
                h, d1, _ = _act(activation, z)
                r = (c * h).sum(1, keepdim=True) - Y[k]               # [C, 1]
                c_new = c - two_lr * r * h
                z = z - (two_lr * x_norm2) * r * c * d1
                c = c_new
                t += 1
                if t % every == 0 or t == steps:
                    rec_t.append(t), rec_c.append(c.clone()), rec_z.append(z.clone())
            if not (torch.isfinite(c).all() and torch.isfinite(z).all()) or c.abs().max() > 1e15:
                raise DivergenceError(f"the run diverged by step {t}: lower lr (now {lr:g}) "
                                         f"or noise_std (now {noise_std:g})")
    return _trajectory(activation, rec_t, rec_c, rec_z, y)


def regularized_gd_units(activation: str, c: torch.Tensor, z: torch.Tensor, x_norm2: float, y: float, *,
                         lr: float, lam: float, steps: int, record_every: int | None = None) -> UnitTrajectory:
    """The explicit flow, GD on (f − y)² + λ·R, run exactly in (c_i, z_i): the W-gradient g_z·x moves
    z_i by −η·‖x‖²·∂/∂z_i. ∂/∂c_i = 2(f − y)h_i + 2λ a c_i σ'²; ∂/∂z_i = 2(f − y)c_i σ' + 2λ(hσ' + a c_i² σ'σ'')."""
    _check_activation(activation)
    _check_run(c, z, x_norm2, y, lr)
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a non-negative finite number, got {lam!r}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps!r}")
    every = max(1, steps // 100) if record_every is None else int(record_every)
    c, z = c.clone(), z.clone()
    rec_t, rec_c, rec_z = [0], [c.clone()], [z.clone()]
    a = x_norm2
    with torch.no_grad():
        for t in range(1, steps + 1):
            h, d1, d2 = _act(activation, z)
            r = (c * h).sum(1, keepdim=True) - y
            g_c = 2 * r * h + (2 * lam * a) * c * d1 * d1
            g_z = 2 * r * c * d1 + (2 * lam) * (h * d1 + a * c * c * d1 * d2)
            c, z = c - lr * g_c, z - (lr * a) * g_z
            if t % every == 0 or t == steps:
                rec_t.append(t), rec_c.append(c.clone()), rec_z.append(z.clone())
                if not (torch.isfinite(c).all() and torch.isfinite(z).all()):
                    raise DivergenceError(f"the flow diverged by step {t}: lower lr (now {lr:g}) or lam")
    return _trajectory(activation, rec_t, rec_c, rec_z, y)


def _trajectory(activation, rec_t, rec_c, rec_z, y):
    c, z = torch.stack(rec_c), torch.stack(rec_z)
    f = (c * _act(activation, z)[0]).sum(-1)
    return UnitTrajectory(torch.tensor(rec_t), c, z, (f - y) ** 2)


# ----------------------------------------------------------------------------- clustering of units

def count_clusters(points: torch.Tensor, tol: float) -> torch.Tensor:
    """Number of single-linkage clusters of the m points of each chain: points [C, m, k] -> [C] (ints).

    Two units are linked when their Euclidean distance is ≤ tol; a cluster is a connected component.
    Computed for all chains at once by propagating the smallest index through the link graph.
    """
    if points.ndim != 3:
        raise ValueError(f"points must have shape [chains, units, coords]; got {tuple(points.shape)}")
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a non-negative finite number, got {tol!r}")
    if not torch.isfinite(points).all():
        raise ValueError("points contain NaN or infinite values")
    C, m, _ = points.shape
    link = torch.cdist(points, points) <= tol                                  # [C, m, m], diagonal True
    big = torch.full((C, m, m), m, dtype=torch.long)
    labels = torch.arange(m).expand(C, m).clone()
    for _ in range(m):
        new = torch.where(link, labels.unsqueeze(1).expand(C, m, m), big).min(-1).values
        if torch.equal(new, labels):
            break
        labels = new
    return (labels == torch.arange(m)).sum(-1)


def cluster_diameter(points: torch.Tensor, labels_tol: float) -> torch.Tensor:
    """Per chain, the largest distance between two units that ``count_clusters(points, labels_tol)`` puts in
    one cluster ([C]); small means the clusters are tight compared with labels_tol."""
    if points.ndim != 3:
        raise ValueError(f"points must have shape [chains, units, coords]; got {tuple(points.shape)}")
    C, m, _ = points.shape
    dist = torch.cdist(points, points)
    link = dist <= labels_tol
    reach = link.clone()
    for _ in range(max(1, int(math.ceil(math.log2(max(m, 2)))) + 1)):       # transitive closure by squaring
        reach = torch.bmm(reach.double(), reach.double()) > 0
    return torch.where(reach, dist, torch.zeros_like(dist)).amax((1, 2))
