"""Paths between two models' weights, and the loss barrier along them (mode connectivity).

After Lubana et al. (ICML 2023, "Mechanistic Mode Connectivity") and
Garipov et al. (2018). theta(0) is model A and theta(1) model B; every float
tensor of the state dict (weights, normalization affines and running
statistics) moves along the path.

    linear      theta(a) = (1 - a) A + a B
    quadratic   theta(a) = (1 - a)^2 A + 2 a (1 - a) M + a^2 B, a Bezier curve whose control point M is
                trained (`fit_midpoint`): each step draws a ~ U(0, 1) and descends the loss at theta(a)
                with respect to M, whose gradient is 2 a (1 - a) times the loss gradient there
    aligned     linear, after B's hidden channels are permuted to match A's (`align`): per layer, the
                Hungarian assignment (scipy's linear_sum_assignment) that maximises the summed correlation
                of the two models' channel activations; the permutation moves a layer's output channels,
                its normalization and the next layer's input channels, so B computes the same function

At every point the normalization statistics are recomputed (`refresh_statistics`:
an exact average over the given batches, in train mode), because interpolated
running statistics do not describe the interpolated network. The loss barrier of a
curve (`loss_barrier`) is max_a [L(theta(a)) - ((1 - a) L(A) + a L(B))]: how far the
loss rises above the straight line between the endpoints' losses (zero when the
path is no worse than that line; the paper's condition for connectivity).

Data comes in as objects with `.inputs` and `.targets` (caplab batches), so
any classifier and any named evaluation sets can be compared.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from caplab.errors import ConfigError
from caplab.models.convnets import VGG
from caplab.models.mlp import MLP

State = dict[str, torch.Tensor]
CHUNK = 1024  # images per forward pass when scoring

# ------------------------------------------------------------ points on a path


def detached(state: State) -> State:
    """A copy of `state` that shares no storage with any model."""
    return {k: v.detach().clone() for k, v in state.items()}


def interpolate(a: State, b: State, alpha: float) -> State:
    """(1 - alpha) a + alpha b for float tensors; integer buffers (BatchNorm's step counter) come from a."""
    return {k: torch.lerp(a[k], b[k].to(a[k].dtype), alpha) if a[k].is_floating_point() else a[k].clone() for k in a}


def bezier(a: State, mid: State, b: State, alpha: float) -> State:
    """The quadratic Bezier point (1 - alpha)^2 a + 2 alpha (1 - alpha) mid + alpha^2 b."""
    wa, wm, wb = (1 - alpha) ** 2, 2 * alpha * (1 - alpha), alpha ** 2
    return {k: wa * a[k] + wm * mid[k] + wb * b[k] if a[k].is_floating_point() else a[k].clone() for k in a}


def _running_modules(model: nn.Module) -> list[nn.Module]:
    """Modules that keep running statistics and blend them in with a `momentum` (BatchNorm and caplab's own)."""
    return [m for m in model.modules()
            if hasattr(m, "momentum") and any(name.startswith("running") for name, _ in m.named_buffers(recurse=False))]


@torch.no_grad()
def refresh_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Replace every running statistic by its exact average over `batches` (train-mode forwards, momentum
    1 / k on the k-th batch); returns the number of modules refreshed (0: the model keeps none)."""
    modules = _running_modules(model)
    if not modules:
        return 0
    momenta = [m.momentum for m in modules]
    was_training = model.training
    model.train()
    try:
        for k, inputs in enumerate(batches):
            for m in modules:
                m.momentum = 1.0 / (k + 1)
            model(inputs)
    finally:
        for m, momentum in zip(modules, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(modules)


@torch.no_grad()
def score(model: nn.Module, sets: dict) -> dict[str, float]:
    """`{set}_loss` (mean cross-entropy) and `{set}_accuracy` of a classifier on each named set (eval mode)."""
    was_training = model.training
    model.eval()
    record = {}
    for name, data in sets.items():
        logits = torch.cat([model(data.inputs[i : i + CHUNK]) for i in range(0, len(data.targets), CHUNK)]).float()
        record[f"{name}_loss"] = F.cross_entropy(logits, data.targets).item()
        record[f"{name}_accuracy"] = (logits.argmax(-1) == data.targets).float().mean().item()
    model.train(was_training)
    return record


def loss_barrier(alphas: list[float], losses: list[float]) -> float:
    """max_a [L(a) - ((1 - a) L(0) + a L(1))] over the evaluated points (alphas sorted, from 0 to 1)."""
    if len(alphas) != len(losses) or len(alphas) < 2 or alphas[0] != 0 or alphas[-1] != 1:
        raise ValueError("a barrier needs the losses at alphas running from 0 to 1")
    start, end = losses[0], losses[-1]
    return max(loss - ((1 - a) * start + a * end) for a, loss in zip(alphas, losses))


def path_curve(model: nn.Module, point: Callable[[float], State], alphas: list[float], sets: dict,
               statistics_batches: Callable[[], Iterable[torch.Tensor]]) -> dict:
    """Loss and accuracy on every set at every alpha, and each set's loss barrier.

    `point(alpha)` is the state dict at alpha, computed from states that share no storage with `model`
    (`detached`: loading a point writes into the model's tensors); `statistics_batches()` yields the inputs the normalization
    statistics are recomputed on at each point (the same batches every time). The model's own weights are
    restored afterwards.
    """
    original = detached(model.state_dict())
    records = []
    try:
        for alpha in alphas:
            model.load_state_dict(point(alpha))
            refresh_statistics(model, statistics_batches())
            records.append({"alpha": alpha, **score(model, sets)})
    finally:
        model.load_state_dict(original)
    barriers = {name: loss_barrier(alphas, [r[f"{name}_loss"] for r in records]) for name in sets}
    return {"points": records, "barriers": barriers}


# ------------------------------------------------------------ the quadratic path's control point


def fit_midpoint(model: nn.Module, a: State, b: State, sample: Callable[[torch.Generator], object],
                 loss: Callable[[torch.Tensor, object], torch.Tensor], steps: int, lr: float,
                 momentum: float = 0.9, weight_decay: float = 1e-4, start: Optional[State] = None,
                 seed: int = 0) -> State:
    """Train the Bezier control point M between endpoints a and b; return M's state.

    Each step draws alpha ~ U(0, 1) and a batch (`sample(generator)`), computes the loss gradient at theta(alpha)
    and takes an SGD step on M with that gradient and the rate scaled by w = 2 alpha (1 - alpha), as the paper's
    code does (so momentum accumulates the unscaled gradients and weight decay is scaled by w too); without
    momentum and weight decay this is plain gradient descent on E_alpha L(theta(alpha)) in M. The rate drops
    tenfold after two thirds of the steps (the paper's 10 of 15 epochs). M starts at `start` (the paper: a
    fresh initialisation) or at the linear midpoint. Buffers (running statistics) are the model's own during
    the fit and restored afterwards.
    """
    from torch.func import functional_call

    a, b = detached(a), detached(b)
    original = detached(model.state_dict())  # the forwards update its running statistics
    was_training = model.training
    names = [name for name, _ in model.named_parameters()]
    begin = start if start is not None else interpolate(a, b, 0.5)
    mid = {k: begin[k].detach().clone().requires_grad_(True) for k in names}
    optimizer = torch.optim.SGD(mid.values(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        alpha = float(torch.rand((), generator=generator))
        wa, wm, wb = (1 - alpha) ** 2, 2 * alpha * (1 - alpha), alpha ** 2
        if wm == 0:
            continue
        params = {k: wa * a[k] + wm * mid[k] + wb * b[k] for k in names}
        batch = sample(generator)
        value = loss(functional_call(model, params, (batch.inputs,)), batch)
        if not math.isfinite(value.item()):
            raise ConfigError(f"the quadratic path's loss became {value.item()} at step {step}; lower the rate")
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        for p in mid.values():  # autograd gave w x the gradient at theta(alpha): undo it, and scale the rate instead
            p.grad.div_(wm)
        for group in optimizer.param_groups:
            group["lr"] = lr * (0.1 if step >= (2 * steps) // 3 else 1.0) * wm
        optimizer.step()
    model.load_state_dict(original)
    model.train(was_training)
    out = {k: v.detach().clone() for k, v in begin.items()}
    out.update({k: v.detach().clone() for k, v in mid.items()})
    return out


# ------------------------------------------------------------ permutation alignment


def channel_layers(model: nn.Module) -> list[tuple[str, str]]:
    """(block prefix, the next layer's weight that reads its channels) for each hidden layer a permutation may
    reorder: the blocks of a VGG or an MLP. Other models (a ResNet's residual stream ties its blocks'
    channels together) are refused."""
    if not isinstance(model, (VGG, MLP)):
        raise ConfigError(f"aligned paths support vgg and mlp models, not {type(model).__name__.lower()} "
                          "(a residual stream needs one permutation shared across its blocks)")
    first = "conv" if isinstance(model, VGG) else "linear"
    if model.cfg.norm in ("group", "evonorm_s0"):  # a permutation must not move channels between groups
        for block in model.blocks:
            channels = getattr(block, first).weight.shape[0]
            if model.cfg.norm_spec.group_count(channels) not in (1, channels):
                raise ConfigError(f"aligned paths cannot permute channels across the groups of model.norm={model.cfg.norm}")
    count = len(model.blocks)
    return [(f"blocks.{i}", f"blocks.{i + 1}.{first}.weight" if i + 1 < count else "classifier.weight") for i in range(count)]


@torch.no_grad()
def channel_correlations(model: nn.Module, a: State, b: State, batches: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    """Per hidden layer, the (C, C) Pearson correlation of A's channel i with B's channel j over the batches'
    images and positions (eval mode)."""
    layers = channel_layers(model)
    hooks = [f"{prefix}.hook_out" for prefix, _ in layers]
    a, b = detached(a), detached(b)
    original = detached(model.state_dict())
    sums: list[dict[str, torch.Tensor]] = [dict() for _ in layers]
    was_training = model.training
    model.eval()
    try:
        for inputs in batches:
            caches = []
            for state in (a, b):
                model.load_state_dict(state)
                caches.append(model.run_with_cache(inputs, names=hooks)[1])
            for i, name in enumerate(hooks):
                xa, xb = (_flat(cache[name]).double() for cache in caches)
                acc = sums[i]
                for key, value in (("a", xa.sum(0)), ("b", xb.sum(0)), ("aa", (xa * xa).sum(0)), ("bb", (xb * xb).sum(0)),
                                   ("ab", xa.T @ xb), ("n", torch.tensor(float(len(xa)), dtype=torch.float64))):
                    acc[key] = acc[key] + value if key in acc else value
    finally:
        model.load_state_dict(original)
        model.train(was_training)
    out = []
    for acc in sums:
        n = acc["n"]
        mean_a, mean_b = acc["a"] / n, acc["b"] / n
        cov = acc["ab"] / n - mean_a[:, None] * mean_b[None, :]
        std_a = (acc["aa"] / n - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (acc["bb"] / n - mean_b ** 2).clamp_min(0).sqrt()
        out.append((cov / (std_a[:, None] * std_b[None, :] + 1e-12)).float())
    return out


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(batch, C, *space) -> (batch x positions, C)."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def match_channels(correlations: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per layer, the permutation p maximising sum_j corr[j, p[j]] (B's channel p[j] becomes channel j)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ConfigError("aligned paths need scipy: pip install 'caplab[vision]'") from None
    perms = []
    for corr in correlations:
        rows, cols = linear_sum_assignment(corr.numpy(), maximize=True)
        perms.append(torch.as_tensor(cols[rows.argsort()], dtype=torch.long))
    return perms


def permute_channels(model: nn.Module, state: State, perms: list[torch.Tensor]) -> State:
    """`state` with each hidden layer's channels reordered by its permutation: the block's per-channel tensors
    (conv or linear rows, norm affines and statistics) along dim 0, the next layer's weight along dim 1."""
    out = dict(state)
    for (prefix, reader), perm in zip(channel_layers(model), perms):
        for key in state:  # `out`: a conv's input channels may already follow the previous layer's permutation
            if key.startswith(prefix + ".") and out[key].dim() >= 1 and out[key].shape[0] == len(perm):
                out[key] = out[key].index_select(0, perm)
        out[reader] = out[reader].index_select(1, perm)
    return out


def align(model: nn.Module, a: State, b: State, batches: Iterable[torch.Tensor]) -> tuple[State, list[torch.Tensor]]:
    """B's state permuted to match A's channels (the same function as B), and the permutations."""
    perms = match_channels(channel_correlations(model, a, b, batches))
    return permute_channels(model, b, perms), perms


# ------------------------------------------------------------ one call for any of the three paths

PATHS = ("linear", "quadratic", "aligned")


def connect(model: nn.Module, a: State, b: State, kind: str, sets: dict,
            statistics_batches: Callable[[], list[torch.Tensor]], points: int = 10,
            sample: Optional[Callable[[torch.Generator], object]] = None,
            loss: Optional[Callable[[torch.Tensor, object], torch.Tensor]] = None,
            midpoint: Optional[dict] = None) -> dict:
    """The curve of path `kind` from A to B at points + 1 evenly spaced alphas (see `path_curve`).

    quadratic: `sample`, `loss` and `midpoint` (fit_midpoint's steps, lr, momentum, weight_decay, start, seed)
    train the control point first; the result carries it as `midpoint_state`. aligned: B is permuted to A
    (channel correlations over `statistics_batches()`); the result carries the permutations.
    """
    if kind not in PATHS:
        raise ConfigError(f"bad path {kind!r}; valid: {', '.join(PATHS)}")
    a, b = detached(a), detached(b)  # a model's own state_dict() shares its tensors, which loading points overwrites
    alphas = [i / points for i in range(points + 1)]
    extra: dict = {}
    if kind == "linear":
        point = lambda alpha: interpolate(a, b, alpha)  # noqa: E731
    elif kind == "aligned":
        b_aligned, perms = align(model, a, b, statistics_batches())
        point = lambda alpha: interpolate(a, b_aligned, alpha)  # noqa: E731
        extra["permutations"] = [p.tolist() for p in perms]
        extra["channels_moved"] = [int((p != torch.arange(len(p))).sum()) for p in perms]
        extra["relative_distance_aligned"] = relative_distance(a, b_aligned)
    else:
        if sample is None or loss is None:
            raise ValueError("a quadratic path needs `sample` and `loss` to train its control point")
        mid = fit_midpoint(model, a, b, sample, loss, **(midpoint or {}))
        point = lambda alpha: bezier(a, mid, b, alpha)  # noqa: E731
        extra["midpoint_state"] = mid
    return {"path": kind, "alphas": alphas, "relative_distance": relative_distance(a, b),
            **path_curve(model, point, alphas, sets, statistics_batches), **extra}


def relative_distance(a: State, b: State) -> float:
    """|B - A| / |A| over the float tensors of the state dicts (how far B moved from A)."""
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    diff = sum(float((b[k] - a[k]).pow(2).sum()) for k in keys)
    return math.sqrt(diff / max(sum(float(a[k].pow(2).sum()) for k in keys), 1e-30))
