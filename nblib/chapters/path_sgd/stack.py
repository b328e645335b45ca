"""Many networks of one architecture trained as one: K independent layered ReLU MLPs, stacked.

    NetStack         K networks d–H–…–C as tensors W_l [K, out, in], b_l [K, out]; one batched matmul
                     per layer for all of them (each network sees only its own inputs)
    stack_kappa      κ of every network (the two passes of ``path_kappa``, batched); stack_path_norm φ₂
    stack_outputs    every network's outputs on its own replicate's inputs
    StackOptimizer   one step of SGD, AdaGrad or Path-SGD per network, each with its own step size
    train_stack      the minibatch loop of ``train`` for all K networks at once, on R data sets
                     (replicates): network k trains on replicate ``replicate[k]``'s data and minibatches

Trained on the SUM over networks of their minibatch cross-entropies, each network gets exactly its own
gradient, so each follows the trajectory that ``train`` gives it alone with ``torch.optim.SGD``,
``torch.optim.Adagrad`` or ``PathSGD`` on the same minibatches (up to rounding: the matmuls are batched).
A network whose loss or weights become non-finite (or huge) has diverged: it is dropped from the rest of
the run (its weights end as zero, its records as NaN) and the others train on.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...core.runtime import cpu_settings
from ...core.trajectory import HUGE, Trajectory
from .optim import layered_relu_mlp, linear_layers

METHODS = ("SGD", "AdaGrad", "Path-SGD")


class NetStack(nn.Module):
    """K independent layered ReLU MLPs with the same layer sizes, built from K ``nn.Sequential`` ones."""

    def __init__(self, networks):
        super().__init__()
        networks = list(networks)
        if not networks:
            raise ValueError("a NetStack needs at least one network")
        layers = [linear_layers(net) for net in networks]
        shapes = [[tuple(lin.weight.shape) for lin in lins] for lins in layers]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("every network of a NetStack must have the same layer sizes")
        if any(lin.bias is None for lins in layers for lin in lins):
            raise ValueError("every Linear layer of a NetStack network must have a bias")
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([lins[i].weight.detach() for lins in layers]).clone())
             for i in range(len(layers[0]))])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([lins[i].bias.detach() for lins in layers]).clone())
             for i in range(len(layers[0]))])

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    @property
    def sizes(self) -> list[int]:
        return [self.weights[0].shape[2]] + [W.shape[1] for W in self.weights]

    def pairs(self):
        """[(W_l, b_l)] for the layers, input first."""
        return list(zip(self.weights, self.biases))

    def forward(self, X) -> torch.Tensor:
        """Outputs [K, n, C] of every network: on one input X [n, d], or network k on X[k] ([K, n, d])."""
        z = X
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(self.pairs()):
            if z.ndim == 3:
                z = torch.baddbmm(b[:, None, :], z, W.transpose(1, 2))
            else:
                z = torch.matmul(z, W.transpose(1, 2)) + b[:, None, :]
            if i < last:
                z = torch.relu(z)
        return z

    def subset(self, keep) -> NetStack:
        """A new NetStack of the networks ``keep`` (indices), copies of their weights."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        new = NetStack.__new__(NetStack)
        nn.Module.__init__(new)
        new.weights = nn.ParameterList([nn.Parameter(W.detach()[keep].clone()) for W in self.weights])
        new.biases = nn.ParameterList([nn.Parameter(b.detach()[keep].clone()) for b in self.biases])
        return new

    def network(self, k: int) -> nn.Sequential:
        """Network k as a standalone layered ReLU MLP (a copy)."""
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(self):
            raise ValueError(f"k must be an integer in [0, {len(self)}), got {k!r}")
        net = layered_relu_mlp(self.sizes, dtype=self.weights[0].dtype)
        with torch.no_grad():
            for lin, (W, b) in zip(linear_layers(net), self.pairs()):
                lin.weight.copy_(W[k]), lin.bias.copy_(b[k])
        return net


