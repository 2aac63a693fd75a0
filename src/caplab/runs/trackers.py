"""Experiment trackers: a run's metrics, config and figures streamed to TensorBoard, Weights & Biases or MLflow.

caplab's own run directory and catalog stay the source of truth; a tracker is
a copy for the tools researchers already use. Each is an optional extra
(`pip install 'caplab[tracking]'`) chosen by the `loggers:` section or
`caplab run RECIPE --log tensorboard,wandb,mlflow`:

    tensorboard  a SummaryWriter in <run>/tensorboard: every evaluation's numbers as scalars, the config as text,
                 the figures as images
    wandb        a W&B run with the run id as its id (offline by default: `wandb sync <run>/wandb/offline-run-*`
                 uploads it), the config, every evaluation, the figures as images
    mlflow       an MLflow run (tracking URI default sqlite:///<runs root>/mlflow.db, experiment = the recipe):
                 the flattened config as params, every evaluation as metrics, the figures as artifacts

`caplab export RUN --to NAME` replays a finished run's metrics.jsonl into one of them.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from pathlib import Path
from typing import Optional

from caplab.config import flatten_config
from caplab.errors import ConfigError
from caplab.runs.store import RunStore
from caplab.tracker_config import TRACKER_CONFIGS



def numbers(record: dict) -> dict[str, float]:
    """The finite numbers of an evaluation record (not its step)."""
    return {k: float(v) for k, v in record.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}



class TensorBoardTracker:
    def __init__(self, store: RunStore, options) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("loggers.tensorboard needs tensorboard: pip install 'caplab[tracking]'") from None
        self.writer = SummaryWriter(log_dir=options.log_dir or str(store.path / "tensorboard"))
        self.writer.add_text("config", f"```\n{json.dumps(store.config_dict(), indent=2)}\n```")

    def log(self, record: dict) -> None:
        for key, value in numbers(record).items():
            self.writer.add_scalar(key, value, record["step"])

    def figures(self, paths: list[Path], step: int) -> None:
        import matplotlib.image

        for path in paths:
            image = matplotlib.image.imread(str(path))  # (H, W, 3 or 4), floats in [0, 1]
            self.writer.add_image(f"figures/{path.stem}", image[..., :3], step, dataformats="HWC")

    def close(self, ok: bool) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, store: RunStore, options) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("loggers.wandb needs wandb: pip install 'caplab[tracking]'") from None
        self.wandb = wandb
        self.run = wandb.init(project=options.project, entity=options.entity, mode=options.mode, dir=str(store.path),
                              id=store.run_id, name=store.run_id, config=store.config_dict(), resume="allow",
                              reinit="create_new", settings=wandb.Settings(silent=True, console="off"))

    def log(self, record: dict) -> None:
        self.run.log(numbers(record), step=record["step"])

    def figures(self, paths: list[Path], step: int) -> None:
        self.run.log({f"figures/{p.stem}": self.wandb.Image(str(p)) for p in paths}, step=step)

    def close(self, ok: bool) -> None:
        self.run.finish(exit_code=0 if ok else 1)


def _quiet(method):
    """MLflow's own dependencies (SQLAlchemy) warn about their internals: not the user's concern."""
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            return method(*args, **kwargs)

    return wrapped


class MLflowTracker:
    @_quiet
    def __init__(self, store: RunStore, options) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("loggers.mlflow needs mlflow: pip install 'caplab[tracking]'") from None
        root = store.path.parent.resolve()
        self.client = MlflowClient(options.tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
        name = options.experiment or store.info()["recipe"]
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=(root / "mlartifacts").as_uri())
        same = self.client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{store.run_id}'")
        # a resumed run continues its MLflow run
        self.run_id = same[0].info.run_id if same else self.client.create_run(experiment_id, run_name=store.run_id).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten_config(store.config_dict()).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    @_quiet
    def log(self, record: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, record["step"]) for k, v in numbers(record).items()]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    @_quiet
    def figures(self, paths: list[Path], step: int) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path), "figures")

    @_quiet
    def close(self, ok: bool) -> None:
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MLflowTracker}
assert set(TRACKERS) == set(TRACKER_CONFIGS)


def open_trackers(store: RunStore, loggers: dict) -> list:
    """One tracker per entry of a config's `loggers` ({name: options})."""
    return [TRACKERS[name](store, options) for name, options in loggers.items()]


def finish_trackers(trackers: list, store: Optional[RunStore], ok: bool) -> None:
    """Send the run's figures (when it completed) and close every tracker."""
    for tracker in trackers:
        try:
            if ok and store is not None:
                records = store.metrics()
                tracker.figures(sorted((store.path / "figures").glob("*.png")), records[-1]["step"] if records else 0)
        finally:
            tracker.close(ok)


def export_run(store: RunStore, name: str, options: Optional[dict] = None) -> None:
    """Replay a run's metrics.jsonl, config and figures into tracker `name` (`caplab export RUN --to NAME`)."""
    if name not in TRACKERS:
        raise ConfigError(f"bad value {name!r} for --to; valid: {', '.join(TRACKERS)}")
    from caplab.config import build_dataclass

    tracker = TRACKERS[name](store, build_dataclass(TRACKER_CONFIGS[name], dict(options or {}), f"loggers.{name}"))
    ok = False
    try:
        for record in store.metrics():
            tracker.log(record)
        ok = True
    finally:
        finish_trackers([tracker], store, ok)
