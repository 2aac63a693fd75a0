"""Optimizer and RNG state as flat tensor dicts, so they save as safetensors (no pickle)."""

from __future__ import annotations

import json

import torch


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Return (tensors, json-able metadata) that `optimizer_from_tensors` inverts."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                value = torch.tensor(value)
            tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for name, value in tensors.items():
        if not name.startswith("state."):
            continue
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_to_tensors(data_generator: torch.Generator) -> dict[str, torch.Tensor]:
    tensors = {"rng.data": data_generator.get_state(), "rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def rng_from_tensors(data_generator: torch.Generator, tensors: dict[str, torch.Tensor]) -> None:
    data_generator.set_state(tensors["rng.data"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])


def dumps(meta: dict) -> str:
    return json.dumps(meta, sort_keys=True)