def _squared_total(pairs):
    """Outputs [k, C] of networks with squared weights and biases, identity activations, all-ones input."""
    sq_w, sq_b = pairs
    z = torch.ones(sq_w[0].shape[0], sq_w[0].shape[2], dtype=sq_w[0].dtype)
    for w2, b2 in zip(sq_w, sq_b):
        z = torch.bmm(w2, z[..., None])[..., 0] + b2
    return z


def stack_path_norm(stack) -> torch.Tensor:
    """φ₂ of every network (biases included), shape [K]."""
    with torch.no_grad():
        sq = ([W ** 2 for W in stack.weights], [b ** 2 for b in stack.biases])
        return _squared_total(sq).sum(1).sqrt()


def _kappa(weights, biases) -> list[torch.Tensor]:
    """κ of stacked weights [k, out, in] and biases [k, out] (lists, input layer first), weights first."""
    sq_w = [W.detach().pow(2).requires_grad_(True) for W in weights]
    sq_b = [b.detach().pow(2).requires_grad_(True) for b in biases]
    with torch.enable_grad():
        total = _squared_total((sq_w, sq_b)).sum()
        return list(torch.autograd.grad(total, sq_w + sq_b))


def stack_kappa(stack) -> dict[nn.Parameter, torch.Tensor]:
    """κ_e of every weight and bias of every network ({parameter: κ of its shape}), as ``path_kappa``."""
    params = list(stack.weights) + list(stack.biases)
    return dict(zip(params, _kappa(stack.weights, stack.biases)))


def _per_network(values, K: int, name: str, kind=float) -> list:
    values = list(values)
    if len(values) != K:
        raise ValueError(f"need one {name} per network: {K} networks, {len(values)} given")
    return [kind(v) for v in values]


class StackOptimizer:
    """One optimizer step for every network of a NetStack: network k uses ``methods[k]`` ("SGD",
    "AdaGrad" or "Path-SGD") with step size ``lrs[k]``:

        SGD       w ← w − η g
        AdaGrad   s ← s + g²,  w ← w − η g / (√s + eps)          (torch.optim.Adagrad's defaults)
        Path-SGD  w ← w − η g / κ_e  (0 where κ_e = 0)          (PathSGD)

    Each run of consecutive networks with one method is updated as one slice of the stacked tensors.
    """

    def __init__(self, stack: NetStack, methods, lrs, *, eps: float = 1e-10):
        K = len(stack)
        methods = _per_network(methods, K, "method", str)
        bad = sorted(set(methods) - set(METHODS))
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
        lrs = _per_network(lrs, K, "step size")
        if any(not math.isfinite(v) or v <= 0 for v in lrs):
            raise ValueError(f"step sizes must be positive and finite, got {lrs}")
        self.stack, self.methods, self.lrs, self.eps = stack, methods, lrs, float(eps)
        self.lr = torch.tensor(lrs, dtype=stack.weights[0].dtype)      # 0 for a stopped network
        self.params = list(stack.weights) + list(stack.biases)
        self.runs = []                                   # [method, start, end) of consecutive networks
        for k, m in enumerate(methods):
            if self.runs and self.runs[-1][0] == m:
                self.runs[-1][2] = k + 1
            else:
                self.runs.append([m, k, k + 1])
        self.state = [torch.zeros_like(p) for p in self.params] if "AdaGrad" in methods else None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def subset(self, stack: NetStack, keep) -> StackOptimizer:
        """This optimizer for ``stack`` = ``self.stack.subset(keep)``, with its state and step sizes."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        new = StackOptimizer(stack, [self.methods[k] for k in keep.tolist()],
                             [self.lrs[k] for k in keep.tolist()], eps=self.eps)
        new.lr = self.lr[keep].clone()
        if new.state is not None:
            new.state = [s[keep].clone() for s in self.state]
        return new

    def stop(self, mask) -> None:
        """Stop the networks where ``mask`` [K] is True: step size 0, weights and AdaGrad state 0."""
        mask = torch.as_tensor(mask, dtype=torch.bool)
        self.lr[mask] = 0.0
        with torch.no_grad():
            for p_i, p in enumerate(self.params):
                p[mask] = 0.0
                if self.state is not None:
                    self.state[p_i][mask] = 0.0

    @torch.no_grad()
    def step(self) -> None:
        if any(p.grad is None for p in self.params):
            raise RuntimeError("StackOptimizer.step() needs the gradient of every parameter")
        L = len(self.stack.weights)
        for m, a, b in self.runs:
            params = [p[a:b] for p in self.params]
            lr = self.lr[a:b]
            kappa = _kappa(params[:L], params[L:]) if m == "Path-SGD" else None
            for p_i, (p, full) in enumerate(zip(params, self.params)):
                g = full.grad[a:b]
                step = lr.view((-1,) + (1,) * (p.ndim - 1)) * g
                if m == "AdaGrad":
                    s = self.state[p_i][a:b]
                    s.addcmul_(g, g)
                    step.div_(s.sqrt().add_(self.eps))
                elif m == "Path-SGD":
                    k = kappa[p_i]
                    step = torch.where(k > 0, step / torch.where(k > 0, k, torch.ones_like(k)), 0.0)
                p.sub_(step)


def _gather(X, idx):
    """X [R, n, ...] at indices idx [R, B] per replicate → [R, B, ...]."""
    r = torch.arange(X.shape[0])[:, None]
    return X[r, idx]


def stack_outputs(stack, replicate, X, chunk: int = 64) -> torch.Tensor:
    """Outputs [K, m, C] of every network on its replicate's inputs X [R, m, d], in chunks of networks."""
    replicate = torch.as_tensor(replicate, dtype=torch.long)
    outs = []
    with torch.no_grad():
        for s in range(0, len(stack), chunk):
            z = X[replicate[s:s + chunk]]
            pairs = [(W[s:s + chunk], b[s:s + chunk]) for W, b in stack.pairs()]
            for i, (W, b) in enumerate(pairs):
                z = torch.baddbmm(b[:, None, :], z, W.transpose(1, 2))
                if i < len(pairs) - 1:
                    z = torch.relu(z)
            outs.append(z)
    return torch.cat(outs)


