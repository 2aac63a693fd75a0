"""The normalization zoo against closed forms (written out in float64 here) and PyTorch's own layers."""

import math

import pytest
import torch
from torch import nn

from caplab.models.norms import (NORMS, RELU_GAIN, EvoNormB0, EvoNormS0, FilterResponseNorm, GroupNorm, NormSpec,
                                 ScaledReLU, ScaledStdConv2d, SkipInit, VarianceNorm, WeightNormConv2d)

EPS = 1e-5


def _input(shape=(6, 8, 5, 5), seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 1.5)


def _randomise_affine(layer, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + 1)
    return layer


def _per_channel(t, x):
    return t.view((1, -1) + (1,) * (x.dim() - 2))


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_group_norm_closed_form(groups):
    x = _input()
    layer = _randomise_affine(GroupNorm(8, groups).double())
    n, c = x.shape[:2]
    g = x.reshape(n, groups, -1)
    ref = ((g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + EPS)).reshape(x.shape)
    ref = ref * _per_channel(layer.weight, x) + _per_channel(layer.bias, x)
    torch.testing.assert_close(layer(x), ref)


def test_layer_and_instance_norm_match_pytorch():
    x = _input().float()
    layer = NormSpec("layer").norm_act(8)[0]
    torch.testing.assert_close(layer(x), nn.functional.layer_norm(x, x.shape[1:], eps=EPS), atol=1e-5, rtol=1e-5)
    instance = _randomise_affine(NormSpec("instance").norm_act(8)[0])
    reference = nn.InstanceNorm2d(8, affine=True, eps=EPS)
    reference.load_state_dict(instance.state_dict())
    torch.testing.assert_close(instance(x), reference(x), atol=1e-5, rtol=1e-5)


def test_group_size_sets_the_group_count():
    assert NormSpec("group", group_size=4).group_count(32) == 8
    assert NormSpec("group", groups=32).group_count(16) == 16  # capped at the channel count
    with pytest.raises(ValueError, match="groups of 3"):
        NormSpec("group", group_size=3).group_count(16)
    with pytest.raises(ValueError, match="unknown norm 'bn'"):
        NormSpec("bn")


def test_batch_norm_is_pytorch_batch_norm_with_the_papers_statistics():
    x = _input().float()
    block = NormSpec("batch").norm_act(8)
    assert isinstance(block[0], nn.BatchNorm2d)
    centred = (x - x.mean((0, 2, 3), keepdim=True)) / torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + EPS)
    torch.testing.assert_close(block(x), torch.relu(centred), atol=1e-5, rtol=1e-5)


def test_variance_norm_divides_by_root_mean_square_and_keeps_a_running_average():
    x = _input()
    layer = _randomise_affine(VarianceNorm(8).double())
    second = x.pow(2).mean((0, 2, 3))
    ref = x / _per_channel(torch.sqrt(second + EPS), x) * _per_channel(layer.weight, x) + _per_channel(layer.bias, x)
    torch.testing.assert_close(layer(x), ref)
    torch.testing.assert_close(layer.running_second_moment, 0.9 * torch.ones(8, dtype=torch.float64) + 0.1 * second)
    layer.eval()
    ref_eval = x / _per_channel(torch.sqrt(layer.running_second_moment + EPS), x)
    torch.testing.assert_close(layer(x), ref_eval * _per_channel(layer.weight, x) + _per_channel(layer.bias, x))


def test_filter_response_norm_with_tlu():
    x = _input()
    layer = _randomise_affine(FilterResponseNorm(8).double())
    nu2 = x.pow(2).mean((2, 3), keepdim=True)
    y = x / torch.sqrt(nu2 + layer.eps.abs())
    ref = torch.maximum(y * _per_channel(layer.weight, x) + _per_channel(layer.bias, x), _per_channel(layer.tau, x))
    torch.testing.assert_close(layer(x), ref)


def test_evonorm_s0_closed_form():
    x = _input()
    layer = _randomise_affine(EvoNormS0(8, groups=4).double())
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        for group in range(4):
            channels = slice(2 * group, 2 * group + 2)
            std = torch.sqrt(x[i, channels].var(unbiased=False) + EPS)
            for ch in range(channels.start, channels.stop):
                xc = x[i, ch]
                out[i, ch] = xc * torch.sigmoid(layer.v[ch] * xc) / std * layer.weight[ch] + layer.bias[ch]
    torch.testing.assert_close(layer(x), out)


def test_evonorm_b0_closed_form_in_train_and_eval():
    x = _input()
    layer = _randomise_affine(EvoNormB0(8).double())
    batch_std = torch.sqrt(x.var((0, 2, 3), unbiased=False) + EPS)
    instance_std = torch.sqrt(x.var((2, 3), unbiased=False, keepdim=True) + EPS)
    denominator = torch.maximum(_per_channel(batch_std, x), _per_channel(layer.v, x) * x + instance_std)
    ref = x / denominator * _per_channel(layer.weight, x) + _per_channel(layer.bias, x)
    torch.testing.assert_close(layer(x), ref)
    layer.eval()
    running = 0.9 + 0.1 * x.var((0, 2, 3), unbiased=False)
    denominator = torch.maximum(_per_channel(torch.sqrt(running + EPS), x), _per_channel(layer.v, x) * x + instance_std)
    torch.testing.assert_close(layer(x), x / denominator * _per_channel(layer.weight, x) + _per_channel(layer.bias, x))


def test_weight_norm_conv_matches_pytorch_weight_norm():
    torch.manual_seed(0)
    conv = WeightNormConv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        conv.gain.mul_(torch.linspace(0.5, 2.0, 5))
    reference = nn.Conv2d(3, 5, 3, padding=1)
    reference.load_state_dict({"weight": conv.weight.detach(), "bias": conv.bias.detach()})
    reference = nn.utils.parametrizations.weight_norm(reference, dim=0)
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(conv.gain.view(-1, 1, 1, 1))
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(conv(x), reference(x))


def test_scaled_relu_whitens_a_standard_normal():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = ScaledReLU()(z)
    assert abs(y.mean().item()) < 3e-3 and abs(y.var().item() - 1) < 3e-3
    assert RELU_GAIN == pytest.approx(1 / math.sqrt(0.5 - 0.5 / math.pi))  # relu(z) has variance (1 - 1/pi) / 2


def test_scaled_weight_standardisation_filters():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(4, 6, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(7).add_(3)  # any scale and shift of the raw weight is standardised away
    w = conv.effective_weight().flatten(1)
    fan_in = 4 * 9
    torch.testing.assert_close(w.mean(1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(w.var(1, unbiased=False) * fan_in, torch.full((6,), RELU_GAIN ** 2, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)


def test_skipinit_starts_at_zero_and_learns():
    branch = SkipInit()
    x = torch.randn(3, 4)
    assert torch.equal(branch(x), torch.zeros_like(x))
    branch(x).sum().backward()
    assert branch.alpha.grad is not None and branch.alpha.grad != 0


@pytest.mark.parametrize("kind", NORMS)
def test_every_norm_builds_a_conv_block_that_trains(kind):
    spec = NormSpec(kind, groups=4)
    block = nn.Sequential(spec.conv(3, 8, 3), spec.norm_act(8))
    x = torch.randn(4, 3, 6, 6)
    out = block(x)
    assert out.shape == (4, 8, 6, 6) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in block.parameters() if p.requires_grad)
    assert (block[0].bias is not None) == (kind in ("weight", "sws"))
