"""Optimizers by name (`OPTIMIZERS`, chosen by `train.optimizer`) and learning-rate schedules.

A builder takes the model, the training config (lr, weight_decay, betas,
momentum, ...) and the device. Muon and Spectra (`caplab.train.spectral`) act
on the hidden layers' matrices and use AdamW elsewhere.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and embeddings (>= 2-D) only; never on gains and biases."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_adamw(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups`, fused where this PyTorch supports it on `device`."""
    extra = {}
    if "fused" in inspect.signature(torch.optim.AdamW).parameters and device.type in ("cuda", "cpu"):
        extra["fused"] = True  # fused defaults to None (off): ask for it explicitly
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, **extra)


def make_sgd(model: nn.Module, lr: float, weight_decay: float, momentum: float) -> torch.optim.SGD:
    """SGD with momentum over `param_groups` (Jain et al. fine-tune compiled Tracr models with it)."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum)


def warmup_cosine(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warmup to `lr` over `warmup` steps, then cosine decay to `min_lr` at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    if total <= warmup:
        return lr
    progress = min(1.0, (step - warmup) / (total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def _spectral(method: str):
    def build(model: nn.Module, cfg, device: torch.device):
        from caplab.train.spectral import make_spectral

        return make_spectral(model, method, cfg.lr, cfg.weight_decay, 0.95 if cfg.momentum is None else cfg.momentum,
                             (cfg.beta1, cfg.beta2), cfg.spectral_rank_fraction, cfg.nesterov, cfg.adamw_side_lr)
    return build


OPTIMIZERS = {
    "adamw": lambda model, cfg, device: make_adamw(model, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device),
    "sgd": lambda model, cfg, device: make_sgd(model, cfg.lr, cfg.weight_decay, 0.9 if cfg.momentum is None else cfg.momentum),
    "muon": _spectral("muon"),
    "spectra": _spectral("spectra"),
}


def build_optimizer(model: nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer `cfg.optimizer` names, over `model`'s parameters (on `device`)."""
    if cfg.optimizer not in OPTIMIZERS:
        from caplab.errors import ConfigError

        raise ConfigError(f"bad value {cfg.optimizer!r} for 'train.optimizer'; valid: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[cfg.optimizer](model, cfg, device)

