"""Sweeps on engines: the same sweep trained in this process, on a local Ray instance and through submitit's
local executor gives the same runs, metrics and summary."""

import json
import shutil
import socket

import pytest

from caplab.runs.store import RunStore
from caplab.studies.sweep import create_sweep, run_sweep, sweep_runs
from helpers import TINY, caplab, without_timing

SMALL = TINY + ["train.steps=8", "train.eval_every=4", "train.checkpoint_every=8"]
GRID = {"task.n_train_compositions": [6, 8]}


def same_records(a, b, rel: float = 1e-5) -> bool:
    """Equal structures, with floats equal to a relative `rel` (ints, strings and keys exactly)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_records(a[k], b[k], rel) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_records(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=rel, abs=1e-7)
    return a == b and type(a) is type(b)


def _closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _sweep(root, launcher, workers=2):
    path = create_sweep("demo", GRID, 1, SMALL, root=root, launcher=launcher, workers=workers)
    summary = run_sweep(path)
    metrics = {json.dumps(entry["setting"]): without_timing(store.metrics()) for entry, store in sweep_runs(path)}
    return path, summary, metrics


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("local"), "local")


@pytest.mark.parametrize("launcher", ["submitit", "ray"])
def test_a_sweep_on_an_engine_equals_the_local_sweep(local, tmp_path, launcher):
    pytest.importorskip(launcher)  # the `scale` extra, installed by the test command
    _, local_summary, local_metrics = local
    path, summary, metrics = _sweep(tmp_path, launcher)
    # the same runs; floats equal up to rounding, since an engine's worker trains with one thread and this process
    # with all of them (matrix products may split their sums differently)
    assert same_records(metrics, local_metrics) and len(metrics) == 2
    assert same_records([s["final_mean"] for s in summary["settings"]], [s["final_mean"] for s in local_summary["settings"]])
    for _, store in sweep_runs(path):
        assert store.info()["status"] == "completed"
    if launcher == "submitit":
        assert (path / "submitit").is_dir()  # submitit's own logs, beside the sweep


def test_a_killed_worker_leaves_only_what_did_not_complete(local, tmp_path):
    path, _, local_metrics = local
    copy = tmp_path / "sweeps" / path.name
    shutil.copytree(path.parent.parent, tmp_path, dirs_exist_ok=True)
    (entry, store), _ = list(sweep_runs(copy))  # as if the worker training the first run had been killed
    store.set_status("running")
    (store.path / "metrics.jsonl").unlink()
    shutil.rmtree(store.path / "checkpoints")
    store.write_json("manifest.json", {"checkpoints": []})
    resumed = caplab("sweep", "--resume", path.name, root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert {json.dumps(e["setting"]): without_timing(s.metrics()) for e, s in sweep_runs(copy)} == local_metrics
    assert RunStore(store.path).info()["status"] == "completed"


@pytest.mark.parametrize("args,message", [
    (["--launcher", "bogus"], "bad value 'bogus' for the sweep launcher"),
    (["--launcher", "slurm"], "launcher slurm needs"),
    (["--launcher", "ray", "--workers", "0"], "bad value 0 for the sweep workers"),
    (["--launcher", "ray", "--address", "127.0.0.1:{port}"], "the Ray address 127.0.0.1:{port} does not answer"),
    (["--launcher", "ray", "--address", "nonsense"], "bad Ray address 'nonsense'"),
    (["--launcher", "local", "--address", "127.0.0.1:6379"], "an address is for the ray launcher, not local"),
])
def test_bad_launchers_are_one_line_and_make_no_sweep(tmp_path, args, message):
    if args[1] == "slurm" and shutil.which("sbatch"):
        pytest.skip("this machine has Slurm")
    if args[1] == "ray":
        pytest.importorskip("ray")
    port = _closed_port()
    args, message = [a.format(port=port) for a in args], message.format(port=port)
    result = caplab("sweep", "demo", "--grid", "task.n_train_compositions=6", *args, root=tmp_path)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()
