"""The one flow: config -> task, model, trainer -> run directory -> report, catalog row."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sqlite3
from pathlib import Path
from typing import Callable, Optional

import torch
from safetensors import SafetensorError

from caplab.config import ExperimentConfig
from caplab.errors import CaplabError, ConfigError, TrainingDiverged
from caplab.models.gpt import GPT
from caplab.names import check_name
from caplab.runs.catalog import Catalog
from caplab.runs.owner import owning
from caplab.runs.report import write_report
from caplab.runs.store import RunStore
from caplab.train import distributed
from caplab.train.plugins import attach_plugins
from caplab.train.trainer import Trainer, resolve_device


def build(cfg: ExperimentConfig, store: Optional[RunStore] = None, root: Optional[Path] = None):
    """Task, model (initialised from train.seed, or from train.init_from's weights) and trainer for `cfg`.

    `root` is where train.init_from's run is looked up (default: the runs root).
    """
    task = cfg.make_task()
    torch.manual_seed(cfg.train.seed)
    model = cfg.make_model()
    if cfg.train.init_from:
        load_initial_weights(model, cfg.train.init_from, root)
    trainer = Trainer(task, model, cfg.train, store)
    attach_plugins(trainer, cfg.mat, cfg.diagnostics)
    return task, model, trainer


def load_initial_weights(model: torch.nn.Module, source: str, root: Optional[Path] = None) -> dict:
    """Load "RUN" or "RUN@STEP" weights (hash-checked) into `model`; return the checkpoint's manifest entry."""
    name, _, step = source.partition("@")
    if step and not step.isdigit():
        raise ConfigError(f"bad value {source!r} for 'train.init_from'; expected RUN or RUN@STEP")
    tensors, entry = RunStore.open(name, root).load_weights(int(step) if step else None)
    expected = model.state_dict()
    mismatched = [k for k in expected if k not in tensors or tensors[k].shape != expected[k].shape]
    if mismatched or set(tensors) - set(expected):
        key = mismatched[0] if mismatched else sorted(set(tensors) - set(expected))[0]
        raise ConfigError(f"train.init_from={source!r} does not fit this model (first difference: {key}); "
                          "model.* and the task's vocabulary and length must match the source run")
    model.load_state_dict(tensors)
    return entry


class _StoreSink:
    """Sends the trainer's output to the run directory and the catalog."""

    def __init__(self, store: RunStore, catalog: Catalog, keep_states: int = 1) -> None:
        self.store, self.catalog, self.keep_states = store, catalog, keep_states

    def log_metrics(self, record: dict) -> None:
        self.store.log_metrics(record)
        self.catalog.add_metrics(self.store.run_id, [record])

    def save_checkpoint(self, step, tokens, model, extra, meta) -> None:
        self.store.save_checkpoint(step, tokens, model, extra, meta, keep_states=self.keep_states)


def _prepare(store: RunStore, cfg: ExperimentConfig, catalog: Catalog, restore: bool):
    """Task and trainer of a created run, restored from its checkpoint if asked. Only reads: a damaged file
    or a bad checkpoint stops here with the run's files and status as they were."""
    if restore:  # the checkpoint holds the weights: train.init_from's run is not needed any more
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=None))
    task, model, trainer = build(cfg, _StoreSink(store, catalog), store.path.parent)
    if restore:
        trainer.restore(*store.load_training_state())
    kept = [r for r in store.metrics() if r["step"] <= (trainer.step if restore else -1)]
    if kept:
        trainer.last_record = kept[-1]
    return task, trainer


def _start(store: RunStore, trainer: Trainer, catalog: Catalog) -> None:
    """Forget records past the starting step (from a run that died: they are recomputed) and mark the run
    running; inside `_marking_failures`, so a write refused here (a full disk) still ends as failed."""
    keep_until = trainer.step if trainer.restored else -1
    store.truncate_metrics(keep_until)
    catalog.forget_metrics_after(store.run_id, keep_until)
    store.set_status("running")
    catalog.upsert_run(store)


def _finish(store: RunStore, task, final: dict, catalog: Catalog) -> Path:
    summary = {"step": final.get("step"), task.unit: final.get(task.unit), "flops": final.get("flops"),
               "eval_loss": final.get("eval_loss"), **task.headline(final)}
    if task.phase_metrics:
        summary["emergence_order"] = _emergence_order(store.metrics(), task.phase_metrics)
    store.write_json("summary.json", summary)
    write_report([store], store.path)
    store.set_status("completed")
    catalog.upsert_run(store)
    return store.path


