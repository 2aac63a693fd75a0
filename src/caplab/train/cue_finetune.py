"""Fine-tuning a cue-reliant classifier on a little clean data: naive, last-layer retraining, LP-FT and CBFT.

After Lubana et al. (ICML 2023, "Mechanistic Mode Connectivity", section 5).
Every method starts from the cue model and sees the same clean set D_NC (and
CBFT also a cue set D_C); all use SGD with momentum and a per-iteration cosine
decay of the rate to 0 over `epochs` passes of D_NC:

    naive     fine-tune every weight on D_NC (the paper's FT_M and FT_S differ only in the rate)
    llrt      last-layer retraining: a fresh linear head on the frozen backbone (the paper: 200 epochs at
              rate 30, no weight decay)
    lpft      llrt, then naive fine-tuning from there
    cbft      connectivity-based fine-tuning, two steps per (clean, cue) batch pair:
                barrier step    t = 0.5 + 0.5 clip(N(0, 1), -0.5, 0.5) in [0.25, 0.75];
                                theta_t = t theta_cue + (1 - t) theta with theta_cue frozen;
                                L_B = |margin - CE(f(x_c; theta_t), y_c)|: the interpolation should do
                                badly on cue data, so theta must leave the cue model's basin; the
                                gradient reaching theta is (1 - t) times L_B's at theta_t
                invariance step CE(f(x_nc; theta), y_nc) + lambda / K sum_k |n(mean z_nc,k) - n(mean z_c,k)|^2,
                                z the pooled penultimate features, n() unit length, classes missing
                                from either batch skipped; the first `warmup_epochs` use CE alone

Models are caplab image classifiers (`hook_features` before `classifier`).
Data are (inputs, targets) tensors held in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from caplab.errors import TrainingDiverged

METHODS = ("naive_medium", "naive_small", "llrt", "lpft", "cbft")  # the paper's table
# controls: CBFT without either of its two terms, and training from a fresh initialisation on D_NC alone
# (`model` is then a freshly initialised one)
CONTROLS = ("cbft_no_barrier", "cbft_no_invariance", "scratch")
NAIVE_RATES = {"naive_small": "lr_small", "naive_medium": "lr_medium", "naive_large": "lr_large"}  # LMC against the rate


@dataclass
class CueFinetuneConfig:
    epochs: int = 20  # passes over the clean set
    batch_size: int = 32
    lr_medium: float = 0.01  # naive fine-tuning (FT_M), lpft's second stage and cbft
    lr_small: float = 0.001  # FT_S
    lr_large: float = 0.1  # naive_large: where linear connectivity to the cue model may break (not in the paper's table)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    head_epochs: int = 200  # llrt
    head_lr: float = 1.0  # the paper ran 30 (its code's default is 1); see docs/mode-connectivity.md
    margin: float = 1.0  # cbft: the cross-entropy the barrier step aims the interpolations at
    invariance_weight: float = 1.0
    warmup_epochs: int = 1  # cbft: epochs of cross-entropy alone in the second step

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "head_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"study.finetune.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr_medium", "lr_small", "lr_large", "head_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"study.finetune.{name} must be positive, got {getattr(self, name)}")


def epoch_batches(data: tuple[torch.Tensor, torch.Tensor], batch_size: int,
                  generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One pass over (inputs, targets) in a fresh random order, in batches of `batch_size` (the last may be short)."""
    inputs, targets = data
    order = torch.randperm(len(targets), generator=generator)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        yield inputs[rows], targets[rows]


def _cosine(optimizer: torch.optim.Optimizer, lr: float, step: int, total: int) -> None:
    for group in optimizer.param_groups:
        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))


