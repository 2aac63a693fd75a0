import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from caplab import ConfigError, RunStore
from caplab.runs.store import atomic_write_json
from caplab.studies.sweep import aggregate, create_sweep, curves_by_setting, parse_grid, plan
from helpers import TINY, caplab

TINY_SWEEP = [arg for item in TINY + ["train.steps=40", "train.eval_every=10", "train.checkpoint_every=10"]
              for arg in ("--set", item)]


def test_parse_grid_and_plan():
    grid = parse_grid(["task.n_depths=2,3", "model.d_model=16,32,64"])
    assert grid == {"task.n_depths": [2, 3], "model.d_model": [16, 32, 64]}
    entries = plan(grid, seeds=2)
    assert len(entries) == 12 and {e["seed"] for e in entries} == {0, 1}
    assert len({json.dumps(e["setting"], sort_keys=True) for e in entries}) == 6
    with pytest.raises(ConfigError, match="bad grid"):
        parse_grid(["task.n_depths"])


def test_every_planned_config_is_validated_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'task.n_depthz'"):
        create_sweep("demo", parse_grid(["task.n_depthz=2,3"]), 1, root=tmp_path)
    with pytest.raises(ConfigError, match="bad value 'x' for 'model.d_model'"):
        create_sweep("demo", parse_grid(["model.d_model=32,x"]), 1, root=tmp_path)
    assert not (tmp_path / "sweeps").exists()


def _sigmoid(steps, midpoint):
    x = np.log(np.maximum(steps, 1e-9))
    return 1 / (1 + np.exp(-(x - np.log(midpoint)) / 0.3))


def _synthetic_sweep(tmp_path, sizes, records, **fields):
    """A finished sweep of 3 seeds per size whose runs log `records(size)` (a list of metric records each)."""
    sweep = {"recipe": "synthetic", "grid": {"task.size": sizes}, "seeds": 3, "overrides": [], "runs": [], **fields}
    for size in sizes:
        for seed in range(3):
            store = RunStore.create("synthetic", tmp_path)
            for record in records(size):
                store.log_metrics(record)
            store.set_status("completed")
            sweep["runs"].append({"setting": {"task.size": size}, "seed": seed, "run_id": store.path.name})
    path = tmp_path / "sweeps" / "synthetic"
    path.mkdir(parents=True)
    atomic_write_json(path / "sweep.json", sweep)
    return path


def test_aggregate_recovers_a_known_power_law(tmp_path):
    """Synthetic runs whose emergence step is 10 * x^0.5: the fitted exponent is 0.5."""
    steps = np.unique(np.concatenate([[0], np.geomspace(1, 20_000, 60).round()]))
    rng = np.random.default_rng(0)

    def records(size):
        midpoint = 10 * size**0.5 * np.exp(rng.normal(0, 0.05))
        return [{"step": int(step), "tokens": int(step), "acc": float(value)} for step, value in zip(steps, _sigmoid(steps, midpoint))]

    path = _synthetic_sweep(tmp_path, [4, 16, 64, 256], records, metric="acc")
    summary = aggregate(path)
    assert summary["runs_completed"] == 12
    crossings = [s["crossing"]["value"] for s in summary["settings"]]
    assert crossings == pytest.approx([20, 40, 80, 160], rel=0.1)
    scaling = summary["scaling"]
    assert scaling["key"] == "task.size" and scaling["exponent"] == pytest.approx(0.5, abs=0.03)
    assert scaling["low"] <= 0.5 <= scaling["high"]
    json.loads((path / "summary.json").read_text())  # strict JSON (no NaN)


def test_runs_that_stop_at_different_steps_all_count_and_keep_their_last_value(tmp_path):
    stops = iter([20, 40, 60])  # the three seeds stop early at different evaluations (train.stop_at)

    def records(size):
        last = next(stops)
        return [{"step": step, "tokens": step, "acc": step / 100} for step in range(0, last + 1, 10)]

    path = _synthetic_sweep(tmp_path, [1], records, metric="acc")
    setting = aggregate(path)["settings"][0]
    assert setting["n_seeds"] == 3 and setting["final_mean"] == pytest.approx((0.2 + 0.4 + 0.6) / 3)
    groups = curves_by_setting(path)
    curves = next(iter(groups.values()))["curves"]
    assert curves[0].tolist() == pytest.approx([0, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2])  # carried after its stop


