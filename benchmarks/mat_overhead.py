"""MAT's overhead per training step: the `mat` recipe's model trained with and without MAT, same process.

Times `--steps` training steps of plain training and of MAT (every `--every`
steps a kernel estimate on the probe batch, the rule, and the per-step
freezing work), alternating, and one kernel estimate on its own. MAT is
forced to keep every module active (`mat.alpha=0`), so both do the same
arithmetic and the difference is MAT's own cost.

    python benchmarks/mat_overhead.py [--steps 100] [--every 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from caplab.studies.compare import _variant_recipe, load_compare
from caplab.config import resolve
from caplab.experiment import build


def trainer_for(mat: dict):
    name, spec = load_compare("mat")
    recipe = _variant_recipe(name, spec, "full")
    recipe["train"] = {**recipe["train"], "progress": "never"}
    recipe["mat"] = mat
    return build(resolve("mat.bench", recipe))[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plain = trainer_for({})
    mat = trainer_for({"every": args.every, "alpha": 0.0})
    mat.mat.refresh()
    times = {"plain": [], "mat": []}
    for _ in range(args.repeats):
        for name, trainer in (("plain", plain), ("mat", mat)):
            start = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
                trainer._fire("on_step_end", loss=0.0)
            times[name].append((time.perf_counter() - start) / args.steps * 1000)
    start = time.perf_counter()
    for _ in range(5):
        mat.mat.refresh()
    estimate_ms = (time.perf_counter() - start) / 5 * 1000
    best = {k: min(v) for k, v in times.items()}
    print(f"{len(mat.mat.modules)} modules, probe batch {mat.mat.cfg.probe}, estimate every {args.every} steps")
    print(f"plain training: {best['plain']:7.1f} ms/step")
    print(f"MAT:            {best['mat']:7.1f} ms/step   overhead {best['mat'] / best['plain'] - 1:+.1%}")
    print(f"one kernel estimate: {estimate_ms:.1f} ms ({estimate_ms / args.every:.2f} ms/step amortised)")


if __name__ == "__main__":
    main()
