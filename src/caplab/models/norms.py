"""The normalization zoo of image models: one name selects how a conv block normalizes.

Layers follow Lubana, Dick and Tanaka (NeurIPS 2021, "Beyond BatchNorm"):
statistics are biased variances, eps = 1e-5, and every layer has a per-channel
affine (gamma, beta). Inputs are (batch, channels, *spatial); a 2-D input
(batch, channels) is an MLP's features (no spatial axes).

Activation-based normalizers act on a conv's output; two of them also replace
the activation that follows:

    none        identity, then ReLU
    batch       BatchNorm (statistics over batch and space; running averages for eval)
    variance    BatchNorm without centering (divides by the batch's root mean square)
    layer       statistics over (channels, space) of each sample: GroupNorm with one group
    instance    statistics over space of each sample and channel: GroupNorm with a group per channel
    group       statistics over a group of channels and space (`groups` groups, or groups of `group_size`)
    frn         Filter Response Normalization, x / sqrt(mean_space(x^2) + |eps|), then the TLU max(y, tau)
                in place of ReLU (Singh and Krishnan, 2020)
    evonorm_s0  x sigmoid(v x) / group std, in place of the activation (Liu et al., 2020)
    evonorm_b0  x / max(sqrt(batch var + eps), v x + instance std), in place of the activation

Parametric normalizers reparametrize the conv's weight instead and keep the
activation (with a gain that preserves the variance of a ReLU's output):

    weight      Weight Normalization: W = g V / ||V|| per filter; then the scaled ReLU
                sqrt(2 pi / (pi - 1)) (relu(x) - 1 / sqrt(2 pi)) (Salimans and Kingma, 2016, as the paper uses it)
    sws         Scaled Weight Standardization: W = gain gamma (V - mean) / (std sqrt(fan_in)), then ReLU
                (Brock et al., 2021), gain = sqrt(2 pi / (pi - 1))

A model asks `NormSpec.conv(...)` for each conv and `NormSpec.norm_act(...)`
for what follows it, so swapping the normalizer is one config value.
`SkipInit` scales a residual branch by a learned scalar that starts at 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("none", "batch", "variance", "layer", "instance", "group", "frn", "evonorm_s0", "evonorm_b0", "weight", "sws")
PARAMETRIC = ("weight", "sws")
RELU_GAIN = math.sqrt(2 * math.pi / (math.pi - 1))  # 1 / std of relu(z), z ~ N(0, 1)


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)  # broadcast per channel over (batch, channels, *spatial)
    return x * weight.view(shape) + bias.view(shape)


class _ChannelAffine(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))


class GroupNorm(_ChannelAffine):
    """Statistics over each group of channels and all spatial positions of a sample.

    One group is LayerNorm (over channels and space), one group per channel is InstanceNorm.
    """

    def __init__(self, channels: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__(channels)
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} groups")
        self.groups, self.eps = groups, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.groups, self.weight, self.bias, self.eps)


class VarianceNorm(_ChannelAffine):
    """BatchNorm without centering: x / sqrt(mean_{batch, space}(x^2) + eps), running average for eval."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(channels)
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_second_moment", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = [0] + list(range(2, x.dim()))
        if self.training:
            second_moment = x.pow(2).mean(dims)
            with torch.no_grad():
                self.running_second_moment.lerp_(second_moment, self.momentum)
        else:
            second_moment = self.running_second_moment
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return _affine(x * torch.rsqrt(second_moment + self.eps).view(shape), self.weight, self.bias)


class FilterResponseNorm(_ChannelAffine):
    """FRN with its thresholded linear unit: max(gamma x / sqrt(mean_space(x^2) + |eps|) + beta, tau)."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__(channels)
        self.eps = nn.Parameter(torch.tensor(eps))  # learned; its absolute value is used
        self.tau = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.dim())) or [1]  # an MLP feature has no space: normalize over channels
        y = x * torch.rsqrt(x.pow(2).mean(dims, keepdim=True) + self.eps.abs())
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.maximum(_affine(y, self.weight, self.bias), self.tau.view(shape))


class EvoNormS0(_ChannelAffine):
    """x sigmoid(v x) / std over each group of channels and space, then the affine (no separate activation)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-5) -> None:
        super().__init__(channels)
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} groups")
        self.groups, self.eps = groups, eps
        self.v = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        grouped = x.reshape(x.shape[0], self.groups, -1)  # (batch, groups, channels per group x space)
        std = torch.sqrt(grouped.var(-1, unbiased=False, keepdim=True) + self.eps)
        std = std.expand_as(grouped).reshape(x.shape)
        return _affine(x * torch.sigmoid(self.v.view(shape) * x) / std, self.weight, self.bias)


