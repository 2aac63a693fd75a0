"""Fault injection: a careful user's worst day, item by item (see docs/reliability.md).

Every fault is real: real processes holding real locks, real SIGKILL / SIGTERM, a real file-size limit for
a full disk, a real read-only archive (permissions, dropped to an unprivileged user when tests run as root).
"""

import ctypes
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from caplab import RunStore, load_config, run_experiment
from caplab.runs.catalog import Catalog
from caplab.runs.owner import is_owned, owning
from caplab.train.trainer import Schedule
from helpers import TINY, caplab, without_timing

LONG = TINY + ["train.steps=200", "train.eval_every=10", "train.checkpoint_every=10"]


def _sets(items):
    return [arg for item in items for arg in ("--set", item)]


def _one_line(result, code):
    """The CLI failed with exit `code` and exactly one line on stderr, no traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("caplab: error:") and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A completed tiny run; tests damage copies of it."""
    root = tmp_path_factory.mktemp("finished")
    return RunStore(run_experiment(load_config("demo", TINY), root))


@pytest.fixture
def copy(finished, tmp_path):
    """A private copy of the finished run under tmp_path/runs."""
    target = tmp_path / "runs" / finished.path.name
    shutil.copytree(finished.path, target)
    Catalog(target.parent).upsert_run(RunStore(target))
    return RunStore(target)


