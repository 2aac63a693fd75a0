"""Data-parallel training of one run over several processes (`torchrun`), and the data streams that make it exact.

    torchrun --nproc-per-node 2 -m caplab run RECIPE [--set ...]      # one run, 2 processes (GPUs, or CPU cores with gloo)

A run's global batch is drawn from `train.data_streams` independent streams,
each `batch_size / data_streams` samples a step from its own generator
(`stream_seed(seed, s)`; stream 0 is seeded with the run seed itself, so a
one-stream run is exactly the run it always was). The objective is the mean
of the streams' objectives. Under torchrun each rank draws its share of the
streams and DistributedDataParallel averages the gradients, which is the
same sum, so a run gives the same curve on 1 process or on N (tested on CPU
with gloo, within float rounding), and a checkpoint written by N processes
resumes on any number that divides the streams: every stream's generator
state is saved (gathered to rank 0, the only rank that writes).

Under torchrun `train.data_streams` defaults to the world size. Tasks whose
data has its own state (finite corpora, tasks that count what they were
shown) would be drawn differently per rank and are refused, as are ensembles
and the MAT / diagnostics plug-ins. A BatchNorm's running statistics follow
rank 0 (DistributedDataParallel broadcasts its buffers), as in any DDP run;
models with running statistics therefore match a one-process run only in
their weights' training, not in those buffers.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from caplab.errors import ConfigError


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init(device_name: str) -> None:
    """Join the torchrun process group once (NCCL on CUDA, gloo on CPU); nothing when not launched."""
    if not launched() or dist.is_initialized():
        return
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend="nccl" if cuda else "gloo")


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank (any picklable object; rank 0's own machine-made data only)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def stream_seed(seed: int, stream: int) -> int:
    """The seed of data stream `stream` of a run seeded `seed` (stream 0: the seed itself)."""
    if stream == 0:
        return seed
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def local_streams(streams: int) -> range:
    """The streams this rank draws: a contiguous share of `streams`."""
    world, me = world_size(), rank()
    if streams % world:
        raise ConfigError(f"train.data_streams={streams} cannot be shared by {world} processes; use a multiple of {world}")
    share = streams // world
    return range(me * share, (me + 1) * share)


def gather_states(states: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Every rank's {stream: generator state}, merged (on every rank: all of them take part)."""
    if world_size() == 1:
        return states
    gathered: list = [None] * world_size()
    dist.all_gather_object(gathered, {s: state.cpu() for s, state in states.items()})
    return {s: state for part in gathered for s, state in part.items()}


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (every rank gets it; a NaN anywhere is a NaN everywhere)."""
    if world_size() == 1:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def check_distributable(experiment) -> None:
    """ConfigError for what data streams / torchrun do not support (`experiment`: an ExperimentConfig)."""
    task = experiment.make_task()
    if hasattr(task, "data_state") or hasattr(task, "observe"):
        raise ConfigError(f"train.data_streams > 1 (and torchrun) needs an online task; task {experiment.task['name']!r} "
                          "keeps state about its data (a finite corpus, or counts of what it showed)")
    if experiment.train.ensemble > 1:
        raise ConfigError("train.data_streams > 1 (and torchrun) does not combine with train.ensemble")
    if experiment.mat.every or experiment.diagnostics.spectral_every or experiment.diagnostics.signal_every:
        raise ConfigError("train.data_streams > 1 (and torchrun) does not combine with mat.every or diagnostics")
    if experiment.train.batch_size % experiment.train.data_streams:
        raise ConfigError(f"train.batch_size={experiment.train.batch_size} must be a multiple of "
                          f"train.data_streams={experiment.train.data_streams}")
