"""The `loggers:` section: which experiment trackers a run streams to, and their options (the trackers
themselves are in caplab.runs.trackers; this is only their configuration, so config.py can check it).

    loggers: [tensorboard, wandb]                      # or, with options:
    loggers: {wandb: {project: emergence, mode: offline}, mlflow: {tracking_uri: "sqlite:///mlflow.db"}}
    caplab run RECIPE --log tensorboard,wandb,mlflow
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class TensorBoardConfig:
    log_dir: Optional[str] = None  # default: <run>/tensorboard


@dataclass
class WandbConfig:
    project: str = "caplab"
    entity: Optional[str] = None
    mode: Literal["offline", "online", "disabled"] = "offline"  # offline needs no network; `wandb sync` uploads later


@dataclass
class MLflowConfig:
    tracking_uri: Optional[str] = None  # default: sqlite:///<runs root>/mlflow.db (artifacts in <runs root>/mlartifacts)
    experiment: Optional[str] = None  # default: the recipe's name


TRACKER_CONFIGS = {"tensorboard": TensorBoardConfig, "wandb": WandbConfig, "mlflow": MLflowConfig}
