"""caplab: a laboratory for how neural-network capabilities emerge, compose and change."""

from caplab.config import ExperimentConfig, load_config
from caplab.errors import CaplabError, ConfigError, CorruptCheckpoint, RunNotFound, TrainingDiverged
from caplab.experiment import load_model, resume_run, run_ensemble, run_experiment
from caplab.models.gpt import GPT, GPTConfig
from caplab.models.hooks import HookPoint
from caplab.runs.catalog import Catalog, metrics_frame
from caplab.runs.store import RunStore
from caplab.tasks import Batch, Task, make_task
from caplab.tasks.compositions import Compositions
from caplab.train.trainer import Trainer, TrainConfig

__version__ = "0.1.0"

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
