"""caplab: a laboratory for how neural-network capabilities emerge, compose and change.

The public names below are imported on first use (PEP 562), so `import caplab`
costs little, prints nothing and changes no global state (no matplotlib
backend, no torch settings): `caplab.run_experiment` imports the training
stack the first time it is read.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("caplab")  # the one version string: the package's metadata (pyproject.toml)
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

# public name -> the module that defines it
_PUBLIC = {
    "ExperimentConfig": "caplab.config",
    "load_config": "caplab.config",
    "CaplabError": "caplab.errors",
    "ConfigError": "caplab.errors",
    "CorruptCheckpoint": "caplab.errors",
    "RunNotFound": "caplab.errors",
    "TrainingDiverged": "caplab.errors",
    "load_model": "caplab.experiment",
    "resume_run": "caplab.experiment",
    "run_ensemble": "caplab.experiment",
    "run_experiment": "caplab.experiment",
    "GPT": "caplab.models.gpt",
    "GPTConfig": "caplab.models.gpt",
    "HookPoint": "caplab.models.hooks",
    "Catalog": "caplab.runs.catalog",
    "metrics_frame": "caplab.runs.catalog",
    "RunStore": "caplab.runs.store",
    "Batch": "caplab.tasks",
    "Task": "caplab.tasks",
    "make_task": "caplab.tasks",
    "Compositions": "caplab.tasks.compositions",
    "Trainer": "caplab.train.trainer",
    "TrainConfig": "caplab.train.trainer",
}

__all__ = [
    "Batch",
    "CaplabError",
    "Catalog",
    "Compositions",
    "ConfigError",
    "CorruptCheckpoint",
    "ExperimentConfig",
    "GPT",
    "GPTConfig",
    "HookPoint",
    "RunNotFound",
    "RunStore",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "load_config",
    "load_model",
    "make_task",
    "metrics_frame",
    "resume_run",
    "run_ensemble",
    "run_experiment",
]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # later reads skip this function
        return value
    raise AttributeError(f"module 'caplab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from caplab.config import ExperimentConfig, load_config
    from caplab.errors import CaplabError, ConfigError, CorruptCheckpoint, RunNotFound, TrainingDiverged
    from caplab.experiment import load_model, resume_run, run_ensemble, run_experiment
    from caplab.models.gpt import GPT, GPTConfig
    from caplab.models.hooks import HookPoint
    from caplab.runs.catalog import Catalog, metrics_frame
    from caplab.runs.store import RunStore
    from caplab.tasks import Batch, Task, make_task
    from caplab.tasks.compositions import Compositions
    from caplab.train.trainer import TrainConfig, Trainer
