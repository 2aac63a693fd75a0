"""Fine-tuning a cue model (caplab.train.cue_finetune) and the mode-connectivity study that runs it."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from caplab.models.convnets import VGG, VGGConfig
from caplab.tasks import make_task
from caplab.train import cue_finetune as CF
from helpers import caplab

CPU = torch.device("cpu")


def test_invariance_loss_on_hand_computed_features():
    z_clean = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0]])
    y_clean = torch.tensor([0, 0, 1])
    z_cue = torch.tensor([[0.0, 5.0], [1.0, 1.0]])
    y_cue = torch.tensor([0, 2])
    # class 0: unit means (1, 0) and (0, 1), squared distance 2; class 1 has no cue sample, class 2 no clean one
    assert math.isclose(CF.invariance_loss(z_clean, y_clean, z_cue, y_cue, 3).item(), 2 / 3, rel_tol=1e-6)
    same = CF.invariance_loss(z_clean, y_clean, z_clean * 7, y_clean, 3)  # unit length: the scale does not count
    assert same.item() < 1e-12


def test_barrier_loss_value_and_its_gradient_is_one_minus_t_times_the_interpolations():
    torch.manual_seed(0)
    model, cue = nn.Linear(3, 4), nn.Linear(3, 4)
    x, y, t, margin = torch.randn(8, 3), torch.randint(4, (8,)), 0.3, 1.0
    cue_params = {k: v.detach() for k, v in cue.named_parameters()}
    loss = CF.barrier_loss(model, cue_params, t, x, y, margin)
    loss.backward()
    between = nn.Linear(3, 4)
    with torch.no_grad():
        between.weight.copy_(t * cue.weight + (1 - t) * model.weight)
        between.bias.copy_(t * cue.bias + (1 - t) * model.bias)
    reference = (margin - F.cross_entropy(between(x), y)).abs()
    reference.backward()
    assert math.isclose(loss.item(), reference.item(), rel_tol=1e-6)
    assert torch.allclose(model.weight.grad, (1 - t) * between.weight.grad, atol=1e-7)
    assert torch.allclose(model.bias.grad, (1 - t) * between.bias.grad, atol=1e-7)


def test_the_barrier_steps_t_is_a_clipped_normal_in_the_middle_half():
    generator = torch.Generator().manual_seed(0)
    draws = torch.tensor([CF.draw_t(generator) for _ in range(20000)])
    assert draws.min() == 0.25 and draws.max() == 0.75
    # P(z <= -0.5) for z ~ N(0, 1) = 0.3085 of the draws sit on each end
    assert abs((draws == 0.25).float().mean().item() - 0.3085) < 0.015
    assert abs((draws == 0.75).float().mean().item() - 0.3085) < 0.015


def _cue_vgg():
    torch.manual_seed(0)
    task = make_task("digits", augment=False, cue="box", cue_fraction=0.8)
    return VGG(VGGConfig(width=4, depth=2, stages=1, in_channels=1, image_size=16, n_classes=10)), task


def test_last_layer_retraining_moves_only_the_head_and_methods_are_reproducible():
    model, task = _cue_vgg()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = CF.CueFinetuneConfig(epochs=1, head_epochs=3)
    CF.run_method("llrt", model, before, task, cfg, 0.05, seed=0)
    after = model.state_dict()
    for key in before:
        assert torch.equal(before[key], after[key]) != key.startswith("classifier.")
    again, _ = _cue_vgg()
    CF.run_method("llrt", again, before, task, cfg, 0.05, seed=0)
    assert all(torch.equal(after[k], again.state_dict()[k]) for k in after)
    with pytest.raises(ValueError, match="unknown fine-tuning method"):
        CF.run_method("dropout", model, before, task, cfg, 0.05, seed=0)


def test_finetuning_sets_are_clean_and_cued_shares_of_the_training_set():
    _, task = _cue_vgg()
    clean, cued = task.finetuning_sets(0.05, seed=3, device=CPU)
    rows, _ = task.training_rows()
    assert len(clean.targets) == math.floor(0.05 * len(rows)) and len(clean.targets) + len(cued.targets) == len(rows)
    assert not clean.labels["cue"].any() and cued.labels["cue"].all()  # D_C: every image with its cue (the paper's default)
    assert 0.6 < task.carries[cued.labels["index"]].float().mean() < 0.95  # though the cue model saw it on 80%


def test_cbft_runs_and_diverging_rates_are_one_clear_error():
    model, task = _cue_vgg()
    cue_state = {k: v.clone() for k, v in model.state_dict().items()}
    CF.run_method("cbft", model, cue_state, task, CF.CueFinetuneConfig(epochs=2, warmup_epochs=1), 0.05, seed=0)
    assert any(not torch.equal(cue_state[k], v) for k, v in model.state_dict().items())
    model, task = _cue_vgg()
    with pytest.raises(Exception, match="lower its rate"):
        CF.run_method("naive_medium", model, cue_state, task, CF.CueFinetuneConfig(epochs=3, lr_medium=1e12), 0.05, seed=0)


def test_mode_connectivity_study_end_to_end_and_resume_reuses_its_results(tmp_path):
    sets = ["train.steps=4", "train.eval_every=4", "train.checkpoint_every=4", "task.eval_samples=96", "task.corpus_size=300",
            "model.width=4", "model.depth=2", "model.stages=1", "study.seeds=2", "study.points=2", "study.midpoint_steps=2",
            "study.statistics_batches=1", "study.arms=[paths,methods]", "study.cue_fractions=[0.8]",
            "study.finetune={epochs: 1, head_epochs: 1}"]
    result = caplab("run", "mode-connectivity", *[x for s in sets for x in ("--set", s)], root=tmp_path)
    assert result.returncode == 0, result.stderr
    folder = next((tmp_path / "studies").iterdir())
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["paths"]) == {"cue-clean/linear", "cue-clean/quadratic", "cue-clean/aligned", "cue-clean-same-init/linear",
                                     "cue-naive_small/linear", "cue-naive_medium/linear", "cue-naive_large/linear",
                                     "cue-cue/linear", "cue-cue/aligned", "clean-clean/linear", "clean-clean/aligned"}
    assert summary["paths"]["cue-clean/linear"]["barrier"]["c"]["n"] == 2
    methods = summary["methods"]["0.8"]
    assert set(methods) == {"ri_chance", "clean_model", "cue_model", *CF.METHODS, *CF.CONTROLS}
    assert methods["cbft"]["ri"]["n"] == 2 and methods["scratch"]["ri_image"]["n"] == 2
    assert len(list((tmp_path / "studies").iterdir())) == 1 and len(json.loads((folder / "study.json").read_text())["runs"]) == 10
    for name in ("paths_loss.png", "barriers.png", "cue_reliance.png"):
        assert (folder / "figures" / name).is_file()
    stamps = {p.name: p.stat().st_mtime_ns for p in (folder / "results").iterdir()}
    result = caplab("resume", folder.name, root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "results").iterdir()} == stamps
    result = caplab("run", "cbft", "--set", "study.arms=[chords]", root=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "study.arms" in result.stderr
