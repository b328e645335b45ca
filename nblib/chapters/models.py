"""Scalar models h(params, x) used in the book, each a plain function of one example.

Where a chapter runs many steps, the model also carries closed forms (``model.closed_form``, see
``nblib.core.regularizer.ClosedForm``); tests compare them with the torch.func reference.
"""
from __future__ import annotations

import math
import weakref

import torch

from ..core.regularizer import with_closed_form


def _relu_masked(g, z):
    """g ⊙ 1{z > 0}, with ReLU's own backward kernel (differentiable; a bool-mask product is ~10× slower on CPU)."""
    return torch.ops.aten.threshold_backward(g.expand_as(z), z, 0)


# ----------------------------------------------------------------------------- h(x; a, b) = a·b·x

def product(params: dict, x: torch.Tensor) -> torch.Tensor:
    """h(x; a, b) = a·b·x: the smallest overparameterized model (zero-error set ab = β is a hyperbola)."""
    return params["a"] * params["b"] * x


def _product_forward(P, Xb):
    return (P["a"] * P["b"])[:, None] * Xb


def _product_vjp(P, Xb, r):
    s = (r * Xb).sum(1)
    return {"a": P["b"] * s, "b": P["a"] * s}


def _product_sq_grad_norms(P, X):
    """‖∇h(x_i)‖² = x_i²(a² + b²)."""
    return (P["a"] ** 2 + P["b"] ** 2)[:, None] * X[None, :] ** 2


def _product_reg_grad(P, X):
    m2 = (X ** 2).mean()
    return {"a": 2 * m2 * P["a"], "b": 2 * m2 * P["b"]}


with_closed_form(product, forward=_product_forward, vjp=_product_vjp,
                 sq_grad_norms=_product_sq_grad_norms, reg_grad=_product_reg_grad)


# ----------------------------------------------------------------------------- two-layer ReLU, 1-D input

def two_layer_relu(params: dict, x: torch.Tensor) -> torch.Tensor:
    """f_θ(x) = Σ_i c_i σ(a_i x + b_i) + a0·x + b0, σ = ReLU, x a scalar (Blanc et al. Theorem 2).

    params: a, b, c of shape [m] (hidden units), a0 and b0 scalars (the linear part).
    """
    pre = params["a"] * x + params["b"]
    return (params["c"] * torch.relu(pre)).sum() + params["a0"] * x + params["b0"]


def relu_preactivations(P, Xb):
    """[C, B, m]: a_i x_b + b_i for every chain; Xb is [C, B] (per chain) or [n] (shared).

    Broadcast products: torch.compile fuses them into one loop, where a batch of tiny matrix products
    would not fuse."""
    return P["b"].unsqueeze(1) + Xb.unsqueeze(-1) * P["a"].unsqueeze(1)




def _relu_forward(P, Xb):
    act = torch.relu(relu_preactivations(P, Xb))
    return (act * P["c"].unsqueeze(1)).sum(-1) + P["a0"][:, None] * Xb + P["b0"][:, None]


def _relu_vjp(P, Xb, r):
    pre = relu_preactivations(P, Xb)
    rr = r.unsqueeze(2)                                             # [C, B, 1]
    r_on = _relu_masked(rr, pre)                                    # r_b·1{a_i x_b + b_i > 0}
    return {"a": P["c"] * (r_on * Xb.unsqueeze(-1)).sum(1), "b": P["c"] * r_on.sum(1),
            "c": (rr * torch.relu(pre)).sum(1), "a0": (r * Xb).sum(1), "b0": r.sum(1)}


def _relu_sq_grad_norms(P, X):
    """‖∇h(x_j)‖² = Σ_i [σ(a_i x_j + b_i)² + c_i²(1 + x_j²)·1{a_i x_j + b_i > 0}] + (1 + x_j²)."""
    C = P["a"].shape[0]
    pre = relu_preactivations(P, X.expand(C, -1))
    on = (pre > 0).to(pre.dtype)
    one_x2 = 1 + X ** 2
    return (torch.relu(pre) ** 2).sum(-1) + one_x2 * torch.bmm(on, (P["c"] ** 2).unsqueeze(2)).squeeze(2) + one_x2


