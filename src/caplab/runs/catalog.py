"""An SQLite index of runs, configs and metrics, for queries across runs.

The run directories stay the source of truth; `Catalog.rebuild` recreates the
database from them. WAL mode plus a busy timeout lets several processes write
at once without losing rows.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional

from caplab.errors import CaplabError, DamagedRun
from caplab.runs.owner import live_status
from caplab.runs.store import RunStore, runs_root
from caplab.tasks.base import DATA_UNITS

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    recipe TEXT NOT NULL,
    status TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    path TEXT NOT NULL,
    config TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    tokens INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, name)
);
CREATE INDEX IF NOT EXISTS metrics_by_name ON metrics (name, run_id);
"""

CATALOG_FILE = "catalog.sqlite"
UPSERT_RUN = ("INSERT OR REPLACE INTO runs (run_id, recipe, status, created, updated, path, config, summary, error)"
              " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


class Catalog:
    """The run catalog at `<runs root>/catalog.sqlite`.

    `for_reading` opens it for commands that only read: where there is none yet, or on a read-only archive, it
    falls back to a private copy scanned from the run directories, so reading never writes.
    """

    def __init__(self, root: Optional[Path] = None, path: Optional[Path] = None) -> None:
        self.root = Path(root) if root is not None else runs_root()
        if path is None:
            self.root.mkdir(parents=True, exist_ok=True)
        self.path = Path(path) if path is not None else self.root / CATALOG_FILE
        with self._connect() as db:
            db.executescript(SCHEMA)

    @classmethod
    def for_reading(cls, root: Optional[Path] = None) -> "Catalog":
        """The catalog of `root`, or, where it cannot be written (a read-only archive), one scanned into a
        temporary file from the run directories."""
        root_path = Path(root) if root is not None else runs_root()
        try:
            if not (root_path / CATALOG_FILE).is_file():  # nothing catalogued here: read without creating a file
                raise FileNotFoundError(root_path / CATALOG_FILE)
            return cls(root)
        except (OSError, sqlite3.Error):
            scratch = tempfile.TemporaryDirectory(prefix="caplab-catalog-")
            catalog = cls(root, path=Path(scratch.name) / CATALOG_FILE)
            catalog._scratch = scratch  # removed with the catalog
            catalog.rebuild()
            return catalog

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """A short-lived connection in autocommit mode; rolled back and closed on any error."""
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=60000")
            db.execute("PRAGMA synchronous=NORMAL")
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        finally:
            db.close()

    # ------------------------------------------------------------ writing

    @staticmethod
    def _run_row(store: RunStore, notes: Optional[list[str]] = None) -> tuple:
        """The run's catalog row. With `notes`, a damaged summary.json (the run's own files are fine) is
        catalogued as {} and noted, so the run keeps its row."""
        info = store.info()
        config = store.config_dict() if (store.path / "config.json").is_file() else {}
        try:
            summary = store.summary()
        except CaplabError as exc:
            if notes is None:
                raise
            notes.append(f"{store.path.name}: {exc} (catalogued without its summary)")
            summary = {}
        return (info["run_id"], info["recipe"], info["status"], info["created"], info["updated"],
                str(store.path.resolve()), json.dumps(config), json.dumps(summary), info.get("error"))

    @staticmethod
    def _metric_rows(run_id: str, records: Iterable[dict]) -> list[tuple]:
        try:
            return [
                (run_id, int(r["step"]), int(next((r[u] for u in DATA_UNITS if u in r), 0)), name, float(value))
                for r in records
                for name, value in r.items()
                if name not in ("step", *DATA_UNITS) and isinstance(value, (int, float)) and not isinstance(value, bool)
            ]
        except (TypeError, ValueError) as exc:
            raise DamagedRun(f"run {run_id}: a metrics record has a value that is not a number ({exc})") from None

    def upsert_run(self, store: RunStore) -> None:
        row = self._run_row(store)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(UPSERT_RUN, row)
            db.execute("COMMIT")

    def add_metrics(self, run_id: str, records: Iterable[dict]) -> None:
        rows = self._metric_rows(run_id, records)
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")

    def forget_metrics_after(self, run_id: str, step: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM metrics WHERE run_id = ? AND step > ?", (run_id, step))

    def rebuild(self) -> tuple[int, list[str]]:
        """Recreate the catalog from the run directories in one transaction: (runs catalogued, what was damaged,
        each "name: what is wrong"). A run whose run.json, config.json or metrics cannot be read is skipped; one
        whose summary.json alone is damaged keeps its row without the summary. A failure part-way leaves the
        old catalog whole."""
        rows, metrics, damaged = [], [], []
        for run_json in sorted(self.root.glob("*/run.json")):
            if run_json.parent.name.startswith("."):
                continue  # a run directory still being assembled (or left by a crash)
            store = RunStore(run_json.parent)
            try:
                notes: list[str] = []
                row = self._run_row(store, notes)
                metrics.extend(self._metric_rows(row[0], store.metrics()))
            except CaplabError as exc:
                damaged.append(f"{run_json.parent.name}: {exc}")
                continue
            rows.append(row)
            damaged += notes
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM metrics")
            db.execute("DELETE FROM runs")
            db.executemany(UPSERT_RUN, rows)
            db.executemany("INSERT OR REPLACE INTO metrics VALUES (?, ?, ?, ?, ?)", metrics)
            db.execute("COMMIT")
        return len(rows), damaged

    # ------------------------------------------------------------ reading

    def runs(self, recipe: Optional[str] = None, status: Optional[str] = None) -> list[dict]:
        query, args = "SELECT run_id, recipe, status, created, updated, path, summary, error FROM runs WHERE 1=1", []
        if recipe:
            query, args = query + " AND recipe = ?", args + [recipe]
        if status:
            query, args = query + " AND status = ?", args + [status]
        with self._connect() as db:
            db.row_factory = sqlite3.Row
            rows = db.execute(query + " ORDER BY created, run_id", args).fetchall()
        return [{**dict(r), "summary": json.loads(r["summary"])} for r in rows]

    def live_runs(self, recipe: Optional[str] = None, status: Optional[str] = None) -> list[dict]:
        """`runs`, with each status as it stands now: "running" only while its owner lives (else "interrupted")."""
        rows = [{**r, "status": live_status(r["status"], Path(r["path"]))} for r in self.runs(recipe=recipe)]
        return [r for r in rows if status is None or r["status"] == status]

    def metric_rows(self, run_ids: Optional[list[str]] = None) -> list[tuple]:
        query = "SELECT m.run_id, r.recipe, m.step, m.tokens, m.name, m.value FROM metrics m JOIN runs r USING (run_id)"
        args: list = []
        if run_ids is not None:
            query += f" WHERE m.run_id IN ({', '.join('?' * len(run_ids))})"
            args = list(run_ids)
        with self._connect() as db:
            return db.execute(query + " ORDER BY m.run_id, m.step", args).fetchall()


def metrics_frame(run_ids: Optional[list[str]] = None, recipe: Optional[str] = None, root: Optional[Path] = None):
    """Metrics of many runs as a pandas DataFrame: one row per (run, evaluation), one column per metric."""
    import pandas as pd

    catalog = Catalog.for_reading(root)
    if recipe is not None:
        wanted = [r["run_id"] for r in catalog.runs(recipe=recipe)]
        run_ids = wanted if run_ids is None else [r for r in run_ids if r in wanted]
    long = pd.DataFrame(catalog.metric_rows(run_ids), columns=["run_id", "recipe", "step", "tokens", "metric", "value"])
    if long.empty:
        return pd.DataFrame(columns=["run_id", "recipe", "step", "tokens"])
    wide = long.pivot_table(index=["run_id", "recipe", "step", "tokens"], columns="metric", values="value", aggfunc="last")
    wide.columns.name = None
    return wide.reset_index()
