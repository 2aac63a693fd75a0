"""Seed ensembles: aggregate training throughput of N models in one ensemble vs the same N runs one after another.

Both sides run full training steps of the same N configurations (seeds
0..N-1) on the same task: data sampling, forward, backward, clipping, AdamW.
The peer is N ordinary caplab Trainers stepped in turn (what a sweep does
without --ensemble); the ensemble is `caplab.train.ensemble.EnsembleTrainer`.
They alternate, and the median of the repeats is reported.

    python benchmarks/ensemble_throughput.py [--members 8] [--steps 20] [--repeats 5] [--threads 2] [--device cuda]
    python benchmarks/ensemble_throughput.py --images      # MLP, VGG and ResNet on rendered shapes (vmap ensembles)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from caplab import load_config
from caplab.experiment import build
from caplab.train.ensemble import EnsembleTrainer

SHAPES = {  # name: overrides of the concept-language recipe used by percolation-data
    "tiny d32 b16": ["model.d_model=32", "train.batch_size=16"],
    "small d64 b32": ["model.d_model=64", "train.batch_size=32"],
    "demo-size d128 b64": ["model.d_model=128", "train.batch_size=64"],
}


IMAGE_SHAPES = {  # name: the model section of a shapes recipe (28 x 28 images, batch 64)
    "mlp width 128": "{kind: mlp, width: 128, depth: 2, norm: batch}",
    "vgg width 8, 6 convs": "{kind: vgg, width: 8, depth: 6, stages: 3, norm: batch}",
    "vgg width 16, 6 convs": "{kind: vgg, width: 16, depth: 6, stages: 3, norm: batch}",
    "resnet-8 width 8, GroupNorm": "{kind: resnet, width: 8, depth: 8, stages: 3, norm: group, norm_groups: 4}",
}


def image_recipes(folder: Path) -> dict[str, list]:
    """{shape name: [recipe path]} of small shapes recipes, one per image model."""
    made = {}
    for i, (name, model) in enumerate(IMAGE_SHAPES.items()):
        path = folder / f"shapes-{i}.yaml"
        path.write_text("task: {name: shapes, image_size: 28, n_shapes: 4, n_colours: 4, n_sizes: 2, n_positions: 4}\n"
                        f"model: {model}\ntrain: {{batch_size: 64}}\n")
        made[name] = str(path)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipe", default="percolation-data")
    parser.add_argument("--images", action="store_true", help="image models on shapes instead of GPTs on --recipe")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    what = "shapes (image models)" if args.images else f"recipe {args.recipe}"
    print(f"{args.members} members, {args.steps} steps per timing, median of {args.repeats}, {args.threads} threads, {what}, "
          f"device {args.device}")
    folder = tempfile.TemporaryDirectory()
    if args.images:
        shapes = {name: (recipe, []) for name, recipe in image_recipes(Path(folder.name)).items()}
    else:
        shapes = {name: (args.recipe, overrides + ["model.n_layers=2"]) for name, overrides in SHAPES.items()}
    for name, (recipe, overrides) in shapes.items():
        cfgs = [load_config(recipe, overrides + [f"train.seed={s}", "train.progress=never", f"train.device={args.device}"])
                for s in range(args.members)]
        singles = [build(cfg)[2] for cfg in cfgs]
        ensemble = EnsembleTrainer([build(cfg)[2] for cfg in cfgs])
        for trainer in singles:  # warm-up: first steps allocate
            trainer.train_step()
        ensemble.train_step()
        per_sample = singles[0].task.units_per_sample  # token positions, or images
        tokens = args.members * args.steps * cfgs[0].train.batch_size * per_sample
        apart, together = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            for trainer in singles:
                for _ in range(args.steps):
                    trainer.train_step()
            sync(args.device)
            apart.append(tokens / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(args.steps):
                ensemble.train_step()
            sync(args.device)
            together.append(tokens / (time.perf_counter() - start))
        a, b = sorted(together)[args.repeats // 2], sorted(apart)[args.repeats // 2]
        unit = singles[0].unit
        print(f"{name:<28} ensemble {a / 1e3:8.1f}k {unit}/s   sequential runs {b / 1e3:8.1f}k {unit}/s   ratio {a / b:5.2f}x")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


if __name__ == "__main__":
    main()
