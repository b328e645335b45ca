"""The classification chapters' one trainer: K independent layered ReLU MLPs trained as one.

    NetStack         K networks d–H–…–C of one depth as tensors W_l [K, out, in], b_l [K, out] (narrower
                     networks zero-padded); one batched matmul per layer for all of them (each network
                     sees only its own inputs)
    stack_kappa      κ of every network (the two passes of ``path_kappa``, batched); stack_path_norm φ₂
    stack_outputs    every network's outputs on its own replicate's inputs; evaluate_stack their
                     cross-entropy and error rate
    STEP_RULES       SGD (with or without momentum), AdaGrad and Path-SGD, each a small function
    StackOptimizer   one step of every network by its own rule and step size
    train_stack      the minibatch loop for all K networks at once, on R data sets (replicates): network k
                     trains on replicate ``replicate[k]``'s data and minibatches, until ``epochs`` or its
                     own loss-target stop

The plain loop it replaces, for one network: g = Generator(seed); every epoch order = randperm(n, g),
and for each batch of ``batch_size`` consecutive indices one optimizer step on the minibatch
cross-entropy. Trained on the SUM over networks of their minibatch cross-entropies, each network gets
exactly its own gradient, so each follows the trajectory of that plain loop alone with
``torch.optim.SGD`` (momentum included), ``torch.optim.Adagrad`` or ``PathSGD`` on the same minibatches
(up to rounding: the matmuls are batched; tested). A network whose loss or weights become non-finite (or
huge) has diverged: it is dropped from the rest of the run (its weights end as zero, its records as
NaN) and the others train on, or the run stops with a DivergenceError naming lr.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ...core.runtime import cpu_settings
from ...core.trajectory import HUGE, DivergenceError, Trajectory
from .optim import layered_relu_mlp, linear_layers

def _padded(W: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """W [out, in] (or [out]) with zero rows (and columns) appended up to [rows, cols] ([rows])."""
    if W.ndim == 1:
        return nn.functional.pad(W, (0, rows - W.shape[0]))
    return nn.functional.pad(W, (0, cols - W.shape[1], 0, rows - W.shape[0]))


class NetStack(nn.Module):
    """K independent layered ReLU MLPs of one depth, input and output size, built from K ``nn.Sequential``
    ones; their hidden widths may differ.

    Layer l is stored as W_l [K, out, in] and b_l [K, out] at the largest width of the stack, a narrower
    network padded with zero weights and biases. A padded unit's pre-activation is 0, so it outputs
    ReLU(0) = 0 and every gradient through it is 0: its weights stay 0 under every step rule of
    ``StackOptimizer`` (Path-SGD's κ of a padded edge is 0 too), and the network computes and trains
    exactly as it does alone, up to the rounding of longer sums. ``hidden[k]``: network k's own widths.
    """

    def __init__(self, networks):
        super().__init__()
        networks = list(networks)
        if not networks:
            raise ValueError("a NetStack needs at least one network")
        layers = [linear_layers(net) for net in networks]
        sizes = [[lins[0].in_features] + [lin.out_features for lin in lins] for lins in layers]
        if any(len(s) != len(sizes[0]) or s[0] != sizes[0][0] or s[-1] != sizes[0][-1] for s in sizes):
            raise ValueError("every network of a NetStack must have the same depth, input size and output "
                             f"size; got layer sizes {sorted(set(map(tuple, sizes)))}")
        if any(lin.bias is None for lins in layers for lin in lins):
            raise ValueError("every Linear layer of a NetStack network must have a bias")
        top = [max(col) for col in zip(*sizes)]
        self.hidden = [tuple(s[1:-1]) for s in sizes]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.stack([_padded(lins[i].weight.detach(), top[i + 1], top[i])
                                       for lins in layers]).clone()) for i in range(len(top) - 1)])
        self.biases = nn.ParameterList(
            [nn.Parameter(torch.stack([_padded(lins[i].bias.detach(), top[i + 1], 0)
                                       for lins in layers]).clone()) for i in range(len(top) - 1)])

    def __len__(self) -> int:
        return self.weights[0].shape[0]

    @property
    def sizes(self) -> list[int]:
        """The stored (largest) layer sizes, input first."""
        return [self.weights[0].shape[2]] + [W.shape[1] for W in self.weights]

    def sizes_of(self, k: int) -> list[int]:
        """Network k's own layer sizes, input first."""
        return [self.sizes[0], *self.hidden[k], self.sizes[-1]]

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
        new.hidden = [self.hidden[k] for k in keep.tolist()]
        new.weights = nn.ParameterList([nn.Parameter(W.detach()[keep].clone()) for W in self.weights])
        new.biases = nn.ParameterList([nn.Parameter(b.detach()[keep].clone()) for b in self.biases])
        return new

    def network(self, k: int) -> nn.Sequential:
        """Network k as a standalone layered ReLU MLP of its own widths (a copy)."""
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(self):
            raise ValueError(f"k must be an integer in [0, {len(self)}), got {k!r}")
        sizes = self.sizes_of(k)
        net = layered_relu_mlp(sizes, dtype=self.weights[0].dtype)
        with torch.no_grad():
            for i, (lin, (W, b)) in enumerate(zip(linear_layers(net), self.pairs())):
                lin.weight.copy_(W[k, :sizes[i + 1], :sizes[i]]), lin.bias.copy_(b[k, :sizes[i + 1]])
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


def _sgd(g, lr, buf, kappa, momentum, eps):
    """SGD: w ← w − η g; with momentum μ, torch.optim.SGD's v ← μ v + g (v₀ = 0), w ← w − η v."""
    if momentum:
        buf.mul_(momentum).add_(g)
        return lr * buf
    return lr * g


def _adagrad(g, lr, s, kappa, momentum, eps):
    """AdaGrad: s ← s + g², w ← w − η g / (√s + eps) (torch.optim.Adagrad's defaults)."""
    s.addcmul_(g, g)
    return (lr * g).div_(s.sqrt().add_(eps))


def _path_sgd(g, lr, state, kappa, momentum, eps):
    """Path-SGD: w ← w − η g / κ_e, 0 where κ_e = 0 (``PathSGD``)."""
    step = lr * g
    return torch.where(kappa > 0, step / torch.where(kappa > 0, kappa, torch.ones_like(kappa)), 0.0)


STEP_RULES = {"SGD": _sgd, "AdaGrad": _adagrad, "Path-SGD": _path_sgd}
METHODS = tuple(STEP_RULES)


class StackOptimizer:
    """One optimizer step for every network of a NetStack: network k uses the step rule ``methods[k]``
    (``STEP_RULES``: "SGD", "AdaGrad" or "Path-SGD") with step size ``lrs[k]``:

        SGD       w ← w − η g              (momentum μ > 0: v ← μ v + g, w ← w − η v, as torch.optim.SGD)
        AdaGrad   s ← s + g²,  w ← w − η g / (√s + eps)          (torch.optim.Adagrad's defaults)
        Path-SGD  w ← w − η g / κ_e  (0 where κ_e = 0)          (PathSGD)

    Each run of consecutive networks with one method is updated as one slice of the stacked tensors.
    """

    def __init__(self, stack: NetStack, methods, lrs, *, momentum: float = 0.0, eps: float = 1e-10):
        K = len(stack)
        methods = _per_network(methods, K, "method", str)
        bad = sorted(set(methods) - set(METHODS))
        if bad:
            raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
        lrs = _per_network(lrs, K, "step size")
        if any(not math.isfinite(v) or v <= 0 for v in lrs):
            raise ValueError(f"step sizes must be positive and finite, got {lrs}")
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"momentum must be a number in [0, 1), got {momentum!r}")
        self.stack, self.methods, self.lrs = stack, methods, lrs
        self.momentum, self.eps = float(momentum), float(eps)
        self.lr = torch.tensor(lrs, dtype=stack.weights[0].dtype)      # 0 for a stopped network
        self.params = list(stack.weights) + list(stack.biases)
        self.runs = []                                   # [method, start, end) of consecutive networks
        for k, m in enumerate(methods):
            if self.runs and self.runs[-1][0] == m:
                self.runs[-1][2] = k + 1
            else:
                self.runs.append([m, k, k + 1])
        stateful = "AdaGrad" in methods or ("SGD" in methods and self.momentum > 0)
        self.state = [torch.zeros_like(p) for p in self.params] if stateful else None

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def subset(self, stack: NetStack, keep) -> StackOptimizer:
        """This optimizer for ``stack`` = ``self.stack.subset(keep)``, with its state and step sizes."""
        keep = torch.as_tensor(keep, dtype=torch.long)
        new = StackOptimizer(stack, [self.methods[k] for k in keep.tolist()],
                             [self.lrs[k] for k in keep.tolist()], momentum=self.momentum, eps=self.eps)
        new.lr = self.lr[keep].clone()
        if new.state is not None:
            new.state = [s[keep].clone() for s in self.state]
        return new

    def stop(self, mask) -> None:
        """Stop the networks where ``mask`` [K] is True: step size 0, weights and optimizer state 0."""
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
            kappa = _kappa(params[:L], params[L:]) if m == "Path-SGD" else [None] * len(params)
            for p_i, (p, full) in enumerate(zip(params, self.params)):
                state = None if self.state is None else self.state[p_i][a:b]
                lr_p = lr.view((-1,) + (1,) * (p.ndim - 1))
                p.sub_(STEP_RULES[m](full.grad[a:b], lr_p, state, kappa[p_i], self.momentum, self.eps))


