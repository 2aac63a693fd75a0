"""A multilayer perceptron on flattened images: the simplest model kind, and a baseline for the convnets.

(batch, channels, height, width) images -> flatten -> `depth` hidden layers of
`width` units, each linear -> norm -> ReLU -> linear classifier. Norms are those
of `caplab.models.norms` that make sense without spatial axes.

Hook points: `blocks.{i}.hook_out` (batch, width) after each hidden layer, and
`hook_features` (the last of them, what the classifier reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from caplab.models.convnets import ImageClassifier, ImageModelConfig
from caplab.models.hooks import HookPoint

MLP_NORMS = ("none", "batch", "variance", "layer", "group")


@dataclass
class MLPConfig(ImageModelConfig):
    width: int = 256
    depth: int = 2  # hidden layers
    norm: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.norm not in MLP_NORMS:
            raise ValueError(f"model.norm {self.norm!r} does not apply to an mlp; valid: {', '.join(MLP_NORMS)}")
        if self.depth < 1:
            raise ValueError(f"model.depth must be at least 1, got {self.depth}")


class _Hidden(nn.Module):
    def __init__(self, cfg: MLPConfig, fan_in: int) -> None:
        super().__init__()
        self.linear = nn.Linear(fan_in, cfg.width, bias=cfg.norm == "none")
        self.norm_act = cfg.norm_spec.norm_act(cfg.width, spatial=False)
        self.hook_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.norm_act(self.linear(x)))


class MLP(ImageClassifier):
    input_layer = "blocks.0.linear"

    def __init__(self, cfg: MLPConfig) -> None:
        super().__init__()
        self.cfg = cfg
        fan_in = cfg.in_channels * cfg.image_size * (cfg.image_width or cfg.image_size)
        self.blocks = nn.ModuleList(_Hidden(cfg, fan_in if i == 0 else cfg.width) for i in range(cfg.depth))
        self.hook_features = HookPoint()
        self.classifier = nn.Linear(cfg.width, cfg.n_classes)
        for block in self.blocks:
            nn.init.kaiming_normal_(block.linear.weight, mode="fan_in", nonlinearity="relu")
        self.setup_hooks()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.flatten(1)  # (batch, channels x height x width)
        for block in self.blocks:
            x = block(x)
        return self.classifier(self.hook_features(x))
