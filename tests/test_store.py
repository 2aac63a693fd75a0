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


def test_a_report_puts_runs_side_by_side_headline_first_and_readable(tmp_path):
    """One column per run, one row per metric: the step and the task's headline numbers first, bookkeeping
    (eval_s, lr) left out, counts with separators; metric families share a figure; log ticks are plain."""
    import re

    from caplab.runs.plots import plain_number
    from caplab.runs.report import metric_families, readable, write_report

    stores = []
    for seed in (0, 1):
        stores.append(RunStore(run_experiment(load_config("demo", TINY + [f"train.seed={seed}"]), tmp_path)))
    page = write_report(stores, tmp_path / "both").read_text()
    table = page.split("<h2>Final metrics</h2>")[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]+)</td>", table)
    headline = [k for k in stores[0].summary() if k not in ("step", "tokens", "flops")]
    assert "unseen_exact" in headline and rows[0] == "step" and rows[1 : 1 + len(headline)] == headline
    assert "eval_s" not in rows and "lr" not in rows and "elapsed_s" not in rows
    assert table.count("train.seed=0") == 1 and table.count("train.seed=1") == 1  # one column per run, labelled
    assert readable(1234567) == "1,234,567" and readable(0.81254) == "0.8125" and readable(3.2e-05) == "3.2e-05"
    assert readable(None) == "" and readable(2.5e12) == "2.5e+12"
    assert metric_families(["exact_k4", "exact_k1", "exact_k2", "seen_exact", "token_at"]) == {
        "exact_k": ["exact_k1", "exact_k2", "exact_k4"]}
    assert [plain_number(v) for v in (0, 1, 10, 1000, 0.01, 1e6)] == ["0", "1", "10", "1,000", "0.01", "1e+06"]


def test_a_report_renders_with_its_figures_in_a_headless_browser(tmp_path):
    """The self-contained page, moved away from its folder, still shows its figures (Chromium, where installed)."""
    import shutil
    import subprocess

    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no Chromium on this machine (Debian: apt install chromium)")
    from matplotlib.image import imread

    store = RunStore(run_experiment(load_config("demo", TINY), tmp_path / "runs"))
    page = tmp_path / "alone.html"
    shutil.copy(store.path / "report.html", page)  # without its figures/ folder
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}", "--window-size=1200,2400",
                    page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = imread(str(shot))[..., :3]
    coloured = ((pixels.max(-1) - pixels.min(-1)) > 0.2).mean()  # the plotted curves are coloured; text is grey
    assert coloured > 0.001