def _relu_reg_grad(P, X):
    """∇ of (1/n) Σ_j ‖∇h(x_j)‖² (the indicator has zero derivative almost everywhere)."""
    C, n = P["a"].shape[0], X.shape[0]
    pre = relu_preactivations(P, X.expand(C, -1))
    act = torch.relu(pre)
    on = (pre > 0).to(pre.dtype)
    one_x2 = (1 + X ** 2).expand(C, 1, n)
    zeros = torch.zeros_like(P["a0"])
    return {
        "a": (2.0 / n) * torch.bmm(X.expand(C, 1, n), act).squeeze(1),
        "b": (2.0 / n) * act.sum(1),
        "c": (2.0 / n) * P["c"] * torch.bmm(one_x2, on).squeeze(1),
        "a0": zeros, "b0": zeros.clone(),
    }


with_closed_form(two_layer_relu, forward=_relu_forward, vjp=_relu_vjp,
                 sq_grad_norms=_relu_sq_grad_norms, reg_grad=_relu_reg_grad)


def init_two_layer_relu(width: int, *, chains: int | None = None, scale: float = 1.0,
                        scale_c: float | None = None, generator: torch.Generator | None = None,
                        dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """a_i, b_i ~ N(0, scale²), c_i ~ N(0, scale_c²) (default scale_c = scale/√width), a0 = b0 = 0.

    One set of parameters ([width] and 0-d), or with ``chains`` one independent draw per chain, stacked
    ([chains, width] and [chains]); a, then b, then c are drawn from ``generator``. dtype: the default
    dtype when None."""
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if chains is not None and (not isinstance(chains, int) or isinstance(chains, bool) or chains < 1):
        raise ValueError(f"chains must be a positive integer, got {chains!r}")
    for value, name in ((scale, "scale"), (scale_c, "scale_c")):
        if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    g = dict(generator=generator, dtype=dtype or torch.get_default_dtype())
    lead = () if chains is None else (chains,)
    a = scale * torch.randn(*lead, width, **g)
    b = scale * torch.randn(*lead, width, **g)
    c = (scale * torch.randn(*lead, width, **g) / math.sqrt(width) if scale_c is None
         else scale_c * torch.randn(*lead, width, **g))
    return {"a": a, "b": b, "c": c, "a0": torch.zeros(lead, dtype=g["dtype"]),
            "b0": torch.zeros(lead, dtype=g["dtype"])}


# ----------------------------------------------------------------------------- MLP with summed outputs

def mlp(params: dict, x: torch.Tensor) -> torch.Tensor:
    """h(x) = Σ_k [W_L σ(… σ(W_1 x + b_1) …) + b_L]_k: a ReLU MLP whose outputs are summed.

    params: W1, b1, …, WL, bL with W_l of shape [out, in].
    """
    L = len(params) // 2
    for l in range(1, L + 1):
        x = params[f"W{l}"] @ x + params[f"b{l}"]
        if l < L:
            x = torch.relu(x)
    return x.sum()


def _mlp_pass(P, Xb):
    """Inputs a_0 … a_{L−1} and pre-activations z_1 … z_L of every layer: [C, B, ·] each.

    ``P`` holds weights stacked over chains (W_l: [C, out, in]); ``Xb`` is [C, B, d], or [n, d] shared.
    """
    L = len(P) // 2
    C = P["W1"].shape[0]
    acts, pres = [Xb.expand(C, *Xb.shape[-2:])], []
    for l in range(1, L + 1):
        z = torch.baddbmm(P[f"b{l}"].unsqueeze(-2), acts[-1], P[f"W{l}"].transpose(-1, -2))
        pres.append(z)
        if l < L:
            acts.append(torch.relu(z))
    return acts, pres


def _mlp_forward(P, Xb):
    return _mlp_pass(P, Xb)[1][-1].sum(-1)


def _mlp_vjp(P, Xb, r):
    """Σ_b r_b ∇_θ h(x_b): backpropagation with g_L = r·1 (the outputs are summed)."""
    acts, pres = _mlp_pass(P, Xb)
    L = len(pres)
    g = r.unsqueeze(-1).expand_as(pres[-1])
    out = {}
    for l in range(L, 0, -1):
        out[f"W{l}"] = torch.matmul(g.transpose(-1, -2), acts[l - 1])
        out[f"b{l}"] = g.sum(-2)
        if l > 1:
            g = _relu_masked(torch.matmul(g, P[f"W{l}"]), pres[l - 2])
    return out


def _mlp_sq_grad_norms(P, X):
    """‖∇_θ h(x_i)‖² = Σ_l ‖g_il‖² (‖a_i,l−1‖² + 1), one batched pass, no per-example gradients.

    For a linear layer z = W a + b the per-example gradients are ∇_W h = g aᵀ and ∇_b h = g, with
    g = ∂h/∂z, so ‖∇_W h‖² + ‖∇_b h‖² = ‖g‖²(‖a‖² + 1). The outputs are summed: g_L = 1, and
    g_{L−1} = (1ᵀW_L) ⊙ 1{z_{L−1} > 0} needs no matrix product. Differentiable in θ, so autograd of
    the mean gives ∇reg at about the cost of one more backward pass.
    """
    acts, pres = _mlp_pass(P, X)
    L = len(pres)
    lead = pres[-1].shape[:-1]
    total = pres[-1].shape[-1] * (acts[-1].pow(2).sum(-1) + 1).expand(lead)
    if L > 1:
        g = _relu_masked(P[f"W{L}"].sum(-2).unsqueeze(-2), pres[L - 2])
        for l in range(L - 1, 0, -1):
            total = total + g.pow(2).sum(-1) * (acts[l - 1].pow(2).sum(-1) + 1)
            if l > 1:
                g = _relu_masked(torch.matmul(g, P[f"W{l}"]), pres[l - 2])
    return total


def _mlp_reg_and_grad(P, X):
    """reg and ∇reg in closed form, ([C], {name: [C, *shape]}), one forward pass and three chains.

    Per example, R = Σ_l q_l s_l with q_l = ‖g_l‖², s_l = ‖a_{l−1}‖² + 1, g_L = 1 and
    g_{l−1} = m_{l−1} ⊙ (W_lᵀ g_l), m = 1{z > 0} (locally constant, zero derivative a.e.). Adjoints:
      G_1 = 2 s_1 g_1,  G_l = 2 s_l g_l + W_l u_{l−1},  u_l = m_l ⊙ G_l     (through the g chain)
      Z_{L−1} = 2 q_L a_{L−1},  Z_{l−1} = m_{l−1} ⊙ (2 q_l a_{l−1} + W_lᵀ Z_l)  (through the forward pass)
      ∂R/∂W_l = Z_l a_{l−1}ᵀ + g_l u_{l−1}ᵀ,   ∂R/∂b_l = Z_l,   averaged over the n examples.
    About two backward passes of matrix products; every product is a plain batched matmul.
    """
    acts, pres = _mlp_pass(P, X)
    L, n = len(pres), X.shape[-2]
    lead = pres[-1].shape[:-1]
    out_dim = pres[-1].shape[-1]
    s = [None] + [acts[l - 1].pow(2).sum(-1, keepdim=True) + 1 for l in range(1, L + 1)]
    reg = (out_dim * s[L]).squeeze(-1).expand(lead)
    grads = {k: torch.zeros_like(v) for k, v in P.items()}
    if L == 1:
        return reg.mean(-1), grads
    g = {L - 1: _relu_masked(P[f"W{L}"].sum(-2).unsqueeze(-2), pres[L - 2])}
    for l in range(L - 2, 0, -1):
        g[l] = _relu_masked(torch.bmm(g[l + 1], P[f"W{l + 1}"]), pres[l - 1])
    q = {l: g[l].pow(2).sum(-1, keepdim=True) for l in g}
    q[L] = out_dim
    reg = reg + sum((q[l] * s[l]).squeeze(-1) for l in g)
    u = (2 * s[1]) * g[1]                                  # u_1 = m_1 ⊙ G_1 = G_1 (g_1 is masked)
    for l in range(2, L):
        grads[f"W{l}"] += torch.bmm(g[l].transpose(-1, -2), u)
        u = _relu_masked(torch.bmm(u, P[f"W{l}"].transpose(-1, -2)).addcmul_(2 * s[l], g[l]), pres[l - 1])
    grads[f"W{L}"] += u.sum(-2).unsqueeze(-2)            # g_L = 1: the outer product with 1 repeats a row
    Z = (2 * q[L]) * acts[L - 1]                         # a = relu(z) is already masked
    for l in range(L - 1, 0, -1):
        grads[f"W{l}"] += torch.bmm(Z.transpose(-1, -2), acts[l - 1])
        grads[f"b{l}"] += Z.sum(-2)
        if l > 1:
            Z = _relu_masked(torch.bmm(Z, P[f"W{l}"]).addcmul_(2 * q[l], acts[l - 1]), pres[l - 2])
    return reg.mean(-1), {k: v / n for k, v in grads.items()}


def _mlp_reg_grad(P, X):
    return _mlp_reg_and_grad(P, X)[1]


with_closed_form(mlp, forward=_mlp_forward, vjp=_mlp_vjp, sq_grad_norms=_mlp_sq_grad_norms,
                 reg_grad=_mlp_reg_grad, reg_and_grad=_mlp_reg_and_grad)


def init_mlp(sizes: list[int], *, generator: torch.Generator | None = None,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """He-style init: W_l ~ N(0, 2/fan_in), b_l ~ N(0, 0.01)."""
    params = {}
    for l, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        params[f"W{l}"] = torch.randn(fan_out, fan_in, generator=generator, dtype=dtype) * math.sqrt(2 / fan_in)
        params[f"b{l}"] = 0.1 * torch.randn(fan_out, generator=generator, dtype=dtype)
    return params


# ----------------------------------------------------------------------------- matrix sensing

def matrix_sensing(params: dict, A: torch.Tensor) -> torch.Tensor:
    """h(A; U) = ⟨A, UUᵀ⟩ (Blanc et al. §4.1), U ∈ R^{d×d}; ∇_U h = (A + Aᵀ)U.

    reg(U) = (1/n) Σ_i ‖(A_i + A_iᵀ)U‖_F² = ⟨M, UUᵀ⟩ with M = (1/n) Σ_i (A_i + A_iᵀ)², and ∇reg = 2MU.
    """
    U = params["U"]
    return (A * (U @ U.T)).sum()


def _gram_flat(P):
    U = P["U"]
    return (U @ U.transpose(-1, -2)).reshape(U.shape[0], -1)      # [C, d²]


def _sensing_forward(P, Ab):
    """[C, B]: ⟨A_b, U_c U_cᵀ⟩; Ab is [n, d, d] (shared) or [C, B, d, d] (per chain)."""
    G = _gram_flat(P)
    if Ab.ndim == 3:
        return G @ Ab.reshape(Ab.shape[0], -1).T
    return torch.bmm(Ab.reshape(*Ab.shape[:2], -1), G.unsqueeze(2)).squeeze(2)


def _sensing_vjp(P, Ab, r):
    """{U: [C, d, d]}: Σ_b r_cb (A_b + A_bᵀ) U_c."""
    U = P["U"]
    if Ab.ndim == 3:
        S = r @ Ab.reshape(Ab.shape[0], -1)
    else:
        S = torch.bmm(r.unsqueeze(1), Ab.reshape(*Ab.shape[:2], -1)).squeeze(1)
    S = S.reshape(U.shape)
    return {"U": (S + S.transpose(-1, -2)) @ U}


def _sensing_sq_grad_norms(P, A):
    """[C, n]: ‖(A_i + A_iᵀ)U_c‖_F²."""
    sym = A + A.transpose(-1, -2)
    return torch.einsum("nij,cjk->cnik", sym, P["U"]).pow(2).sum((-2, -1))


_METRIC_CACHE: dict = {}


def sensing_metric(A: torch.Tensor) -> torch.Tensor:
    """M = (1/n) Σ_i (A_i + A_iᵀ)², so that reg(U) = ⟨M, UUᵀ⟩ exactly. A: [n, d, d] -> [d, d].

    The last M computed is kept (keyed on the tensor itself, by a weak reference, and its version), so a loop
    that needs ∇reg = 2MU at every step forms M once."""
    if not isinstance(A, torch.Tensor) or A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] == 0:
        shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"sensing matrices must be a tensor of shape [n, d, d] with n >= 1; got {shape}")
    ref = _METRIC_CACHE.get("ref")
    if ref is None or ref() is not A or _METRIC_CACHE.get("version") != A._version:
        sym = A + A.transpose(-1, -2)
        M = (sym @ sym).mean(0)
        _METRIC_CACHE.update(ref=weakref.ref(A), version=A._version, M=M, M2=2 * M)
    return _METRIC_CACHE["M"]


