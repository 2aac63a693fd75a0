"""Share of training wall time spent in evaluation, in the `emergence` recipe (target: at most 15%).

Trains the recipe (or reads a finished run) and divides the trainer's
cumulative evaluation time (`eval_s`) by its wall time (`elapsed_s`), both
logged with every evaluation.

    python benchmarks/emergence_eval_share.py [--run RUN] [--root DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from caplab.config import load_config
from caplab.experiment import run_experiment
from caplab.runs.store import RunStore

TARGET = 0.15


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished emergence run (default: train one now)")
    parser.add_argument("--root", help="runs root")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    root = Path(args.root) if args.root else None
    if args.run:
        store = RunStore.open(args.run, root)
    else:
        store = RunStore(run_experiment(load_config("emergence", ["train.progress=never", *args.set]), root))
    final = store.metrics()[-1]
    share = final["eval_s"] / final["elapsed_s"]
    evals = len(store.metrics())
    print(f"run {store.run_id}: {final['step']} steps, {evals} evaluations")
    print(f"wall time {final['elapsed_s']:.0f} s, evaluation {final['eval_s']:.1f} s ({final['eval_s'] / evals:.2f} s each)")
    print(f"evaluation share {100 * share:.1f}% (target at most {100 * TARGET:.0f}%: {share / TARGET:.2f}x of the budget)")


if __name__ == "__main__":
    main()
