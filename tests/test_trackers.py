"""Experiment trackers, each the real library writing to a temporary folder and read back with that library's
own reader (TensorBoard's event accumulator, W&B's record protobuf, MLflow's client): the evaluations, the
config and the figures of a caplab run arrive intact."""

import glob
import json
import struct

import pytest

from caplab import RunStore, load_config, run_experiment
from helpers import TINY, caplab


@pytest.fixture(autouse=True)
def _private_wandb(tmp_path, monkeypatch):
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_MODE", raising=False)


def _evaluations(store: RunStore, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in store.metrics() if isinstance(r.get(key), float)]


def same(got: list[tuple], expected: list[tuple]) -> bool:
    """Same steps, and values equal to float32 precision (TensorBoard stores float32)."""
    return [s for s, _ in got] == [s for s, _ in expected] and all(
        abs(a - b) <= 1e-6 * max(1.0, abs(b)) for (_, a), (_, b) in zip(got, expected))


def tensorboard_scalars(folder, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    return [(e.step, e.value) for e in events.Scalars(key)], events.Tags()


def wandb_history(run_dir) -> list[dict]:
    """Every history row of the offline run under `run_dir`: the .wandb file's records (LevelDB-style framing:
    32 KiB blocks of [crc32 u32, length u16, type u8] chunks after a ':W&B' header) decoded with W&B's protobuf."""
    from wandb.proto import wandb_internal_pb2

    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    with open(path, "rb") as file:
        data = file.read()
    assert data[:4] == b":W&B"
    rows, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "history":
                rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_a_run_streams_to_all_three_trackers(tmp_path):
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    cfg = load_config("demo", TINY + ["loggers.tensorboard={}", "loggers.wandb={}", "loggers.mlflow={}"])
    store = RunStore(run_experiment(cfg, tmp_path))
    expected = _evaluations(store, "eval_loss")
    assert len(expected) >= 5

    scalars, tags = tensorboard_scalars(store.path / "tensorboard", "eval_loss")
    assert same(scalars, expected)
    assert "figures/loss" in tags["images"] and "config" in str(tags)

    history = [row for row in wandb_history(store.path) if "eval_loss" in row]
    assert same([(row["_step"], row["eval_loss"]) for row in history], expected)
    assert any(key.startswith("figures/") for row in wandb_history(store.path) for key in row)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("demo").experiment_id])
    assert run.info.run_name == store.run_id and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == str(cfg.train.lr)
    history = client.get_metric_history(run.info.run_id, "eval_loss")
    assert same([(m.step, m.value) for m in history], expected)
    assert {f.path for f in client.list_artifacts(run.info.run_id, "figures")} >= {"figures/loss.png"}


def test_export_replays_a_finished_run(tmp_path):
    pytest.importorskip("tensorboard")
    store = RunStore(run_experiment(load_config("demo", TINY), tmp_path))
    assert not (store.path / "tensorboard").exists()
    result = caplab("export", store.run_id, "--to", "tensorboard", root=tmp_path)
    assert result.returncode == 0, result.stderr
    scalars, _ = tensorboard_scalars(store.path / "tensorboard", "unseen_exact")
    assert same(scalars, _evaluations(store, "unseen_exact"))


def test_run_log_flag_and_bad_logger(tmp_path):
    pytest.importorskip("tensorboard")
    result = caplab("run", "demo", *[a for item in TINY for a in ("--set", item)], "--log", "tensorboard", root=tmp_path)
    assert result.returncode == 0, result.stderr
    store = RunStore.open(result.stdout.strip().splitlines()[-1])
    assert store.config_dict()["loggers"] == {"tensorboard": {"log_dir": None}} and (store.path / "tensorboard").is_dir()
    bad = caplab("run", "demo", "--log", "comet", root=tmp_path / "bad")
    assert bad.returncode == 2 and "unknown logger 'comet'; valid: tensorboard, wandb, mlflow" in bad.stderr
    assert not (tmp_path / "bad").exists()