def _kill_partway(root: Path, overrides: list[str], at_step: int) -> Path:
    """Start `caplab run demo` and SIGKILL it once a checkpoint at or past `at_step` exists; the run directory."""
    proc = subprocess.Popen([sys.executable, "-m", "caplab.cli", "run", "demo", *_sets(overrides), "--root", str(root)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        steps = []
        for manifest in root.glob("*/manifest.json"):
            try:
                steps = [e["step"] for e in json.loads(manifest.read_text())["checkpoints"]]
            except (ValueError, OSError):
                pass
        if steps and max(steps) >= at_step:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    (run_dir,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def _holder(path: Path) -> subprocess.Popen:
    """Another process that owns `path` until killed."""
    code = ("import sys, time\nfrom pathlib import Path\nfrom caplab.runs.owner import owning\n"
            "with owning(Path(sys.argv[1])):\n    print('owned', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "owned"
    return proc


# ---------------------------------------------------------------- 1. one owner per run, sweep and study


def test_a_run_owned_by_a_live_process_is_refused_and_a_dead_owner_reads_as_interrupted(copy):
    root = copy.path.parent
    copy.set_status("running")
    Catalog(root).upsert_run(copy)
    holder = _holder(copy.path)
    try:
        line = _one_line(caplab("resume", copy.path.name, root=root), 2)
        assert f"in use by pid {holder.pid}" in line
        assert copy.path.name in caplab("runs", "--status", "running", root=root).stdout
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        holder.stdout.close()
    listing = caplab("runs", root=root)  # the kernel released the lock with the process
    row = next(line for line in listing.stdout.splitlines() if copy.path.name in line)
    assert "interrupted" in row and "running" not in row
    assert "status   interrupted" in caplab("show", copy.path.name, root=root).stdout
    assert caplab("resume", copy.path.name, root=root).returncode == 0
    assert copy.info()["status"] == "completed"


def test_two_resumes_at_once_never_duplicate_steps(tmp_path):
    run_dir = _kill_partway(tmp_path, LONG + ["train.steps=2000"], at_step=20)
    cmd = [sys.executable, "-m", "caplab.cli", "resume", run_dir.name, "--root", str(tmp_path)]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not is_owned(run_dir) and time.time() < deadline:  # the first resume is training now
        time.sleep(0.01)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr, second.stderr
    first.send_signal(signal.SIGKILL)  # and a resume after that is not refused
    first.communicate(timeout=60)
    steps = [r["step"] for r in RunStore(run_dir).metrics()]
    assert steps == sorted(set(steps))


def test_a_sweep_owned_by_a_live_process_is_refused(tmp_path):
    created = caplab("sweep", "demo", "--grid", "task.n_train_compositions=8", *_sets(TINY + ["train.steps=2"]),
                     root=tmp_path)
    assert created.returncode == 0, created.stderr
    (folder,) = (tmp_path / "sweeps").iterdir()
    holder = _holder(folder)
    try:
        line = _one_line(caplab("sweep", "--resume", folder.name, root=tmp_path), 2)
        assert f"in use by pid {holder.pid}" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        holder.stdout.close()
    assert caplab("sweep", "--resume", folder.name, root=tmp_path).returncode == 0


def test_ownership_is_exclusive_within_one_process_too(tmp_path):
    with owning(tmp_path):
        with pytest.raises(Exception, match="in use by pid"):
            with owning(tmp_path):
                pass
    with owning(tmp_path):  # released on exit
        pass


# ---------------------------------------------------------------- 2-4. damaged files


def test_rebuild_skips_a_damaged_run_and_keeps_every_valid_row(copy, finished, tmp_path):
    root = copy.path.parent
    second = root / "second-run"
    shutil.copytree(finished.path, second)
    info = json.loads((second / "run.json").read_text())
    (second / "run.json").write_text(json.dumps({**info, "run_id": "second-run"}))
    assert Catalog(root).rebuild() == (2, [])
    (second / "run.json").write_text("{ truncated")
    result = caplab("runs", "--rebuild", root=root)
    assert result.returncode == 0
    assert "skipped damaged run second-run" in result.stderr and "rebuilt from 1" in result.stderr
    assert [r["run_id"] for r in Catalog(root).runs()] == [copy.path.name]


def test_a_bad_summary_never_flips_a_completed_run_nor_loses_its_row(copy):
    (copy.path / "summary.json").write_text("not json")
    result = caplab("resume", copy.path.name, root=copy.path.parent)
    assert result.returncode == 0  # a completed run has nothing to continue
    assert copy.info()["status"] == "completed"
    rebuilt = caplab("runs", "--rebuild", root=copy.path.parent)
    assert "summary.json is not valid JSON" in rebuilt.stderr and "without its summary" in rebuilt.stderr
    assert copy.path.name in rebuilt.stdout and "completed" in rebuilt.stdout
    assert len(Catalog(copy.path.parent).metric_rows([copy.path.name])) > 0


@pytest.mark.parametrize("name,content,message,commands", [
    ("config.json", None, "config.json is missing", ("resume", "report", "show")),
    ("config.json", "{}", "does not describe a valid run", ("resume",)),
    ("config.json", "[1, 2", "config.json is not valid JSON", ("resume", "report", "show")),
    ("run.json", "{}", "run.json lacks", ("resume", "report", "show")),
    ("manifest.json", '{"checkpoints": 5}', "'checkpoints' should be a list", ("resume", "show")),
    ("metrics.jsonl", '{"step": 0}\ngarbage\n{"step": 8}\n', "metrics.jsonl line 2 is not a metrics record",
     ("resume", "report", "show")),
])
def test_damaged_run_files_are_one_line_naming_the_file(copy, name, content, message, commands):
    root = copy.path.parent
    if name != "run.json":
        copy.set_status("interrupted")  # so that resume goes on to read the damaged file
    path = copy.path / name
    if content is None:
        path.unlink()
    else:
        path.write_text(content)
    def saved():  # the run's records; the report (figures, report.html) is derived and may be redrawn
        return {p: p.read_bytes() for p in copy.path.rglob("*")
                if p.is_file() and not p.name.startswith(".") and p.name != "report.html" and "figures" not in p.parts}
    before = saved()
    for command in commands:
        result = caplab(command, copy.path.name, root=root)
        assert result.returncode != 0, command
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("caplab: error:") and message in last and "Traceback" not in result.stderr, (command, result.stderr)
    assert saved() == before  # nothing saved was touched


def test_show_still_shows_what_it_can(copy):
    (copy.path / "config.json").write_text("{")
    shown = caplab("show", copy.path.name, root=copy.path.parent)
    assert shown.returncode == 1 and "final metrics" in shown.stdout and "checkpoints:" in shown.stdout
    assert "config.json is not valid JSON" in shown.stderr


def test_report_writes_what_it_can_and_names_the_damage(copy):
    (copy.path / "report.html").unlink()
    (copy.path / "config.json").write_text("{")
    result = caplab("report", copy.path.name, root=copy.path.parent)
    assert result.returncode == 1 and "config.json is not valid JSON" in result.stderr.strip().splitlines()[-1]
    assert "Final metrics" in (copy.path / "report.html").read_text()  # the curves are still drawn


def test_a_half_written_last_metrics_line_is_skipped_with_a_warning(copy):
    path = copy.path / "metrics.jsonl"
    records = path.read_text().splitlines()
    path.write_text("\n".join(records) + '\n{"step": 32, "eval_lo')
    shown = caplab("show", copy.path.name, root=copy.path.parent)
    assert shown.returncode == 0 and "warning" in shown.stderr and "line" in shown.stderr
    assert f"final metrics (step {json.loads(records[-1])['step']})" in shown.stdout


# ---------------------------------------------------------------- 5. OS errors


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    run_dir = _kill_partway(tmp_path, LONG, at_step=20)
    store = RunStore(run_dir)
    manifest_before = store.manifest()
    newest = store.checkpoint_entry(with_state=True)
    weights_before = (run_dir / newest["file"]).read_bytes()
    # a limit under a checkpoint's size and above every other file (the catalog is the largest): the run starts,
    # trains, and its first checkpoint write fails
    weights = (run_dir / newest["file"]).stat().st_size
    others = max(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and "checkpoints" not in p.parts)
    assert others < weights
    result = subprocess.run([sys.executable, "-m", "caplab.cli", "resume", run_dir.name, "--root", str(tmp_path)],
                            capture_output=True, text=True, preexec_fn=_limit_file_size((others + weights) // 2),
                            timeout=300)
    line = _one_line(result, 1)  # EFBIG here; ENOSPC on a full disk reads "database or disk is full"
    assert "cannot write" in line or "too large" in line.lower()
    assert (run_dir / newest["file"]).read_bytes() == weights_before
    assert store.manifest() == manifest_before
    assert store.info()["status"] == "failed" and "storage" in store.info()["error"]
    assert not list(run_dir.rglob(".*.tmp"))
    assert caplab("resume", run_dir.name, root=tmp_path).returncode == 0  # and it resumes once there is room


def _as_reader(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run `cmd` without the power to ignore file permissions: root (as tests often run) loses CAP_DAC_OVERRIDE
    and CAP_DAC_READ_SEARCH from its bounding set before exec, so a 0555 folder is read-only to it too."""
    def drop():
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
                if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                    raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, preexec_fn=drop)


def test_a_read_only_archive_can_be_read_and_refuses_writes_in_one_line(finished, tmp_path):
    archive = tmp_path / "archive"
    root = archive / "runs"
    shutil.copytree(finished.path, root / finished.path.name)
    Catalog(root).upsert_run(RunStore(root / finished.path.name))  # an archive keeps its catalog too
    for path in [archive, *archive.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    base = [sys.executable, "-m", "caplab.cli"]
    try:
        listing = _as_reader(base + ["runs", "--root", str(root)])
        assert listing.returncode == 0 and finished.path.name in listing.stdout, listing.stderr
        shown = _as_reader(base + ["show", finished.path.name, "--root", str(root)])
        assert shown.returncode == 0 and "final metrics" in shown.stdout, shown.stderr
        made = _as_reader(base + ["run", "demo", *_sets(TINY), "--root", str(root)])
        assert made.returncode == 1 and made.stderr.strip().splitlines()[-1].startswith("caplab: error:")
        assert "Traceback" not in made.stderr, made.stderr
        assert sorted(p.name for p in root.iterdir() if not p.name.startswith("catalog.sqlite")) == [finished.path.name]
    finally:
        for path in [archive, *archive.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)


# ---------------------------------------------------------------- 6-9. bad values are refused at config time


@pytest.mark.parametrize("override,message", [
    ("train.device=cuda:7", "train.device=cuda:7 is not on this machine"),
    ("train.device=bogus", "bad value 'bogus' for 'train.device'"),
    ("train.device=meta", "bad value 'meta' for 'train.device'"),
    ("train.lr=nan", "train.lr must be a finite number"),
    ("train.beta1=5", "train.beta1 must be in [0, 1)"),
    ("train.seed=9223372036854775808", "train.seed must be in [0, 2^63)"),
    ("task.seed=99999999999999999999", "task.seed must be in [0, 2^63)"),
    ("train.weight_decay=-1", "train.weight_decay must be non-negative"),
    ("train.grad_clip=nan", "train.grad_clip must be a finite number"),
    ("task=5", "set a key inside the section"),
    ("model=5", "set a key inside the section"),
    ("train=null", "set a key inside the section"),
])
def test_values_that_would_crash_at_train_time_are_refused_before_any_run_exists(tmp_path, override, message):
    if override == "train.device=cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    result = caplab("run", "demo", *_sets(TINY + [override]), root=tmp_path)
    assert message in _one_line(result, 2)
    assert not tmp_path.exists() or not [p for p in tmp_path.iterdir() if p.name != "catalog.sqlite"]


def test_a_huge_step_count_costs_no_memory_for_its_schedules(tmp_path):
    assert 10**12 in Schedule(10**12, 250) and 10**12 - 1 not in Schedule(10**12, 250)
    cfg = load_config("demo", TINY + ["train.steps=1000000000000", "train.max_flops=1"])
    started = time.perf_counter()
    store = RunStore(run_experiment(cfg, tmp_path))
    assert time.perf_counter() - started < 60
    assert store.info()["status"] == "completed" and store.metrics()[-1]["step"] == 1


def test_bad_recipe_files_and_run_names_are_one_line(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage\x9c")
    assert "not UTF-8" in _one_line(caplab("run", str(binary), root=tmp_path / "runs"), 2)
    assert "no run named '/etc'" in _one_line(caplab("show", "/etc", root=tmp_path / "runs"), 1)
    run_experiment(load_config("demo", TINY + ["train.steps=2"]), tmp_path / "runs")
    for pattern in ("*", "demo-*", "?emo", ""):  # never a glob pattern, never everything
        assert "no run named" in _one_line(caplab("show", pattern, root=tmp_path / "runs"), 1)
    assert caplab("show", "demo", root=tmp_path / "runs").returncode == 0  # a plain prefix still works


def test_a_sweep_metric_that_no_run_logs_fails_before_training(tmp_path):
    result = caplab("sweep", "demo", "--grid", "task.n_train_compositions=8", "--metric", "bogus", *_sets(TINY),
                    root=tmp_path)
    assert "bad value 'bogus' for the sweep metric" in _one_line(result, 2)
    assert not (tmp_path / "sweeps").exists() and not list(tmp_path.glob("demo-*"))
    made = caplab("sweep", "demo", "--grid", "task.n_train_compositions=8", *_sets(TINY + ["train.steps=2"]), root=tmp_path)
    assert made.returncode == 0, made.stderr
    (folder,) = (tmp_path / "sweeps").iterdir()
    document = (folder / "sweep.json").read_text()
    again = caplab("sweep", "--resume", folder.name, "--metric", "bogus", root=tmp_path)
    assert "bad value 'bogus' for the sweep metric" in _one_line(again, 2)
    assert (folder / "sweep.json").read_text() == document


# ---------------------------------------------------------------- 10-13. paths, permissions, checkpoints, signals


def test_a_recipe_name_cannot_escape_the_runs_root(tmp_path):
    recipe = tmp_path / "escape.yaml"
    recipe.write_text("recipe: /../../../../elsewhere/x\ntask: {name: compositions}\n")
    assert "bad recipe name" in _one_line(caplab("run", str(recipe), root=tmp_path / "runs"), 2)
    assert not (tmp_path / "elsewhere").exists() and not Path("/elsewhere").exists()


def test_a_symlinked_run_folder_is_refused_for_writing(copy, tmp_path):
    outside = tmp_path / "outside"
    shutil.move(str(copy.path), outside)
    copy.path.symlink_to(outside, target_is_directory=True)
    RunStore(outside).set_status("interrupted")
    assert "symbolic link" in _one_line(caplab("resume", copy.path.name, root=copy.path.parent), 2)


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = RunStore(run_experiment(load_config("demo", TINY + ["train.steps=2"]), tmp_path))
    finally:
        os.umask(old)
    assert store.path.stat().st_mode & 0o777 == 0o755
    for path in [*store.path.rglob("*.safetensors"), store.path / "run.json"]:
        assert path.stat().st_mode & 0o777 == 0o644, path


def test_a_checkpoint_relabelled_as_another_step_is_refused(copy):
    manifest = copy.manifest()
    entries = {e["step"]: e for e in manifest["checkpoints"]}
    early, late = entries[8], entries[24]
    (copy.path / late["file"]).write_bytes((copy.path / early["file"]).read_bytes())
    late["sha256"] = early["sha256"]  # the tamperer also fixed the hash
    (copy.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Exception, match="holds step 8, but the manifest says step 24"):
        copy.load_weights(24)


def test_stale_temporary_files_are_cleaned_by_the_next_owner(tmp_path):
    run_dir = _kill_partway(tmp_path, LONG, at_step=20)
    stale = [run_dir / ".manifest.json.abc.tmp", run_dir / "checkpoints" / ".step_00000030.safetensors.x.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    assert caplab("resume", run_dir.name, root=tmp_path).returncode == 0
    assert not any(path.exists() for path in stale)


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "caplab.cli", "run", "demo", *_sets(LONG + ["train.steps=100000"]),
                             "--root", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("*/checkpoints/*.safetensors")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "resume with `caplab resume" in err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert RunStore(run_dir).info()["status"] == "interrupted"


def test_metrics_are_strict_json_and_a_non_finite_loss_is_never_checkpointed(tmp_path):
    store = RunStore.create("demo", tmp_path)
    store.log_metrics({"step": 0, "eval_loss": float("nan"), "x": float("inf"), "y": 1.0})
    line = (store.path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    assert json.loads(line) == {"step": 0, "eval_loss": None, "x": None, "y": 1.0, "nonfinite": {"eval_loss": "nan", "x": "inf"}}
    (back,) = store.metrics()  # caplab reads the floats back
    assert back["eval_loss"] != back["eval_loss"] and back["x"] == float("inf") and back["y"] == 1.0 and "nonfinite" not in back

    from caplab.experiment import _StoreSink, build

    _, _, trainer = build(load_config("demo", TINY), _StoreSink(store, Catalog(tmp_path)))
    trainer.last_record = {"step": 0, "eval_loss": float("nan")}  # weights finite, the loss not
    with pytest.raises(Exception, match="eval_loss is nan at step 0"):
        trainer._checkpoint()
    assert store.manifest()["checkpoints"] == []


# ---------------------------------------------------------------- the randomized kill-and-resume loop


@pytest.mark.slow
def test_random_kills_then_resumes_end_exactly_where_an_uninterrupted_run_ends(tmp_path):
    overrides = TINY + ["train.steps=120", "train.eval_every=10", "train.checkpoint_every=10"]
    reference = RunStore(run_experiment(load_config("demo", overrides), tmp_path / "reference"))
    root = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("CAPLAB_FAULT_SEED", "0")))
    cmd = [sys.executable, "-m", "caplab.cli", "run", "demo", *_sets(overrides), "--root", str(root)]
    kills = 0
    for _ in range(int(os.environ.get("CAPLAB_FAULT_ROUNDS", "4"))):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))  # a random moment: start-up, a step, a checkpoint write, the report
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(60)
        runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")] if root.is_dir() else []
        if runs:
            cmd = [sys.executable, "-m", "caplab.cli", "resume", runs[0].name, "--root", str(root)]
    assert caplab(*cmd[3:]).returncode == 0
    (run_dir,) = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    resumed = RunStore(run_dir)
    assert resumed.info()["status"] == "completed" and kills >= 1
    assert without_timing(resumed.metrics()) == without_timing(reference.metrics())
    for (a, _), (b, _) in [(resumed.load_weights(), reference.load_weights())]:
        assert all(torch.equal(a[k], b[k]) for k in a)
