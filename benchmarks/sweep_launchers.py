"""Sweep launchers: wall time of one sweep on Ray (and submitit's local executor) vs the local sequential sweep.

The same sweep (4 settings of the demo recipe, 1 seed, shortened) is run
three times in fresh folders: `local` (one run after another in this
process, one thread, as a one-core-per-run worker would), `ray` (a local Ray
instance of `--workers` CPUs started by the sweep, one thread per task) and
`submitit` (its local executor, `--workers` jobs). Wall time includes each
engine's start-up; the runs' metrics are checked to be identical across the
three. Run it on an otherwise idle machine.

    python benchmarks/sweep_launchers.py [--workers 2] [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from caplab.studies.sweep import create_sweep, run_sweep, sweep_runs


def timed_sweep(root: Path, launcher: str, workers: int, overrides: list[str]) -> tuple[float, dict]:
    grid = {"task.n_train_compositions": [20, 30, 40, 50]}
    path = create_sweep("demo", grid, 1, overrides, root=root, launcher=launcher, workers=workers)
    start = time.perf_counter()
    run_sweep(path)
    wall = time.perf_counter() - start
    finals = {json.dumps(e["setting"]): [{k: v for k, v in r.items() if k not in ("elapsed_s", "eval_s")} for r in s.metrics()][-1]
              for e, s in sweep_runs(path)}
    return wall, finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--launchers", default="local,ray,submitit")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the local sweep as one worker of one core
    overrides = [f"train.steps={args.steps}", "train.eval_every=100", "train.checkpoint_every=300", "train.progress=never"]
    walls, finals = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for launcher in args.launchers.split(","):
            walls[launcher], finals[launcher] = timed_sweep(Path(tmp) / launcher, launcher, args.workers, overrides)
    print(f"sweep: demo, 4 settings x 1 seed, {args.steps} steps each; {args.workers} workers; torch {torch.__version__}")
    for launcher, wall in walls.items():
        same = "identical runs" if finals[launcher] == finals["local"] else "RUNS DIFFER from local"
        print(f"{launcher:<9} {wall:7.1f} s   ratio to local {wall / walls['local']:.2f}x   ({same})")


if __name__ == "__main__":
    main()
