"""Image models: shapes, hook points, SkipInit, and FLOPs against torch.utils.flop_counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig
from caplab.models.mlp import MLP, MLPConfig
from caplab.models.norms import NORMS

SMALL = dict(width=8, image_size=16, n_classes=5, norm_groups=4)


def _measured_training_flops(model, batch):
    images = torch.randn(batch, model.cfg.in_channels, model.cfg.image_size, model.cfg.image_size)
    with FlopCounterMode(display=False) as counter:
        model(images).square().mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("model", [
    VGG(VGGConfig(depth=5, stages=3, **SMALL)),
    ResNet(ResNetConfig(depth=14, **SMALL)),
    ResNet(ResNetConfig(depth=8, norm="sws", **SMALL)),
    MLP(MLPConfig(width=32, depth=3, image_size=8, n_classes=5)),
], ids=["vgg", "resnet", "resnet-sws", "mlp"])
def test_training_flops_match_flop_counter(model):
    assert model.training_step_flops(6) == _measured_training_flops(model, 6)


def test_frozen_weights_skip_their_gradient_flops():
    model = VGG(VGGConfig(depth=3, stages=1, **SMALL))
    name = "blocks.1.conv.weight"
    saved = model.training_step_flops(4) - model.training_step_flops(4, {name: 1.0})
    model.blocks[1].conv.weight.requires_grad_(False)
    assert saved > 0 and model.training_step_flops(4) - saved == _measured_training_flops(model, 4)


@pytest.mark.parametrize("kind", NORMS)
def test_every_norm_in_both_convnets(kind):
    images = torch.randn(4, 3, 16, 16)
    for model in (VGG(VGGConfig(depth=4, norm=kind, **SMALL)), ResNet(ResNetConfig(depth=8, norm=kind, **SMALL))):
        logits = model(images)
        assert logits.shape == (4, 5) and torch.isfinite(logits).all()


def test_vgg_stages_double_width_and_halve_size():
    model = VGG(VGGConfig(depth=6, stages=3, width=8, image_size=16, norm="none"))
    _, cache = model.run_with_cache(torch.randn(2, 3, 16, 16), names=lambda n: n.endswith("hook_out"))
    shapes = [tuple(cache[f"blocks.{i}.hook_out"].shape[1:]) for i in range(6)]
    assert shapes == [(8, 16, 16), (8, 16, 16), (16, 8, 8), (16, 8, 8), (32, 4, 4), (32, 4, 4)]


def test_skipinit_blocks_start_as_identity():
    model = ResNet(ResNetConfig(depth=14, skipinit=True, norm="none", **SMALL))
    x = torch.randn(3, 3, 16, 16)
    _, cache = model.run_with_cache(x, names=lambda n: n.endswith("hook_out"))
    # block 0 keeps the stem's width and size: its output is its input, the stem's output
    torch.testing.assert_close(cache["blocks.0.hook_out"], model.stem(x))
    torch.testing.assert_close(cache["blocks.1.hook_out"], cache["blocks.0.hook_out"])


def test_resnet_depth_and_hooks():
    model = ResNet(ResNetConfig(depth=20, **SMALL))  # ResNet-20
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20  # 19 3x3 convs and the classifier
    assert {"hook_features", "blocks.8.hook_out", "blocks.8.hook_conv"} <= set(model.hook_points)


def test_bad_model_configs():
    with pytest.raises(ValueError, match="unknown model.norm 'bn'"):
        VGGConfig(norm="bn")
    with pytest.raises(ValueError, match="model.depth must be 2 x stages x blocks \\+ 2 \\(8, 14, 20, 56"):
        ResNetConfig(depth=18)
    with pytest.raises(ValueError, match="does not apply to an mlp"):
        MLPConfig(norm="instance")
