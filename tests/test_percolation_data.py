import json

import numpy as np
import pytest

from caplab import ConfigError
from caplab.percolation_data import graph_reachability
from caplab.runs.sweep import create_sweep, plan, run_sweep


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
