import json

import pytest
import torch

from caplab import CorruptCheckpoint, RunNotFound, RunStore, load_config, load_model, run_experiment
from caplab.runs.store import atomic_write_json, sha256_of
from helpers import TINY


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    path = run_experiment(load_config("demo", TINY), root)
    return root, RunStore(path)


def test_run_directory_layout(finished_run):
    _, store = finished_run
    for name in ("run.json", "config.json", "task.json", "manifest.json", "metrics.jsonl", "summary.json", "report.html",
                 "figures/loss.png", "figures/seen_vs_unseen.png", "figures/unseen_exact.png"):
        assert (store.path / name).is_file(), name
    assert store.info()["status"] == "completed"
    steps = [e["step"] for e in store.manifest()["checkpoints"]]
    assert steps == [0, 1, 2, 4, 8, 16, 24]
    summary = store.summary()
    assert summary["step"] == 24 and set(summary) >= {"seen_exact", "unseen_exact", "eval_loss"}


def test_manifest_hashes_and_only_latest_optimizer_state(finished_run):
    _, store = finished_run
    entries = store.manifest()["checkpoints"]
    for e in entries:
        assert sha256_of(store.path / e["file"]) == e["sha256"]
        assert e["tokens"] == e["step"] * 16 * store.config_dict()["model"]["n_ctx"]
    with_state = [e for e in entries if e["state_file"]]
    assert [e["step"] for e in with_state] == [24]
    assert sorted(p.name for p in (store.path / "checkpoints").glob("*.state.*")) == ["step_00000024.state.safetensors"]


def test_load_model_roundtrip_without_pickle(finished_run):
    root, store = finished_run
    model, cfg = load_model(store.path.name, root=root)
    x = cfg.make_task().sample(4, torch.Generator().manual_seed(0), "cpu").tokens
    early, _ = load_model(store.path.name, step=0, root=root)
    assert not torch.allclose(model(x), early(x))
    # the weights file is plain safetensors: readable without caplab at all
    from safetensors.torch import load_file

    assert set(load_file(str(store.path / "checkpoints/step_00000024.safetensors"))) == set(model.state_dict())


def test_corrupt_checkpoint_is_refused(tmp_path):
    path = run_experiment(load_config("demo", TINY + ["train.steps=4"]), tmp_path)
    store = RunStore(path)
    target = path / "checkpoints/step_00000004.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="sha256 does not match"):
        store.load_weights()
    target.unlink()
    with pytest.raises(CorruptCheckpoint, match="missing"):
        store.load_weights()
    with pytest.raises(CorruptCheckpoint, match="no checkpoint at step 3"):
        store.load_weights(step=3)


def test_open_by_prefix_and_missing(finished_run):
    root, store = finished_run
    assert RunStore.open(store.path.name[:-3], root).path == store.path
    assert RunStore.open(str(store.path)).path == store.path
    with pytest.raises(RunNotFound, match="no run named 'nothing'"):
        RunStore.open("nothing", root)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        target = tmp_path / "b.json"
        atomic_write_json(target, {"x": 1})
        reference = tmp_path / "c.json"
        reference.write_text("{}")
        assert target.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
