"""Seed ensembles: aggregate training throughput of N models in one ensemble vs the same N runs one after another.

Both sides run full training steps of the same N configurations (seeds
0..N-1) on the same task: data sampling, forward, backward, clipping, AdamW.
The peer is N ordinary caplab Trainers stepped in turn (what a sweep does
without --ensemble); the ensemble is `caplab.train.ensemble.EnsembleTrainer`.
They alternate, and the median of the repeats is reported.

    python benchmarks/ensemble_throughput.py [--members 8] [--steps 20] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from caplab import load_config
from caplab.experiment import build
from caplab.train.ensemble import EnsembleTrainer

SHAPES = {  # name: overrides of the concept-language recipe used by percolation-data
    "tiny d32 b16": ["model.d_model=32", "train.batch_size=16"],
    "small d64 b32": ["model.d_model=64", "train.batch_size=32"],
    "demo-size d128 b64": ["model.d_model=128", "train.batch_size=64"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", default="percolation-data")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.members} members, {args.steps} steps per timing, median of {args.repeats}, {args.threads} threads, recipe {args.recipe}")
    for name, overrides in SHAPES.items():
        cfgs = [load_config(args.recipe, overrides + ["model.n_layers=2", f"train.seed={s}", "train.progress=never"])
                for s in range(args.members)]
        singles = [build(cfg)[2] for cfg in cfgs]
        ensemble = EnsembleTrainer([build(cfg)[2] for cfg in cfgs])
        for trainer in singles:  # warm-up: first steps allocate
            trainer.train_step()
        ensemble.train_step()
        tokens = args.members * args.steps * cfgs[0].train.batch_size * singles[0].task.seq_len
        apart, together = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for trainer in singles:
                for _ in range(args.steps):
                    trainer.train_step()
            apart.append(tokens / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(args.steps):
                ensemble.train_step()
            together.append(tokens / (time.perf_counter() - start))
        a, b = sorted(together)[args.repeats // 2], sorted(apart)[args.repeats // 2]
        print(f"{name:<20} ensemble {a / 1e3:8.1f}k tok/s   sequential runs {b / 1e3:8.1f}k tok/s   ratio {a / b:5.2f}x")


if __name__ == "__main__":
    main()