def _evaluate(stack, replicate, X, y):
    """Cross-entropy and error rate [K] of every network on its replicate's (X [R, m, d], y [R, m])."""
    z = stack_outputs(stack, replicate, X)
    yy = y[replicate]
    ce = nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), yy.reshape(-1), reduction="none")
    return ce.view(yy.shape).mean(1).double(), (z.argmax(-1) != yy).double().mean(1)


def train_stack(stack: NetStack, optimizer: StackOptimizer, X, y, *, replicate, seeds, epochs: int,
                batch_size: int, evals=None, record_every: int = 1, callback=None) -> Trajectory:
    """Train every network of ``stack`` with minibatches, reshuffled every epoch, one stream per replicate.

    X [R, n, d], y [R, n]: the training data of R replicates; ``replicate`` [K]: the replicate of each
    network; ``seeds``: R minibatch seeds. Replicate r's minibatches are those of
    ``train(..., seed=seeds[r])``: g = Generator(seeds[r]); every epoch order = randperm(n, g), batches
    of ``batch_size`` consecutive indices of it. evals: {name: (X [R, m, d], y [R, m])}, recorded with
    the training set at epoch 0, every ``record_every`` epochs and at the last one.

    A network whose minibatch loss is non-finite or above HUGE, or whose weights are not finite at the end
    of an epoch, has diverged: it is dropped from the rest of the run (its weights in ``stack`` end as 0,
    its records from then on are NaN). callback(step, stack), if given, runs after every optimizer step;
    diverged networks then stay in the stack, stopped (weights 0, step size 0).

    Returns a ``Trajectory`` with loss [T, K] (training cross-entropy), metrics {"train_err",
    "<name>_loss", "<name>_err"} [T, K], and config {"methods", "lrs", "replicate", "seeds",
    "batch_size", "epochs", "record_every", "diverged" (a bool per network), "diverged_at" (epoch or
    None per network)}. Runs with one torch thread and denormals flushed (``cpu_settings``).
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("record_every", record_every)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if X.ndim != 3 or y.shape != X.shape[:2] or not torch.isfinite(X).all():
        raise ValueError(f"X must be a finite [R, n, d] tensor and y [R, n]; got {tuple(X.shape)}, "
                         f"{tuple(y.shape)}")
    if optimizer.stack is not stack:
        raise ValueError("the optimizer must be a StackOptimizer of this stack")
    R, n, K = X.shape[0], X.shape[1], len(stack)
    replicate = torch.as_tensor(replicate, dtype=torch.long)
    if replicate.shape != (K,) or int(replicate.min()) < 0 or int(replicate.max()) >= R:
        raise ValueError(f"replicate must give each of the {K} networks a replicate in [0, {R})")
    seeds = [int(s) for s in seeds]
    if len(seeds) != R:
        raise ValueError(f"need one minibatch seed per replicate: {R} replicates, {len(seeds)} seeds")
    evals = {"train": (X, y), **(evals or {})}
    series: dict[str, list] = {f"{k}_{q}": [] for k in evals for q in ("loss", "err")}
    recorded: list[int] = []
    diverged_at: list = [None] * K
    active = torch.arange(K)                     # the networks still training, as indices of ``stack``
    net, opt, rep = stack, optimizer, replicate

    def record(epoch):
        recorded.append(epoch)
        for name, (Xe, ye) in evals.items():
            loss_e, err_e = _evaluate(net, rep, Xe, ye)
            for q, v in (("loss", loss_e), ("err", err_e)):
                full = torch.full((K,), torch.nan, dtype=torch.float64)
                full[active] = v
                full[torch.tensor([d is not None for d in diverged_at])] = torch.nan
                series[f"{name}_{q}"].append(full)

    def check(epoch, losses, weights: bool):
        """Diverged networks among the current ones (bool [k])."""
        bad = ~torch.isfinite(losses) | (losses.abs() > HUGE)
        if weights:
            with torch.no_grad():
                for p in opt.params:
                    bad |= ~torch.isfinite(p.reshape(len(net), -1)).all(1)
        return bad

    def drop(bad, epoch):
        nonlocal net, opt, rep, active
        fresh = [k for k in active[bad].tolist() if diverged_at[k] is None]
        for k in fresh:
            diverged_at[k] = epoch
        if callback is not None:                 # keep the stack whole: stop the diverged networks
            opt.stop(bad)
            return
        keep = (~bad).nonzero()[:, 0]
        sub = net.subset(keep)
        net, opt, rep, active = sub, opt.subset(sub, keep), rep[keep], active[keep]

    step = 0
    with cpu_settings(threads=1):
        record(0)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for epoch in range(1, epochs + 1):
            order = torch.stack([torch.randperm(n, generator=g) for g in gens])
            for s in range(0, n, batch_size):
                idx = order[:, s:s + batch_size]
                Xb, yb = _gather(X, idx)[rep], _gather(y, idx)[rep]
                opt.zero_grad()
                out = net(Xb)
                ce = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                                                 reduction="none").view(yb.shape).mean(1)
                ce.sum().backward()
                opt.step()
                step += 1
                if callback is not None:
                    callback(step, net)
                bad = check(epoch, ce.detach(), weights=s + batch_size >= n)
                if callback is not None:
                    bad &= opt.lr > 0
                if bad.any() and len(net) > int(bad.sum()):
                    drop(bad, epoch)
                elif bad.any():                  # every network diverged
                    for k in active.tolist():
                        diverged_at[k] = epoch if diverged_at[k] is None else diverged_at[k]
                    opt.stop(bad)
            if epoch % record_every == 0 or epoch == epochs:
                record(epoch)

    if net is not stack:                          # write the survivors back; the diverged end as 0
        with torch.no_grad():
            for P, Q in zip(list(stack.weights) + list(stack.biases), list(net.weights) + list(net.biases)):
                P.zero_()
                P[active] = Q
    stacked = {k: torch.stack(v) for k, v in series.items()}
    config = {"methods": list(optimizer.methods), "lrs": list(optimizer.lrs),
              "replicate": replicate.tolist(), "seeds": seeds, "batch_size": batch_size,
              "epochs": epochs, "record_every": record_every,
              "diverged": [d is not None for d in diverged_at], "diverged_at": diverged_at}
    return Trajectory(steps=torch.tensor(recorded), params={}, loss=stacked.pop("train_loss"), reg=None,
                      metrics=stacked, config=config)
