import multiprocessing as mp

from caplab import Catalog, RunStore, load_config, metrics_frame, run_experiment
from helpers import TINY

ROWS_PER_WRITER = 150


def _writer(root: str, run_id: str) -> None:
    catalog = Catalog(root)
    for step in range(ROWS_PER_WRITER):
        catalog.add_metrics(run_id, [{"step": step, "tokens": step * 10, "loss": 1.0 / (step + 1), "acc": step / 1000}])


def test_two_processes_write_at_once_without_losing_rows(tmp_path):
    Catalog(tmp_path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), f"run{i}")) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    import sqlite3

    with sqlite3.connect(tmp_path / "catalog.sqlite") as db:
        counts = dict(db.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id").fetchall())
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert counts == {"run0": 2 * ROWS_PER_WRITER, "run1": 2 * ROWS_PER_WRITER}
    assert mode == "wal"


def test_rebuild_and_dataframe_match_the_run_directories(tmp_path):
    a = RunStore(run_experiment(load_config("demo", TINY + ["train.steps=4"]), tmp_path))
    b = RunStore(run_experiment(load_config("demo", TINY + ["train.steps=4", "train.seed=1"]), tmp_path))
    catalog = Catalog(tmp_path)
    before = catalog.runs()
    (tmp_path / "catalog.sqlite").unlink()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"catalog.sqlite{suffix}").unlink(missing_ok=True)
    catalog = Catalog(tmp_path)
    assert catalog.runs() == []
    assert catalog.rebuild() == (2, [])
    assert catalog.runs() == before
    assert [r["status"] for r in catalog.runs(status="completed")] == ["completed"] * 2
    assert catalog.runs(recipe="nope") == []

    frame = metrics_frame(root=tmp_path)
    assert len(frame) == len(a.metrics()) + len(b.metrics())
    for store in (a, b):
        rows = frame[frame.run_id == store.run_id].sort_values("step")
        assert rows["step"].tolist() == [r["step"] for r in store.metrics()]
        assert rows["unseen_exact"].tolist() == [r["unseen_exact"] for r in store.metrics()]
    assert len(metrics_frame([a.run_id], root=tmp_path)) == len(a.metrics())
