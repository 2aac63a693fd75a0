"""One run over several processes: torchrun with gloo on CPU gives the curve of a one-process run that draws
the same data streams, writes one run from rank 0, and resumes from a checkpoint of any world size."""

import os
import subprocess
import sys

import pytest
import torch

from caplab import ConfigError, RunStore, load_config, run_experiment
from caplab.runs.store import atomic_write_json
from caplab.train.distributed import stream_seed
from helpers import TINY, caplab, without_timing

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch has no gloo backend")

SMALL = TINY + ["train.steps=8", "train.eval_every=4", "train.checkpoint_every=4", "train.batch_size=8"]


def torchrun(*args: str, root) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m caplab ARGS --root ROOT`, as a user would type it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "caplab", *args, "--root", str(root)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def _sets(items):
    return [a for item in items for a in ("--set", item)]


def close(a: list[dict], b: list[dict], tol: float = 2e-5) -> bool:
    a, b = without_timing(a), without_timing(b)
    return len(a) == len(b) and all(ra.keys() == rb.keys() and all(
        abs(ra[k] - rb[k]) <= tol * max(1.0, abs(rb[k])) if isinstance(rb[k], float) else ra[k] == rb[k] for k in ra)
        for ra, rb in zip(a, b))


def _only_run(root) -> RunStore:
    runs = [p for p in root.iterdir() if (p / "run.json").is_file()]
    assert len(runs) == 1, runs  # rank 1 made nothing of its own
    return RunStore(runs[0])


def test_two_processes_give_the_one_process_curve_of_the_same_streams(tmp_path):
    result = torchrun("run", "demo", *_sets(SMALL), root=tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = _only_run(tmp_path / "ddp")
    assert ddp.info()["status"] == "completed" and ddp.config_dict()["train"]["data_streams"] == 2
    alone = RunStore(run_experiment(load_config("demo", SMALL + ["train.data_streams=2"]), tmp_path / "one"))
    assert close(ddp.metrics(), alone.metrics())
    ours, theirs = ddp.load_weights()[0], alone.load_weights()[0]
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in theirs)


def _as_interrupted_at_4(store: RunStore) -> None:
    """A completed 4-step run made into an 8-step run stopped at step 4 (the learning rate is constant, so 4 steps
    of an 8-step run are a 4-step run)."""
    config = store.config_dict()
    config["train"]["steps"] = 8
    atomic_write_json(store.path / "config.json", config)
    store.set_status("interrupted")


def test_checkpoints_resume_across_world_sizes(tmp_path):
    constant = SMALL + ["train.data_streams=2", "train.warmup_steps=0", "train.min_lr=1e-3", "train.lr=1e-3"]
    straight = RunStore(run_experiment(load_config("demo", constant), tmp_path / "straight"))
    # a one-process checkpoint, resumed on two processes
    stopped = RunStore(run_experiment(load_config("demo", constant + ["train.steps=4"]), tmp_path / "one"))
    _as_interrupted_at_4(stopped)
    result = torchrun("resume", stopped.run_id, root=tmp_path / "one")
    assert result.returncode == 0, result.stderr[-3000:]
    assert RunStore(stopped.path).info()["status"] == "completed"
    assert close(RunStore(stopped.path).metrics(), straight.metrics())
    # a two-process checkpoint, resumed on one process
    result = torchrun("run", "demo", *_sets(constant + ["train.steps=4"]), root=tmp_path / "two")
    assert result.returncode == 0, result.stderr[-3000:]
    stopped = _only_run(tmp_path / "two")
    _as_interrupted_at_4(stopped)
    resumed = caplab("resume", stopped.run_id, root=tmp_path / "two")
    assert resumed.returncode == 0, resumed.stderr
    assert close(RunStore(stopped.path).metrics(), straight.metrics())


def test_two_streams_per_process_and_an_early_stop_agree_across_processes(tmp_path):
    """4 streams on 2 processes (two forwards per rank before one backward), stopping at a held-out level that
    rank 0 reads and every rank obeys: the one-process run of 4 streams stops at the same step with the same curve."""
    four = SMALL + ["train.data_streams=4", "train.steps=16"]
    probe = RunStore(run_experiment(load_config("demo", four), tmp_path / "probe"))
    level = next(r["eval_loss"] for r in probe.metrics() if r["step"] == 8) + 1e-6
    stop = four + [f"train.stop_at={level}"]
    result = torchrun("run", "demo", *_sets(stop), root=tmp_path / "ddp")
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = _only_run(tmp_path / "ddp")
    alone = RunStore(run_experiment(load_config("demo", stop), tmp_path / "one"))
    assert alone.metrics()[-1]["step"] <= 8 and close(ddp.metrics(), alone.metrics())  # stopped early, both alike


def test_sweeps_and_studies_are_refused_under_torchrun(tmp_path):
    result = torchrun("sweep", "demo", "--grid", "task.n_train_compositions=6,8", root=tmp_path)
    assert result.returncode != 0 and "does not run under torchrun" in result.stderr
    assert not (tmp_path / "sweeps").exists()


def test_streams_that_two_processes_cannot_share_are_refused(tmp_path):
    result = torchrun("run", "demo", *_sets(SMALL + ["train.data_streams=3", "train.batch_size=9"]), root=tmp_path)
    assert result.returncode != 0 and "train.data_streams=3 cannot be shared by 2 processes" in result.stderr
    assert not [p for p in tmp_path.glob("*") if (p / "run.json").is_file()]


def test_stream_zero_is_the_run_seed_and_streams_differ():
    assert stream_seed(7, 0) == 7 and len({stream_seed(7, s) for s in range(8)}) == 8
    assert stream_seed(7, 1) == stream_seed(7, 1) != stream_seed(8, 1)


def test_tasks_that_keep_data_state_are_refused_one_line(tmp_path):
    with pytest.raises(ConfigError, match="needs an online task"):
        run_experiment(load_config("demo", SMALL + ["train.data_streams=2", "task.corpus_size=64"]), tmp_path)
    result = caplab("run", "demo", *_sets(SMALL + ["train.data_streams=3"]), root=tmp_path)
    assert result.returncode == 2 and "must be a multiple of train.data_streams=3" in result.stderr
