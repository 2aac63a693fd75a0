import json
from pathlib import Path

import pytest

from caplab import RunStore
from helpers import TINY, caplab


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    result = caplab("run", "demo", *_sets(TINY), root=root)
    assert result.returncode == 0, result.stderr
    return root, result


def test_run_prints_the_run_directory_last(cli_run):
    root, result = cli_run
    last = result.stdout.strip().splitlines()[-1]
    store = RunStore.open(last)
    assert store.path.parent == root and store.info()["status"] == "completed"
    assert json.loads((store.path / "config.json").read_text())["train"]["steps"] == 24


def test_run_names_its_id_at_the_start_and_its_headline_at_the_end(cli_run):
    root, result = cli_run
    run_id = RunStore.open(result.stdout.strip().splitlines()[-1]).run_id
    assert f"caplab: run {run_id}: training demo" in result.stderr
    headline = result.stdout.strip().splitlines()[-2]
    assert headline.startswith(f"{run_id}: step 24") and "eval_loss" in headline and "unseen_exact" in headline


def test_an_interrupted_run_names_itself_in_the_resume_hint(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    longer = [*_sets(TINY), "--set", "train.steps=100000", "--root", str(tmp_path)]
    process = subprocess.Popen([sys.executable, "-m", "caplab", "run", "demo", *longer], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/checkpoints/*.safetensors")):
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    run_id = next(p.name for p in tmp_path.iterdir() if (p / "run.json").is_file())
    assert process.returncode == 143 and f"resume with `caplab resume {run_id}`" in stderr


def test_runs_show_and_report(cli_run, tmp_path):
    root, result = cli_run
    run_dir = result.stdout.strip().splitlines()[-1]
    name = run_dir.rsplit("/", 1)[-1]
    listing = caplab("runs", "--recipe", "demo", root=root)
    assert listing.returncode == 0 and name in listing.stdout and "completed" in listing.stdout
    assert "unseen_exact" in listing.stdout.splitlines()[0]
    assert name not in caplab("runs", "--status", "failed", root=root).stdout
    rebuilt = caplab("runs", "--rebuild", root=root)
    assert rebuilt.returncode == 0 and name in rebuilt.stdout and "rebuilt from 1" in rebuilt.stderr
    shown = caplab("show", name, root=root)
    assert shown.returncode == 0 and '"n_depths": 3' in shown.stdout and "unseen_exact" in shown.stdout
    out = tmp_path / "rep"
    report = caplab("report", name, name, "--out", str(out), root=root)
    assert report.returncode == 0, report.stderr
    assert (out / "report.html").is_file() and (out / "figures" / "loss.png").is_file()
    page = (out / "report.html").read_text()
    assert "alt='unseen_exact'" in page and "src='figures/" not in page  # the page stands alone
    import base64
    import re

    embedded = [base64.b64decode(data) for data in re.findall(r"src='data:image/png;base64,([^']+)'", page)]
    on_disk = sorted(p.read_bytes() for p in (out / "figures").glob("*.png"))
    assert sorted(embedded) == on_disk and len(on_disk) >= 2  # every figure, byte for byte


def test_runs_and_show_speak_json_for_scripts(cli_run):
    root, result = cli_run
    run_id = RunStore.open(result.stdout.strip().splitlines()[-1]).run_id
    listed = json.loads(caplab("runs", "--json", root=root).stdout)
    (row,) = [r for r in listed if r["run_id"] == run_id]
    assert row["status"] == "completed" and row["recipe"] == "demo" and "unseen_exact" in row["summary"]
    shown = json.loads(caplab("show", run_id[:-2], "--json", root=root).stdout)  # an id prefix works
    assert shown["run_id"] == run_id and shown["config"]["train"]["steps"] == 24 and shown["damaged"] == []
    assert shown["final_metrics"]["step"] == 24 and shown["checkpoints"][-1] == 24


def test_recipes_lists_one_line_each():
    result = caplab("recipes")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) >= 3
    assert any(line.startswith("compositions-direct ") for line in lines)


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["run", "nope"], 2, "unknown recipe 'nope'"),
        (["run", "demo", "--set", "train.stepz=3"], 2, "unknown key 'train.stepz'; valid: steps"),
        (["run", "demo", "--set", "train.steps=lots"], 2, "bad value 'lots' for 'train.steps'"),
        (["run", "demo", "--set", "model.n_heads=x"], 2, "bad value 'x' for 'model.n_heads'"),
        (["show", "missing-run"], 1, "no run named 'missing-run'"),
        (["resume", "missing-run"], 1, "no run named 'missing-run'"),
        (["report", "missing-run"], 1, "no run named 'missing-run'"),
        (["frobnicate"], 2, "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, code, message):
    result = caplab(*args, root=tmp_path if args[0] not in ("frobnicate",) else None)
    assert result.returncode == code
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


def test_corrupt_checkpoint_on_resume_is_one_line(tmp_path):
    result = caplab("run", "demo", *_sets(TINY + ["train.steps=4"]), root=tmp_path)
    run_dir = RunStore.open(result.stdout.strip().splitlines()[-1])
    run_dir.set_status("interrupted")  # as a killed run is: a completed run has nothing to resume
    state = run_dir.path / "checkpoints/step_00000004.state.safetensors"
    state.write_bytes(state.read_bytes()[:-10])
    resumed = caplab("resume", run_dir.path.name, root=tmp_path)
    assert resumed.returncode == 1 and len(resumed.stderr.strip().splitlines()) == 1
    assert "is corrupt" in resumed.stderr
    assert run_dir.info()["status"] == "interrupted"  # the failed resume changed nothing
    assert (run_dir.path / "checkpoints/step_00000004.safetensors").is_file()  # nothing saved is lost


def test_nan_loss_exits_nonzero_and_keeps_the_last_good_checkpoint(tmp_path):
    # a learning rate this large overflows the weights within a few steps
    result = caplab("run", "demo", *_sets(TINY + ["train.lr=1e38", "train.warmup_steps=0", "train.grad_clip=0",
                                                  "train.weight_decay=0"]), root=tmp_path)
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 2  # the "training" line and the error line
    assert "caplab: error:" in result.stderr and ("loss became" in result.stderr or "is not finite" in result.stderr)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    store = RunStore(run_dir)
    assert store.info()["status"] == "failed"
    tensors, entry = store.load_weights()
    import torch

    assert all(torch.isfinite(t).all() for t in tensors.values())


def test_demo_trains_both_formats_on_one_split_and_prints_the_table(tmp_path):
    result = caplab("demo", *_sets(TINY), root=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "step_by_step" in out and "direct" in out and "report:" in out
    report = out.strip().splitlines()[-1].split("report: ")[1]
    assert report.endswith("report.html") and (tmp_path / "reports").is_dir()
    runs = sorted(p for p in tmp_path.iterdir() if (p / "run.json").is_file())
    formats = sorted(json.loads((p / "config.json").read_text())["task"]["format"] for p in runs)
    assert formats == ["direct", "step_by_step"]
    listed = caplab("runs", "--recipe", "demo", root=tmp_path)  # both runs are the demo recipe's
    assert sum(p.name in listed.stdout for p in runs) == 2
    splits = {json.dumps(json.loads((p / "task.json").read_text())["train_compositions"]) for p in runs}
    assert len(splits) == 1  # the same training compositions for both formats


def test_percolation_recipe_simulates_and_compares_with_theory(tmp_path):
    result = caplab("run", "percolation", "--set", "percolation.trials=10", "--set", "percolation.points=31",
                    "--set", "percolation.n_boot=50", root=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["critical_pairs_predicted"] == pytest.approx((90 * 1800) ** 0.5)
    assert 0.7 < summary["critical_pairs_measured"] / summary["critical_pairs_predicted"] < 1.5
    assert 0.7 < summary["critical_density_measured"] / summary["critical_density_predicted"] < 1.5
    assert summary["scaling_interval"][0] < summary["scaling_exponent"] < summary["scaling_interval"][1]
    assert {"percolation_density.png", "percolation_scaling.png"} <= {p.name for p in (run_dir / "figures").iterdir()}
    assert "percolation" in caplab("runs", root=tmp_path).stdout
    bad = caplab("run", "percolation", "--set", "train.steps=3", root=tmp_path)
    assert bad.returncode == 2 and "percolation.KEY=VALUE" in bad.stderr
    before = (run_dir / "summary.json").read_text()
    again = caplab("resume", run_dir.name, root=tmp_path)  # a finished simulation: nothing to continue, nothing changed
    assert again.returncode == 0 and again.stdout.strip() == str(run_dir), again.stderr
    assert (run_dir / "summary.json").read_text() == before


CONCEPT_TINY = [arg for item in ["task.eval_samples=8", "task.eval_reachable=16", "model.n_layers=1", "model.d_model=32",
                                 "train.batch_size=8", "train.steps=12", "train.eval_every=4", "train.checkpoint_every=6",
                                 "train.progress=never"] for arg in ("--set", item)]


def test_emergence_recipe_runs_end_to_end(tmp_path):
    result = caplab("run", "emergence", *CONCEPT_TINY, root=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"grammaticality", "type_constraints", "unscramble_exact", "reachable_pairs"} <= set(summary)
    assert [e["metric"] for e in summary["emergence_order"]].count("grammaticality") == 1
    assert (run_dir / "figures" / "phases.png").is_file()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(0 <= r["eval_s"] <= r["elapsed_s"] for r in records)


CONCEPT_SMALL = ["task.eval_samples=4", "task.eval_reachable=16", "task.max_length=24", "task.task_prior=[1.0,0.0,0.0]",
                "model.n_layers=1", "model.d_model=16", "train.batch_size=8", "train.steps=4", "train.eval_every=2",
                "train.checkpoint_every=4", "train.progress=never"]


def test_an_ensemble_run_prints_each_member_and_show_tells_the_worlds_floor_and_oracle(tmp_path):
    result = caplab("run", "emergence", *_sets(CONCEPT_SMALL + ["train.ensemble=2", "train.seed=7"]), root=tmp_path)
    assert result.returncode == 0, result.stderr
    paths = result.stdout.strip().splitlines()
    assert len(paths) == 2 and all(RunStore.open(p).info()["status"] == "completed" for p in paths)
    assert [RunStore.open(p).config_dict()["train"]["seed"] for p in paths] == [7, 8]
    shown = caplab("show", paths[1], root=tmp_path)
    assert shown.returncode == 0 and "adjective-only oracle" in shown.stdout and "floor 0.375" in shown.stdout


def test_a_corpus_that_cannot_hold_its_pairs_is_one_line_and_nothing_is_created(tmp_path):
    result = caplab("run", "emergence", *_sets(CONCEPT_SMALL + ["task.pairs_per_class=150", "task.corpus_size=20"]), root=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("caplab: error:")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr
    assert "corpus_size" in result.stderr and not list(tmp_path.glob("emergence-*"))
