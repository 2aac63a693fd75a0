"""Searched sweeps: Optuna proposes learning rates, each trial is a setting of ordinary runs, the study is
stored beside the sweep, and an interrupted search resumes without losing or repeating a trial."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from caplab.runs.store import RunStore, read_json
from caplab.studies.search import parse_space, trial_value
from caplab.studies.sweep import create_sweep, run_sweep, sweep_runs
from helpers import TINY, caplab

optuna = pytest.importorskip("optuna")  # the `scale` extra, installed by the test command

SMALL = TINY + ["train.steps=8", "train.eval_every=4", "train.checkpoint_every=4"]
SPACE = {"train.lr": ["log", 1e-3, 3e-2]}


def _final(store: RunStore, metric: str) -> float:
    return [r[metric] for r in store.metrics() if metric in r][-1]


def test_each_trial_is_its_runs_mean_and_the_best_is_optunas(tmp_path):
    search = {"engine": "optuna", "space": SPACE, "trials": 3}
    path = create_sweep("demo", {}, 2, SMALL, metric="eval_loss", root=tmp_path, search=search)
    summary = run_sweep(path)
    trials = summary["search"]["trials"]
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3 and summary["search"]["direction"] == "minimize"
    by_trial = {}
    for entry, store in sweep_runs(path):
        assert store.config_dict()["train"]["lr"] == pytest.approx(entry["setting"]["train.lr"])
        by_trial.setdefault(entry["trial"], []).append(_final(store, "eval_loss"))
    assert sorted(by_trial) == [0, 1, 2] and all(len(v) == 2 for v in by_trial.values())  # 2 seeds each
    for t in trials:
        assert 1e-3 <= t["params"]["train.lr"] <= 3e-2
        assert t["value"] == pytest.approx(sum(by_trial[t["trial"]]) / 2)
    study = optuna.load_study(study_name=path.name, storage=f"sqlite:///{path / 'optuna.sqlite'}")
    assert study.best_trial.number == summary["search"]["best"]["trial"] == min(trials, key=lambda t: t["value"])["trial"]
    assert summary["runs_completed"] == 6 and len(summary["settings"]) == 3


def test_a_killed_search_resumes_without_losing_or_repeating_a_trial(tmp_path):
    args = ["sweep", "demo", "--search", "optuna", "--space", "train.lr=log:1e-3:3e-2", "--trials", "3", "--seeds", "1",
            *[a for item in SMALL for a in ("--set", item)], "--root", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "caplab", *args], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:  # killed once the second trial has a run
        sweeps = list((tmp_path / "sweeps").glob("*/sweep.json"))
        if sweeps and sum(1 for e in read_json(sweeps[0])["runs"] if e["run_id"]) >= 2:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    path = list((tmp_path / "sweeps").iterdir())[0]
    resumed = caplab("sweep", "--resume", path.name, root=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((path / "summary.json").read_text())
    states = [t["state"] for t in summary["search"]["trials"]]
    assert states == ["COMPLETE"] * 3  # none lost, none asked twice
    entries = read_json(path / "sweep.json")["runs"]
    assert sorted(e["trial"] for e in entries) == [0, 1, 2]
    rates = [t["params"]["train.lr"] for t in summary["search"]["trials"]]
    assert len(set(rates)) == 3  # the resumed sampler did not replay the proposals made before the kill
    assert all(RunStore(tmp_path / e["run_id"]).info()["status"] == "completed" for e in entries)


def test_a_trial_is_scored_only_when_every_seed_gave_a_value():
    assert trial_value([None, float("nan")]) is None and trial_value([1.0, None, 3.0]) is None
    assert trial_value([1.0, 3.0]) == 2.0 and trial_value([]) is None


def test_a_resumed_search_does_not_replay_its_first_proposals(tmp_path):
    from caplab.studies.search import _distributions, open_study

    search = {"engine": "optuna", "space": SPACE, "trials": 4, "direction": "minimize", "sampler_seed": 0}
    first = open_study(tmp_path, search)
    asked = [first.ask(_distributions(SPACE)) for _ in range(2)]
    for trial in asked:
        first.tell(trial.number, 1.0)
    again = open_study(tmp_path, search)  # as `caplab sweep --resume` opens it
    later = [again.ask(_distributions(SPACE)).params["train.lr"] for _ in range(2)]
    assert not set(later) & {t.params["train.lr"] for t in asked}


@pytest.mark.parametrize("args,message", [
    (["--search", "optuna"], "a searched sweep needs a space"),
    (["--search", "optuna", "--space", "train.lr=log:0:1"], "a log scale needs LOW > 0"),
    (["--search", "optuna", "--space", "train.lr=uniform:1:2"], "bad search space 'train.lr=uniform:1:2'"),
    (["--search", "optuna", "--space", "train.nosuch=float:0:1"], "unknown key 'train.nosuch'"),
    (["--search", "optuna", "--space", "train.lr=log:1e-3:1e-2", "--grid", "train.seed=1,2"], "takes --space, not --grid"),
    (["--search", "hyperopt", "--space", "train.lr=log:1e-3:1e-2"], "bad value 'hyperopt' for the sweep search"),
    (["--space", "train.lr=log:1e-3:1e-2"], "add --search optuna"),
])
def test_bad_searches_are_one_line_and_make_no_sweep(tmp_path, args, message):
    result = caplab("sweep", "demo", *args, root=tmp_path)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sweeps").exists()


def test_space_parsing():
    assert parse_space(["train.lr=log:1e-4:1e-2", "model.d_model=choice:32,64"]) == {
        "train.lr": ["log", 1e-4, 1e-2], "model.d_model": ["choice", 32, 64]}