def _sensing_reg(P, A):
    """[C]: ⟨M, U_c U_cᵀ⟩."""
    return _gram_flat(P) @ sensing_metric(A).reshape(-1)


def _sensing_reg_grad(P, A):
    """{U: [C, d, d]}: ∇_U reg = 2MU."""
    sensing_metric(A)
    return {"U": _METRIC_CACHE["M2"] @ P["U"]}


with_closed_form(matrix_sensing, forward=_sensing_forward, vjp=_sensing_vjp,
                 sq_grad_norms=_sensing_sq_grad_norms, reg=_sensing_reg, reg_grad=_sensing_reg_grad)


# ----------------------------------------------------------------------------- matrix sensing, packed

_TRIANGLES: dict = {}


def _triangle(d: int, device) -> tuple:
    """(upper, full, weight) for d: the flat indices of the upper triangle j ≤ k of a d×d matrix, the
    upper-triangle slot of every entry (j, k), and the weights w_jk (1 on the diagonal, 2 off it) with
    ⟨S, X⟩ = Σ_{j≤k} w_jk S_jk X_jk for symmetric S, X."""
    key = (d, str(device))
    if key not in _TRIANGLES:
        rows, cols = torch.triu_indices(d, d, device=device)
        pos = torch.zeros(d, d, dtype=torch.long, device=device)
        pos[rows, cols] = torch.arange(len(rows), device=device)
        _TRIANGLES[key] = (rows * d + cols, torch.maximum(pos, pos.T).reshape(-1),
                           torch.where(rows == cols, 1.0, 2.0))
    return _TRIANGLES[key]


