import json
from pathlib import Path

import torch

from caplab import RunStore, load_config, run_experiment
from helpers import TINY, caplab


def test_a_run_can_start_from_another_runs_weights(tmp_path):
    source = RunStore(run_experiment(load_config("demo", TINY), tmp_path))
    final, _ = source.load_weights()
    early, _ = source.load_weights(8)
    for spec, expected in ((source.run_id, final), (f"{source.run_id}@8", early)):
        cfg = load_config("demo", [*TINY, f"train.init_from={spec}", "train.lr=1e-4", "task.split=base"])
        tuned = RunStore(run_experiment(cfg, tmp_path))
        start, _ = tuned.load_weights(0)  # step 0 is checkpointed before any update
        assert all(torch.equal(start[k], expected[k]) for k in expected)
        assert json.loads((tuned.path / "config.json").read_text())["train"]["init_from"] == spec


def test_bad_init_from_is_one_line_and_creates_nothing(tmp_path):
    result = caplab("run", "demo", *[a for item in TINY + ["train.init_from=nope"] for a in ("--set", item)], root=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("caplab: error")]
    assert result.returncode == 1 and len(errors) == 1 and "no run named 'nope'" in errors[0] and "Traceback" not in result.stderr
    assert not [p for p in Path(tmp_path).iterdir() if p.is_dir()]
    source = RunStore(run_experiment(load_config("demo", TINY), tmp_path))
    wider = [a for item in TINY + [f"train.init_from={source.run_id}", "model.d_model=64"] for a in ("--set", item)]
    result = caplab("run", "demo", *wider, root=tmp_path)
    assert result.returncode == 2 and "does not fit this model" in result.stderr and "Traceback" not in result.stderr
    assert [p.name for p in Path(tmp_path).iterdir() if p.is_dir()] == [source.path.name]  # nothing half-made
