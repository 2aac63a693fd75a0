"""Mode connectivity: seconds per path point, and what permutation alignment costs against the number of channels.

For VGGs of the `mode-connectivity` recipe's shape (6 conv layers, 3 stages,
16 x 16 RGB images, 8 classes) at several first-stage widths, with
two independently initialised networks:

    point       one point of a path: load the interpolated weights, recompute the normalization statistics
                (the recipe's 8 batches of 256 images), score the four cue sets (1,024 images each)
    alignment   the aligned path's one-off cost: both models' activations on the statistics batches, the
                channel correlations, and the Hungarian matching (scipy's linear_sum_assignment)
    hungarian   the matching alone

and prints the ratios hungarian / point and alignment / (points + 1) points of a
whole path: the peer is the path evaluation the alignment precedes. One thread
(as the recipe runs on a 2-core machine); run it on an otherwise idle machine.

    python benchmarks/connectivity.py [--widths 16 32 64 128] [--points 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from caplab.analysis import connectivity as C
from caplab.models.convnets import VGG, VGGConfig
from caplab.tasks import make_task

CPU = torch.device("cpu")


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--statistics-batches", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task("shapes", image_size=16, n_shapes=8, n_colours=4, n_sizes=2, n_positions=4, n_backgrounds=2,
                     noise=0.15, corpus_size=2000, cue="box")
    sets = task.evaluation_sets(CPU)
    generator = torch.Generator().manual_seed(0)
    batches = [task.clean_sample(256, generator, CPU).inputs for _ in range(args.statistics_batches)]
    print(f"{'width':>5} {'channels':>9} {'s/point':>8} {'align s':>8} {'hungarian s':>12} {'hungarian/point':>16} "
          f"{'align/path':>11}")
    for width in args.widths:
        cfg = VGGConfig(width=width, depth=6, stages=3, in_channels=3, image_size=16, n_classes=8)
        torch.manual_seed(0)
        model = VGG(cfg)
        a = C.detached(model.state_dict())
        torch.manual_seed(1)
        b = C.detached(VGG(cfg).state_dict())
        point = best_of(lambda: C.path_curve(model, lambda alpha: C.interpolate(a, b, alpha), [0.0, 1.0], sets,
                                             lambda: batches), repeats=2) / 2
        correlations = C.channel_correlations(model, a, b, batches)
        align = best_of(lambda: C.align(model, a, b, batches), repeats=2)
        hungarian = best_of(lambda: C.match_channels(correlations))
        channels = sum(c.shape[0] for c in correlations)
        path = (args.points + 1) * point
        print(f"{width:>5} {channels:>9} {point:>8.3f} {align:>8.3f} {hungarian:>12.5f} {hungarian / point:>16.4f} "
              f"{align / path:>11.3f}")


if __name__ == "__main__":
    main()
