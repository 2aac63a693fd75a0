"""Linear probes on the residual stream, and attention patterns, of any caplab GPT.

Layer 0 is the input to the first block (embeddings plus positions); layer i
is the residual stream after block i (`blocks.{i-1}.hook_resid_post`).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def residual_stream(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(n_layers + 1, batch, d_model) residual stream at one position per sequence.

    Arguments:
        tokens: (batch, pos) token ids; positions: (batch,) the position to read in each row.
    """
    n_layers = model.cfg.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]
    _, cache = model.run_with_cache(tokens, names=names)
    rows = torch.arange(len(tokens), device=tokens.device)
    return torch.stack([cache[name][rows, positions] for name in names]).float()


def train_probe(features: torch.Tensor, labels: torch.Tensor, n_classes: int, steps: int = 300, lr: float = 1e-2,
                weight_decay: float = 1e-4, seed: int = 0) -> nn.Module:
    """A linear classifier (features standardised) fitted by full-batch AdamW on cross-entropy."""
    torch.manual_seed(seed)
    mean, std = features.mean(0), features.std(0).clamp(min=1e-6)
    probe = nn.Sequential(_Standardise(mean, std), nn.Linear(features.shape[1], n_classes)).to(features.device)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(probe(features), labels).backward()
        optimizer.step()
    return probe.eval()


class _Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def probe_accuracy_by_layer(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor,
                            n_classes: Optional[int] = None, train_fraction: float = 0.75, steps: int = 300) -> list[float]:
    """Held-out accuracy of a linear probe for `labels` at every layer (0 = embeddings).

    The first `train_fraction` of the rows train each probe; the rest test it.
    """
    n_classes = n_classes or int(labels.max()) + 1
    stream = residual_stream(model, tokens, positions)  # (L+1, B, d)
    cut = int(train_fraction * len(labels))
    if not 0 < cut < len(labels):
        raise ValueError("train_fraction leaves no training or no test rows")
    accuracies = []
    for features in stream:
        probe = train_probe(features[:cut], labels[:cut], n_classes, steps=steps)
        with torch.no_grad():
            accuracies.append((probe(features[cut:]).argmax(-1) == labels[cut:]).float().mean().item())
    return accuracies


@torch.no_grad()
def attention_patterns(model: nn.Module, tokens: torch.Tensor, heads: list[tuple[int, int]]) -> torch.Tensor:
    """(len(heads), batch, query_pos, key_pos) attention patterns of the given (layer, head) pairs."""
    layers = sorted({layer for layer, _ in heads})
    _, cache = model.run_with_cache(tokens, names=[f"blocks.{layer}.attn.hook_pattern" for layer in layers])
    return torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][:, head] for layer, head in heads])
