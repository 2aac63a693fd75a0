"""Comparisons: closed-form reach points, the matched random control, and a tiny mat comparison end to end."""

import json

import pytest

from caplab.analysis.emergence import loss_reach
from caplab.compare_study import compare_curves, create_compare, load_compare, run_compare
from caplab.errors import ConfigError

TINY_MAT = ["base.train.steps=40", "base.train.eval_every=10", "base.train.checkpoint_every=40", "base.train.progress=never",
            "base.task.eval_samples=32", "base.model.d_model=32",
            "variants.mat.train.mat_every=10", "variants.mat.train.mat_probe=4",
            "variants.random.train.mat_every=10", "variants.random.train.mat_probe=4"]


def test_first_reach_interpolates_between_evaluations():
    records = [{"step": 0, "flops": 0, "eval_loss": 3.0}, {"step": 10, "flops": 100, "eval_loss": 2.0},
               {"step": 20, "flops": 200, "eval_loss": 1.0}]
    assert loss_reach(records, "flops", 1.5) == pytest.approx(150.0)
    assert loss_reach(records, "step", 2.0) == pytest.approx(10.0)
    assert loss_reach(records, "flops", 0.5) is None
    assert loss_reach(records, "step", 3.5) == 0.0  # already there at the first evaluation
    assert loss_reach([{"step": 0, "eval_loss": 1.0}, {"step": 10, "eval_loss": 0.5}], "step", 2.0) == 0.0
    summary = compare_curves({"a": records, "b": [{**r, "flops": 2 * r["flops"]} for r in records]}, "a")
    assert summary["target_eval_loss"] == 1.0
    assert summary["variants"]["b"]["flops_saving"] == pytest.approx(-1.0)  # twice the FLOPs to the same loss
    assert summary["variants"]["b"]["reference_loss_at_same_flops"] is None  # b spent more than a ever did
    half = compare_curves({"a": records, "c": [{**r, "flops": r["flops"] // 2} for r in records]}, "a")
    assert half["variants"]["c"]["reference_loss_at_same_flops"] == pytest.approx(2.0)  # a's loss at 100 FLOPs


def test_mat_comparison_runs_and_matches_the_control_to_mat(tmp_path):
    path = create_compare("mat", TINY_MAT, tmp_path)
    summary = run_compare(path)
    study = json.loads((path / "study.json").read_text())
    mat_share = summary["variants"]["mat"]["mean_active_fraction"]
    control = json.loads((tmp_path / study["runs"]["random"] / "config.json").read_text())
    assert control["train"]["mat_alpha"] == pytest.approx(mat_share)
    assert summary["variants"]["full"]["flops_saving"] == pytest.approx(0.0)
    assert summary["variants"]["full"]["mean_active_fraction"] is None
    # MAT skips weight gradients of frozen modules but pays for its estimates
    assert summary["variants"]["mat"]["flops"] != summary["variants"]["full"]["flops"]
    assert {p.name for p in (path / "figures").iterdir()} == {"loss_vs_flops.png", "loss_vs_step.png", "loss_vs_elapsed_s.png"}
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_compare(path)["variants"]["mat"]["flops"] == summary["variants"]["mat"]["flops"]  # resumed: nothing retrained
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_bad_comparisons_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="earlier variant"):
        load_compare("mat", ["variants.full.match_active_fraction=random"])
    with pytest.raises(ConfigError, match="base.KEY=VALUE"):
        load_compare("optimizers", ["train.steps=3"])
    with pytest.raises(ConfigError, match="bad value 'adam'"):
        create_compare("optimizers", ["variants.muon.train.optimizer=adam"], tmp_path)