@contextlib.contextmanager
def _marking_failures(stores: list[RunStore], catalog: Catalog):
    """A training error marks the runs failed (a CaplabError, or a write the OS refused: a full disk) or
    interrupted (anything else: Ctrl-C, SIGTERM, a bug); checkpoints stay."""
    try:
        yield
    except CaplabError as exc:
        _mark(stores, catalog, "failed", str(exc), diverged=isinstance(exc, TrainingDiverged))
        raise
    except (OSError, sqlite3.Error, SafetensorError) as exc:
        _mark(stores, catalog, "failed", f"storage: {exc}")
        raise
    except BaseException as exc:  # Ctrl-C or a bug: the checkpoints stay resumable
        _mark(stores, catalog, "interrupted", f"{type(exc).__name__}: {exc}")
        exc.caplab_runs = [store.run_id for store in stores]  # for the CLI's "resume with caplab resume RUN"
        raise


@contextlib.contextmanager
def _tracking(stores: list[RunStore], trainers: list[Trainer], loggers: dict):
    """Stream each run's evaluations to the trackers of `loggers` (caplab.runs.trackers); yields a list to which
    the caller adds each run that completed, whose figures are sent before its trackers close."""
    done: list[RunStore] = []
    if not loggers:
        yield done
        return
    from caplab.runs.trackers import finish_trackers, open_trackers

    opened = []
    try:
        for store, trainer in zip(stores, trainers):
            trackers = open_trackers(store, loggers)
            opened.append((store, trackers))
            for tracker in trackers:
                trainer.add_callback("on_eval", lambda _, record, tracker=tracker: tracker.log(record))
        yield done
    finally:
        for store, trackers in opened:
            finish_trackers(trackers, store, ok=store in done)


def _mark(stores: list[RunStore], catalog: Catalog, status: str, error: str, diverged: bool = False) -> None:
    """Record the status where the disk lets us; a full disk must not hide the error that stopped the run."""
    for store in stores:
        try:
            if store.info()["status"] == "completed":  # an ensemble member finished before the failure
                continue
            store.set_status(status, error, diverged=diverged)
            catalog.upsert_run(store)
        except (OSError, sqlite3.Error, CaplabError):
            pass


def callback_pairs(callbacks) -> list[tuple]:
    """User callbacks as (event, fn): objects whose methods are named after trainer events (`on_eval(trainer,
    record)`, `on_step_end(trainer, loss)`, ... as in Lightning), or `(event, fn)` pairs. ConfigError otherwise."""
    from caplab.train.trainer import EVENTS

    pairs = []
    for callback in callbacks:
        if isinstance(callback, tuple):
            if len(callback) != 2 or callback[0] not in EVENTS or not callable(callback[1]):
                raise ConfigError(f"callback {callback!r} is not (event, function); events: {', '.join(EVENTS)}")
            pairs.append(callback)
            continue
        methods = [(event, getattr(callback, event)) for event in EVENTS if callable(getattr(callback, event, None))]
        if not methods:
            raise ConfigError(f"callback {callback!r} has no method named after a trainer event ({', '.join(EVENTS)})")
        pairs += methods
    return pairs


def _train(store: RunStore, cfg: ExperimentConfig, catalog: Catalog, restore: bool, callbacks=()) -> Path:
    with owning(store.path):
        if restore and store.info()["status"] == "completed":  # finished by another process meanwhile
            return store.path
        store.remove_temporaries()
        task, trainer = _prepare(store, cfg, catalog, restore)  # reads and checks; the status is not touched yet
        for event, fn in callback_pairs(callbacks):
            trainer.add_callback(event, fn)
        with _marking_failures([store], catalog):
            _start(store, trainer, catalog)
            with _tracking([store], [trainer], cfg.loggers) as done:
                final = trainer.fit()
                path = _finish(store, task, final, catalog)
                done.append(store)
                return path


def train_ensemble(stores: list[RunStore]) -> list[Path]:
    """Train created runs of one model shape together (`caplab.train.ensemble`); each stays an ordinary run.

    An ensemble that stops is resumed member by member (`resume_run`): its checkpoints are ordinary ones.
    """
    from caplab.train.ensemble import EnsembleTrainer

    catalog = Catalog(stores[0].path.parent)
    with contextlib.ExitStack() as owned:
        for store in stores:
            owned.enter_context(owning(store.path))
        prepared = [_prepare(store, store.experiment_config(), catalog, restore=False)
                    for store in stores]
        ensemble = EnsembleTrainer([trainer for _, trainer in prepared])
        with _marking_failures(stores, catalog):
            for store, (_, trainer) in zip(stores, prepared):
                _start(store, trainer, catalog)
            with _tracking(stores, [trainer for _, trainer in prepared], stores[0].experiment_config().loggers) as done:
                finals = ensemble.fit()
                paths = []
                for index, (store, (task, _), final) in enumerate(zip(stores, prepared, finals)):
                    if index in ensemble.failed:
                        store.set_status("failed", ensemble.failed[index], diverged=True)  # members only ever drop out diverged
                        catalog.upsert_run(store)
                    else:
                        paths.append(_finish(store, task, final, catalog))
                        done.append(store)
    if ensemble.failed:  # the others are complete; the caller learns which diverged
        raise TrainingDiverged("; ".join(f"run {stores[i].run_id}: {message}" for i, message in sorted(ensemble.failed.items())),
                               runs=[stores[i].run_id for i in sorted(ensemble.failed)])
    return paths


