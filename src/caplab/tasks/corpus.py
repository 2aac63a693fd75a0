"""Finite corpora: train on a fixed set of N documents of any task instead of fresh ones every step.

`task.corpus_size=N` (any task) draws N documents once, from a generator
seeded by `task.corpus_seed` (so every training seed sees the same corpus
unless the corpus seed changes too), and serves batches from it in epochs:
each epoch is a fresh permutation whose seed comes from the run's own
generator, so the order depends on `train.seed` and a resumed run continues
mid-epoch exactly (the position and the epoch's seed travel in the
checkpoint). Evaluation is on fresh documents of the same world: the
trainer's held-out loss comes from `held_out`, the capability metrics from
the task itself.

A task may build its corpus itself (`sample_corpus(n, generator, device)`),
e.g. the concept language, whose corpus shows each of its chosen
entity-value pairs at least once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from caplab.errors import ConfigError
from caplab.tasks.base import Batch, Task

CHUNK = 4096  # documents drawn per call while building a corpus


@dataclass
class CorpusConfig:
    corpus_size: int = 0  # N > 0: train on N fixed documents, in epochs; 0: fresh documents every step
    corpus_seed: int = 0  # which N documents (the training seed only orders them)

    def __post_init__(self) -> None:
        if self.corpus_size < 0:
            raise ValueError(f"task.corpus_size must be non-negative, got {self.corpus_size}")


CORPUS_KEYS = ("corpus_size", "corpus_seed")


def _select(batch: Batch, index: torch.Tensor) -> Batch:
    return Batch(batch.tokens.index_select(0, index), batch.targets.index_select(0, index),
                 batch.loss_mask.index_select(0, index), {k: v.index_select(0, index) for k, v in batch.labels.items()})


def _cat(batches: list[Batch]) -> Batch:
    return Batch(torch.cat([b.tokens for b in batches]), torch.cat([b.targets for b in batches]),
                 torch.cat([b.loss_mask for b in batches]),
                 {k: torch.cat([b.labels[k] for b in batches]) for k in batches[0].labels})


def draw_corpus(task: Task, n: int, seed: int, device) -> Batch:
    """N documents of `task`, the same for the same seed and device."""
    generator = torch.Generator(device=device).manual_seed(seed)
    if hasattr(task, "sample_corpus"):
        try:
            return task.sample_corpus(n, generator, device)
        except ValueError as exc:  # a request the corpus cannot meet
            raise ConfigError(str(exc)) from None
    return _cat([task.sample(min(CHUNK, n - start), generator, device) for start in range(0, n, CHUNK)])


class Corpus(Task):
    """`task` restricted to a fixed corpus of `cfg.corpus_size` documents (see module docstring)."""

    def __init__(self, task: Task, cfg: CorpusConfig) -> None:
        self.task, self.cfg = task, cfg
        self.name, self.Config = task.name, task.Config
        self.primary_metric, self.phase_metrics = task.primary_metric, task.phase_metrics
        self.input_kind, self.unit = task.input_kind, task.unit
        for name in ("vocab_size", "seq_len", "image_shape", "n_classes"):  # the inputs' shape, whichever the task has
            if hasattr(task, name):
                setattr(self, name, getattr(task, name))
        self._documents: dict[str, Batch] = {}
        self._order: Optional[tuple[int, torch.Tensor]] = None  # (epoch seed, permutation)
        self.epoch, self.epoch_seed, self.position = 0, 0, cfg.corpus_size  # the first draw starts epoch 1

    def documents(self, device) -> Batch:
        key = str(device)
        if key not in self._documents:
            self._documents[key] = draw_corpus(self.task, self.cfg.corpus_size, self.cfg.corpus_seed, device)
        return self._documents[key]

    def _permutation(self) -> torch.Tensor:
        if self._order is None or self._order[0] != self.epoch_seed:
            order = torch.randperm(self.cfg.corpus_size, generator=torch.Generator().manual_seed(self.epoch_seed))
            self._order = (self.epoch_seed, order)
        return self._order[1]

    def sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        data, n = self.documents(device), self.cfg.corpus_size
        parts, need = [], batch_size
        while need:
            if self.position >= n:  # a new epoch, in an order drawn from the run's generator
                self.epoch_seed = int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device))
                self.epoch, self.position = self.epoch + 1, 0
            take = min(need, n - self.position)
            parts.append(self._permutation()[self.position : self.position + take])
            self.position += take
            need -= take
        rows = torch.cat(parts).to(data.tokens.device)
        batch = _select(data, rows)
        batch.labels["index"] = rows  # the documents' places in the corpus (see training_rows)
        return batch

    @property
    def units_per_sample(self) -> int:
        return self.task.units_per_sample

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.task.loss(outputs, batch)

    def held_out(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        return self.task.sample(batch_size, generator, device)

    def training_probe(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        if batch_size > self.cfg.corpus_size:
            raise ConfigError(f"a probe of {batch_size} documents needs a corpus at least that large "
                              f"(task.corpus_size={self.cfg.corpus_size})")
        picks = torch.randperm(self.cfg.corpus_size, generator=generator, device=generator.device)[:batch_size]
        data = self.documents(device)
        return _select(data, picks.to(data.tokens.device))

    def training_batch(self, rows: torch.Tensor, device) -> Batch:
        """The corpus documents at these places."""
        data = self.documents(device)
        batch = _select(data, rows.to(data.tokens.device))
        batch.labels["index"] = rows.to(data.tokens.device)
        return batch

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The documents' places in the corpus (what batches carry as `index`) and their classes (image tasks)."""
        targets = self.documents(torch.device("cpu")).targets
        return torch.arange(len(targets)), targets

    def eval_set(self, device) -> Batch:
        return self.task.eval_set(device)

    def evaluate(self, model: nn.Module, device) -> dict[str, float]:
        return {**self.task.evaluate(model, device), "epoch": float(self.epoch)}

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return self.task.headline(metrics)

    def describe(self) -> dict:
        """The task's facts and the corpus's (drawing it here, so a request it cannot meet fails before a run exists)."""
        docs = self.documents(torch.device("cpu"))
        return {**self.task.describe(), "corpus": {"documents": self.cfg.corpus_size, "seed": self.cfg.corpus_seed,
                                                   "target_tokens": int(docs.mask.sum())}}

    # the data state a checkpoint keeps: where in which epoch, plus the task's own
    def observe(self, batch: Batch) -> None:
        if hasattr(self.task, "observe"):
            self.task.observe(batch)

    def data_metrics(self) -> dict[str, float]:
        return self.task.data_metrics() if hasattr(self.task, "data_metrics") else {}

    def data_state(self) -> dict[str, torch.Tensor]:
        inner = self.task.data_state() if hasattr(self.task, "data_state") else {}
        return {**inner, "corpus": torch.tensor([self.epoch, self.epoch_seed, self.position], dtype=torch.int64)}

    def load_data_state(self, state: dict[str, torch.Tensor]) -> None:
        self.epoch, self.epoch_seed, self.position = (int(x) for x in state["corpus"])
        if hasattr(self.task, "load_data_state"):
            self.task.load_data_state({k: v for k, v in state.items() if k != "corpus"})
