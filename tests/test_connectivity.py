"""Mode connectivity (caplab.analysis.connectivity, `caplab connect`): paths, barriers, alignment, the Bezier midpoint."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from caplab.analysis import connectivity as C
from caplab.errors import ConfigError
from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig
from caplab.models.mlp import MLP, MLPConfig
from caplab.tasks import make_task
from helpers import caplab

CPU = torch.device("cpu")


def _trained_vgg(steps=60, seed=0, width=8):
    torch.manual_seed(seed)
    task = make_task("digits", augment=False)
    model = VGG(VGGConfig(width=width, depth=4, stages=2, in_channels=1, image_size=16, n_classes=10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = task.sample(64, generator, CPU)
        loss = task.loss(model(batch.inputs), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, task


def _statistics(task, n=2):
    batches = [task.sample(128, torch.Generator().manual_seed(100 + i), CPU).inputs for i in range(n)]
    return lambda: batches


def test_barrier_formula_on_known_curves():
    alphas = [i / 10 for i in range(11)]
    assert math.isclose(C.loss_barrier(alphas, [1 + 4 * a * (1 - a) for a in alphas]), 1.0)  # a bump of 1 at 0.5
    assert math.isclose(C.loss_barrier(alphas, [2 + 3 * a for a in alphas]), 0.0, abs_tol=1e-12)  # the line itself
    assert C.loss_barrier(alphas, [a * a for a in alphas]) == 0.0  # convex, below the chord: only the endpoints touch it
    skewed = [2 * (1 - a) + 0.5 * a + (0.3 if a == 0.3 else 0.0) for a in alphas]
    assert math.isclose(C.loss_barrier(alphas, skewed), 0.3)
    with pytest.raises(ValueError):
        C.loss_barrier([0.0, 0.5], [1.0, 2.0])


def test_points_and_path_endpoints_are_the_two_models():
    model_a, task = _trained_vgg(steps=20, seed=0)
    model_b, _ = _trained_vgg(steps=20, seed=1)
    a, b = C.detached(model_a.state_dict()), C.detached(model_b.state_dict())
    mid = C.interpolate(a, b, 0.5)
    for k in a:
        assert torch.equal(C.interpolate(a, b, 0.0)[k], a[k])
        if a[k].is_floating_point():
            assert torch.allclose(C.interpolate(a, b, 1.0)[k], b[k])
            assert torch.allclose(C.bezier(a, mid, b, 0.0)[k], a[k]) and torch.allclose(C.bezier(a, mid, b, 1.0)[k], b[k])
            assert torch.allclose(C.bezier(a, mid, b, 0.5)[k], mid[k])  # the chord's midpoint as control: the line
    sets = {"held_out": task.eval_set(CPU)}
    statistics = _statistics(task)
    curve = C.connect(model_a, a, b, "linear", sets, statistics, points=2)
    for alpha, model in ((0.0, model_a), (1.0, model_b)):
        C.refresh_statistics(model, statistics())
        point = next(p for p in curve["points"] if p["alpha"] == alpha)
        assert math.isclose(point["held_out_loss"], C.score(model, sets)["held_out_loss"], rel_tol=1e-5)


def test_statistics_are_the_exact_average_over_the_batches():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    batches = [torch.randn(32, 3, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    assert C.refresh_statistics(model, batches) == 1
    with torch.no_grad():
        means = torch.stack([model[0](x).mean(0) for x in batches]).mean(0)
    assert torch.allclose(model[1].running_mean, means, atol=1e-6)
    assert model[1].momentum == 0.1  # restored


def test_a_permuted_copy_computes_the_same_function_and_alignment_undoes_the_permutation():
    model, task = _trained_vgg()
    a = C.detached(model.state_dict())
    generator = torch.Generator().manual_seed(5)
    perms = [torch.randperm(block.conv.weight.shape[0], generator=generator) for block in model.blocks]
    b = C.permute_channels(model, a, perms)
    images = task.eval_set(CPU).inputs[:64]
    model.eval()
    with torch.no_grad():
        reference = model(images)
        model.load_state_dict(b)
        assert torch.allclose(model(images), reference, atol=1e-4)
    sets, statistics = {"held_out": task.eval_set(CPU)}, _statistics(task)
    unaligned = C.connect(model, a, b, "linear", sets, statistics, points=4)
    aligned = C.connect(model, a, b, "aligned", sets, statistics, points=4)
    assert unaligned["barriers"]["held_out"] > 0.3  # averaging mismatched channels breaks a trained network
    assert abs(aligned["barriers"]["held_out"]) < 1e-4
    for found, applied in zip(aligned["permutations"], perms):
        assert found == torch.argsort(applied).tolist()


def test_mlps_align_and_residual_or_grouped_models_are_refused():
    torch.manual_seed(0)
    mlp = MLP(MLPConfig(width=16, depth=2, in_channels=1, image_size=8, n_classes=3, norm="batch"))
    state = C.detached(mlp.state_dict())
    perms = [torch.randperm(16), torch.randperm(16)]
    moved = C.permute_channels(mlp, state, perms)
    x = torch.randn(10, 1, 8, 8)
    mlp.eval()
    with torch.no_grad():
        reference = mlp(x)
        mlp.load_state_dict(moved)
        assert torch.allclose(mlp(x), reference, atol=1e-5)
    with pytest.raises(ConfigError, match="vgg and mlp"):
        C.channel_layers(ResNet(ResNetConfig(width=8, depth=8, in_channels=1, image_size=8)))
    with pytest.raises(ConfigError, match="groups"):
        C.channel_layers(VGG(VGGConfig(width=16, depth=2, stages=1, norm="group", norm_groups=4, in_channels=1, image_size=8)))


class _Point(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(dim))

    def forward(self, inputs):
        return self.theta.expand(len(inputs), -1)


def test_quadratic_midpoint_finds_the_bowls_known_optimum():
    # L(theta) = |theta - t|^2; over alpha ~ U(0, 1) the best control point is 2.5 t - 0.75 (a + b)
    # (set the derivative of E[L(bezier(alpha))] in M to zero: E[w(1-a)^2]=E[w a^2]=1/20, E[w]=1/6, E[w^2]=1/30, w=a(1-a))
    t, a, b = torch.tensor([1.0, -2.0]), {"theta": torch.tensor([0.0, 0.0])}, {"theta": torch.tensor([2.0, 1.0])}
    batch = type("B", (), {"inputs": torch.zeros(1, 1), "targets": None})()
    mid = C.fit_midpoint(_Point(2), a, b, sample=lambda g: batch, loss=lambda out, _: ((out[0] - t) ** 2).sum(),
                         steps=6000, lr=0.05, momentum=0.0, weight_decay=0.0, seed=0)
    expected = 2.5 * t - 0.75 * (a["theta"] + b["theta"])
    assert torch.allclose(mid["theta"], expected, atol=0.15), (mid["theta"], expected)


TINY_CUE_RECIPE = """
task: {name: digits, augment: false, cue: box}
model: {kind: vgg, width: 4, depth: 2, stages: 1}
train: {steps: 3, batch_size: 16, warmup_steps: 0, eval_every: 3, checkpoint_every: 3, progress: never}
"""


def _tiny_run(root, *extra):
    recipe = root / "tiny-cue.yaml"
    recipe.write_text(TINY_CUE_RECIPE)
    result = caplab("run", str(recipe), *[x for s in extra for x in ("--set", s)], root=root)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1].rsplit("/", 1)[-1]


def test_caplab_connect_writes_the_curve_and_refuses_incompatible_runs(tmp_path):
    first = _tiny_run(tmp_path, "task.cue_fraction=1.0")
    assert (tmp_path / first / "figures" / "cue_reliance.png").is_file()  # a cue task's report shows the four sets
    second = _tiny_run(tmp_path, "task.cue_fraction=0.0", "train.seed=1")
    result = caplab("connect", first, second, "--path", "quadratic", "--points", "2", "--steps", "3", root=tmp_path)
    assert result.returncode == 0, result.stderr
    curve = json.loads(Path(result.stdout.strip()).read_text())
    assert [p["alpha"] for p in curve["points"]] == [0.0, 0.5, 1.0] and set(curve["barriers"]) == {"nc", "c", "rc", "ri"}
    assert (tmp_path / "connections" / f"{first}--{second}-quadratic" / "midpoint.safetensors").is_file()
    wider = _tiny_run(tmp_path, "model.width=6")
    result = caplab("connect", first, wider, root=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "different shapes" in result.stderr
    result = caplab("connect", first, second, "--path", "cubic", root=tmp_path)
    assert result.returncode == 2 and "bad value 'cubic'" in result.stderr and result.stderr.count("\n") == 1
    result = caplab("connect", first, "no-such-run", root=tmp_path)
    assert result.returncode != 0 and result.stderr.count("\n") == 1


def test_runs_of_different_kinds_are_not_compatible():
    from caplab.config import resolve
    from caplab.studies.connect import compatible

    base = {"task": {"name": "digits", "cue": "box"}}
    vgg = resolve("a", {**base, "model": {"kind": "vgg", "width": 4, "depth": 2, "stages": 1}})
    mlp = resolve("b", {**base, "model": {"kind": "mlp", "width": 8, "depth": 1}})
    with pytest.raises(ConfigError, match="different model kinds \\(vgg and mlp\\)"):
        compatible(vgg, mlp, vgg.make_model().state_dict(), mlp.make_model().state_dict(), ("a", "b"))
    compatible(vgg, vgg, vgg.make_model().state_dict(), vgg.make_model().state_dict(), ("a", "a"))  # no error
