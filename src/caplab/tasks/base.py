"""The Task contract: a data-generating process that samples batches and scores models.

A Task owns its vocabulary, its sequence length and its default config (a
dataclass named `Config` on the class). Sampling is vectorised in torch, seeded
by an explicit generator and happens on the training device. A Task never
knows about the Trainer or the Run that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn


@dataclass
class Batch:
    """One training batch.

    tokens:    (batch, pos) input ids.
    targets:   (batch, pos) next-token ids (tokens shifted left by one).
    loss_mask: (batch, pos) float, 1 where the target counts towards the loss.
    labels:    extra per-sequence annotations instruments may need.
    """

    tokens: torch.Tensor
    targets: torch.Tensor
    loss_mask: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)


class Task:
    """Base class of data-generating processes (see module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    primary_metric: ClassVar[str] = "eval_loss"  # the capability sweeps track by default
    phase_metrics: ClassVar[tuple[str, ...]] = ()  # capabilities whose order of emergence a study reports

    vocab_size: int
    seq_len: int  # length of `tokens` in a batch

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        raise NotImplementedError

    def held_out(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        """Documents the model is not trained on, for the held-out loss (fresh samples, unless a finite corpus)."""
        return self.sample(batch_size, generator, device)

    def training_probe(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        """Documents of the training data, drawn without moving the training stream along (a finite corpus: a
        random subset of it), for instruments that may only use what the model trains on."""
        return self.sample(batch_size, generator, device)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """Named capability metrics (accuracies are floats in [0, 1])."""
        raise NotImplementedError

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        """The few numbers a study reports (written to summary.json)."""
        return dict(metrics)

    def describe(self) -> dict:
        """Facts about the task instance worth saving with a run (split sizes, ...)."""
        return {}

    # Optional, for tasks that track what training has shown them (the trainer calls these when present):
    #   observe(batch)            every training batch
    #   data_metrics() -> dict    logged with each evaluation (e.g. distinct pairs observed so far)
    #   data_state() -> {name: tensor}, load_data_state(state)   kept in checkpoints, for exact resume
