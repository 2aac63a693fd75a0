"""The simplest study: one training run of a recipe (or, with train.ensemble = N, N seeds trained together)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from caplab.config import load_config
from caplab.errors import CaplabError
from caplab.experiment import create_run, resume_run, run_ensemble, run_experiment, train_run
from caplab.train import distributed
from caplab.runs.store import RunStore

log = logging.getLogger(__name__)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    cfg = load_config(recipe, overrides)
    if cfg.train.ensemble > 1:
        log.info(f"caplab: training {cfg.recipe} ({cfg.train.steps} steps), an ensemble of {cfg.train.ensemble} seeds")
        return [str(path) for path in run_ensemble(cfg, root)]
    if distributed.launched():  # one run over torchrun's processes (rank 0 makes it)
        return [str(run_experiment(cfg, root))]
    store = create_run(cfg, root)
    log.info(f"caplab: run {store.run_id}: training {cfg.recipe} ({cfg.train.steps} steps)")
    return headline_lines(RunStore(train_run(store))) + [str(store.path)]


def headline_lines(store: RunStore) -> list[str]:
    """The run's final numbers, one line: step, held-out loss and the task's headline metrics."""
    summary = store.summary()
    shown = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None and k not in ("flops",)}
    parts = [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v:,}" for k, v in shown.items()]
    return [f"{store.run_id}: " + ", ".join(parts)] if parts else []


def resume(path: Path) -> list[str]:
    """Continue a training run from its newest checkpoint (hash-checked; a completed run is left as it is)."""
    store = RunStore(path)
    if store.config_dict().get("kind") == "percolation":
        if store.info()["status"] == "completed":
            return [str(path)]
        raise CaplabError(f"{path.name} is a percolation simulation that did not finish; it has nothing to continue "
                          f"from: run its recipe again (caplab run {store.info()['recipe']})")
    return [str(resume_run(path.name, path.parent))]


def summary_lines(summary: dict) -> list[str]:
    return []
