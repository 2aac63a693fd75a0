import json

import numpy as np
import pytest

from caplab import ConfigError
from caplab.analysis.emergence import peak_read
from caplab.studies.percolation_data import graph_reachability
from caplab.studies.sweep import create_sweep, plan, run_sweep


def test_graph_reachability_closed_forms():
    # one shown pair connects nothing else; every pair of a connected world connects everything
    assert graph_reachability(6, 10, 0.5, [1], trials=3)[0] == 0.0
    assert graph_reachability(6, 10, 0.5, [30], trials=3)[0] == pytest.approx(1.0)
    share = graph_reachability(16, 32, 0.5, [8, 23, 45, 90, 180], trials=10)
    assert np.all(np.diff(share) > 0) and share[0] < 0.05 and share[-1] > 0.95  # a transition around sqrt(16 * 32) = 23


def test_linked_grid_keys_move_together():
    entries = plan({"task.a,task.b": [[1, 2], [3, 4]], "task.c": [5, 6]}, seeds=1)
    assert [e["setting"] for e in entries] == [{"task.a": 1, "task.b": 2, "task.c": 5}, {"task.a": 1, "task.b": 2, "task.c": 6},
                                               {"task.a": 3, "task.b": 4, "task.c": 5}, {"task.a": 3, "task.b": 4, "task.c": 6}]
    with pytest.raises(ConfigError, match="links 2 fields"):
        plan({"task.a,task.b": [1, 2]}, seeds=1)


RECIPE = """
description: a tiny data-limited percolation sweep
sweep:
  grid:
    task.entities_per_class,task.properties_per_class: [[6, 2], [12, 2]]
    task.pairs_scale: [0.5, 2]
  seeds: 2
  seed_keys: [train.seed, task.pairs_seed, task.corpus_seed]
  metric: reachable_pairs_specific
  ensemble: 8
  analysis: data_percolation
  read: peak
task: {name: concept_language, n_classes: 4, pii_fraction: 0.0, values_per_property: 4, density: 0.5, n_relative: 2,
       p_np_conj: 0.0, p_desc: 1.0, task_prior: [1.0, 0.0, 0.0], max_length: 24, corpus_size: 128, eval_samples: 8,
       eval_reachable: 32}
model: {n_layers: 1, n_heads: 2, d_model: 16}
train: {steps: 6, batch_size: 8, warmup_steps: 1, eval_every: 3, checkpoint_every: 6, log_spaced: false, progress: never}
"""


def test_a_data_percolation_sweep_fits_thresholds_from_every_curve(tmp_path):
    recipe = tmp_path / "tiny-percolation-data.yaml"
    recipe.write_text(RECIPE)
    path = create_sweep(str(recipe), {}, None, root=tmp_path)
    summary = run_sweep(path)["data_percolation"]
    assert summary["runs"] == 8 and summary["curves"] == 4  # 2 sizes x 2 seeds, each a curve over 2 values of D
    for unit in summary["units"]:
        assert len(unit["pairs"]) == 2 and unit["pairs"][0] < unit["pairs"][1]
        if unit["censored"]:  # never reached: a lower bound at the largest D, kept in the fit
            assert unit["threshold"] == unit["pairs"][-1] and max(unit["score"]) < 0.5
    assert summary["censored"] == sum(u["censored"] for u in summary["units"])
    saved = json.loads((path / "data_percolation.json").read_text())
    assert saved["curves"] == 4 and (path / "figures" / "data_percolation_scaling.png").is_file()
    # read at the peak; the final read of the same runs is carried beside it and matches their last evaluation
    assert summary["read"] == "peak" and len(summary["final_read"]["thresholds"]) == 2
    from caplab.studies.sweep import completed_runs

    evaluations = [store.metrics() for _, store in completed_runs(path)]
    finals = sorted(v for u in summary["units"] for v in u["score_final"])
    assert finals == pytest.approx(sorted(e[-1]["reachable_pairs_specific"] for e in evaluations))
    steps = {e["step"] for run in evaluations for e in run}
    assert all(s in {(x + y) / 2 for x in steps for y in steps} for u in summary["units"] for s in u["peak_step"])
    # the convergence check compares the last two evaluations, whatever the read
    for size in summary["sizes"]:
        units = [u for u in summary["units"] if (u["entities"], u["values"]) == (size["entities"], size["values"])]
        change = np.abs(np.mean([np.subtract(u["score_final"], u["score_previous"]) for u in units], axis=0)).max()
        assert size["change_since_previous_evaluation"] == pytest.approx(change)


def test_peak_read_scores_each_half_where_the_other_peaks():
    evaluations = [{"step": 0, "reachable_pairs_specific_a": 0.1, "reachable_pairs_specific_b": 0.2},
                   {"step": 5, "reachable_pairs_specific_a": 0.5, "reachable_pairs_specific_b": 0.4},
                   {"step": 9, "reachable_pairs_specific_a": 0.3, "reachable_pairs_specific_b": 0.6}]
    score, step, at_end = peak_read(evaluations, "reachable_pairs_specific")
    assert score == pytest.approx((0.4 + 0.3) / 2) and step == 7 and at_end
    score, step, at_end = peak_read(evaluations[:2], "reachable_pairs_specific")
    assert score == pytest.approx((0.4 + 0.5) / 2) and step == 5 and at_end
    score, _, at_end = peak_read([evaluations[1], {**evaluations[0], "step": 7}], "reachable_pairs_specific")  # both halves peak before the end
    assert score == pytest.approx(0.45) and not at_end


def test_a_bad_read_is_a_config_error(tmp_path):
    recipe = tmp_path / "bad-read.yaml"
    recipe.write_text(RECIPE.replace("read: peak", "read: best"))
    with pytest.raises(ConfigError, match="sweep.read"):
        create_sweep(str(recipe), {}, None, root=tmp_path)