def _gather(X, idx, rep):
    """Network k's minibatch: X [R, n, ...] at the indices idx [R, B] of its replicate rep[k] → [K, B, ...]
    (one index_select of the flattened data)."""
    R, n = X.shape[:2]
    flat = (idx + n * torch.arange(R)[:, None])[rep].reshape(-1)
    return X.reshape(R * n, *X.shape[2:]).index_select(0, flat).view(len(rep), idx.shape[1], *X.shape[2:])


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


def evaluate_stack(stack, replicate, X, y):
    """Cross-entropy and error rate [K] of every network on its replicate's (X [R, m, d], y [R, m])."""
    z = stack_outputs(stack, replicate, X)
    yy = y[replicate]
    ce = nn.functional.cross_entropy(z.reshape(-1, z.shape[-1]), yy.reshape(-1), reduction="none")
    return ce.view(yy.shape).mean(1).double(), (z.argmax(-1) != yy).double().mean(1)


def train_stack(stack: NetStack, optimizer: StackOptimizer, X, y, *, replicate, seeds, epochs: int,
                batch_size: int, evals=None, record_every: int = 1, callback=None,
                loss_target: float | None = None, on_divergence: str = "drop") -> Trajectory:
    """Train every network of ``stack`` with minibatches, reshuffled every epoch, one stream per replicate.

    X [R, n, d], y [R, n]: the training data of R replicates; ``replicate`` [K]: the replicate of each
    network; ``seeds``: R minibatch seeds. Replicate r's minibatches: g = Generator(seeds[r]); every
    epoch order = randperm(n, g), batches of ``batch_size`` consecutive indices of it. The loss is the
    SUM over networks of their minibatch cross-entropies, so each network gets its own gradient and
    takes the step of its own rule (``StackOptimizer``). evals: {name: (X [R, m, d], y [R, m])},
    recorded with the training set at epoch 0, every ``record_every`` epochs and at the last one.

    loss_target: a network stops at the end of the first epoch where its training cross-entropy is
    below the target both as SGD saw it (the mean of the epoch's minibatch losses, weighted by their
    sizes: the stopping rule of the Path-SGD authors' code) and on its whole training set; it then
    keeps its weights, and its records keep their values at the stop. None: train for ``epochs``.

    A network whose minibatch loss is non-finite or above HUGE, or whose weights are not finite at the end
    of an epoch, has diverged. on_divergence="drop": it is dropped from the rest of the run (its weights
    in ``stack`` end as 0, its records from then on are NaN) and the others train on; "raise":
    DivergenceError naming lr. callback(step, stack), if given, runs after every optimizer step;
    diverged networks then stay in the stack, stopped (weights 0, step size 0).

    Returns a ``Trajectory`` with loss [T, K] (training cross-entropy), metrics {"train_err",
    "<name>_loss", "<name>_err"} [T, K], and config {"methods", "lrs", "momentum", "replicate", "seeds",
    "batch_size", "epochs", "record_every", "loss_target", "diverged" (a bool per network),
    "diverged_at" (epoch or None per network), "stopped_at" (the epoch a network reached the loss
    target, or None)}. Runs with one torch thread and denormals flushed (``cpu_settings``).
    """
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("record_every", record_every)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if X.ndim != 3 or y.shape != X.shape[:2] or not torch.isfinite(X).all():
        raise ValueError(f"X must be a finite [R, n, d] tensor and y [R, n]; got {tuple(X.shape)}, "
                         f"{tuple(y.shape)}")
    if optimizer.stack is not stack:
        raise ValueError("the optimizer must be a StackOptimizer of this stack")
    if on_divergence not in ("drop", "raise"):
        raise ValueError(f"on_divergence must be 'drop' or 'raise', got {on_divergence!r}")
    if loss_target is not None and not (isinstance(loss_target, (int, float)) and loss_target > 0):
        raise ValueError(f"loss_target must be a positive number or None, got {loss_target!r}")
    if loss_target is not None and callback is not None:
        raise ValueError("loss_target and callback do not go together: a callback sees the whole stack")
    R, n, K = X.shape[0], X.shape[1], len(stack)
    replicate = torch.as_tensor(replicate, dtype=torch.long)
    if replicate.shape != (K,) or int(replicate.min()) < 0 or int(replicate.max()) >= R:
        raise ValueError(f"replicate must give each of the {K} networks a replicate in [0, {R})")
    seeds = [int(s) for s in seeds]
    if len(seeds) != R:
        raise ValueError(f"need one minibatch seed per replicate: {R} replicates, {len(seeds)} seeds")
    evals = {"train": (X, y), **(evals or {})}
    series: dict[str, list] = {f"{k}_{q}": [] for k in evals for q in ("loss", "err")}
    at_stop = {key: torch.full((K,), torch.nan, dtype=torch.float64) for key in series}
    recorded: list[int] = []
    diverged_at: list = [None] * K
    stopped_at: list = [None] * K
    active = torch.arange(K)                     # the networks still training, as indices of ``stack``
    net, opt, rep = stack, optimizer, replicate

    def measure(sub, reps):
        return {f"{name}_{q}": v for name, (Xe, ye) in evals.items()
                for q, v in zip(("loss", "err"), evaluate_stack(sub, reps, Xe, ye))}

    def record(epoch):
        recorded.append(epoch)
        now = measure(net, rep) if len(active) else {}
        for key in series:
            full = at_stop[key].clone()
            if key in now:
                full[active] = now[key]
            full[torch.tensor([d is not None for d in diverged_at])] = torch.nan
            series[key].append(full)

    def check(losses, weights: bool):
        """Diverged networks among the current ones (bool [k])."""
        bad = ~torch.isfinite(losses) | (losses.abs() > HUGE)
        if weights:
            with torch.no_grad():
                for p in opt.params:
                    bad |= ~torch.isfinite(p.reshape(len(net), -1)).all(1)
        return bad

    def keep_only(keep):
        nonlocal net, opt, rep, active
        sub = net.subset(keep)
        net, opt, rep, active = sub, opt.subset(sub, keep), rep[keep], active[keep]

    def drop(bad, epoch):
        if on_divergence == "raise":
            k = int(active[bad][0])
            raise DivergenceError(f"network {k} ({opt.methods[int(bad.nonzero()[0, 0])]}) diverged in "
                                  f"epoch {epoch}: its loss or weights are not finite or exploded. Lower "
                                  f"the step size lr (now {optimizer.lrs[k]:g}).")
        for k in active[bad].tolist():
            if diverged_at[k] is None:
                diverged_at[k] = epoch
        if callback is not None:                 # keep the stack whole: stop the diverged networks
            opt.stop(bad)
            return
        with torch.no_grad():
            for P in list(stack.weights) + list(stack.biases):
                P[active[bad]] = 0.0
        keep_only((~bad).nonzero()[:, 0])

    def stop(done, epoch):
        """The networks ``done`` [k] reached the target: their weights and records are kept."""
        idx = done.nonzero()[:, 0]
        with torch.no_grad():
            for P, Q in zip(list(stack.weights) + list(stack.biases), list(net.weights) + list(net.biases)):
                P[active[idx]] = Q[idx]
        for key, v in measure(net.subset(idx), rep[idx]).items():
            at_stop[key][active[idx]] = v
        for k in active[idx].tolist():
            stopped_at[k] = epoch
        keep_only((~done).nonzero()[:, 0])

    step = 0
    with cpu_settings(threads=1):
        record(0)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        for epoch in range(1, epochs + 1):
            if len(active) == 0:                  # every network reached the target
                if recorded[-1] != epoch - 1:
                    record(epoch - 1)
                break
            order = torch.stack([torch.randperm(n, generator=g) for g in gens])
            seen = torch.zeros(K, dtype=torch.float64)          # Σ over the epoch of |B| · loss_B
            for s in range(0, n, batch_size):
                idx = order[:, s:s + batch_size]
                Xb, yb = _gather(X, idx, rep), _gather(y, idx, rep)
                opt.zero_grad()
                out = net(Xb)
                ce = nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), yb.reshape(-1),
                                                 reduction="none").view(yb.shape).mean(1)
                ce.sum().backward()
                opt.step()
                step += 1
                seen[active] += idx.shape[1] * ce.detach().double()
                if callback is not None:
                    callback(step, net)
                bad = check(ce.detach(), weights=s + batch_size >= n)
                if callback is not None:
                    bad &= opt.lr > 0
                if bad.any() and (len(net) > int(bad.sum()) or on_divergence == "raise"):
                    drop(bad, epoch)
                elif bad.any():                  # every network diverged
                    for k in active.tolist():
                        diverged_at[k] = epoch if diverged_at[k] is None else diverged_at[k]
                    opt.stop(bad)
            if loss_target is not None and len(active):
                cand = (seen[active] / n < loss_target) & torch.tensor(
                    [diverged_at[k] is None for k in active.tolist()])
                if cand.any():
                    full, _ = evaluate_stack(net, rep, X, y)
                    done = cand & (full < loss_target)
                    if done.any():
                        stop(done, epoch)
            if epoch % record_every == 0 or epoch == epochs:
                record(epoch)

    if net is not stack and len(active):          # write the survivors back
        with torch.no_grad():
            for P, Q in zip(list(stack.weights) + list(stack.biases), list(net.weights) + list(net.biases)):
                P[active] = Q
    stacked = {k: torch.stack(v) for k, v in series.items()}
    config = {"methods": list(optimizer.methods), "lrs": list(optimizer.lrs),
              "momentum": optimizer.momentum, "replicate": replicate.tolist(), "seeds": seeds,
              "batch_size": batch_size, "epochs": epochs, "record_every": record_every,
              "loss_target": loss_target, "diverged": [d is not None for d in diverged_at],
              "diverged_at": diverged_at, "stopped_at": stopped_at}
    return Trajectory(steps=torch.tensor(recorded), params={}, loss=stacked.pop("train_loss"), reg=None,
                      metrics=stacked, config=config)
