"""The simplest study: one training run of a recipe (or, with train.ensemble = N, N seeds trained together)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

from caplab.config import load_config
from caplab.errors import CaplabError
from caplab.experiment import resume_run, run_ensemble, run_experiment
from caplab.runs.store import RunStore


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    cfg = load_config(recipe, overrides)
    if cfg.train.ensemble > 1:
        print(f"caplab: training {cfg.recipe} ({cfg.train.steps} steps), an ensemble of {cfg.train.ensemble} seeds",
              file=sys.stderr)
        return [str(path) for path in run_ensemble(cfg, root)]
    print(f"caplab: training {cfg.recipe} ({cfg.train.steps} steps)", file=sys.stderr)
    return [str(run_experiment(cfg, root))]


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