def _checked(loss: torch.Tensor, method: str, step: int) -> torch.Tensor:
    if not torch.isfinite(loss):
        raise TrainingDiverged(f"{method}: the loss became {loss.item()} at step {step}; lower its rate")
    return loss


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def naive(model: nn.Module, clean, cfg: CueFinetuneConfig, lr: float, generator: torch.Generator) -> nn.Module:
    """Fine-tune every weight on the clean set."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    total, step = cfg.epochs * _steps_per_epoch(len(clean[1]), cfg.batch_size), 0
    model.train()
    for _ in range(cfg.epochs):
        for x, y in epoch_batches(clean, cfg.batch_size, generator):
            _cosine(optimizer, lr, step, total)
            loss = _checked(F.cross_entropy(model(x), y), "naive fine-tuning", step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model


@torch.no_grad()
def _features(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    model.eval()
    return model.run_with_cache(inputs, names="hook_features")[1]["hook_features"]


def last_layer(model: nn.Module, clean, cfg: CueFinetuneConfig, generator: torch.Generator) -> nn.Module:
    """A fresh linear head trained on the frozen backbone's features of the clean set (eval-mode features: the
    backbone, its normalization statistics included, does not change)."""
    features = _features(model, clean[0])
    head = nn.Linear(features.shape[1], model.classifier.out_features)
    with torch.no_grad():  # a fresh head, drawn from the run's generator so it is reproducible
        bound = 1 / math.sqrt(features.shape[1])
        head.weight.copy_(torch.rand(head.weight.shape, generator=generator) * 2 * bound - bound)
        head.bias.copy_(torch.rand(head.bias.shape, generator=generator) * 2 * bound - bound)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.head_lr, momentum=cfg.momentum, weight_decay=0.0)
    total, step = cfg.head_epochs * _steps_per_epoch(len(clean[1]), cfg.batch_size), 0
    for _ in range(cfg.head_epochs):
        for z, y in epoch_batches((features, clean[1]), cfg.batch_size, generator):
            _cosine(optimizer, cfg.head_lr, step, total)
            loss = _checked(F.cross_entropy(head(z), y), "last-layer retraining", step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    model.classifier.load_state_dict(head.state_dict())
    return model


def barrier_loss(model: nn.Module, cue_params: dict[str, torch.Tensor], t: float, inputs: torch.Tensor,
                 targets: torch.Tensor, margin: float) -> torch.Tensor:
    """|margin - CE| of the interpolation t theta_cue + (1 - t) theta on cue data; differentiable in the model's
    parameters (their gradient is (1 - t) times the interpolation's). The interpolation normalizes with its own
    batch statistics and leaves the model's running statistics alone."""
    params = {name: t * cue_params[name] + (1 - t) * p for name, p in model.named_parameters()}
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    logits = functional_call(model, {**params, **buffers}, (inputs,))
    return (margin - F.cross_entropy(logits, targets)).abs()


def invariance_loss(z_clean: torch.Tensor, y_clean: torch.Tensor, z_cue: torch.Tensor, y_cue: torch.Tensor,
                    n_classes: int) -> torch.Tensor:
    """(1 / K) sum over classes present in both batches of |unit(mean z_clean,k) - unit(mean z_cue,k)|^2."""
    total = z_clean.new_zeros(())
    for k in range(n_classes):
        a, b = z_clean[y_clean == k], z_cue[y_cue == k]
        if len(a) and len(b):
            total = total + (F.normalize(a.mean(0), dim=0) - F.normalize(b.mean(0), dim=0)).pow(2).sum()
    return total / n_classes


def draw_t(generator: torch.Generator) -> float:
    """The barrier step's interpolation weight: 0.5 + 0.5 clip(N(0, 1), -0.5, 0.5), in [0.25, 0.75]."""
    return 0.5 + 0.5 * float(torch.randn((), generator=generator).clamp(-0.5, 0.5))


def cbft(model: nn.Module, cue_state: dict[str, torch.Tensor], clean, cued, cfg: CueFinetuneConfig,
         generator: torch.Generator, barrier: bool = True, invariance: bool = True) -> nn.Module:
    """Connectivity-based fine-tuning (see module docstring); `cue_state` is the cue model's (frozen) weights.
    `barrier` / `invariance` False drop that term (the ablation controls). The rate stays at lr_medium through
    the warm-up epochs and the one after (the paper's scheduler steps only after them), then decays by a
    cosine to 0."""
    cue_params = {name: cue_state[name].detach().clone() for name, _ in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr_medium, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n_classes = model.classifier.out_features
    per_epoch = _steps_per_epoch(len(clean[1]), cfg.batch_size)
    held = min(cfg.warmup_epochs + 1, cfg.epochs - 1) * per_epoch  # steps at the full rate
    total, step = cfg.epochs * per_epoch, 0
    cue_order: Iterator = iter(())
    model.train()
    for epoch in range(cfg.epochs):
        for x_nc, y_nc in epoch_batches(clean, cfg.batch_size, generator):
            try:
                x_c, y_c = next(cue_order)
            except StopIteration:  # the cue set is larger: it is walked through across epochs
                cue_order = epoch_batches(cued, cfg.batch_size, generator)
                x_c, y_c = next(cue_order)
            _cosine(optimizer, cfg.lr_medium, max(step - held, 0), total - held)
            t = draw_t(generator)
            if barrier:
                loss = _checked(barrier_loss(model, cue_params, t, x_c, y_c, cfg.margin), "cbft barrier", step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if epoch < cfg.warmup_epochs or not invariance:
                loss = F.cross_entropy(model(x_nc), y_nc)
            else:
                # two forwards, as the paper's code: each batch normalizes with its own statistics
                logits, clean_cache = model.run_with_cache(x_nc, names="hook_features", detach=False)
                cue_cache = model.run_with_cache(x_c, names="hook_features", detach=False)[1]
                loss = (F.cross_entropy(logits, y_nc) + cfg.invariance_weight * invariance_loss(
                    clean_cache["hook_features"], y_nc, cue_cache["hook_features"], y_c, n_classes))
            loss = _checked(loss, "cbft", step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    return model


def run_method(method: str, model: nn.Module, cue_state: dict[str, torch.Tensor], task, cfg: CueFinetuneConfig,
               clean_share: float, seed: int) -> nn.Module:
    """`model` (the cue model) fine-tuned in place by `method` on the cue task's D_NC (and D_C for cbft), drawn
    with `seed` (`CueTask.finetuning_sets`); the method's own randomness also comes from `seed`."""
    if method not in (*METHODS, *NAIVE_RATES, *CONTROLS):
        raise ValueError(f"unknown fine-tuning method {method!r}; valid: {', '.join(dict.fromkeys((*METHODS, *NAIVE_RATES, *CONTROLS)))}")
    device = next(model.parameters()).device
    clean_batch, cued_batch = task.finetuning_sets(clean_share, seed, device)
    clean, cued = (clean_batch.inputs, clean_batch.targets), (cued_batch.inputs, cued_batch.targets)
    generator = torch.Generator().manual_seed(seed + 1)
    if method in NAIVE_RATES:
        return naive(model, clean, cfg, getattr(cfg, NAIVE_RATES[method]), generator)
    if method == "llrt":
        return last_layer(model, clean, cfg, generator)
    if method == "lpft":
        return naive(last_layer(model, clean, cfg, generator), clean, cfg, cfg.lr_medium, generator)
    if method == "scratch":
        return naive(model, clean, cfg, cfg.lr_medium, generator)
    return cbft(model, cue_state, clean, cued, cfg, generator, barrier=method != "cbft_no_barrier",
                invariance=method != "cbft_no_invariance")
