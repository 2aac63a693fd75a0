"""Where a sweep's runs train: in this process, on Ray, or through submitit (Slurm, or its local executor).

A sweep reserves every run id before anything trains and splits its runs into
groups (an ensemble of one model shape, or one run); `complete_group` brings
one group to completion and only reads `sweep.json`. A launcher hands groups
to workers and waits for them, so any engine that can call a Python function
elsewhere can train a sweep. Each run is owned by the process training it
(`caplab.runs.owner`), and a worker that is killed leaves its run resumable:
`caplab sweep --resume` reruns only what did not complete.

    local     the groups one after another in this process (the default)
    ray       one Ray task per group (1 CPU each, or `sweep.gpus_per_run` GPUs) on a local Ray instance started
              here with `sweep.workers` CPUs, or on the cluster at `sweep.address`
    submitit  `sweep.workers` jobs through submitit: on Slurm where `sbatch` exists, else submitit's local executor
    slurm     the same jobs, on Slurm only (an error where there is none)
"""

from __future__ import annotations

import math
import shutil
import socket
from pathlib import Path
from typing import Optional

from caplab.errors import ConfigError

LAUNCHERS = ("local", "ray", "submitit", "slurm")


def check_launcher(name: str, workers: int, address: Optional[str] = None) -> None:
    """ConfigError for an unknown launcher, a bad worker count, a launcher whose engine is not installed, or a
    Ray address that does not answer (checked before any sweep folder exists)."""
    if name not in LAUNCHERS:
        raise ConfigError(f"bad value {name!r} for the sweep launcher; valid: {', '.join(LAUNCHERS)}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"bad value {workers!r} for the sweep workers; expected a whole number >= 1")
    module = {"ray": "ray", "submitit": "submitit", "slurm": "submitit"}.get(name)
    if module is not None:
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"launcher {name} needs {module}: pip install 'caplab[scale]'") from None
    if name == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("launcher slurm needs Slurm (no `sbatch` on this machine); use submitit for its local "
                          "executor, or ray")
    if address is not None and name != "ray":
        raise ConfigError(f"an address is for the ray launcher, not {name}")
    if name == "ray" and address:
        check_ray_address(address)


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """ConfigError unless a Ray cluster answers at `address` (host:port or ray://host:port; `auto`: the one
    Ray finds on this machine or in RAY_ADDRESS)."""
    if address == "auto":
        import ray

        try:
            ray.init(address="auto", include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"no Ray cluster answers at address auto: {str(exc).splitlines()[0]}") from None
        ray.shutdown()
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"bad Ray address {address!r}; expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"the Ray address {address} does not answer ({exc.strerror or exc}); start the cluster "
                          "(ray start --head) or leave --address out to start Ray here") from None


def complete_groups(path: str, groups: list[list[int]], threads: Optional[int] = 1) -> None:
    """A worker's share: each group of the sweep at `path` completed in turn (top level, so engines can pickle it)."""
    import torch

    from caplab.console import configure_console
    from caplab.studies.sweep import complete_group

    if threads:  # a worker process (Ray, submitit): it says what it trains, as the CLI does
        configure_console()
        torch.set_num_threads(threads)  # one worker per core: no worker spreads over the others' cores
    for group in groups:
        complete_group(Path(path), group)


def launch(name: str, path: Path, groups: list[list[int]], workers: int = 1, address: Optional[str] = None,
           gpus_per_run: float = 0.0) -> None:
    """Complete every group of the sweep at `path` with launcher `name` (see the module docstring)."""
    check_launcher(name, workers)
    path = Path(path).resolve()  # workers elsewhere (a Ray cluster, Slurm nodes) share the file system, not our cwd
    if name == "local":
        complete_groups(str(path), groups, threads=None)  # this process keeps its own thread settings
    elif name == "ray":
        _on_ray(path, groups, workers, address, gpus_per_run)
    else:
        _on_submitit(path, groups, workers, slurm_only=name == "slurm", gpus_per_run=gpus_per_run)


def _on_ray(path: Path, groups: list[list[int]], workers: int, address: Optional[str], gpus_per_run: float) -> None:
    import ray

    try:
        if address:
            ray.init(address=address, log_to_driver=True, configure_logging=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=True, configure_logging=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
    try:
        task = ray.remote(num_cpus=1, num_gpus=gpus_per_run)(complete_groups)
        ray.get([task.remote(str(path), [group]) for group in groups])  # Ray queues them on free CPUs
    finally:
        ray.shutdown()


def _on_submitit(path: Path, groups: list[list[int]], workers: int, slurm_only: bool, gpus_per_run: float) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=Path(path) / "submitit", cluster="slurm" if slurm_only else None)
    executor.update_parameters(timeout_min=24 * 60, cpus_per_task=1, gpus_per_node=math.ceil(gpus_per_run), nodes=1,
                               tasks_per_node=1, name=Path(path).name)
    shares = [groups[i::workers] for i in range(workers)]  # round-robin: each job a balanced share of groups
    jobs = [executor.submit(complete_groups, str(path), share) for share in shares if share]
    for job in jobs:
        job.result()  # a worker's error is raised here, after the others were submitted
