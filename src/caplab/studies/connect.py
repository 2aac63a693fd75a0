"""`caplab connect RUN_A RUN_B --path linear|quadratic|aligned`: the loss along a path between two runs' weights.

The two runs must hold the same model (kind and every tensor's shape) and read
images of the same shape. The curve is scored on the evaluation sets of one
run's task: run A's, unless only run B's task has counterfactual sets (a cue
task, `caplab.tasks.cues`); normalization statistics are recomputed at each
point on that task's training images without cues. A quadratic path's control
point is trained on that task's training data (start it from a fresh
initialisation, as the paper does, or from the linear midpoint with
`--start linear`).

    <out>/curve.json     the runs, the path, every point's loss and accuracy per set, the barriers
                         (and the permutations of an aligned path)
    <out>/curve.png      loss and accuracy against alpha, one line per set
    <out>/midpoint.safetensors   a quadratic path's control point

<out> defaults to <runs root>/connections/<A>--<B>-<path>.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from caplab.analysis import connectivity
from caplab.errors import ConfigError
from caplab.experiment import load_model
from caplab.models.registry import model_kind_of
from caplab.runs import plots
from caplab.runs.store import RunStore, atomic_write_json, runs_root


def compatible(cfg_a, cfg_b, state_a: dict, state_b: dict, names: tuple[str, str]) -> None:
    """ConfigError naming the first difference unless the two runs hold the same model on same-shaped images."""
    kinds = model_kind_of(cfg_a.model), model_kind_of(cfg_b.model)
    if kinds[0] != kinds[1]:
        raise ConfigError(f"runs {names[0]} and {names[1]} hold different model kinds ({kinds[0]} and {kinds[1]})")
    for key in state_a.keys() | state_b.keys():
        shapes = tuple(tuple(s[key].shape) if key in s else None for s in (state_a, state_b))
        if shapes[0] != shapes[1]:
            raise ConfigError(f"runs {names[0]} and {names[1]} hold models of different shapes "
                              f"(first difference: {key} {shapes[0]} vs {shapes[1]})")


def evaluation_task(cfg_a, cfg_b):
    """The task whose sets score the path: A's, unless only B's has counterfactual sets."""
    tasks = [cfg.make_task() for cfg in (cfg_a, cfg_b)]
    if any(getattr(t, "input_kind", None) != "images" for t in tasks):
        raise ConfigError("caplab connect compares image classifiers; a run's task is not an image task")
    if tuple(tasks[0].image_shape) != tuple(tasks[1].image_shape):
        raise ConfigError(f"the runs read images of different shapes ({tasks[0].image_shape} and {tasks[1].image_shape})")
    has_sets = [len(t.evaluation_sets(torch.device("cpu"))) > 1 for t in tasks]
    return tasks[1] if has_sets[1] and not has_sets[0] else tasks[0]


def statistics_source(task, batches: int, batch_size: int, seed: int = 0):
    """A function returning the same list of clean training batches (inputs) every call."""
    draw = getattr(task, "clean_sample", task.sample)
    generator = torch.Generator().manual_seed(seed)
    fixed = [draw(batch_size, generator, torch.device("cpu")).inputs for _ in range(batches)]
    return lambda: fixed


def connect_runs(run_a: str, run_b: str, path: str, root: Optional[Path] = None, out: Optional[Path] = None,
                 points: int = 10, steps: int = 240, lr: float = 0.1, batch_size: int = 128, start: str = "random",
                 seed: int = 0, statistics_batches: int = 8) -> Path:
    """Write the curve of `path` between the two runs (see module docstring); return curve.json's path."""
    if path not in connectivity.PATHS:
        raise ConfigError(f"bad value {path!r} for --path; valid: {', '.join(connectivity.PATHS)}")
    if start not in ("random", "linear"):
        raise ConfigError(f"bad value {start!r} for --start; valid: random, linear")
    if points < 2 or steps < 1 or not (math.isfinite(lr) and lr > 0):
        raise ConfigError("--points must be at least 2, --steps at least 1 and --lr a positive number")
    stores = [RunStore.open(name, root) for name in (run_a, run_b)]
    ids = tuple(s.run_id for s in stores)
    (model, cfg_a), (model_b, cfg_b) = (load_model(s.run_id, root=s.path.parent) for s in stores)
    state_a, state_b = model.state_dict(), model_b.state_dict()
    compatible(cfg_a, cfg_b, state_a, state_b, ids)
    task = evaluation_task(cfg_a, cfg_b)
    sets = task.evaluation_sets(torch.device("cpu"))
    statistics = statistics_source(task, statistics_batches, 256, seed)
    midpoint = None
    if path == "quadratic":
        begin = None
        if start == "random":
            torch.manual_seed(seed)
            begin = cfg_a.make_model().state_dict()
        midpoint = {"steps": steps, "lr": lr, "start": begin, "seed": seed}
    curve = connectivity.connect(model, state_a, state_b, path, sets, statistics, points,
                                 sample=lambda g: task.sample(batch_size, g, torch.device("cpu")), loss=task.loss,
                                 midpoint=midpoint)
    out = Path(out) if out else (root or runs_root()) / "connections" / f"{ids[0]}--{ids[1]}-{path}"
    out.mkdir(parents=True, exist_ok=True)
    mid = curve.pop("midpoint_state", None)
    if mid is not None:
        save_file({k: v.contiguous() for k, v in mid.items()}, str(out / "midpoint.safetensors"))
    record = {"run_a": ids[0], "run_b": ids[1], **curve, "sets": list(sets),
              "settings": {"points": points, "statistics_batches": statistics_batches,
                           **({"steps": steps, "lr": lr, "batch_size": batch_size, "start": start, "seed": seed}
                              if path == "quadratic" else {})}}
    atomic_write_json(out / "curve.json", record)
    plot_curve(record, out / "curve.png")
    return out / "curve.json"


def plot_curve(record: dict, path: Path, title: Optional[str] = None) -> Path:
    """Loss and accuracy against alpha, one line per evaluation set, the barrier in the legend."""
    fig, (left, right) = plots.subplots(1, 2, width=11, height=4)
    alphas = [p["alpha"] for p in record["points"]]
    for name in record["sets"]:
        left.plot(alphas, [p[f"{name}_loss"] for p in record["points"]], marker="o", ms=3,
                  label=f"{name} (barrier {record['barriers'][name]:.2f})")
        right.plot(alphas, [p[f"{name}_accuracy"] for p in record["points"]], marker="o", ms=3, label=name)
    left.set_ylabel("cross-entropy")
    right.set_ylabel("accuracy")
    for ax in (left, right):
        ax.set_xlabel(f"alpha (0: {record['run_a']}, 1: {record['run_b']})")
        ax.grid(alpha=0.3)
        plots.legend(ax, fontsize=8)
    fig.suptitle(title or f"{record['path']} path")
    return plots.save(fig, path)
