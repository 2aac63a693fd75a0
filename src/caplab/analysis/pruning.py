"""One-shot pruning by theta x gradient (Jain et al., ICLR 2024, App. D, Alg. 3).

Score every unit by the first-order change of a chosen loss when the unit is
removed: zeroing parameters theta changes the loss by about -theta . grad, so
the units with the largest `sum(theta * grad)` are those whose removal lowers
that loss most. Pruning the top K for the loss of a capability a fine-tuned
model lost tells whether a few units suppress it (the wrapper picture).

Units (`granularity`):
    "row"     one output row of a weight matrix (a neuron's input weights for `mlp.fc_in`)
    "head"    one attention head: its rows of `attn.qkv` (query, key and value) and its columns of `attn.out`
    "weight"  a single weight
Eligible parameters are the weight matrices of every attention and MLP linear
layer (embeddings and LayerNorms excluded), unless `params` names others.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn


@dataclass
class UnitScores:
    """Scores of every unit: unit i is `units[i] = (parameter name, index)`; index is a row, head or flat weight."""

    granularity: str
    units: list[tuple[str, int]]
    scores: torch.Tensor  # (n_units,)

    def top(self, k: int) -> list[tuple[str, int]]:
        return [self.units[i] for i in torch.argsort(self.scores, descending=True)[:k].tolist()]


def eligible_parameters(model: nn.Module) -> list[str]:
    """Weight matrices of attention and MLP linear layers."""
    return [name for name, p in model.named_parameters() if p.dim() == 2 and (".attn." in name or ".mlp." in name)]


def unit_scores(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor], granularity: str = "row",
                params: Optional[Iterable[str]] = None) -> UnitScores:
    """theta . grad of `loss_fn(model)` summed over each unit (see module docstring)."""
    if granularity not in ("row", "head", "weight"):
        raise ValueError(f"granularity must be 'row', 'head' or 'weight', got {granularity!r}")
    names = list(params) if params is not None else eligible_parameters(model)
    named = dict(model.named_parameters())
    model.zero_grad(set_to_none=True)
    loss_fn(model).backward()
    units, scores = [], []
    for name in names:
        param = named[name]
        contribution = (param.detach() * param.grad).float()  # (out, in)
        if granularity == "weight":
            per_unit = contribution.flatten()
        elif granularity == "row":
            per_unit = contribution.sum(1)
        else:
            if name.endswith("attn.qkv.weight"):
                per_unit = contribution.view(3, _heads(model), -1).sum((0, 2))  # rows: (q|k|v, head, d_head)
            elif name.endswith("attn.out.weight"):
                per_unit = contribution.view(contribution.shape[0], _heads(model), -1).sum((0, 2))  # columns by head
            else:
                continue
        units += [(name, i) for i in range(len(per_unit))]
        scores.append(per_unit)
    model.zero_grad(set_to_none=True)
    if not scores:
        raise ValueError(f"no eligible parameters for granularity {granularity!r}")
    return UnitScores(granularity, units, torch.cat(scores).cpu())


def _heads(model: nn.Module) -> int:
    return model.cfg.n_heads


def prune(model: nn.Module, units: list[tuple[str, int]], granularity: str) -> nn.Module:
    """A copy of `model` with `units` zeroed (the model itself is untouched)."""
    pruned = copy.deepcopy(model)
    named = dict(pruned.named_parameters())
    with torch.no_grad():
        for name, index in units:
            param = named[name]
            if granularity == "weight":
                param.view(-1)[index] = 0.0
            elif granularity == "row":
                param[index] = 0.0
            elif name.endswith("attn.qkv.weight"):
                param.view(3, _heads(pruned), -1, param.shape[1])[:, index] = 0.0
            elif name.endswith("attn.out.weight"):  # the head's input columns
                param.view(param.shape[0], _heads(pruned), -1)[:, index] = 0.0
            else:
                raise ValueError(f"{name} is not an attention projection; heads live in attn.qkv and attn.out")
    return pruned


def pruning_curve(model: nn.Module, scores: UnitScores, ks: Iterable[int],
                  evaluate: Callable[[nn.Module], dict[str, float]]) -> dict[int, dict[str, float]]:
    """`evaluate` (named capability metrics) of the model with its top-k units zeroed, for each k."""
    return {k: evaluate(prune(model, scores.top(k), scores.granularity).eval()) for k in ks}
