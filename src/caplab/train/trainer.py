"""A model-agnostic trainer: online batches from a Task, the task's objective, schedules, callbacks.

Nothing here knows about tokens, images or GPT: the task scores the model's
outputs (`Task.loss`) and counts the data in its own unit (tokens, images);
the model counts its training FLOPs (`caplab.train.flops.model_step_flops`),
logged as cumulative `flops`. The trainer draws a fresh batch from the task
every step (on the device, from its own seeded generator), evaluates and
checkpoints on log-spaced-then-uniform schedules (like Pythia), and can be
restored from a checkpoint to continue exactly where it stopped.

Callback events, each called as `fn(trainer, **info)`:
    on_train_start, on_backward_end (gradients ready, before clipping and the optimizer step),
    on_optimizer_step_end, on_step_end(loss), on_eval(record), on_checkpoint(step), on_train_end(record)
(`loss`: a float, or a 0-d device tensor where `train.finite_check_every` > 1, e.g. on CUDA; float() reads it)

Plug-ins (`add_plugin`: modular adaptive training, diagnostics; built from
their config sections by `caplab.train.plugins.attach_plugins`) use these
events, add to each evaluation's record and keep state in checkpoints; MAT
also replaces `flops_this_step`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from caplab.errors import ConfigError, TrainingDiverged
from caplab.tasks.base import Task
from caplab.train import distributed
from caplab.train import state as train_state
from caplab.train.optim import build_optimizer, warmup_cosine
from caplab.train.flops import model_step_flops

EVENTS = ("on_train_start", "on_backward_end", "on_optimizer_step_end", "on_step_end", "on_eval", "on_checkpoint",
          "on_train_end")


log = logging.getLogger(__name__)

DEVICE_NAME = re.compile(r"auto|cpu|cuda|cuda:\d+|mps")


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping
    seed: int = 0  # model init and data order
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False  # torch.compile the training forward
    eval_every: int = 250  # evaluations at 0, 1, 2, 4, ... < eval_every, then every eval_every
    checkpoint_every: int = 500  # checkpoints on the same kind of schedule
    log_spaced: bool = True  # the log-spaced early evaluations and checkpoints
    eval_batch_size: int = 256  # batch of the fixed held-out loss estimate
    progress: Literal["auto", "always", "never"] = "auto"  # auto: a bar on a terminal (tqdm's widget in Jupyter), else plain lines
    progress_every_s: float = 60.0  # without a bar: one log line (step, rate, loss, headline metric, ETA) this often
    init_from: Optional[str] = None  # start from another run's weights: "RUN" (its newest checkpoint) or "RUN@STEP"
    optimizer: Literal["adamw", "sgd", "muon", "spectra"] = "adamw"  # muon / spectra: 2-D weights of attention and MLPs, AdamW elsewhere
    momentum: Optional[float] = None  # sgd, muon, spectra; None: 0.9 for sgd, 0.95 for muon and spectra
    spectral_rank_fraction: float = 0.015  # spectra: share of singular directions treated as the spike (0: none, a control)
    nesterov: Optional[bool] = None  # muon / spectra: step on G + mu M (None: muon yes, as its reference; spectra no)
    adamw_side_lr: Optional[float] = None  # muon / spectra: peak rate of the AdamW-side parameters (None: lr)
    stop_at: Optional[float] = None  # stop at the first evaluation where stop_metric reaches this value
    stop_metric: str = "eval_loss"  # ...at or below it for a metric named *loss, at or above it otherwise (e.g. seen_exact)
    max_flops: Optional[float] = None  # stop once the training FLOPs (MAT's estimates included) reach this cap
    ensemble: int = 1  # N > 1: train seeds seed .. seed+N-1 at once (caplab.train.ensemble), one run each
    ensemble_worlds: bool = False  # ensemble members also take worlds task.seed + i
    data_streams: int = 1  # the batch drawn from this many seeded streams (caplab.train.distributed; torchrun: the world size)
    finite_check_every: int = 0  # the NaN/inf guard reads the loss every N steps (0: every step on CPU, every 16 on CUDA)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError(f"train.warmup_steps must be non-negative, got {self.warmup_steps}")
        finite = {"lr": self.lr, "min_lr": self.min_lr, "weight_decay": self.weight_decay, "grad_clip": self.grad_clip,
                  "beta1": self.beta1, "beta2": self.beta2, "spectral_rank_fraction": self.spectral_rank_fraction}
        for name, value in finite.items():
            if not math.isfinite(value):
                raise ValueError(f"train.{name} must be a finite number, got {value}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be positive, got {self.lr}")
        if self.adamw_side_lr is not None and not (math.isfinite(self.adamw_side_lr) and self.adamw_side_lr > 0):
            raise ValueError(f"train.adamw_side_lr must be a positive number, got {self.adamw_side_lr}")
        for name in ("min_lr", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise ValueError(f"train.{name} must be non-negative, got {getattr(self, name)}")
        for name in ("beta1", "beta2") + (("momentum",) if self.momentum is not None else ()):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 <= self.spectral_rank_fraction <= 1:
            raise ValueError(f"train.spectral_rank_fraction must be in [0, 1], got {self.spectral_rank_fraction}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"train.seed must be in [0, 2^63), got {self.seed}")
        if not DEVICE_NAME.fullmatch(self.device):
            raise ValueError(f"bad value {self.device!r} for 'train.device'; valid: auto, cpu, cuda, cuda:N, mps")
        if self.ensemble < 1:
            raise ValueError(f"train.ensemble must be at least 1, got {self.ensemble}")
        if not self.progress_every_s > 0:
            raise ValueError(f"train.progress_every_s must be positive, got {self.progress_every_s}")
        if self.finite_check_every < 0:
            raise ValueError(f"train.finite_check_every must be non-negative, got {self.finite_check_every}")
        if self.data_streams < 1:
            raise ValueError(f"train.data_streams must be at least 1, got {self.data_streams}")
        if self.max_flops is not None and self.max_flops <= 0:
            raise ValueError(f"train.max_flops must be positive, got {self.max_flops}")


@dataclass(frozen=True)
class Schedule:
    """Steps 0, 1, 2, 4, ... (below `every`), then multiples of `every`, and `total`.

    Membership is computed, never listed, so a run of 10^12 steps costs no memory for its schedules.
    """

    total: int
    every: int
    log_spaced: bool = True

    def __contains__(self, step: int) -> bool:
        if step in (0, self.total):
            return True
        if not 0 < step < self.total:
            return False
        power_of_two = step & (step - 1) == 0
        return step % self.every == 0 or (self.log_spaced and step < self.every and power_of_two)


def schedule(total: int, every: int, log_spaced: bool = True) -> list[int]:
    """The steps of `Schedule(total, every, log_spaced)` as a list (for small totals: plots, tests)."""
    return [step for step in range(total + 1) if step in Schedule(total, every, log_spaced)]


class Store(Protocol):
    """Where the trainer writes (a run directory, see caplab.runs.store)."""

    def log_metrics(self, record: dict) -> None: ...

    def save_checkpoint(self, step: int, tokens: int, model: dict, extra: dict, meta: dict) -> None: ...


def resolve_device(name: str) -> torch.device:
    """The torch device of `train.device`; ConfigError if this machine does not have it."""
    if distributed.launched() and re.fullmatch(r"cuda:\d+", name):
        raise ConfigError(f"train.device={name} under torchrun would put every process on one GPU; use cuda or auto "
                          "(each process takes cuda:LOCAL_RANK)")
    if name == "auto" or (name == "cuda" and distributed.launched()):  # under torchrun: this rank's GPU
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.local_rank() if distributed.launched() else torch.cuda.current_device())
        if name == "auto":
            return torch.device("cpu")
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
            raise ConfigError(f"train.device={name} is not on this machine ({have}); use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device=mps is not on this machine; use auto or cpu")
    return torch.device(name)


class Trainer:
    """Train `model` on batches from `task`.

    Arguments:
        task: the data-generating process (also scores the model).
        model: any nn.Module mapping a batch's inputs to the outputs the task's objective scores.
        cfg: TrainConfig.
        store: optional sink for metrics and checkpoints.
        optimizer: optional; default: the one `cfg.optimizer` names, built over the model's parameters.
    """

    def __init__(self, task: Task, model: nn.Module, cfg: TrainConfig, store: Optional[Store] = None,
                 optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        self.task, self.cfg, self.store = task, cfg, store
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        # a plug-in: the caller's optimizer, or the one train.optimizer names (caplab.train.optim.OPTIMIZERS)
        self.optimizer = optimizer if optimizer is not None else build_optimizer(self.model, cfg, self.device)
        # the batch's data streams this process draws (all of them, unless torchrun shares them out)
        self.streams = distributed.local_streams(cfg.data_streams)
        self.generators = [torch.Generator(device=self.device).manual_seed(distributed.stream_seed(cfg.seed, s))
                           for s in self.streams]
        self.generator = self.generators[0]
        if cfg.batch_size % cfg.data_streams:
            raise ConfigError(f"train.batch_size={cfg.batch_size} must be a multiple of train.data_streams={cfg.data_streams}")
        self.stream_batch = cfg.batch_size // cfg.data_streams
        self.step = 0
        self.unit = task.unit  # tokens, images, ...: what `units_per_step` and the logged data count
        self.units_per_step = cfg.batch_size * task.units_per_sample
        # training FLOPs per step, for models that can count theirs; logged as cumulative `flops`
        self.flops_per_step = model_step_flops(model, cfg.batch_size, task)
        self.flops_spent = 0  # cumulative, including any kernel estimates of modular adaptive training
        self.flops_this_step = lambda: self.flops_per_step  # MAT replaces it (frozen modules skip weight gradients)
        self.callbacks: dict[str, list[Callable]] = defaultdict(list)
        self.last_record: dict = {}
        self.forward = torch.compile(model) if cfg.compile else model
        self.local_forward = self.forward  # evaluation: this process alone (a DDP forward may call collectives)
        if distributed.world_size() > 1:  # gradients averaged over ranks: the mean of the streams' objectives
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.forward, device_ids=ids)
        self._held_out = None
        # the NaN/inf guard: a device-side flag read every `check_every` steps (reading the loss each step would
        # make the host wait for the GPU every step), and always before an evaluation or a checkpoint
        self.check_every = cfg.finite_check_every or (16 if self.device.type == "cuda" else 1)
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._checked_at = 0
        self.restored = False
        self.eval_seconds = 0.0
        self.plugins: dict[str, object] = {}  # MAT, diagnostics (caplab.train.plugins): add_plugin

    # ------------------------------------------------------------ plumbing

    def add_plugin(self, plugin) -> None:
        """A plug-in (see caplab.train.plugins): its `record()` joins each evaluation, its state each checkpoint."""
        self.plugins[plugin.name] = plugin

    @property
    def mat(self):
        """The modular adaptive training plug-in, or None."""
        return self.plugins.get("mat")

    def add_callback(self, event: str, fn: Callable) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown event {event!r}; valid: {', '.join(EVENTS)}")
        self.callbacks[event].append(fn)

    def _fire(self, event: str, **info) -> None:
        for fn in self.callbacks[event]:
            fn(self, **info)

    def autocast(self):
        precision = self.cfg.precision
        if precision == "bf16" or (precision == "auto" and self.device.type == "cuda"):
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def lr_at(self, step: int) -> float:
        c = self.cfg
        return warmup_cosine(step, c.steps, c.lr, c.min_lr, c.warmup_steps)

    # ------------------------------------------------------------ state

    def state_tensors(self) -> tuple[dict, dict, dict]:
        """(model tensors, optimizer + RNG tensors, metadata) for a checkpoint."""
        model = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        optim, meta = train_state.optimizer_to_tensors(self.optimizer)
        streams = distributed.gather_states({s: g.get_state() for s, g in zip(self.streams, self.generators)})
        extra = {**optim, **train_state.rng_to_tensors(self.generator)}
        extra.update({f"rng.data.{s}": state for s, state in streams.items() if s > 0})  # stream 0 is rng.data
        if hasattr(self.task, "data_state"):  # e.g. a finite corpus's place in its epoch
            extra.update({f"task.{k}": v for k, v in self.task.data_state().items()})
        meta = {**meta, "step": self.step, "flops_spent": self.flops_spent}
        for name, plugin in self.plugins.items():
            if hasattr(plugin, "state_dict"):
                meta[name] = plugin.state_dict()
        return model, extra, meta

    def restore(self, model: dict, extra: dict, meta: dict) -> None:
        """Continue from a checkpoint written by `state_tensors`."""
        self.model.load_state_dict(model)
        train_state.optimizer_from_tensors(self.optimizer, extra, meta)
        train_state.rng_from_tensors(self.generator, extra)
        saved_streams = 1 + sum(key.startswith("rng.data.") for key in extra)
        if saved_streams != self.cfg.data_streams:
            raise ConfigError(f"the checkpoint has {saved_streams} data streams, the config {self.cfg.data_streams}: "
                              "train.data_streams cannot change when a run resumes")
        for stream, generator in zip(self.streams, self.generators):
            generator.set_state(extra["rng.data" if stream == 0 else f"rng.data.{stream}"])
        if hasattr(self.task, "load_data_state"):
            self.task.load_data_state({k[len("task."):]: v for k, v in extra.items() if k.startswith("task.")})
        self.step = int(meta["step"])
        self._checked_at = self.step
        self.flops_spent = int(meta.get("flops_spent", 0))
        for name, plugin in self.plugins.items():
            if hasattr(plugin, "load_state_dict"):
                plugin.load_state_dict(meta[name])
        self.restored = True

    # ------------------------------------------------------------ steps

    def loss(self, batch) -> torch.Tensor:
        """The task's objective on the model's outputs for `batch`."""
        with self.autocast():
            outputs = self.forward(batch.inputs)
        return self.task.loss(outputs, batch)

    def train_step(self) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step) * group.get("lr_scale", 1.0)
        if len(self.generators) == 1:
            batch = self.task.sample(self.stream_batch, self.generator, self.device)
            if hasattr(self.task, "observe"):
                self.task.observe(batch)
            loss = self.loss(batch)
        else:  # the mean of the streams' objectives, as torchrun's ranks compute it between them
            loss = sum(self.loss(self.task.sample(self.stream_batch, g, self.device)) for g in self.generators) / len(self.generators)
        value = distributed.mean_over_ranks(loss).detach()
        if self.check_every == 1:  # read now, before the step: the exact step is named
            value = value.item()
            if value != value or value in (float("inf"), float("-inf")):
                raise TrainingDiverged(f"loss became {value} at step {self.step}; training stopped, the last good checkpoint is kept")
        else:
            self._nonfinite |= ~torch.isfinite(value)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._fire("on_backward_end")
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.grad is not None], self.cfg.grad_clip)
        self.optimizer.step()
        self._fire("on_optimizer_step_end")
        if self.flops_per_step is not None:
            self.flops_spent += self.flops_this_step()
        self.step += 1
        if self.step % self.check_every == 0:
            self.check_finite()
        return value

    def check_finite(self) -> None:
        """Raise TrainingDiverged if a loss since the last check was NaN or infinite (one read of a device flag)."""
        if self.check_every > 1 and bool(self._nonfinite):
            raise TrainingDiverged(f"the loss became NaN or infinite between step {self._checked_at} and step {self.step}; "
                                   "training stopped, the last good checkpoint is kept")
        self._checked_at = self.step

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out loss on a fixed batch plus the task's capability metrics."""
        if self._held_out is None:
            generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 10_000)
            self._held_out = self.task.held_out(self.cfg.eval_batch_size, generator, self.device)
        was_training = self.model.training
        self.model.eval()
        with self.autocast():
            outputs = self.local_forward(self._held_out.inputs)
        record = {"eval_loss": self.task.loss(outputs, self._held_out).item()}
        with self.autocast():
            record.update(self.task.evaluate(self.model, self.device))
        self.model.train(was_training)
        return record

    def _checkpoint(self) -> None:
        """Save a checkpoint, only of a good state: finite weights, and finite losses where this step was evaluated."""
        self.check_finite()
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingDiverged(f"parameter {name} is not finite at step {self.step}; the last good checkpoint is kept")
        if self.last_record.get("step") == self.step:
            for key in ("eval_loss", "train_loss"):
                value = self.last_record.get(key)
                if isinstance(value, float) and not math.isfinite(value):
                    raise TrainingDiverged(f"{key} is {value} at step {self.step}; the last good checkpoint is kept")
        if self.store is not None or distributed.world_size() > 1:  # every rank hands rank 0 its streams' state
            model, extra, meta = self.state_tensors()
            if self.store is not None:
                self.store.save_checkpoint(self.step, self.step * self.units_per_step, model, extra, meta)
        self._fire("on_checkpoint", step=self.step)

    def _eval_and_log(self, train_loss, fit_start: float) -> dict:
        self.check_finite()
        record = {"step": self.step, self.unit: self.step * self.units_per_step, "lr": self.lr_at(max(self.step - 1, 0))}
        if self.flops_per_step is not None:
            record["flops"] = self.flops_spent
        for plugin in self.plugins.values():
            record.update(plugin.record())
        if train_loss is not None:
            record["train_loss"] = float(train_loss)  # a device tensor where the guard reads it only every few steps
        if hasattr(self.task, "data_metrics"):
            record.update(self.task.data_metrics())
        started = time.perf_counter()
        if distributed.world_size() > 1:  # rank 0 evaluates; every rank then reads the same record (and stops alike)
            record.update(distributed.broadcast(self.evaluate() if distributed.rank() == 0 else None))
        else:
            record.update(self.evaluate())
        self.eval_seconds += time.perf_counter() - started
        record["elapsed_s"] = round(time.perf_counter() - fit_start, 3)  # wall time of this fit, this evaluation included
        record["eval_s"] = round(self.eval_seconds, 3)  # of which spent evaluating
        self.last_record = record
        if self.store is not None:
            self.store.log_metrics(record)
        self._fire("on_eval", record=record)
        return record

    def _progress(self):
        c = self.cfg
        disable = {"auto": None, "always": False, "never": True}[c.progress]
        return tqdm(total=c.steps, initial=self.step, disable=disable, unit="step", dynamic_ncols=True, leave=False)

    def _should_stop(self) -> bool:
        """An early stop of `fit` (after step 0): `stop_metric` has reached `stop_at` at this step's evaluation, or the FLOP cap is spent."""
        c = self.cfg
        reached = False
        if c.stop_at is not None and self.last_record.get("step") == self.step:
            if c.stop_metric not in self.last_record:
                raise ConfigError(f"train.stop_metric {c.stop_metric!r} is not logged; logged: {', '.join(self.last_record)}")
            value = self.last_record[c.stop_metric]
            reached = value <= c.stop_at if c.stop_metric.endswith("loss") else value >= c.stop_at
        return self.step > 0 and (reached or (c.max_flops is not None and self.flops_spent >= c.max_flops))

    def fit(self) -> dict:
        """Train to `cfg.steps` (or an early stop: `stop_at`, `max_flops`); return the final metrics record.

        An early stop evaluates and checkpoints the step it stops at, so the run ends as a finished run does.
        """
        c = self.cfg
        evals = Schedule(c.steps, c.eval_every, c.log_spaced)
        checkpoints = Schedule(c.steps, c.checkpoint_every, c.log_spaced)
        resumed_at = self.step
        if c.warmup_steps > c.steps and self.step < c.steps:  # legal (a short test of a long recipe), rarely meant
            log.warning("caplab: warning: train.warmup_steps=%d is longer than train.steps=%d: the learning rate never "
                        "reaches train.lr=%g", c.warmup_steps, c.steps, c.lr)
        self.model.train()
        self._fire("on_train_start")
        bar = self._progress()
        plain = c.progress != "never" and bar.disable  # no bar (stderr is a log file, CI, nohup): plain lines instead
        start, last_loss, window_start, window_step = time.perf_counter(), None, time.perf_counter(), self.step
        last_line = start
        try:
            while True:
                # a restored run already logged and saved the step it starts from
                first_of_restored = self.restored and self.step == resumed_at
                if self.step in evals and not first_of_restored:
                    record = self._eval_and_log(last_loss, start)
                    bar.set_postfix(self._headline(record), refresh=False)
                stop = not first_of_restored and self._should_stop()
                if stop and self.step not in evals:
                    record = self._eval_and_log(last_loss, start)
                if (self.step in checkpoints or stop) and not first_of_restored:
                    self._checkpoint()
                if self.step >= c.steps or stop:
                    break
                last_loss = self.train_step()
                self._fire("on_step_end", loss=last_loss)
                bar.update(1)
                now = time.perf_counter()
                if now - window_start > 1.0:
                    rate = (self.step - window_step) * self.units_per_step / (now - window_start)
                    bar.set_postfix({f"{self.unit}/s": f"{rate:,.0f}", "loss": f"{float(last_loss):.3f}", **self._headline(self.last_record)})
                    window_start, window_step = now, self.step
                if plain and now - last_line >= c.progress_every_s:
                    log.info(self._progress_line(resumed_at, now - start, last_loss))
                    last_line = now
        finally:
            bar.close()
        self._fire("on_train_end", record=self.last_record)
        return self.last_record

    def _progress_line(self, first_step: int, elapsed: float, loss) -> str:
        """One plain progress line; the rate and ETA count evaluation time too (it is part of the wait)."""
        c, done = self.cfg, self.step - first_step
        rate = done * self.units_per_step / max(elapsed, 1e-9)
        eta = elapsed / max(done, 1) * (c.steps - self.step)
        headline = "".join(f", {k} {v}" for k, v in self._headline(self.last_record).items())
        return (f"caplab: step {self.step:,}/{c.steps:,} ({self.step / c.steps:.0%}), {rate:,.0f} {self.unit}/s, "
                f"loss {float(loss):.3f}{headline}, ETA {_duration(eta)}")

    def _headline(self, record: dict) -> dict:
        """The held-out loss and the task's primary metric, for the progress bar."""
        keys = dict.fromkeys(k for k in ("eval_loss", self.task.primary_metric) if k in record)
        return {k: f"{record[k]:.3f}" for k in keys}


def _duration(seconds: float) -> str:
    """3h05m, 4m10s, 12s."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
