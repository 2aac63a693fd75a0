"""Model kinds by name (`model.kind`): each a config dataclass, a module class, and the inputs it reads.

A model's config takes the fields the task fixes from the task (a GPT's
vocabulary and context, an image model's channels, size and classes), so a
recipe sets only the model's own shape. A kind that cannot read the task's
inputs (a GPT on images, a VGG on tokens) is refused before any run exists.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig
from caplab.models.gpt import GPT, GPTConfig
from caplab.models.mlp import MLP, MLPConfig


@dataclass(frozen=True)
class ModelKind:
    config: type
    module: type
    reads: str  # the Task.input_kind it takes: "tokens" or "images"


MODEL_KINDS: dict[str, ModelKind] = {
    "gpt": ModelKind(GPTConfig, GPT, "tokens"),
    "mlp": ModelKind(MLPConfig, MLP, "images"),
    "vgg": ModelKind(VGGConfig, VGG, "images"),
    "resnet": ModelKind(ResNetConfig, ResNet, "images"),
}


def kinds_reading(input_kind: str) -> list[str]:
    return [name for name, kind in MODEL_KINDS.items() if kind.reads == input_kind]


def task_fields(kind: str, task) -> dict:
    """The config fields of model `kind` that `task` fixes."""
    if MODEL_KINDS[kind].reads == "tokens":
        return {"d_vocab": task.vocab_size, "n_ctx": task.seq_len}
    channels, height, width = task.image_shape
    fields = {"in_channels": channels, "image_size": height, "n_classes": task.n_classes}
    return fields if width == height else {**fields, "image_width": width}


def model_kind_of(config) -> str:
    """The kind name of a model config instance."""
    for name, kind in MODEL_KINDS.items():
        if type(config) is kind.config:
            return name
    raise TypeError(f"not a model config: {type(config).__name__}")


def build_model(config) -> nn.Module:
    """A freshly initialised model of the kind `config` describes (seed torch first for reproducibility)."""
    return MODEL_KINDS[model_kind_of(config)].module(config)
