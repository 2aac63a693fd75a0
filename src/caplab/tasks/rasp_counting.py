"""Counting for the compiled counter program (Jain et al., ICLR 2024, App. B.1, C.1).

A sample is `BOS x_0 ... x_{n-1}` with tokens drawn uniformly, with
replacement, from `letters`; the answer is read at query index 1 (model
position 2), where `caplab.rasp.counter` puts its count:

    target at position 2 = how many `operand` tokens the sequence holds

The vocabulary is the compiled counter's: `<bos>`, the letters, then the
counts 0..n, so `caplab.rasp_compiler.compile_program(counter("a"), letters, n)`
builds a model that solves the task with operand a exactly. Attention is
bidirectional in that model, so `targets` here are read at the position
itself (not the next token); only position 2 carries loss.

For fine-tuning on operand b, `correlation` = CTr makes count(b) = count(a) + 1
in that fraction of samples. The b tokens are left alone (so the label,
count(b), keeps its natural histogram at every CTr) and a tokens are rewritten
to or from the other letters; samples with no b are redrawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from caplab.tasks.base import Batch, Task

READOUT = 2  # model position of query index 1 (BOS is position 0)


@dataclass
class RaspCountingConfig:
    letters: str = "abcdefghi"
    length: int = 40  # tokens after BOS (the paper's example has about 46)
    operand: str = "a"  # the letter counted in training samples (a: the compiled capability; b: fine-tuning)
    correlation: float = 0.0  # CTr: fraction of samples with count(b) = count(a) + 1
    eval_correlations: list[float] = field(default_factory=lambda: [0.0])  # CTe = c adds `_cte{c}` to metric names
    eval_samples: int = 1024
    seed: int = 0

    def __post_init__(self) -> None:
        if len(set(self.letters)) != len(self.letters) or not {"a", "b"} <= set(self.letters) or len(self.letters) < 3:
            raise ValueError(f"task.letters must be distinct letters including a, b and one more, got {self.letters!r}")
        if self.operand not in self.letters:
            raise ValueError(f"task.operand must be one of task.letters ({self.letters}), got {self.operand!r}")
        if not 2 <= self.length <= 256:
            raise ValueError(f"task.length must lie in 2..256, got {self.length}")
        if not 0 <= self.correlation <= 1 or not all(0 <= c <= 1 for c in self.eval_correlations):
            raise ValueError("task.correlation and task.eval_correlations must lie in [0, 1]")
        if not self.eval_correlations or self.eval_samples < 1:
            raise ValueError("task.eval_correlations needs a value and task.eval_samples must be positive")


class RaspCounting(Task):
    """Count a letter, read at query index 1 (see module docstring)."""

    name = "rasp_counting"
    Config = RaspCountingConfig
    primary_metric = "count_a"

    def __init__(self, cfg: Optional[RaspCountingConfig] = None) -> None:
        self.cfg = cfg = cfg or RaspCountingConfig()
        self.vocabulary = ["<bos>"] + list(cfg.letters) + list(range(cfg.length + 1))
        self.letter_offset, self.count_offset = 1, 1 + len(cfg.letters)
        self.vocab_size = len(self.vocabulary)
        self.seq_len = cfg.length + 1
        self._eval_cache: dict = {}

    def special_tokens(self) -> dict:
        return {"bos": 0, "eos": None, "pad": None}  # vocabulary[0] is <bos>

    def letter(self, name: str) -> int:
        return self.cfg.letters.index(name)

    def draw(self, n: int, generator, device, correlation: float) -> torch.Tensor:
        """(n, length) letter indices; a `correlation` fraction with count(b) = count(a) + 1."""
        a, b, k = self.letter("a"), self.letter("b"), len(self.cfg.letters)
        parts, have = [], 0
        while have < n:
            m = n - have + 8
            text = torch.randint(k, (m, self.cfg.length), generator=generator, device=device)
            chosen = torch.rand(m, generator=generator, device=device) < correlation
            text, ok = self._correlate(text, chosen, a, b, k, generator)
            keep = ok.nonzero().squeeze(1)[: n - have]
            parts.append(text[keep])
            have += len(keep)
        return torch.cat(parts)

    @staticmethod
    def _correlate(text, chosen, a: int, b: int, k: int, generator):
        """Rewrite a tokens in chosen rows so that count(a) = count(b) - 1 (rows with no b fail)."""
        need = (text == b).sum(1) - 1 - (text == a).sum(1)  # a tokens to add (negative: to remove)
        others = (text != a) & (text != b)
        source = torch.where((need > 0)[:, None], others, text == a)
        ok = ~chosen | (((text == b).sum(1) >= 1) & (source.sum(1) >= need.abs()))
        keys = torch.where(source, torch.rand(text.shape, generator=generator, device=text.device), 2.0)
        rank = keys.argsort(1).argsort(1)
        rewrite = chosen[:, None] & ok[:, None] & source & (rank < need.abs()[:, None])
        # removed a tokens become a letter other than a and b, drawn uniformly
        filler = torch.randint(k - 2, text.shape, generator=generator, device=text.device)
        filler = filler + (filler >= min(a, b)).long()
        filler = filler + (filler >= max(a, b)).long()
        return torch.where(rewrite, torch.where((need > 0)[:, None], a, filler), text), ok

    def encode(self, text: torch.Tensor, operand: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (n, length + 1) with BOS, answer ids (n,)) for letter indices `text`."""
        tokens = torch.cat([torch.zeros_like(text[:, :1]), self.letter_offset + text], 1)
        return tokens, self.count_offset + (text == operand).sum(1)

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        text = self.draw(batch_size, generator, device, self.cfg.correlation)
        tokens, answer = self.encode(text, self.letter(self.cfg.operand))
        targets = torch.zeros_like(tokens)
        targets[:, READOUT] = answer
        mask = torch.zeros(tokens.shape, device=device)
        mask[:, READOUT] = 1.0
        return Batch(tokens, targets, mask, {"answer": answer})

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """`count_a`, `count_b` accuracy at CTe = 0, and with `_cte{c}` for every other CTe in eval_correlations."""
        metrics = {}
        for correlation in self.cfg.eval_correlations:
            key = (str(device), correlation)
            if key not in self._eval_cache:
                generator = torch.Generator(device=device).manual_seed(self.cfg.seed + 17)
                self._eval_cache[key] = self.draw(self.cfg.eval_samples, generator, device, correlation)
            text = self._eval_cache[key]
            suffix = "" if correlation == 0 else f"_cte{correlation:g}"
            for name in ("a", "b"):
                tokens, answer = self.encode(text, self.letter(name))
                predicted = model(tokens)[:, READOUT].argmax(-1)
                metrics[f"count_{name}{suffix}"] = (predicted == answer).float().mean().item()
        return metrics

    def probe_set(self, n: int, generator, device) -> tuple[torch.Tensor, torch.Tensor, dict, dict]:
        """(tokens, readout positions, {"a", "b", "c": count of that letter}, {"a": token id, "b": token id}) at CTe = 0."""
        text = self.draw(n, generator, device, 0.0)
        tokens, _ = self.encode(text, self.letter(self.cfg.operand))
        counts = {name: (text == self.letter(name)).sum(1) for name in ("a", "b", "c")}
        ids = {name: self.letter_offset + self.letter(name) for name in ("a", "b")}
        return tokens, torch.full((n,), READOUT, device=device), counts, ids

    def describe(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "vocab_size": self.vocab_size, "vocabulary": [str(v) for v in self.vocabulary]}
