"""The Task contract: a data-generating process that samples batches and scores models.

A Task owns its inputs (a vocabulary and sequence length, or an image shape),
its objective (`loss`: how a model's outputs on a batch are scored) and its
default config (a dataclass named `Config` on the class). Sampling is vectorised in torch, seeded
by an explicit generator and happens on the training device. A Task never
knows about the Trainer or the Run that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Batch:
    """One training batch; what each tensor holds is the task's to define.

    inputs:  what the model reads: (batch, pos) token ids for token tasks, (batch, C, H, W) images for image tasks.
    targets: what the objective compares the output with: (batch, pos) next-token ids, (batch,) class ids.
    mask:    float, 1 where a target counts towards the loss: (batch, pos) for tokens, (batch,) for images.
    labels:  extra per-sample annotations instruments may need (parse annotations, concept values, ...).
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    labels: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def tokens(self) -> torch.Tensor:  # the name token tasks and their instruments use
        return self.inputs

    @property
    def loss_mask(self) -> torch.Tensor:
        return self.mask


DATA_UNITS = ("tokens", "images")  # the units tasks count their data in; logged beside `step`, never a metric


class Task:
    """Base class of data-generating processes (see module docstring)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    primary_metric: ClassVar[str] = "eval_loss"  # the capability sweeps track by default
    phase_metrics: ClassVar[tuple[str, ...]] = ()  # capabilities whose order of emergence a study reports
    input_kind: ClassVar[str] = "tokens"  # what the model reads: "tokens" or "images" (which model kinds fit)
    unit: ClassVar[str] = "tokens"  # what throughput and the data seen are counted in

    vocab_size: int
    seq_len: int  # length of `tokens` in a batch

    @property
    def units_per_sample(self) -> int:
        """Units (`unit`) in one sample: a token sequence's length, 1 for an image."""
        return self.seq_len

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The objective a model is trained on: here masked next-token cross-entropy over (batch, pos, vocab) logits."""
        per_token = F.cross_entropy(outputs.float().flatten(0, 1), batch.targets.flatten(), reduction="none")
        mask = batch.mask.flatten()
        return (per_token * mask).sum() / mask.sum()

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        raise NotImplementedError

    def special_tokens(self) -> dict[str, Optional[int]]:
        """The vocabulary's start (bos), end (eos) and padding (pad) token ids; None where it has none."""
        return {"bos": None, "eos": None, "pad": None}

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