def pack_sensing(A: torch.Tensor) -> torch.Tensor:
    """[..., d(d+1)/2]: the upper triangle of S = (A + Aᵀ)/2 for sensing matrices A [..., d, d]."""
    d = A.shape[-1]
    upper, _, _ = _triangle(d, A.device)
    sym = (A + A.transpose(-1, -2)) / 2
    return sym.reshape(*sym.shape[:-2], d * d)[..., upper].contiguous()


def _unpack(s: torch.Tensor, d: int) -> torch.Tensor:
    """S [..., d, d] from its upper triangle s [..., d(d+1)/2]."""
    _, full, _ = _triangle(d, s.device)
    return s[..., full].reshape(*s.shape[:-1], d, d)


def _half(U: torch.Tensor) -> torch.Tensor:
    """[C, m]: w ⊙ upper triangle of U_c U_cᵀ, so that ⟨S, UUᵀ⟩ = half(U) · s."""
    C, d = U.shape[0], U.shape[-1]
    upper, _, weight = _triangle(d, U.device)
    return torch.bmm(U, U.transpose(1, 2)).view(C, d * d).index_select(1, upper) * weight.to(U.dtype)


def matrix_sensing_packed(params: dict, s: torch.Tensor) -> torch.Tensor:
    """h(s; U) = ⟨S, UUᵀ⟩ = Σ_{j≤k} w_jk s_jk (UUᵀ)_jk: ``matrix_sensing`` on one measurement given as
    the upper triangle s of S = (A + Aᵀ)/2 (``pack_sensing``), d(d+1)/2 numbers instead of d².

    ⟨A, X⟩ = ⟨S, X⟩ for symmetric X = UUᵀ, so both models have the same outputs, ∇_U h = 2SU and the
    same reg = ⟨M, UUᵀ⟩, M = (1/n) Σ_i (2S_i)². Its closed form is ``grouped``: the chains of R
    problems (data [R, n, m], or one shared [n, m] expanded to [R, n, m]) run as one loop that reads
    each problem's measurements once per full-batch step for all its chains."""
    U = params["U"]
    return (_half(U.unsqueeze(0))[0] * s).sum()