def test_a_fit_read_scores_each_run_where_it_first_fits_and_censors_the_rest(tmp_path):
    fits = iter([10, 20, None])  # the step where each seed's seen accuracy first reaches 0.99; the third never does

    def records(size):
        at = next(fits)
        return [{"step": step, "tokens": step, "acc": step / 100,
                 "seen": 1.0 if at is not None and step >= at else 0.5} for step in range(0, 41, 10)]

    path = _synthetic_sweep(tmp_path, [1], records, metric="acc", fit={"metric": "seen", "level": 0.99})
    at_fit = aggregate(path)["settings"][0]["at_fit"]
    assert at_fit["values"] == [0.1, 0.2, None] and at_fit["steps"] == [10, 20, None]
    assert at_fit["reached"] == 2 and at_fit["mean"] == pytest.approx(0.15) and at_fit["low"] <= 0.15 <= at_fit["high"]
    recipe = tmp_path / "bad-fit.yaml"
    recipe.write_text("sweep:\n  grid:\n    train.lr: [0.003]\n  fit: {metric: seen_exact}\ntask: {name: compositions}\n")
    with pytest.raises(ConfigError, match="sweep.fit must be"):
        create_sweep(str(recipe), {}, None, [], root=tmp_path)


def test_a_peak_read_sweep_scores_each_run_where_its_other_half_peaks(tmp_path):
    """Synthetic runs that rise to a known peak at step 40 and fall: the peak read recovers its height and step."""
    rng = np.random.default_rng(0)

    def records(size):
        out = []
        for step in (0, 10, 20, 30, 40, 50, 60):
            height = 0.4 * size * (1 - abs(step - 40) / 40)  # peak 0.4 * size at step 40
            a, b = height + rng.normal(0, 0.01), height + rng.normal(0, 0.01)
            out.append({"step": step, "tokens": step, "acc": (a + b) / 2, "acc_a": a, "acc_b": b})
        return out

    path = _synthetic_sweep(tmp_path, [1, 2], records, metric="acc", read="peak")
    summary = aggregate(path)
    for setting, size in zip(summary["settings"], (1, 2)):
        peak = setting["peak"]
        assert peak["mean"] == pytest.approx(0.4 * size, abs=0.02) and peak["low"] <= peak["mean"] <= peak["high"]
        assert peak["median_step"] == 40 and peak["at_last_evaluation"] == 0
        assert setting["final_mean"] == pytest.approx(0.2 * size, abs=0.02)  # the final read is half the peak


