"""Spectral optimizers for 2-D weights: Muon and Spectra, with AdamW for every other parameter.

Both keep a momentum buffer M per weight matrix and change its spectrum before
stepping:

- Muon (Jordan et al., 2024) replaces M by its orthogonal polar factor U V^T,
  approximated by five Newton-Schulz iterations of a quintic polynomial, so
  every direction moves by the same amount.
- Spectra (Huang et al., 2026; `shared/papers/training_methods.md`, section 3)
  finds the top k = max(1, round(rank_fraction * min(m, n))) singular
  directions of M (the gradient "spike") by one warm-started power iteration
  on a cached basis, sets their singular values to the RMS singular value of
  the remainder (the "tail"), and leaves the tail as it is. `rank_fraction`
  0 removes nothing: the momentum itself, rescaled as below, the control that
  separates spike suppression from the update rescaling.

Update sizes: both scale the update so its root-mean-square is 0.2 (as
Moonshot AI did to let Muon share AdamW's learning rate: an orthogonal m x n
matrix has RMS 1/sqrt(max(m, n)); Spectra normalises by its update's RMS), so
one `lr` serves the spectral and the AdamW parameters. Weight decay is
decoupled, as in AdamW.

Which parameters are spectral: 2-D weights of attention and MLP layers
(`spectral_parameters`); embeddings, unembeddings, gains and biases use AdamW,
the common practice for Muon.
"""

from __future__ import annotations

import math
from typing import Iterable, Optional

import torch
from torch import nn

from caplab.analysis.spectral import spectral_parameters  # which weights are hidden-layer matrices

UPDATE_RMS = 0.2
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # quintic coefficients of Jordan et al. (2024)


def orthogonalise(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximate polar factor U V^T of `matrix` (singular values mapped into about [0.7, 1.2])."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.float() / (matrix.norm() + 1e-7)  # singular values now at most 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


def suppress_spike(momentum: torch.Tensor, basis: torch.Tensor | None, k: int, power_iterations: int = 1):
    """Spectra's update direction: (update, new basis V (n, k)).

    The top-k singular triplets (U, s, V) of `momentum` come from `torch.svd_lowrank` the first time and
    from `power_iterations` steps of subspace iteration on the cached basis afterwards; the update is
    M - U diag(s) V^T + sigma_tail U V^T, sigma_tail = the RMS singular value of the remainder.
    """
    m = momentum.float()
    if basis is None:
        u, s, v = torch.svd_lowrank(m, q=k, niter=2)
    else:
        v = basis.float()
        for _ in range(power_iterations):
            u, r = torch.linalg.qr(m @ v)
            signs = torch.sign(torch.diagonal(r))
            u = u * torch.where(signs == 0, 1.0, signs)  # sign-fixed, so the basis does not flip between steps
            w = m.T @ u  # (n, k)
            s = w.norm(dim=0)
            v = w / s.clamp(min=1e-30)
    spike = (u * s) @ v.T
    tail = m - spike
    free = min(m.shape) - k
    sigma_tail = (tail.pow(2).sum() / free).sqrt() if free > 0 else s.min()
    return (tail + sigma_tail * u @ v.T).to(momentum.dtype), v.to(momentum.dtype)


class SpectralOptimizer(torch.optim.Optimizer):
    """Muon or Spectra on parameter groups with `spectral=True`, AdamW on the others.

    Arguments (per group, defaults here): lr, weight_decay, momentum (spectral), betas and eps (AdamW),
    and for Spectra rank_fraction and power_iterations; `method` is "muon" or "spectra".
    """

    def __init__(self, groups: Iterable[dict], method: str, lr: float = 1e-3, weight_decay: float = 0.0,
                 momentum: float = 0.95, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 rank_fraction: float = 0.015, power_iterations: int = 1, newton_schulz_steps: int = 5,
                 nesterov: Optional[bool] = None) -> None:
        if method not in ("muon", "spectra"):
            raise ValueError(f"method must be 'muon' or 'spectra', got {method!r}")
        # Muon's reference form looks ahead (G + mu M); Spectra's paper steps on the momentum itself
        nesterov = method == "muon" if nesterov is None else nesterov
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, betas=betas, eps=eps, spectral=False,
                        rank_fraction=rank_fraction, power_iterations=power_iterations,
                        newton_schulz_steps=newton_schulz_steps, method=method, nesterov=nesterov)
        super().__init__(list(groups), defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["spectral"] and p.dim() >= 2:
                    self._spectral_step(p, group)
                else:
                    self._adamw_step(p, group)
        return loss

    def _spectral_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p)
        buffer = state["momentum_buffer"]
        buffer.mul_(group["momentum"]).add_(p.grad)
        grad, buffer = p.grad.view(p.shape[0], -1), buffer.view(p.shape[0], -1)  # a conv's filters as (out, in k k)
        direction = grad + group["momentum"] * buffer if group.get("nesterov") else buffer
        if group["method"] == "muon":
            update = orthogonalise(direction, group["newton_schulz_steps"])
            scale = UPDATE_RMS * math.sqrt(max(buffer.shape))
        else:
            if group["rank_fraction"] > 0:
                k = max(1, round(group["rank_fraction"] * min(buffer.shape)))
                update, state["basis"] = suppress_spike(direction, state.get("basis"), k, group["power_iterations"])
            else:  # the control: the same rescaled momentum step with no spike removed
                update = direction
            rms = update.norm() / math.sqrt(update.numel())
            scale = UPDATE_RMS / (rms.item() + 1e-8)
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.sub_(update.view_as(p) * (group["lr"] * scale))  # a tensor product: a divergent lr overflows to inf, not an exception

    def _adamw_step(self, p: torch.Tensor, group: dict) -> None:
        state = self.state[p]
        if "step" not in state:
            state["step"] = torch.zeros(())
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
        denominator = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.sub_(state["exp_avg"] / denominator * (group["lr"] / (1 - beta1**t)))  # (as above: no scalar overflow check)


def make_spectral(model: nn.Module, method: str, lr: float, weight_decay: float, momentum: float,
                  betas: tuple[float, float], rank_fraction: float = 0.015, nesterov: Optional[bool] = None,
                  adamw_side_lr: Optional[float] = None) -> SpectralOptimizer:
    """Muon or Spectra on `spectral_parameters`, AdamW elsewhere (decay on >= 2-D tensors only).

    `adamw_side_lr`: the AdamW-side groups' peak rate (default: `lr`), kept as `lr_scale` so the trainer's
    schedule moves both rates together.
    """
    spectral = set(spectral_parameters(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    side = {"lr_scale": adamw_side_lr / lr} if adamw_side_lr is not None else {}
    groups = [
        {"params": [p for n, p in named if n in spectral], "spectral": True, "weight_decay": weight_decay},
        {"params": [p for n, p in named if n not in spectral and p.dim() >= 2], "weight_decay": weight_decay, **side},
        {"params": [p for n, p in named if n not in spectral and p.dim() < 2], "weight_decay": 0.0, **side},
    ]
    return SpectralOptimizer([g for g in groups if g["params"]], method, lr=lr, momentum=momentum, betas=betas,
                             rank_fraction=rank_fraction, nesterov=nesterov)
