import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from caplab import RunStore, load_config, run_experiment
from helpers import TINY, caplab, without_timing

LONG = TINY + ["train.steps=200", "train.eval_every=10", "train.checkpoint_every=10"]
# a CNN with BatchNorm (running statistics are part of the state) on rendered images
SHAPES_LONG = ["task.image_size=16", "task.eval_samples=64", "model.width=8", "model.depth=3", "model.stages=2",
               "train.batch_size=16", "train.steps=200", "train.warmup_steps=4", "train.eval_every=10",
               "train.checkpoint_every=10", "train.progress=never"]
OVERRIDES = {"demo": LONG, "shapes": SHAPES_LONG}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["demo", "shapes"])
def test_resume_after_sigkill_gives_exactly_the_uninterrupted_metrics(tmp_path, recipe):
    overrides = OVERRIDES[recipe]
    reference = RunStore(run_experiment(load_config(recipe, overrides), tmp_path / "reference"))

    root = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    set_args = [arg for item in overrides for arg in ("--set", item)]
    proc = subprocess.Popen([sys.executable, "-m", "caplab.cli", "run", recipe, *set_args, "--root", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        manifests = list(root.glob("*/manifest.json"))
        if manifests:
            try:
                steps = [e["step"] for e in json.loads(manifests[0].read_text())["checkpoints"]]
            except (json.JSONDecodeError, OSError):
                steps = []
            if steps and max(steps) >= 40:
                proc.send_signal(signal.SIGKILL)
                killed_at = max(steps)
                break
        time.sleep(0.01)
    proc.wait(30)
    assert killed_at is not None and proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"
    result = caplab("resume", run_dir.name, root=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(run_dir)

    resumed = RunStore(run_dir)
    assert resumed.info()["status"] == "completed"
    assert without_timing(resumed.metrics()) == without_timing(reference.metrics())
    final_a, _ = resumed.load_weights()
    final_b, _ = reference.load_weights()
    assert all(torch.equal(final_a[k], final_b[k]) for k in final_b)


def test_resume_of_a_completed_run_changes_nothing(tmp_path):
    path = run_experiment(load_config("demo", TINY), tmp_path)
    before = RunStore(path).metrics()
    result = caplab("resume", path.name, root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert RunStore(path).metrics() == before