@pytest.mark.slow
def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    args = [sys.executable, "-m", "caplab.cli", "sweep", "demo", "--grid", "task.n_train_compositions=4,8",
            "--seeds", "2", *TINY_SWEEP, "--root", str(tmp_path)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONWARNINGS": "error"})
    deadline, killed = time.time() + 120, False
    while time.time() < deadline and proc.poll() is None:
        files = list(tmp_path.glob("sweeps/*/sweep.json"))
        if files:
            try:
                entries = json.loads(files[0].read_text())["runs"]
            except (json.JSONDecodeError, OSError):
                entries = []
            # ids are all reserved up front: the second run's directory means the first one finished
            if len(entries) > 1 and entries[1]["run_id"] and (tmp_path / entries[1]["run_id"] / "run.json").is_file():
                proc.send_signal(signal.SIGKILL)
                killed = True
                break
        time.sleep(0.01)
    proc.wait(30)
    assert killed, "the sweep ended before it could be interrupted"
    (sweep_dir,) = tmp_path.glob("sweeps/*")
    first = json.loads((sweep_dir / "sweep.json").read_text())["runs"][0]["run_id"]
    first_metrics = RunStore(tmp_path / first).metrics()

    result = caplab("sweep", "--resume", sweep_dir.name, root=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    run_ids = [e["run_id"] for e in sweep["runs"]]
    assert run_ids[0] == first and None not in run_ids and len(set(run_ids)) == 4
    runs_on_disk = [p.name for p in tmp_path.iterdir() if (p / "run.json").is_file()]
    assert sorted(runs_on_disk) == sorted(run_ids)  # nothing run twice, no half-assembled leftovers
    assert all(RunStore(tmp_path / r).info()["status"] == "completed" for r in run_ids)
    assert RunStore(tmp_path / first).metrics() == first_metrics  # finished work kept as it was
    summary = json.loads((sweep_dir / "summary.json").read_text())
    assert summary["runs_completed"] == 4 and len(summary["settings"]) == 2
    assert (sweep_dir / "report.html").is_file() and (sweep_dir / "figures" / "curves.png").is_file()
    assert result.stdout.strip().splitlines()[-1] == str(sweep_dir)


def test_a_reserved_but_half_created_run_is_created_afresh(tmp_path):
    """The window a kill can hit: id reserved in sweep.json, run directory still being assembled."""
    from caplab.studies.sweep import run_sweep

    overrides = TINY + ["train.steps=4"]
    path = create_sweep("demo", {}, 1, overrides, root=tmp_path)
    sweep = json.loads((path / "sweep.json").read_text())
    run_id = RunStore.new_run_id("demo")
    sweep["runs"][0]["run_id"] = run_id
    atomic_write_json(path / "sweep.json", sweep)
    staging = tmp_path / f".{run_id}.abc123"
    staging.mkdir()
    (staging / "run.json").write_text("{}")
    summary = run_sweep(path)
    assert not staging.exists()
    assert RunStore(tmp_path / run_id).info()["status"] == "completed"
    assert summary["runs_completed"] == 1


def test_a_recipe_sweep_section_drives_caplab_run(tmp_path):
    import yaml

    from helpers import TINY

    recipe = {"description": "tiny sweep", "task": {"name": "compositions"},
              "sweep": {"grid": {"task.n_train_compositions": [4, 8]}, "seeds": 1, "metric": "seen_exact", "level": 0.25}}
    path = tmp_path / "tiny-sweep.yaml"
    path.write_text(yaml.safe_dump(recipe))
    sweep_dir = create_sweep(str(path), {}, None, TINY, root=tmp_path / "runs")
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert sweep["grid"] == {"task.n_train_compositions": [4, 8]} and sweep["seeds"] == 1
    assert sweep["metric"] == "seen_exact" and sweep["level"] == 0.25
    # the command line runs it: `caplab run` on a recipe with a sweep section is a sweep
    result = caplab("run", str(path), *[a for item in TINY for a in ("--set", item)], root=tmp_path / "cli")
    assert result.returncode == 0, result.stderr
    summary = json.loads((Path(result.stdout.strip().splitlines()[-1]) / "summary.json").read_text())
    assert summary["metric"] == "seen_exact" and summary["level"] == 0.25 and summary["runs_completed"] == 2
    path.write_text(yaml.safe_dump({**recipe, "sweep": {"grid": {"task.n_train_compositions": [4]}, "seedz": 2}}))
    bad = caplab("run", str(path), root=tmp_path / "cli")
    assert bad.returncode == 2 and "unknown key 'sweep.seedz'" in bad.stderr


def test_caplab_resume_takes_a_sweep_id_and_a_study_id(tmp_path):
    path = create_sweep("demo", {}, 1, TINY + ["train.steps=4"], root=tmp_path)
    result = caplab("resume", path.name, root=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(path)
    assert json.loads((path / "summary.json").read_text())["runs_completed"] == 1

    from caplab.studies import locate

    study = tmp_path / "studies" / "old-style-study"
    study.mkdir(parents=True)
    (study / "study.json").write_text("{}")  # written before study kinds were recorded: a fine-tuning study
    assert locate("old-style-study", tmp_path) == ("finetune", study)
    assert locate(path.name, tmp_path) == ("sweep", path)
