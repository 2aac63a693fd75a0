"""Signal-propagation diagnostics on inputs with known values, and the paper's first claim at initialisation."""

import pytest
import torch

from caplab.analysis.normalization import (activation_variance, mean_cosine_similarity, signal_propagation,
                                           stable_rank)
from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig


def test_cosine_and_stable_rank_closed_forms():
    aligned = torch.randn(1, 12).repeat(8, 1) * torch.arange(1, 9.0)[:, None]  # one direction, any lengths
    assert mean_cosine_similarity(aligned) == pytest.approx(1.0)
    assert stable_rank(aligned) == pytest.approx(1.0)
    orthogonal = torch.eye(8, 12) * 3
    assert mean_cosine_similarity(orthogonal) == pytest.approx(0.0)
    assert stable_rank(orthogonal) == pytest.approx(8.0)
    # two groups of 4 identical rows, the groups orthogonal: C has two eigenvalues 4, mean similarity 3/7
    two = torch.cat([torch.eye(2, 6)[:1].repeat(4, 1), torch.eye(2, 6)[1:].repeat(4, 1)])
    assert mean_cosine_similarity(two) == pytest.approx(3 / 7)
    assert stable_rank(two) == pytest.approx(2.0)


def test_activation_variance_is_per_channel_over_batch_and_space():
    x = torch.zeros(4, 2, 3, 3)
    x[:, 0] = torch.arange(4.0)[:, None, None]  # channel 0: values 0..3 over the batch, variance 1.25
    x[:, 1] = 5.0  # channel 1: constant
    assert activation_variance(x) == pytest.approx(1.25 / 2)


def test_gradient_norms_match_autograd_through_plain_hooks():
    torch.manual_seed(0)
    model = VGG(VGGConfig(depth=3, stages=1, width=8, image_size=8, n_classes=3, norm="batch"))
    images, targets = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    reading = signal_propagation(model, images, targets)
    outputs = []
    handles = [block.conv.register_forward_hook(lambda m, i, o: outputs.append(o)) for block in model.blocks]
    loss = torch.nn.functional.cross_entropy(model(images), targets)
    grads = torch.autograd.grad(loss, outputs)
    for h in handles:
        h.remove()
    assert reading["gradient_norm"] == pytest.approx([g.norm().item() for g in grads], rel=1e-6)
    assert len(reading["activation_variance"]) == len(reading["stable_rank"]) == 3


def test_unnormalised_resnet_activations_grow_with_depth_and_skipinit_stops_it():
    torch.manual_seed(0)
    images, targets = torch.randn(32, 3, 16, 16), torch.randint(10, (32,))
    shape = dict(depth=20, width=8, image_size=16, norm="none")
    plain = signal_propagation(ResNet(ResNetConfig(**shape)), images, targets)["activation_variance"]
    skip = signal_propagation(ResNet(ResNetConfig(skipinit=True, **shape)), images, targets)["activation_variance"]
    batch = signal_propagation(ResNet(ResNetConfig(**{**shape, "norm": "batch"})), images, targets)["activation_variance"]
    # residual branches add variance at every block without normalization (He init doubles it roughly per block)
    assert plain[-1] / plain[0] > 20
    # SkipInit: every branch starts at zero, so blocks within a stage pass the stream through unchanged
    assert skip[2] == pytest.approx(skip[0]) and skip[-1] == pytest.approx(skip[-3])
    # BatchNorm before each branch: growth is linear in the number of blocks, not exponential
    assert batch[-1] / batch[0] < plain[-1] / plain[0] / 5


def test_signal_diagnostics_reach_the_logged_records_of_an_image_run():
    from caplab import load_config
    from caplab.experiment import build

    cfg = load_config("shapes", ["task.image_size=16", "task.eval_samples=16", "model.width=8", "model.depth=3",
                                 "model.stages=2", "train.steps=4", "train.batch_size=8", "train.eval_every=4",
                                 "train.progress=never", "diagnostics.signal_every=2"])
    _, _, trainer = build(cfg)
    record = trainer.fit()
    signal = trainer.plugins["signal"]
    assert [r["step"] for r in signal.history] == [2, 4]
    assert record["stable_rank_last"] == pytest.approx(signal.history[-1]["stable_rank"][-1])
    assert 0 < record["cosine_similarity_first"] <= 1 and record["activation_variance_first"] > 0
