"""Comparisons: closed-form reach points, the matched random control, and a tiny mat comparison end to end."""

import json

import pytest

from caplab.analysis.emergence import loss_reach
from caplab.studies.compare import compare_curves, create_compare, load_compare, run_compare
from caplab.errors import ConfigError

TINY_MAT = ["base.train.steps=40", "base.train.eval_every=10", "base.train.checkpoint_every=40", "base.train.progress=never",
            "base.task.eval_samples=32", "base.model.d_model=32",
            "variants.mat.mat.every=10", "variants.mat.mat.probe=4",
            "variants.random.mat.every=10", "variants.random.mat.probe=4"]


def test_first_reach_interpolates_between_evaluations():
    records = [{"step": 0, "flops": 0, "eval_loss": 3.0}, {"step": 10, "flops": 100, "eval_loss": 2.0},
               {"step": 20, "flops": 200, "eval_loss": 1.0}]
    assert loss_reach(records, "flops", 1.5) == pytest.approx(150.0)
    assert loss_reach(records, "step", 2.0) == pytest.approx(10.0)
    assert loss_reach(records, "flops", 0.5) is None
    assert loss_reach(records, "step", 3.5) == 0.0  # already there at the first evaluation
    assert loss_reach([{"step": 0, "eval_loss": 1.0}, {"step": 10, "eval_loss": 0.5}], "step", 2.0) == 0.0
    summary = compare_curves({"a": [records], "b": [[{**r, "flops": 2 * r["flops"]} for r in records]]}, "a")
    assert summary["target_eval_loss"] == 1.0
    assert summary["variants"]["b"]["flops_saving"] == pytest.approx(-1.0)  # twice the FLOPs to the same loss
    assert summary["variants"]["b"]["reference_loss_at_same_flops"] is None  # b spent more than a ever did
    half = compare_curves({"a": [records], "c": [[{**r, "flops": r["flops"] // 2} for r in records]]}, "a")
    assert half["variants"]["c"]["reference_loss_at_same_flops"] == pytest.approx(2.0)  # a's loss at 100 FLOPs


def test_seed_means_censoring_and_the_paired_saving_interval():
    line = lambda flops_per_step: [{"step": s, "flops": flops_per_step * s, "eval_loss": 4.0 - 0.1 * s} for s in (0, 10, 20)]  # noqa: E731
    curves = {"full": [line(10), line(10), line(20)],          # reach loss 2.5 at step 15: 150, 150, 300 FLOPs
              "half": [line(5), line(5), line(10)],            # 75, 75, 150: half of each paired seed
              "slow": [line(10), line(10), line(10)[:2]]}      # the third seed stops at loss 3.0, censored at 100 FLOPs
    summary = compare_curves(curves, "full", target_loss=2.5)
    full, half, slow = (summary["variants"][v] for v in ("full", "half", "slow"))
    assert summary["target_from"] == "recipe" and summary["seeds"] == 3
    assert full["reach_flops"] == pytest.approx(200.0) and half["reach_flops"] == pytest.approx(100.0)
    assert half["flops_saving"] == pytest.approx(0.5) and half["flops_saving_interval"] == pytest.approx([0.5, 0.5])
    assert full["flops_saving"] == pytest.approx(0.0)
    assert slow["reach_flops"] is None and slow["reached"] == 2 and slow["flops_saving"] is None
    assert slow["reach_flops_at_least"] == pytest.approx((150 + 150 + 100) / 3)
    assert slow["final_eval_loss_per_seed"] == pytest.approx([2.0, 2.0, 3.0])
    untargeted = compare_curves(curves, "full")  # the reference's mean final loss
    assert untargeted["target_eval_loss"] == pytest.approx(2.0) and untargeted["target_from"] == "reference final loss"


def test_seeded_comparison_stops_at_the_target_and_freezes_what_mat_froze(tmp_path):
    recipe = tmp_path / "tiny-mat.yaml"
    recipe.write_text(
        "kind: compare\nseeds: 2\nseed_keys: [train.seed, task.corpus_seed]\ntarget_loss: 2.5\nreference: full\n"
        "base:\n  task: {name: pcfg_counting, tasks: [count], window: 32, count_window: 8, eval_samples: 16, corpus_size: 64}\n"
        "  model: {n_layers: 2, n_heads: 2, d_model: 32}\n"
        "  train: {steps: 30, batch_size: 8, lr: 3.0e-3, min_lr: 3.0e-3, warmup_steps: 0, eval_every: 5, log_spaced: false,"
        " checkpoint_every: 30, progress: never}\n"
        "variants:\n  full: {}\n"
        "  mat: {mat: {every: 5, rule: quantile, alpha: 0.5, probe: 4}}\n"
        "  frozen: {mat: {every: 5, rule: fixed}, match_frozen: mat}\n"
        "  random: {train: {mat_every: 5, mat_rule: random_static, mat_probe: 4}, match_active_fraction: mat}\n"  # the old train.mat_* keys still read
        "  frozen-most: {mat: {every: 5, rule: fixed}, match_frozen_most: mat}\n"
        "  random-params: {mat: {every: 5, rule: random_static, share: parameters},"
        " match_active_fraction: mat}\n"
        "read_targets: [3.0, 2.5]\n")
    path = create_compare(str(recipe), [], tmp_path)
    summary = run_compare(path)
    runs = json.loads((path / "study.json").read_text())["runs"]
    assert summary["seeds"] == 2 and all(len(ids) == 2 for ids in runs.values())
    for seed in range(2):
        configs = {v: json.loads((tmp_path / runs[v][seed] / "config.json").read_text()) for v in runs}
        assert all(c["train"]["seed"] == seed and c["task"]["corpus_seed"] == seed and c["train"]["stop_at"] == 2.5
                   for c in configs.values())
        assert configs["frozen"]["mat"]["frozen"] == summary["frozen_at_end"]["mat"][seed]
        assert summary["frozen_at_end"]["frozen"][seed] == summary["frozen_at_end"]["mat"][seed]  # and kept them frozen
        mat_share = [r["mat_active_fraction"] for r in _metrics(tmp_path / runs["mat"][seed])]
        assert configs["random"]["mat"]["alpha"] == pytest.approx(sum(mat_share) / len(mat_share))
        param_share = [r["mat_active_params"] for r in _metrics(tmp_path / runs["mat"][seed])]
        assert configs["random-params"]["mat"]["alpha"] == pytest.approx(sum(param_share) / len(param_share))
        assert configs["frozen-most"]["mat"]["frozen"] == summary["frozen_most"]["mat"][seed]
        for v in runs:  # a run ends at its first evaluation at or below the target, or at the step budget
            losses = [(r["step"], r["eval_loss"]) for r in _metrics(tmp_path / runs[v][seed])]
            assert all(loss > 2.5 for step, loss in losses[1:-1]) and (losses[-1][1] <= 2.5 or losses[-1][0] == 30)
    assert summary["variants"]["full"]["flops_saving"] in (0.0, None)
    # the targets read afterwards: 2.5 is the stop target, so there it agrees with the main reading
    assert set(summary["at_targets"]) == {"3", "2.5"}
    assert summary["at_targets"]["2.5"]["mat"]["reach_flops_per_seed"] == summary["variants"]["mat"]["reach_flops_per_seed"]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert run_compare(path)["variants"]["mat"]["flops"] == summary["variants"]["mat"]["flops"]  # resumed: nothing retrained
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_mat_comparison_runs_and_matches_the_control_to_mat(tmp_path):
    path = create_compare("mat", TINY_MAT, tmp_path)
    summary = run_compare(path)
    study = json.loads((path / "study.json").read_text())
    mat_share = summary["variants"]["mat"]["mean_active_fraction"]
    control = json.loads((tmp_path / study["runs"]["random"][0] / "config.json").read_text())
    assert control["mat"]["alpha"] == pytest.approx(mat_share)
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