def ensemble_members(cfg: ExperimentConfig) -> list[ExperimentConfig]:
    """The runs of `train.ensemble=N`: seeds seed .. seed+N-1 (and worlds task.seed + i with train.ensemble_worlds)."""
    members = []
    for i in range(cfg.train.ensemble):
        task = dict(cfg.task, seed=cfg.task["seed"] + i) if cfg.train.ensemble_worlds and "seed" in cfg.task else dict(cfg.task)
        train = dataclasses.replace(cfg.train, seed=cfg.train.seed + i, ensemble=1, ensemble_worlds=False)
        members.append(dataclasses.replace(cfg, task=task, train=train))
    return members


def _emergence_order(records: list[dict], metrics: tuple[str, ...]) -> list[dict]:
    """Phase metrics sorted by emergence point (sigmoid midpoint in log-steps; None: did not emerge)."""
    from caplab.analysis.emergence import emergence_order

    curves = {k: ([r["step"] for r in records if k in r], [r[k] for r in records if k in r]) for k in metrics}
    curves = {k: c for k, c in curves.items() if sum(step > 0 for step in c[0]) >= 4}  # a sigmoid fit needs 4 points
    return [{"metric": k, "step": (round(p, 1) if math.isfinite(p) else None)} for k, p in emergence_order(curves)]


def create_run(cfg: ExperimentConfig, root: Optional[Path] = None, run_id: Optional[str] = None) -> RunStore:
    """A new run directory holding `cfg` (status "created"), catalogued; nothing trained yet."""
    resolve_device(cfg.train.device)  # a device this machine lacks fails before anything is created
    if cfg.train.data_streams > 1:
        distributed.check_distributable(cfg)
    if cfg.train.init_from:  # a missing source, checkpoint or shape mismatch fails before anything is created
        load_initial_weights(cfg.make_model(), cfg.train.init_from, root)
    files = {"config.json": cfg.to_dict(), "task.json": cfg.make_task().describe()}
    store = RunStore.create(cfg.recipe, root, run_id=run_id, files=files)
    Catalog(store.path.parent).upsert_run(store)
    return store


def record_model_run(store: RunStore, cfg: ExperimentConfig, model: GPT) -> Path:
    """Complete a created run with `model` as its step-0 checkpoint and evaluation (a compiled program, say)."""
    with owning(store.path):
        return _record_model(store, cfg, model)


def _record_model(store: RunStore, cfg: ExperimentConfig, model: GPT) -> Path:
    task, fresh, trainer = build(cfg, _StoreSink(store, Catalog(store.path.parent)), store.path.parent)
    fresh.load_state_dict(model.state_dict())
    store.set_status("running")
    record = {"step": 0, "tokens": 0, **trainer.evaluate()}
    trainer.store.log_metrics(record)
    tensors, extra, meta = trainer.state_tensors()
    trainer.store.save_checkpoint(0, 0, tensors, extra, meta)
    store.write_json("summary.json", {"step": 0, "tokens": 0, "eval_loss": record["eval_loss"], **task.headline(record)})
    write_report([store], store.path)
    store.set_status("completed")
    Catalog(store.path.parent).upsert_run(store)
    return store.path


def train_run(store: RunStore, callbacks=()) -> Path:
    """Train a run created by `create_run` from the start (`callbacks`: see `callback_pairs`)."""
    cfg = store.experiment_config()
    return _train(store, cfg, Catalog(store.path.parent), restore=False, callbacks=callbacks)


def run_experiment(cfg: ExperimentConfig, root: Optional[Path] = None, callbacks=()) -> Path:
    """Train `cfg` in a new run directory; return its path (see `run_ensemble` for train.ensemble > 1).

    `callbacks`: objects with methods named after trainer events (`on_eval(trainer, record)`, ...) or
    `(event, fn)` pairs, called as the run trains (see `callback_pairs`).
    """
    callback_pairs(callbacks)  # a bad callback fails before a run directory exists
    if cfg.train.ensemble > 1:
        raise ConfigError("train.ensemble > 1 makes several runs: use caplab.run_ensemble")
    if distributed.launched():
        if callbacks:
            raise ConfigError("callbacks are not passed to torchrun's other processes; use the loggers: section")
        return _train_distributed(cfg, lambda cfg: create_run(cfg, root), restore=False)
    return train_run(create_run(cfg, root), callbacks)


