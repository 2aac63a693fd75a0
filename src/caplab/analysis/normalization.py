"""Signal-propagation diagnostics of Lubana, Dick and Tanaka (NeurIPS 2021, "Beyond BatchNorm"), for any hooked model.

Read on one batch, at the hook points of each block (`blocks.{i}.hook_out`, a
block's output after normalization and activation, or a ResNet's residual
stream; `blocks.{i}.hook_conv`, a conv's output):

    activation_variance   mean over channels of the variance over (batch, space) of the block output
    cosine_similarity     mean cross-sample cosine similarity of the flattened block outputs:
                          with C = M M^T for row-normalised M (batch x features), mean_i (sum_j C_ij - 1) / (B - 1)
    stable_rank           tr(C) / ||C||_2 = B / lambda_max(C): B for mutually orthogonal samples, 1 when all align
    gradient_norm         ||dL/d(conv output)||_F of the batch's mean loss, per conv (`hook_conv`)

Activation variance growing with depth is the exploding forward signal the
paper's first claim is about; a cosine similarity near 1 (stable rank near 1)
is the collapse of "informative" forward propagation its second claim ties to
large normalization groups; large early-layer gradient norms are the
instability its third claim ties to small groups.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from caplab.models.hooks import HookedModule


def cosine_matrix(activations: torch.Tensor) -> torch.Tensor:
    """(B, B) cosine similarities of the flattened samples of `activations` (B, ...)."""
    flat = activations.flatten(1).double()
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return flat @ flat.T


def mean_cosine_similarity(activations: torch.Tensor) -> float:
    """Mean over samples of the mean cosine similarity to the other samples of the batch."""
    c = cosine_matrix(activations)
    b = c.shape[0]
    return ((c.sum(1) - c.diagonal()) / (b - 1)).mean().item()


def stable_rank(activations: torch.Tensor) -> float:
    """tr(C) / lambda_max(C) of the cosine matrix: between 1 (all samples aligned) and B (orthogonal)."""
    c = cosine_matrix(activations)
    return (c.trace() / torch.linalg.eigvalsh(c)[-1]).item()


def activation_variance(activations: torch.Tensor) -> float:
    """Mean over channels of the variance over batch and space (biased), for (B, C, *spatial) activations."""
    x = activations.double().transpose(0, 1).flatten(1)  # (C, B x space)
    return x.var(1, unbiased=False).mean().item()


def _block_index(name: str) -> int:
    return int(name.split(".")[1])


def signal_propagation(model: HookedModule, inputs: torch.Tensor, targets: torch.Tensor,
                       loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
                       train_mode: bool = True) -> dict[str, list[float]]:
    """Every diagnostic of the module docstring, by depth, from one forward and backward pass on a batch.

    Returns lists ordered by block: `activation_variance`, `cosine_similarity`, `stable_rank` (at each
    `blocks.{i}.hook_out`) and `gradient_norm` (at each `blocks.{i}.hook_conv`). `train_mode`: normalise with
    batch statistics, as in training (the paper's probes run in training); the model's mode is restored after.
    """
    outs = sorted((n for n in model.hook_points if n.startswith("blocks.") and n.endswith(".hook_out")), key=_block_index)
    convs = sorted((n for n in model.hook_points if n.startswith("blocks.") and n.endswith(".hook_conv")), key=_block_index)
    was_training = model.training
    model.train(train_mode)
    try:
        with torch.enable_grad():
            logits, cache = model.run_with_cache(inputs, names=outs + convs, detach=False)
            loss = loss_fn(logits.float(), targets)
            grads = torch.autograd.grad(loss, [cache[n] for n in convs]) if convs else []
    finally:
        model.train(was_training)
    result = {
        "activation_variance": [activation_variance(cache[n].detach()) for n in outs],
        "cosine_similarity": [mean_cosine_similarity(cache[n].detach()) for n in outs],
        "stable_rank": [stable_rank(cache[n].detach()) for n in outs],
        "gradient_norm": [g.double().norm().item() for g in grads],
    }
    return result


class SignalPropagationCallback:
    """Logs the diagnostics every `every` steps during training (a trainer callback on `on_step_end`).

    Each reading is one dict {step, activation_variance, ...}, kept in `history`; `latest()` gives flat
    metrics for the trainer's evaluation record (the first and last block's values).
    """

    name = "signal"  # as a trainer plug-in: `record()` adds the latest reading to each evaluation

    def __init__(self, every: int, batch_size: int = 64, seed: int = 0) -> None:
        self.every, self.batch_size, self.seed = every, batch_size, seed
        self.history: list[dict] = []
        self._batch = None

    def read(self, trainer) -> dict:
        if self._batch is None:
            generator = torch.Generator(device=trainer.device).manual_seed(self.seed + 20_000)
            self._batch = trainer.task.sample(self.batch_size, generator, trainer.device)
        reading = signal_propagation(trainer.model, self._batch.inputs, self._batch.targets)
        return {"step": trainer.step, **reading}

    def __call__(self, trainer, loss: Optional[float] = None) -> None:
        if trainer.step % self.every == 0:
            self.history.append(self.read(trainer))

    def record(self) -> dict[str, float]:
        return self.latest()

    def latest(self) -> dict[str, float]:
        if not self.history:
            return {}
        last = self.history[-1]
        out = {}
        for key in ("activation_variance", "cosine_similarity", "stable_rank", "gradient_norm"):
            if last[key]:
                out[f"{key}_first"], out[f"{key}_last"] = last[key][0], last[key][-1]
        return out
