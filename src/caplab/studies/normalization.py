"""`kind: normalization` recipes: the three claims of Beyond BatchNorm (Lubana, Dick and Tanaka, NeurIPS 2021).

Three arms, each with seeds and a control where the theory predicts nothing:

1. **Activation growth with depth** (at initialisation): the variance of a
   pre-activation ResNet's residual stream, block by block, for every
   normalizer of the zoo, with and without SkipInit. Claim: activation-based
   normalizers keep it from growing exponentially; parametric ones (weight
   normalization, scaled weight standardization) and no normalization do
   not; SkipInit (every branch starting at zero) keeps it flat, which is the
   control the theory predicts exactly.
2. **Group size and forward informativeness** (at initialisation): a
   constant-width plain CNN (the paper's `cfg_uniform`) with GroupNorm from a
   group of one channel (InstanceNorm) to all channels (LayerNorm), plus
   BatchNorm and none: the mean cross-sample cosine similarity and stable
   rank of each layer's output (large groups: samples look alike), and the
   gradient norm at each conv (small groups: large early gradients). The
   inputs' own cosine similarity is the reference level.
3. **Small batches** (training): a small VGG trained on the recipe's task with
   each normalizer at several batch sizes and a fixed budget of images (SGD,
   the learning rate scaled linearly with the batch size; the paper's code
   scales it inversely); held-out accuracy per (normalizer, batch size) and the change from
   the largest batch size, paired by seed. Claim: BatchNorm degrades at small
   batch sizes and batch-independent normalizers do not; the largest batch
   size is meant as the reference where no normalizer should lose (with a
   fixed image budget it is also the fewest steps: docs/normalization.md).

Numbers are means over seeds with 95% t-intervals. The training runs are
ordinary catalogued runs, listed in `study.json` (`caplab resume` continues
them); the initialisation arms take seconds and are recomputed on each run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from caplab.analysis.intervals import mean_interval
from caplab.analysis.normalization import mean_cosine_similarity, signal_propagation
from caplab.config import build_dataclass, load_sectioned_recipe, merge_recipe, resolve
from caplab.errors import ConfigError
from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig
from caplab.models.norms import NORMS
from caplab.runs import html, plots
from caplab.runs.store import RunStore, atomic_write_json, read_json
from caplab.studies.folder import complete, new_folder, reserve, run_and_report

log = logging.getLogger(__name__)

SECTIONS = ("task", "model", "train", "study")


@dataclass
class NormalizationStudyConfig:
    probe_batch: int = 64  # images of the recipe's task the initialisation arms read
    init_seeds: int = 3
    depth_norms: list[str] = field(default_factory=lambda: list(NORMS))
    resnet_depth: int = 56
    resnet_width: int = 16
    group_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32])  # 1: InstanceNorm; the width: LayerNorm
    uniform_depth: int = 20
    uniform_width: int = 32
    train_norms: list[str] = field(default_factory=lambda: ["batch", "group", "layer", "instance", "frn", "evonorm_s0", "none"])
    batch_sizes: list[int] = field(default_factory=lambda: [2, 8, 64])
    images: int = 12288  # training images per run: steps = images / batch size
    seeds: int = 3
    lr_at_256: float = 0.1  # SGD learning rate at batch size 256, scaled linearly with the batch size
    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        for norms in (self.depth_norms, self.train_norms):
            bad = [n for n in norms if n not in NORMS]
            if bad:
                raise ValueError(f"unknown norm {bad[0]!r} in study; valid: {', '.join(NORMS)}")
        if any(self.uniform_width % g for g in self.group_sizes):
            raise ValueError(f"study.group_sizes must divide study.uniform_width ({self.uniform_width})")
        if any(self.images < b for b in self.batch_sizes) or not self.batch_sizes:
            raise ValueError("study.batch_sizes must be non-empty and each at most study.images")
        if min(self.seeds, self.init_seeds, self.probe_batch - 1) < 1:
            raise ValueError("study.seeds and study.init_seeds must be at least 1, study.probe_batch at least 2")


def load_normalization(recipe: str, overrides: list[str] = ()) -> tuple[str, dict, NormalizationStudyConfig]:
    """(name, the recipe's task/model/train sections, the study config) with `section.key=value` overrides."""
    name, data = load_sectioned_recipe(recipe, "normalization", SECTIONS, overrides)
    cfg = build_dataclass(NormalizationStudyConfig, dict(data.get("study") or {}), "study")
    base = {k: data.get(k) or {} for k in ("task", "model", "train")}
    base["description"] = str(data.get("description", "")).strip()
    return name, base, cfg


def _run_recipe(name: str, base: dict, cfg: NormalizationStudyConfig, norm: str, batch: int, seed: int) -> dict:
    steps = cfg.images // batch
    lr = cfg.lr_at_256 * batch / 256
    changes = {"model": {"norm": norm},
               "train": {"optimizer": "sgd", "batch_size": batch, "steps": steps, "lr": lr, "min_lr": lr / 100,
                         "warmup_steps": int(cfg.warmup_fraction * steps), "seed": seed, "eval_every": steps,
                         "checkpoint_every": steps, "log_spaced": False, "progress": "never"}}
    recipe = merge_recipe({k: base[k] for k in ("task", "model", "train")}, changes)
    return {**recipe, "recipe": f"{name}.{norm}-b{batch}", "description": f"{norm} at batch size {batch}, seed {seed}"}


def create_normalization(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> Path:
    name, base, cfg = load_normalization(recipe, overrides)
    runs = [{"norm": n, "batch_size": b, "seed": s, "run_id": None}
            for n in cfg.train_norms for b in cfg.batch_sizes for s in range(cfg.seeds)]
    for run in runs:  # every training config is valid before anything runs
        experiment = resolve(name, _run_recipe(name, base, cfg, run["norm"], run["batch_size"], run["seed"]))
        if experiment.model_kind not in ("vgg", "resnet", "mlp"):
            raise ConfigError("a normalization study trains an image model: model.kind vgg, resnet or mlp")
    return new_folder("studies", name, "study.json", {"recipe": name, "kind": "normalization", "base": base,
                                                      "study": dataclasses.asdict(cfg), "runs": runs}, root)


# ---------------------------------------------------------------- the initialisation arms


def _probe(task, cfg: NormalizationStudyConfig, seed: int):
    generator = torch.Generator().manual_seed(10_000 + seed)
    return task.sample(cfg.probe_batch, generator, torch.device("cpu"))


def depth_arm(task, cfg: NormalizationStudyConfig) -> dict:
    """Per norm and SkipInit setting: the residual stream's variance by block, for each initialisation seed."""
    channels, size, _ = task.image_shape
    out = {}
    for norm in cfg.depth_norms:
        for skip in (False, True):
            curves = []
            for seed in range(cfg.init_seeds):
                torch.manual_seed(seed)
                model = ResNet(ResNetConfig(depth=cfg.resnet_depth, width=cfg.resnet_width, norm=norm, skipinit=skip,
                                            in_channels=channels, image_size=size, n_classes=task.n_classes, norm_groups=8))
                batch = _probe(task, cfg, seed)
                curves.append(signal_propagation(model, batch.inputs, batch.targets)["activation_variance"])
            out[f"{norm}{'+skipinit' if skip else ''}"] = curves
    return out


def group_arm(task, cfg: NormalizationStudyConfig) -> dict:
    """Per group size (and batch / none): cosine similarity, stable rank and gradient norm by layer, per seed."""
    channels, size, _ = task.image_shape
    settings = {f"group size {g}": {"norm": "group", "norm_group_size": g} for g in cfg.group_sizes}
    settings.update({"batch": {"norm": "batch"}, "none": {"norm": "none"}})
    out = {}
    for label, norm in settings.items():
        readings = []
        for seed in range(cfg.init_seeds):
            torch.manual_seed(seed)
            model = VGG(VGGConfig(depth=cfg.uniform_depth, stages=1, width=cfg.uniform_width, in_channels=channels,
                                  image_size=size, n_classes=task.n_classes, **norm))
            batch = _probe(task, cfg, seed)
            readings.append(signal_propagation(model, batch.inputs, batch.targets))
        out[label] = readings
    return out


# ---------------------------------------------------------------- running and analysis


def run_normalization(path: Path) -> dict:
    path = Path(path)
    study = read_json(path / "study.json")
    cfg = build_dataclass(NormalizationStudyConfig, study["study"], "study")
    runs_dir = path.parent.parent
    name, base = study["recipe"], study["base"]
    for i, run in enumerate(study["runs"]):
        recipe = _run_recipe(name, base, cfg, run["norm"], run["batch_size"], run["seed"])
        experiment = resolve(recipe["recipe"], recipe)
        run_id = reserve(path / "study.json", study, run, "run_id", experiment.recipe)
        label = f"[{i + 1}/{len(study['runs'])}] {run['norm']} batch {run['batch_size']} seed {run['seed']}"
        complete(experiment, runs_dir, run_id, label, "normalization", keep_failed=True)
    log.info("caplab normalization: signal propagation at initialisation")
    task = resolve(name, _run_recipe(name, base, cfg, cfg.train_norms[0], cfg.batch_sizes[0], 0)).make_task()
    depth, groups = depth_arm(task, cfg), group_arm(task, cfg)
    probe = _probe(task, cfg, 0)
    summary = analyse(study, cfg, runs_dir, depth, groups, mean_cosine_similarity(probe.inputs))
    atomic_write_json(path / "summary.json", summary)
    write_normalization_report(path, summary, depth, groups)
    return summary


def cfg_blocks(cfg: NormalizationStudyConfig) -> int:
    """Residual blocks per stage of the study's ResNet (three stages)."""
    return (cfg.resnet_depth - 2) // 6


def _final_accuracy(runs_dir: Path, run_id: str) -> Optional[float]:
    store = RunStore(runs_dir / run_id)
    if store.info()["status"] != "completed":
        return None  # a diverged or failed run: no accuracy (counted in `failed`)
    return store.metrics()[-1].get("accuracy")


def analyse(study: dict, cfg: NormalizationStudyConfig, runs_dir: Path, depth: dict, groups: dict, input_cosine: float) -> dict:
    growth = {}
    for key, curves in depth.items():
        arr = np.array(curves)
        # a stage's first block re-normalises the stream for its projection shortcut, so growth is read per stage too
        starts = list(range(0, arr.shape[1], cfg_blocks(cfg)))
        growth[key] = {"last_over_first": mean_interval(list(arr[:, -1] / arr[:, 0])),
                       "log10_last_over_first": mean_interval(list(np.log10(arr[:, -1] / arr[:, 0]))),
                       "per_stage": [mean_interval(list(arr[:, min(s + cfg_blocks(cfg), arr.shape[1]) - 1] / arr[:, s]))
                                     for s in starts],
                       "last_variance": mean_interval(list(arr[:, -1]))}
    informativeness = {}
    for key, readings in groups.items():
        grads = [np.array(r["gradient_norm"]) for r in readings]
        informativeness[key] = {
            "cosine_last": mean_interval([r["cosine_similarity"][-1] for r in readings]),
            "stable_rank_last": mean_interval([r["stable_rank"][-1] for r in readings]),
            "gradient_first_over_last": mean_interval([float(g[0] / g[-1]) for g in grads]),
            "gradient_first": mean_interval([float(g[0]) for g in grads]),
        }
    accuracy, failed = {}, []
    largest = max(cfg.batch_sizes)
    by_key = {}
    for run in study["runs"]:
        value = _final_accuracy(runs_dir, run["run_id"]) if run["run_id"] else None
        if value is None:
            failed.append({k: run[k] for k in ("norm", "batch_size", "seed", "run_id")})
        by_key[(run["norm"], run["batch_size"], run["seed"])] = value
    for norm in cfg.train_norms:
        accuracy[norm] = {}
        for batch in cfg.batch_sizes:
            values = [by_key.get((norm, batch, s)) for s in range(cfg.seeds)]
            change = [v - w if v is not None and w is not None else None
                      for v, w in zip(values, (by_key.get((norm, largest, s)) for s in range(cfg.seeds)))]
            accuracy[norm][str(batch)] = {"accuracy": mean_interval(values),
                                          "change_from_largest": mean_interval(change) if batch != largest else None}
    return {"recipe": study["recipe"], "seeds": cfg.seeds, "init_seeds": cfg.init_seeds, "images": cfg.images,
            "batch_sizes": cfg.batch_sizes, "input_cosine_similarity": input_cosine, "activation_growth": growth,
            "group_size": informativeness, "small_batch_accuracy": accuracy, "failed_runs": failed,
            "runs": [r["run_id"] for r in study["runs"]]}


def _cell(estimate: Optional[dict], spec: str = ".3f") -> str:
    if not estimate or estimate["mean"] is None:
        return "n/a"
    if not estimate["interval"]:
        return format(estimate["mean"], spec)
    low, high = estimate["interval"]
    return f"{estimate['mean']:{spec}} [{low:{spec}}, {high:{spec}}]"


def write_normalization_report(path: Path, summary: dict, depth: dict, groups: dict) -> Path:
    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = ["activation_growth.png", "group_size_similarity.png", "group_size_gradients.png", "small_batches.png"]

    fig, ax = plots.subplots(width=7.2, height=4.6)
    for i, norm in enumerate(k for k in depth if not k.endswith("+skipinit")):
        for key, style in ((norm, "-"), (f"{norm}+skipinit", ":")):
            mean = np.array(depth[key]).mean(0)
            ax.plot(np.arange(1, len(mean) + 1), mean, style, color=f"C{i % 10}", label=key if style == "-" else None)
    ax.set_yscale("log")
    ax.set_title("residual stream variance at initialisation (dotted: with SkipInit)", fontsize=9)
    ax.set_xlabel("residual block")
    ax.set_ylabel("activation variance (mean over seeds)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, ncol=2)
    plots.save(fig, figures / names[0])

    for name, key, ylabel, log in ((names[1], "cosine_similarity", "mean cross-sample cosine similarity", False),
                                    (names[2], "gradient_norm", "||dL/d(conv output)||", True)):
        fig, ax = plots.subplots()
        for i, (label, readings) in enumerate(groups.items()):
            mean = np.array([r[key] for r in readings]).mean(0)
            ax.plot(np.arange(1, len(mean) + 1), mean, marker=".", color=f"C{i % 10}", label=label)
        if key == "cosine_similarity":
            ax.axhline(summary["input_cosine_similarity"], color="grey", ls="--", lw=0.8, label="the inputs themselves")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title("constant-width CNN at initialisation, by normalization group size", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
        plots.save(fig, figures / name)

    fig, ax = plots.subplots()
    for i, (norm, by_batch) in enumerate(summary["small_batch_accuracy"].items()):
        xs, ys, errs = [], [], [[], []]
        for batch, cell in by_batch.items():
            est = cell["accuracy"]
            if est["mean"] is None:
                continue
            low, high = est["interval"] or (est["mean"], est["mean"])
            xs.append(int(batch))
            ys.append(est["mean"])
            errs[0].append(est["mean"] - low)
            errs[1].append(high - est["mean"])
        ax.errorbar(np.array(xs) * (1 + 0.03 * i), ys, yerr=errs, marker="o", capsize=3, color=f"C{i % 10}", label=norm)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"batch size ({summary['images']} training images each)")
    ax.set_ylabel("held-out accuracy (mean, 95% t-interval)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    plots.save(fig, figures / names[3])

    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_cell(v['last_over_first'], '.3g')}</td></tr>"
                   for k, v in summary["activation_growth"].items())
    body = [f"<h1>Normalization study {html.escape(path.name)}</h1>",
            "<h2>Activation growth (last block / first block, at initialisation)</h2>",
            f"<table><tr><th>norm</th><th>variance ratio</th></tr>{rows}</table>", *html.images(names),
            html.json_block("Summary", summary)]
    return html.write_page(path / "report.html", "caplab normalization study", body)


# ---------------------------------------------------------------- the study-kind interface (caplab.studies)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    return resume(create_normalization(recipe, overrides, root))


def resume(path: Path) -> list[str]:
    return run_and_report(path, run_normalization, summary_lines, "normalization")


def summary_lines(s: dict) -> list[str]:
    lines = [f"activation variance, last / first residual block at initialisation (mean [95% t-interval], "
             f"{s['init_seeds']} seeds):"]
    lines += [f"  {k:<22} {_cell(v['last_over_first'], '.3g')}" for k, v in s["activation_growth"].items()]
    lines.append(f"constant-width CNN at initialisation (inputs' own cosine similarity {s['input_cosine_similarity']:.3f}):")
    for k, v in s["group_size"].items():
        lines.append(f"  {k:<16} last-layer cosine {_cell(v['cosine_last'])}  stable rank {_cell(v['stable_rank_last'], '.2f')}"
                     f"  first/last gradient norm {_cell(v['gradient_first_over_last'], '.3g')}")
    lines.append(f"held-out accuracy after {s['images']} training images (change from batch {max(s['batch_sizes'])}), "
                 f"{s['seeds']} seeds:")
    for norm, by_batch in s["small_batch_accuracy"].items():
        parts = [f"b{b} {_cell(c['accuracy'])}" + (f" ({_cell(c['change_from_largest'], '+.3f')})"
                                                    if c["change_from_largest"] else "") for b, c in by_batch.items()]
        lines.append(f"  {norm:<11} " + "; ".join(parts))
    for failed in s["failed_runs"]:
        lines.append(f"  failed: {failed['norm']} batch {failed['batch_size']} seed {failed['seed']} ({failed['run_id']})")
    return lines
