"""Image classifiers sized for a CPU: a VGG-style plain CNN and a CIFAR-style pre-activation ResNet.

Both take (batch, channels, height, width) images and return (batch, classes)
logits, normalize with any layer of `caplab.models.norms` (`norm`), and carry
hook points for the diagnostics and instruments:

    blocks.{i}.hook_conv      (batch, C, H, W)  a conv's output, before its normalization (VGG)
    blocks.{i}.hook_out       (batch, C, H, W)  the block's output (after norm + activation; a ResNet's residual stream)
    hook_features             (batch, C)        the pooled penultimate features the classifier reads

VGG (Beyond BatchNorm's non-residual CNNs): `depth` conv layers of 3x3, each
followed by norm + activation; the width doubles and the size halves (stride 2)
at the start of each of `stages` stages.

ResNet (He et al., 2016, pre-activation, CIFAR style): a 3x3 stem, then
`stages` stages of residual blocks (norm-act-conv-norm-act-conv), width
doubling and stride 2 from the second stage on; a 1x1 conv projects the
shortcut where the shape changes. `depth` counts the stem, the two convs of
every block and the classifier: 6 x blocks per stage + 2 for three stages
(ResNet-20: 3 blocks a stage, ResNet-56: 9). `skipinit` scales each residual branch
by a learned scalar that starts at 0 (De and Smith, 2020).

Initialisation is Kaiming-normal (fan_in) for convs, as in the paper's code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from caplab.models.hooks import HookedModule, HookPoint
from caplab.models.layer_flops import step_flops, trace_layer_costs
from caplab.models.norms import NORMS, NormSpec, SkipInit, WeightNormConv2d


@dataclass
class ImageModelConfig:
    """Fields every image model has; `in_channels`, `image_size` and `n_classes` come from the task."""

    width: int = 16  # channels of the first stage
    norm: str = "batch"  # one of caplab.models.norms.NORMS
    norm_groups: int = 32  # group / evonorm_s0: number of channel groups (capped at the channels)
    norm_group_size: Optional[int] = None  # channels per group instead of a group count
    in_channels: int = 3
    image_size: int = 32  # the height (and the width, unless image_width is set)
    n_classes: int = 10
    image_width: int = 0  # 0: square images (a dominoes cue stacks two images: twice as tall as wide)

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"unknown model.norm {self.norm!r}; valid: {', '.join(NORMS)}")
        for name in ("width", "in_channels", "image_size", "n_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be at least 1, got {getattr(self, name)}")

    @property
    def norm_spec(self) -> NormSpec:
        return NormSpec(self.norm, self.norm_groups, self.norm_group_size)


@dataclass
class VGGConfig(ImageModelConfig):
    depth: int = 6  # conv layers
    stages: int = 3  # width doubles (and the size halves) this many times minus one

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.stages <= self.depth:
            raise ValueError(f"model.stages must lie in 1..depth ({self.depth}), got {self.stages}")


@dataclass
class ResNetConfig(ImageModelConfig):
    depth: int = 20  # 2 x stages x blocks_per_stage + 2 layers: 20 (ResNet-20), 56 (ResNet-56), 8 (the smallest)
    stages: int = 3
    skipinit: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stages < 1 or self.depth < 2 * self.stages + 2 or (self.depth - 2) % (2 * self.stages):
            raise ValueError(f"model.depth must be 2 x stages x blocks + 2 ({', '.join(str(2 * self.stages * b + 2) for b in (1, 2, 3, 9))}, "
                             f"...), got {self.depth}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // (2 * self.stages)


def _init_convs(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        if isinstance(module, WeightNormConv2d):
            nn.init.ones_(module.gain)  # unit-norm filters at initialisation, as the paper's WN layer (gamma = 1)


class ImageClassifier(HookedModule):
    """What both image models share: FLOPs counted from their own shapes, and the classifier head."""

    cfg: ImageModelConfig

    def training_step_flops(self, batch: int, frozen: dict[str, float] = {}) -> int:
        """Forward + backward FLOPs of one training step on `batch` images (conv and linear layers)."""
        if not hasattr(self, "_layer_costs"):
            example = torch.zeros(1, self.cfg.in_channels, self.cfg.image_size, self.cfg.image_width or self.cfg.image_size,
                                  device=next(self.parameters()).device)
            self._layer_costs = trace_layer_costs(self, example)
        return step_flops(self._layer_costs, batch, frozen)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        features = self.hook_features(x.mean((2, 3)))  # global average pool: (batch, C)
        return self.classifier(features)


class VGG(ImageClassifier):
    input_layer = "blocks.0.conv"  # fed the data (optimizers such as Muon treat it as an input layer)

    def __init__(self, cfg: VGGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        spec = cfg.norm_spec
        per_stage = [cfg.depth // cfg.stages + (i < cfg.depth % cfg.stages) for i in range(cfg.stages)]
        blocks, c_in = [], cfg.in_channels
        for stage, count in enumerate(per_stage):
            c_out = cfg.width * 2 ** stage
            for j in range(count):
                stride = 2 if stage > 0 and j == 0 else 1
                blocks.append(_ConvBlock(spec, c_in, c_out, stride))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.hook_features = HookPoint()
        self.classifier = nn.Linear(c_in, cfg.n_classes)
        _init_convs(self)
        self.setup_hooks()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images
        for block in self.blocks:
            x = block(x)
        return self._head(x)


class _ConvBlock(nn.Module):
    def __init__(self, spec: NormSpec, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv = spec.conv(c_in, c_out, 3, stride)
        self.hook_conv = HookPoint()
        self.norm_act = spec.norm_act(c_out)
        self.hook_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_out(self.norm_act(self.hook_conv(self.conv(x))))


class _ResidualBlock(nn.Module):
    """Pre-activation: x + branch(x), branch = conv(norm_act(conv(norm_act(x))))."""

    def __init__(self, spec: NormSpec, c_in: int, c_out: int, stride: int, skipinit: bool) -> None:
        super().__init__()
        self.norm_act1 = spec.norm_act(c_in)
        self.conv1 = spec.conv(c_in, c_out, 3, stride)
        self.hook_conv = HookPoint()
        self.norm_act2 = spec.norm_act(c_out)
        self.conv2 = spec.conv(c_out, c_out, 3)
        self.skip = SkipInit() if skipinit else nn.Identity()
        self.shortcut = spec.conv(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else None
        self.hook_out = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.norm_act1(x)
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        branch = self.conv2(self.norm_act2(self.hook_conv(self.conv1(pre))))
        return self.hook_out(shortcut + self.skip(branch))


class ResNet(ImageClassifier):
    input_layer = "stem"

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        spec = cfg.norm_spec
        self.stem = spec.conv(cfg.in_channels, cfg.width, 3)
        blocks, c_in = [], cfg.width
        for stage in range(cfg.stages):
            c_out = cfg.width * 2 ** stage
            for j in range(cfg.blocks_per_stage):
                blocks.append(_ResidualBlock(spec, c_in, c_out, 2 if stage > 0 and j == 0 else 1, cfg.skipinit))
                c_in = c_out
        self.blocks = nn.ModuleList(blocks)
        self.final_norm_act = spec.norm_act(c_in)
        self.hook_features = HookPoint()
        self.classifier = nn.Linear(c_in, cfg.n_classes)
        _init_convs(self)
        self.setup_hooks()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return self._head(self.final_norm_act(x))