class EvoNormB0(_ChannelAffine):
    """x / max(sqrt(batch variance + eps), v x + instance std), then the affine; running variance for eval."""

    def __init__(self, channels: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(channels)
        self.eps, self.momentum = eps, momentum
        self.v = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if self.training:
            batch_var = x.var([0] + list(range(2, x.dim())), unbiased=False)
            with torch.no_grad():
                self.running_var.lerp_(batch_var, self.momentum)
        else:
            batch_var = self.running_var
        spatial = list(range(2, x.dim())) or [1]
        instance_std = torch.sqrt(x.var(spatial, unbiased=False, keepdim=True) + self.eps)
        denominator = torch.maximum(torch.sqrt(batch_var + self.eps).view(shape), self.v.view(shape) * x + instance_std)
        return _affine(x / denominator, self.weight, self.bias)


class ScaledReLU(nn.Module):
    """sqrt(2 pi / (pi - 1)) (relu(x) - 1 / sqrt(2 pi)): zero mean and unit variance for x ~ N(0, 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RELU_GAIN * (F.relu(x) - 1 / math.sqrt(2 * math.pi))


class WeightNormConv2d(nn.Conv2d):
    """A conv whose filters are g V / ||V|| (g per output channel, initialised to ||V|| so it starts as V)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.empty(self.out_channels))
        self.reset_gain()

    def reset_gain(self) -> None:
        """g = ||V||: the effective weight equals the raw one (call after re-initialising V)."""
        with torch.no_grad():
            self.gain.copy_(self.weight.flatten(1).norm(dim=1))

    def effective_weight(self) -> torch.Tensor:
        norms = self.weight.flatten(1).norm(dim=1).clamp_min(1e-12)
        return self.weight * (self.gain / norms).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class ScaledStdConv2d(nn.Conv2d):
    """A conv whose filters are standardised: gain gamma (V - mean) / (std sqrt(fan_in)) per output channel."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gamma = nn.Parameter(torch.ones(self.out_channels))
        self.eps = eps

    def effective_weight(self) -> torch.Tensor:
        flat = self.weight.flatten(1)  # (out, fan_in)
        fan_in = flat.shape[1]
        mean = flat.mean(1, keepdim=True)
        var = flat.var(1, unbiased=False, keepdim=True)
        standardised = (flat - mean) * torch.rsqrt(var * fan_in + self.eps)
        return (RELU_GAIN * self.gamma.view(-1, 1) * standardised).view_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), self.bias)


class SkipInit(nn.Module):
    """A learned scalar on a residual branch, 0 at initialisation (De and Smith, 2020): the block starts as identity."""

    def __init__(self) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.alpha * x


@dataclass(frozen=True)
class NormSpec:
    """Which normalizer an image model uses, and how it groups channels.

    groups: number of channel groups (group, evonorm_s0), capped at the channel count;
    group_size: channels per group instead (wins over `groups` when set).
    """

    kind: str = "batch"
    groups: int = 32
    group_size: Optional[int] = None
    eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.kind not in NORMS:
            raise ValueError(f"unknown norm {self.kind!r}; valid: {', '.join(NORMS)}")
        if self.groups < 1 or (self.group_size is not None and self.group_size < 1):
            raise ValueError("norm groups and group_size must be at least 1")

    def group_count(self, channels: int) -> int:
        if self.group_size is not None:
            if channels % self.group_size:
                raise ValueError(f"{channels} channels cannot be split into groups of {self.group_size}")
            return channels // self.group_size
        groups = min(self.groups, channels)
        if channels % groups:
            raise ValueError(f"{channels} channels cannot be split into {groups} groups")
        return groups

    @property
    def conv_bias(self) -> bool:
        """Convs carry a bias only where nothing after them re-centres (the parametric normalizers)."""
        return self.kind in PARAMETRIC

    def conv(self, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
        """A conv of this normalizer's kind (reparametrized for weight / sws), padded to keep the size at stride 1."""
        cls = {"weight": WeightNormConv2d, "sws": ScaledStdConv2d}.get(self.kind, nn.Conv2d)
        return cls(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=self.conv_bias)

    def norm_act(self, channels: int, spatial: bool = True) -> nn.Module:
        """The normalization and activation that follow a conv (or a linear layer when not `spatial`)."""
        kind = self.kind
        if kind == "none":
            return nn.ReLU()
        if kind == "weight":
            return ScaledReLU()
        if kind == "sws":
            return nn.ReLU()
        if kind == "batch":
            norm = nn.BatchNorm2d(channels, eps=self.eps) if spatial else nn.BatchNorm1d(channels, eps=self.eps)
            return nn.Sequential(norm, nn.ReLU())
        if kind == "variance":
            return nn.Sequential(VarianceNorm(channels, self.eps), nn.ReLU())
        if kind == "frn":
            return FilterResponseNorm(channels)
        if kind == "evonorm_b0":
            return EvoNormB0(channels, self.eps)
        groups = {"layer": 1, "instance": channels}.get(kind) or self.group_count(channels)
        if kind == "evonorm_s0":
            return EvoNormS0(channels, groups, self.eps)
        return nn.Sequential(GroupNorm(channels, groups, self.eps), nn.ReLU())