def _groups_of(Xb: torch.Tensor):
    """(the data as [n, m] when it is one data set, shared or expanded; else None)."""
    if Xb.ndim == 2:
        return Xb
    if Xb.shape[0] == 1 or Xb.stride(0) == 0:
        return Xb[0]
    return None


def _packed_residuals(Xh: torch.Tensor, Xb: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """[C, B]: ⟨S_b, X_c⟩ − Y_cb for Xh = half(U) [C, m] and Xb [B, m] or [G, B, m]."""
    one = _groups_of(Xb)
    if one is not None:
        return torch.addmm(Y, Xh, one.T, beta=-1)
    G, C = Xb.shape[0], Xh.shape[0]
    return torch.bmm(Xh.view(G, C // G, -1), Xb.transpose(1, 2)).reshape(C, -1) - Y


def _packed_pullback(Xb: torch.Tensor, g: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """[C, d, d]: (Σ_b g_cb S_b) U_c."""
    C, d = U.shape[0], U.shape[-1]
    _, full, _ = _triangle(d, U.device)
    one = _groups_of(Xb)
    if one is not None:
        half = g @ one
    else:
        G = Xb.shape[0]
        half = torch.bmm(g.view(G, C // G, -1), Xb).reshape(C, -1)
    return torch.bmm(half.index_select(1, full).view(C, d, d), U)


def _packed_forward(P, Xb):
    return _packed_residuals(_half(P["U"]), Xb, torch.zeros((), dtype=P["U"].dtype))


def _packed_vjp(P, Xb, r):
    return {"U": 2 * _packed_pullback(Xb, r, P["U"])}


def _packed_loss_grad(P, Xb, Yb):
    """∇_U (1/B) Σ_b r_b² = (4/B) Σ_b r_b S_b U, r_b = ⟨S_b, UUᵀ⟩ − Y_b."""
    U = P["U"]
    r = _packed_residuals(_half(U), Xb, Yb)
    grad = _packed_pullback(Xb, r, U)
    return {"U": grad.mul_(4.0 / r.shape[1])}, r


_PACKED_METRIC: dict = {}


def _packed_metric(X: torch.Tensor, d: int) -> torch.Tensor:
    """M = (1/n) Σ_i (2S_i)² per data set: [d, d] for X [n, m] (or one expanded), [G, d, d] for
    [G, n, m]; the last one computed is kept (weak reference and version), like ``sensing_metric``."""
    ref = _PACKED_METRIC.get("ref")
    if ref is None or ref() is not X or _PACKED_METRIC.get("version") != X._version:
        one = _groups_of(X)
        sym = _unpack(one if one is not None else X, d)
        M = (4 * sym @ sym).mean(-3)
        _PACKED_METRIC.update(ref=weakref.ref(X), version=X._version, M=M, M2=2 * M)
    return _PACKED_METRIC["M"]


def _packed_reg(P, X):
    """[C]: ⟨M_g, U_c U_cᵀ⟩ with M_g the metric of chain c's data set."""
    U = P["U"]
    C, d = U.shape[0], U.shape[-1]
    M = _packed_metric(X, d)
    G = 1 if M.ndim == 2 else M.shape[0]
    return (M.reshape(G, 1, d, d) * (U @ U.transpose(1, 2)).view(G, C // G, d, d)).sum((-2, -1)).reshape(C)


def _packed_reg_grad(P, X):
    """{U: [C, d, d]}: ∇_U reg = 2M_g U_c."""
    U = P["U"]
    C, d = U.shape[0], U.shape[-1]
    _packed_metric(X, d)
    M2 = _PACKED_METRIC["M2"]
    if M2.ndim == 2:
        return {"U": M2 @ U}
    G = M2.shape[0]
    return {"U": (M2.unsqueeze(1) @ U.view(G, C // G, d, d)).reshape(C, d, d)}


with_closed_form(matrix_sensing_packed, forward=_packed_forward, vjp=_packed_vjp,
                 loss_grad=_packed_loss_grad, reg=_packed_reg, reg_grad=_packed_reg_grad, grouped=True)


# ----------------------------------------------------------------------------- sigmoid / tanh units

ACTIVATIONS = ("logistic", "tanh")


def check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation


def activation_derivatives(activation: str, z: torch.Tensor):
    """σ(z), σ'(z), σ''(z) for the logistic function or tanh, each written through h = σ(z)."""
    if check_activation(activation) == "logistic":
        h = torch.sigmoid(z)
        d1 = h * (1 - h)
        return h, d1, d1 * (1 - 2 * h)
    h = torch.tanh(z)
    d1 = 1 - h * h
    return h, d1, -2 * h * d1


def _unit_net(activation: str):
    act = activation

    def model(params: dict, x: torch.Tensor) -> torch.Tensor:
        z = params["W"] @ x
        h = torch.sigmoid(z) if act == "logistic" else torch.tanh(z)
        return (params["c"] * h).sum()

    model.__name__ = f"{act}_net"
    model.__doc__ = (f"f(x) = Σ_i c_i σ(w_iᵀx) with σ = {act}; params c: [m], W: [m, d] (row i is w_i), "
                     "x: [d] (Blanc et al. Theorem 3).")

    def pre(P, Xb):
        """[C, B, m]: w_iᵀx_b; Xb is [C, B, d] or [n, d] (shared). For d = 1 (a one-point run
        reduced to the line of x) a broadcast product, cheaper than a batch of 1×1 matrix products."""
        if Xb.shape[-1] == 1:
            return Xb * P["W"][..., 0].unsqueeze(1)
        return torch.matmul(Xb, P["W"].transpose(1, 2))

    def forward(P, Xb):
        h = activation_derivatives(act, pre(P, Xb))[0]
        return (h * P["c"].unsqueeze(1)).sum(-1)

    def vjp(P, Xb, r):
        h, d1, _ = activation_derivatives(act, pre(P, Xb))
        rr = r.unsqueeze(2)
        g_c = (rr * h).sum(1)                                                  # Σ_b r_b h_bi
        if Xb.shape[-1] == 1:
            g_W = (P["c"] * (rr * d1 * Xb).sum(1)).unsqueeze(-1)
        else:
            g_W = P["c"].unsqueeze(2) * torch.matmul((rr * d1).transpose(1, 2), Xb)
        return {"c": g_c, "W": g_W}

    def loss_grad(P, Xb, Yb):
        """(∇ (1/B) Σ_b (f(x_b) − Y_b)², residuals [C, B]) in one pass: forward and vjp share σ and
        σ' (written with as few tensor operations as possible: a one-point run is overhead-bound)."""
        z = pre(P, Xb)
        h = torch.sigmoid(z) if act == "logistic" else torch.tanh(z)
        hh = h * h
        d1 = h - hh if act == "logistic" else torch.rsub(hh, 1.0)
        r = (h * P["c"].unsqueeze(1)).sum(-1) - Yb
        rr = r.unsqueeze(2) * (2.0 / r.shape[1])
        g_c = (rr * h).sum(1)
        if Xb.shape[-1] == 1:
            g_W = (P["c"] * (rr * d1 * Xb).sum(1)).unsqueeze(-1)
        else:
            g_W = P["c"].unsqueeze(2) * torch.matmul((rr * d1).transpose(1, 2), Xb)
        return {"c": g_c, "W": g_W}, r

    def sq_grad_norms(P, X):
        """[C, n]: Σ_i [σ(w_iᵀx_j)² + c_i² σ'(w_iᵀx_j)² ‖x_j‖²]."""
        h, d1, _ = activation_derivatives(act, pre(P, X))
        a = (X * X).sum(-1)                                                    # [n]
        return (h * h).sum(-1) + a * torch.matmul(d1 * d1, (P["c"] ** 2).unsqueeze(2)).squeeze(2)

    def reg_grad(P, X):
        """∇ of (1/n) Σ_j ‖∇f(x_j)‖²: ∂/∂c_i = (2/n) Σ_j c_i σ'² a_j,
        ∂/∂w_i = (2/n) Σ_j [h σ' + c_i² σ' σ'' a_j] x_j."""
        n = X.shape[0]
        h, d1, d2 = activation_derivatives(act, pre(P, X))                    # [C, n, m]
        a = (X * X).sum(-1)[None, :, None]                                     # [1, n, 1]
        c2 = (P["c"] ** 2).unsqueeze(1)                                        # [C, 1, m]
        g_c = (2.0 / n) * P["c"] * (d1 * d1 * a).sum(1)
        coef = (2.0 / n) * (h * d1 + c2 * d1 * d2 * a)                         # [C, n, m]
        return {"c": g_c, "W": torch.matmul(coef.transpose(1, 2), X)}

    return with_closed_form(model, forward=forward, vjp=vjp, sq_grad_norms=sq_grad_norms,
                            reg_grad=reg_grad, loss_grad=loss_grad)


logistic_net = _unit_net("logistic")
tanh_net = _unit_net("tanh")
UNIT_NETS = {"logistic": logistic_net, "tanh": tanh_net}


def init_unit_net(width: int, dim: int, *, chains: int, scale: float = 1.0,
                  generator: torch.Generator | None = None,
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