def run_ensemble(cfg: ExperimentConfig, root: Optional[Path] = None) -> list[Path]:
    """Train the `train.ensemble` members of `cfg` together, one run directory each; return their paths."""
    from caplab.train.ensemble import check_ensemble

    if distributed.launched():
        raise ConfigError("train.ensemble does not run under torchrun: an ensemble is one process")
    members = ensemble_members(cfg)
    check_ensemble(cfg)
    return train_ensemble([create_run(member, root) for member in members])


def complete_reserved_run(cfg: ExperimentConfig, runs_dir: Path, run_id: str, announce: Callable[[str], None],
                          fill: Optional[Callable[[RunStore], object]] = None) -> None:
    """Bring run `run_id` (an id a sweep or study reserved) to completion.

    A run that does not exist yet is created (any half-assembled leftover cleared) and filled by
    `fill` (default: trained); a run that stopped is resumed from its checkpoint (or, with a custom
    `fill`, made again); a completed run is left alone. `announce("starting")` or
    `announce("resuming")` says which.
    """
    run_dir = Path(runs_dir) / check_name(run_id, "run id")
    if (run_dir / "run.json").is_file():
        if RunStore(run_dir).info()["status"] == "completed":
            return
        if fill is None:
            announce("resuming")
            resume_run(run_id, runs_dir)
            return
        shutil.rmtree(run_dir)  # not trained (e.g. a compiled model): simply made again
    for leftover in Path(runs_dir).glob(f".{run_id}.*"):  # half-assembled by a killed process
        shutil.rmtree(leftover, ignore_errors=True)
    announce("starting")
    (fill or train_run)(create_run(cfg, runs_dir, run_id=run_id))


def resume_run(name: str, root: Optional[Path] = None) -> Path:
    """Continue run `name` from its newest checkpoint to the configured number of steps.

    A run that died before its first checkpoint starts again from step 0.
    """
    store = RunStore.open(name, root)
    if store.info()["status"] == "completed":  # nothing to continue; its files and status stay as they are
        return store.path
    restore = bool(store.manifest()["checkpoints"])
    if distributed.launched():
        return _train_distributed(store.experiment_config(), lambda cfg: store, restore)
    if not restore:
        return train_run(store)
    cfg = store.experiment_config()
    return _train(store, cfg, Catalog(store.path.parent), restore=True)


def _train_distributed(cfg: ExperimentConfig, open_run: Callable[[ExperimentConfig], RunStore], restore: bool) -> Path:
    """One run trained by every torchrun process: rank 0 makes (or opens) the run, owns it and writes it; the
    other ranks train the same model on their share of the data streams and write nothing."""
    distributed.init(cfg.train.device)
    if cfg.train.data_streams == 1 and not restore:  # a new run: one stream per process (saved in its config)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, data_streams=distributed.world_size()))
    distributed.local_streams(cfg.train.data_streams)  # a world size that cannot share the streams fails on every rank
    store, error = None, None
    if distributed.rank() == 0:
        try:
            store = open_run(cfg)
            if store.info()["status"] == "completed":  # finished meanwhile: every rank stops here
                error = "completed"
        except BaseException as exc:  # any failure here reaches the other ranks, which would wait forever
            error = exc
    path, message = distributed.broadcast((str(store.path.resolve()) if store else None,
                                           None if error is None else str(error)))
    if message == "completed":
        return Path(path)
    if isinstance(error, BaseException):
        raise error
    if message is not None:
        raise CaplabError(f"rank 0: {message}")
    if store is not None:
        return _train(store, store.experiment_config(), Catalog(store.path.parent), restore)
    follower = RunStore(Path(path))
    cfg = follower.experiment_config()
    if restore:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=None))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, progress="never"))
    _, _, trainer = build(cfg, None, follower.path.parent)
    if restore:
        trainer.restore(*follower.load_training_state())
        kept = [r for r in follower.metrics() if r["step"] <= trainer.step]
        trainer.last_record = kept[-1] if kept else {}
    trainer.fit()
    return follower.path


def load_model(name: str, step: Optional[int] = None, root: Optional[Path] = None) -> tuple[torch.nn.Module, ExperimentConfig]:
    """The model of run `name` at `step` (default: newest checkpoint), hash-checked, no unpickling."""
    store = RunStore.open(name, root)
    cfg = store.experiment_config()
    model = cfg.make_model()
    tensors, _ = store.load_weights(step)
    model.load_state_dict(tensors)
    return model.eval(), cfg
