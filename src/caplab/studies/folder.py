"""What every multi-run study does with its folder and its runs, written once.

A study folder (`<runs root>/sweeps/<id>/sweep.json`, `<runs root>/studies/<id>/study.json`)
lists the runs it is made of. Each run's id is reserved in that document
before the run is created, so a crash never leaves a run the study does not
know; `complete` then creates, resumes or skips the run according to what is
on disk, so running a study again (`caplab resume`) continues it exactly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, Optional

from caplab.config import ExperimentConfig
from caplab.errors import TrainingDiverged, UnsafePath
from caplab.experiment import complete_reserved_run
from caplab.names import check_name
from caplab.runs.owner import owning
from caplab.runs.store import RunStore, atomic_write_json, runs_root

log = logging.getLogger(__name__)


def new_folder(kind_folder: str, name: str, document_name: str, document: dict, root: Optional[Path] = None) -> Path:
    """Create `<root>/<kind_folder>/<new id>/` holding `document` as `document_name`; return the folder."""
    root = Path(root) if root is not None else runs_root()
    if (root / kind_folder).is_symlink():
        raise UnsafePath(f"{root / kind_folder} is a symbolic link; caplab writes only inside the runs root")
    path = root / kind_folder / RunStore.new_run_id(check_name(name, "recipe name"))
    path.mkdir(parents=True)
    atomic_write_json(path / document_name, document)
    return path


def run_and_report(path: Path, run: Callable[[Path], dict], summary_lines: Callable[[dict], list[str]], who: str) -> list[str]:
    """Run (or continue) the study at `path`; its summary lines and its path, for the CLI to print."""
    with owning(path, who):
        log.info(f"caplab {who}: {path}")
        return summary_lines(run(path)) + [str(path)]


def reserve(document_path: Path, document: dict, slot, key, recipe: str) -> str:
    """The run id at `slot[key]` (a dict entry or list item of `document`), reserving a new one for `recipe` and
    saving `document` first if there is none yet."""
    reserve_all(document_path, document, [(slot, key, recipe)])
    return slot[key]


def reserve_all(document_path: Path, document: dict, slots: list[tuple]) -> None:
    """`reserve` for every (slot, key, recipe) at once: new ids where there are none, then one save."""
    missing = [(slot, key, recipe) for slot, key, recipe in slots if slot[key] is None]
    for slot, key, recipe in missing:
        taken = json.dumps(document)
        run_id = RunStore.new_run_id(recipe)
        while f'"{run_id}"' in taken or (document_path.parent.parent.parent / run_id).exists():
            run_id = RunStore.new_run_id(recipe)  # ids reserved within one second may meet (4 hex digits)
        slot[key] = run_id
    if missing:
        atomic_write_json(document_path, document)


def run_status(runs_dir: Path, run_id: str) -> dict:
    """run.json of a run, or {} when the run does not exist yet."""
    path = Path(runs_dir) / run_id / "run.json"
    return RunStore(path.parent).info() if path.is_file() else {}


def complete(cfg: ExperimentConfig, runs_dir: Path, run_id: str, label: str, who: str,
             fill: Optional[Callable[[RunStore], object]] = None, divergence_is_result: bool = True,
             keep_failed: bool = False) -> str:
    """Bring reserved run `run_id` to completion (`caplab.experiment.complete_reserved_run`), telling stderr.

    Returns "completed", "diverged" (the loss became NaN: a result when `divergence_is_result`, else raised),
    or "failed" for a run kept as failed (`keep_failed`: not retried here; `caplab resume RUN` retries it).
    """
    say = lambda text: log.info(f"caplab {who}: {label}: {text}")  # noqa: E731
    info = run_status(runs_dir, run_id)
    if keep_failed and info.get("status") == "failed":
        if info.get("diverged") and divergence_is_result:
            say(f"kept as diverged; `caplab resume {run_id}` retries it")
            return "diverged"
        if not info.get("diverged"):
            say(f"kept as failed ({info.get('error')}); `caplab resume {run_id}` retries it")
            return "failed"
    try:
        complete_reserved_run(cfg, runs_dir, run_id, lambda how: say(f"{how} {run_id}"), fill)
    except TrainingDiverged as exc:
        if not divergence_is_result:
            raise
        say(f"diverged: {exc}")
        return "diverged"
    return "completed"
