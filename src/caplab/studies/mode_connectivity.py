"""`kind: mode-connectivity` recipes: Mechanistic Mode Connectivity (Lubana et al., ICML 2023) on a cue task.

The recipe's task carries a spurious cue (`task.cue`, `caplab.tasks.cues`);
its training runs are ordinary catalogued runs, listed in `study.json` (ids
reserved first, so `caplab resume` continues). Two arms (`study.arms`):

**paths** (recipe `mode-connectivity`). Per seed: a cue model (cue on
`study.path_cue_fraction` of the training samples) and a clean model (no cue,
another initialisation). Between them: the linear, quadratic (Bezier, control
point trained on the cue model's training data) and permutation-aligned linear
paths, scored on nc / c / rc / ri with normalization statistics recomputed on
clean training images at every point. From the cue model: naive fine-tuning on
the clean set D_NC at the small, medium and a large rate, and the linear path back
to the cue model (does fine-tuning leave the cue model's basin?). Control, an
arm where mechanisms agree: the cue model against the next seed's cue model,
linear and aligned (a barrier there comes from the initialisation, not from a
change of mechanism).

**methods** (recipe `cbft`). Per cue fraction in `study.cue_fractions` and
seed: a cue model, then every fine-tuning method of `caplab.train.cue_finetune`
(naive at two rates, last-layer retraining, LP-FT, CBFT) on the same D_NC
(and D_C); accuracy on nc / c / rc / ri of each, beside the cue model itself
and the ri accuracy of a model blind to the cue (`ri_chance`).

Numbers are means over seeds with 95% t-intervals. The in-process parts (paths,
fine-tuning) keep their results in `results/` and are not recomputed on resume.

    <runs root>/studies/<id>/  study.json, results/, summary.json, figures/, report.html
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from caplab.analysis import connectivity
from caplab.analysis.intervals import mean_interval
from caplab.config import build_dataclass, load_sectioned_recipe, merge_recipe, resolve
from caplab.errors import ConfigError, TrainingDiverged
from caplab.experiment import load_model
from caplab.runs import html, plots
from caplab.runs.store import atomic_write_json, read_json
from caplab.studies.connect import plot_curve, statistics_source
from caplab.studies.folder import complete, new_folder, reserve_all, run_and_report
from caplab.tasks.cues import SETS
from caplab.train import cue_finetune

log = logging.getLogger(__name__)

SECTIONS = ("task", "model", "train", "study")
TABLE_ROWS = ("clean_model", "cue_model", *cue_finetune.METHODS, *cue_finetune.CONTROLS)  # the methods arm's rows
ARMS = ("paths", "methods")
CPU = torch.device("cpu")


@dataclass
class ModeConnectivityStudyConfig:
    arms: list[str] = field(default_factory=lambda: ["paths"])
    seeds: int = 3
    path_cue_fraction: float = 1.0  # paths: the cue model's share of cue samples (the paper: 100% cue data)
    cue_fractions: list[float] = field(default_factory=lambda: [0.6, 0.8, 0.9])  # methods
    clean_share: float = 0.05  # D_NC: this share of the training set, clean (the paper: 2,500 of 50,000)
    points: int = 8  # path segments
    midpoint_steps: int = 240  # about 15 epochs of a 2,000-image training set at batch 128 (the paper: 15 epochs)
    midpoint_lr: float = 0.1  # the paper's
    midpoint_batch: int = 128
    statistics_batches: int = 8  # of 256 clean training images, for every point's normalization statistics
    finetune: dict = field(default_factory=dict)  # caplab.train.cue_finetune.CueFinetuneConfig fields

    def __post_init__(self) -> None:
        bad = [a for a in self.arms if a not in ARMS]
        if bad or not self.arms:
            raise ValueError(f"bad study.arms {self.arms}; valid: {', '.join(ARMS)}")
        if self.seeds < 1 or self.points < 2 or self.midpoint_steps < 1 or self.statistics_batches < 1:
            raise ValueError("study.seeds, study.midpoint_steps and study.statistics_batches must be at least 1, study.points at least 2")
        if not all(0 <= p <= 1 for p in [*self.cue_fractions, self.path_cue_fraction]) or not 0 < self.clean_share < 1:
            raise ValueError("study cue fractions must lie in [0, 1] and study.clean_share in (0, 1)")

    @property
    def finetuning(self) -> cue_finetune.CueFinetuneConfig:
        return build_dataclass(cue_finetune.CueFinetuneConfig, dict(self.finetune), "study.finetune")


def load_study(recipe: str, overrides: list[str] = ()) -> tuple[str, dict, ModeConnectivityStudyConfig]:
    name, data = load_sectioned_recipe(recipe, "mode-connectivity", SECTIONS, overrides)
    cfg = build_dataclass(ModeConnectivityStudyConfig, dict(data.get("study") or {}), "study")
    cfg.finetuning  # noqa: B018 (validated now, before anything runs)
    base = {k: data.get(k) or {} for k in ("task", "model", "train")}
    base["description"] = str(data.get("description", "")).strip()
    return name, base, cfg


def _run_recipe(name: str, base: dict, label: str, cue_fraction: float, seed: int) -> dict:
    recipe = merge_recipe({k: base[k] for k in ("task", "model", "train")},
                          {"task": {"cue_fraction": cue_fraction}, "train": {"seed": seed, "progress": "never"}})
    return {**recipe, "recipe": f"{name}.{label}", "description": f"{label}: cue on {cue_fraction:g} of the training samples, seed {seed}"}


def planned_runs(cfg: ModeConnectivityStudyConfig) -> list[dict]:
    """Every training run of the study: (arm, label, cue fraction, seed)."""
    runs = []
    if "paths" in cfg.arms:
        for s in range(cfg.seeds):
            runs.append({"label": f"cue-s{s}", "cue_fraction": cfg.path_cue_fraction, "seed": s, "run_id": None})
            runs.append({"label": f"clean-s{s}", "cue_fraction": 0.0, "seed": 1000 + s, "run_id": None})
            # controls: a clean model from the cue model's own initialisation (and data order), and a second cue
            # model from another initialisation (same mechanism)
            runs.append({"label": f"clean-init-s{s}", "cue_fraction": 0.0, "seed": s, "run_id": None})
            runs.append({"label": f"cue-b-s{s}", "cue_fraction": cfg.path_cue_fraction, "seed": 2000 + s, "run_id": None})
    if "methods" in cfg.arms:
        for s in range(cfg.seeds):  # the cue-blind reference of the table
            if not any(r["label"] == f"clean-s{s}" for r in runs):
                runs.append({"label": f"clean-s{s}", "cue_fraction": 0.0, "seed": 1000 + s, "run_id": None})
        for p in cfg.cue_fractions:
            for s in range(cfg.seeds):
                label = f"cue{round(p * 100)}-s{s}"
                if not any(r["label"] == label for r in runs):
                    runs.append({"label": label, "cue_fraction": p, "seed": s, "run_id": None})
    return runs


def create_study(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> Path:
    name, base, cfg = load_study(recipe, overrides)
    runs = planned_runs(cfg)
    for run in runs:  # every training config is valid before anything runs
        experiment = resolve(name, _run_recipe(name, base, run["label"], run["cue_fraction"], run["seed"]))
        if experiment.model_kind not in ("vgg", "mlp", "resnet"):
            raise ConfigError("a mode-connectivity study trains an image model: model.kind vgg, resnet or mlp")
        if not hasattr(experiment.make_task(), "finetuning_sets"):
            raise ConfigError("a mode-connectivity study needs a cue task: set task.cue (box or dominoes)")
    return new_folder("studies", name, "study.json", {"recipe": name, "kind": "mode-connectivity", "base": base,
                                                      "study": dataclasses.asdict(cfg), "runs": runs}, root)


# ---------------------------------------------------------------- the in-process parts


def _cached(path: Path, compute) -> dict:
    """The JSON at `path`, computed and written first if it is not there (a resumed study skips finished parts)."""
    if path.is_file():
        return read_json(path)
    result = compute()
    atomic_write_json(path, result)
    return result


def _state(model) -> dict:
    return connectivity.detached(model.state_dict())


def _finetuned(model, task, method: str, cfg: ModeConnectivityStudyConfig, seed: int):
    """A copy of `model` fine-tuned by `method` on the task's D_NC (and D_C); raises TrainingDiverged."""
    ft = cue_finetune.run_method(method, copy.deepcopy(model), _state(model), task, cfg.finetuning, cfg.clean_share, seed)
    return ft.eval()


def paths_arm(path: Path, study: dict, cfg: ModeConnectivityStudyConfig, runs_dir: Path) -> dict:
    by_label = {r["label"]: r["run_id"] for r in study["runs"]}
    results, folder = {}, path / "results"
    folder.mkdir(exist_ok=True)
    for s in range(cfg.seeds):
        models = {}

        def model(label: str):
            if label not in models:
                models[label] = load_model(by_label[f"{label}-s{s}"], root=runs_dir)
            return models[label]

        cue_model, cue_cfg = model("cue")
        task = cue_cfg.make_task()
        sets = task.evaluation_sets(CPU)
        statistics = statistics_source(task, cfg.statistics_batches, 256, seed=s)

        def curve(kind: str, first, second, tag: str) -> dict:
            """The path from first() to second() (models, built only if the curve is not cached)."""
            def compute():
                model_a, model_b = first(), second()
                log.info(f"caplab mode-connectivity: seed {s}: {tag} ({kind})")
                midpoint = {"steps": cfg.midpoint_steps, "lr": cfg.midpoint_lr, "seed": s}
                if kind == "quadratic":
                    torch.manual_seed(10_000 + s)
                    midpoint["start"] = cue_cfg.make_model().state_dict()  # a fresh initialisation, as the paper's
                result = connectivity.connect(model_a, _state(model_a), _state(model_b), kind, sets, statistics, cfg.points,
                                              sample=lambda g: task.sample(cfg.midpoint_batch, g, CPU), loss=task.loss,
                                              midpoint=midpoint)
                result.pop("midpoint_state", None)
                # each endpoint as trained, with its own running statistics (the path's endpoints use clean ones)
                own = {"a": task.evaluate(model_a.eval(), CPU), "b": task.evaluate(model_b.eval(), CPU)}
                return {**result, "sets": list(sets), "pair": tag, "own_statistics": own}
            return _cached(folder / f"{tag}-{kind}-s{s}.json", compute)

        def finetuned(method: str):
            try:
                return _finetuned(cue_model, task, method, cfg, s)
            except TrainingDiverged as exc:
                return exc

        cue, clean = (lambda: model("cue")[0]), (lambda: model("clean")[0])
        seed_results = {f"cue-clean/{kind}": curve(kind, cue, clean, "cue-clean") for kind in connectivity.PATHS}
        seed_results["cue-clean-same-init/linear"] = curve("linear", cue, lambda: model("clean-init")[0], "cue-clean-same-init")
        for kind in ("linear", "aligned"):  # controls: the same mechanism from two initialisations
            seed_results[f"cue-cue/{kind}"] = curve(kind, cue, lambda: model("cue-b")[0], "cue-cue")
            seed_results[f"clean-clean/{kind}"] = curve(kind, lambda: model("clean-init")[0], clean, "clean-clean")
        for method in cue_finetune.NAIVE_RATES:  # fine-tuned on D_NC: does it leave the cue model's basin?
            tag = f"cue-{method}"
            if not (folder / f"{tag}-linear-s{s}.json").is_file():
                tuned = finetuned(method)
                if isinstance(tuned, TrainingDiverged):
                    atomic_write_json(folder / f"{tag}-linear-s{s}.json", {"diverged": str(tuned), "pair": tag})
                    log.info(f"caplab mode-connectivity: seed {s}: {method} diverged ({tuned})")
                else:
                    curve("linear", cue, lambda tuned=tuned: tuned, tag)
            seed_results[f"{tag}/linear"] = read_json(folder / f"{tag}-linear-s{s}.json")
        results[s] = seed_results
    return results


def methods_arm(path: Path, study: dict, cfg: ModeConnectivityStudyConfig, runs_dir: Path) -> dict:
    by_label = {r["label"]: r["run_id"] for r in study["runs"]}
    folder = path / "results"
    folder.mkdir(exist_ok=True)
    table: dict = {}
    for p in cfg.cue_fractions:
        for s in range(cfg.seeds):
            run_id = by_label[f"cue{round(p * 100)}-s{s}"]

            def compute():
                model, model_cfg = load_model(run_id, root=runs_dir)
                task = model_cfg.make_task()
                clean_model, _ = load_model(by_label[f"clean-s{s}"], root=runs_dir)
                scores = {"cue_model": task.evaluate(model, CPU), "clean_model": task.evaluate(clean_model, CPU)}
                for method in (*cue_finetune.METHODS, *cue_finetune.CONTROLS):
                    log.info(f"caplab mode-connectivity: cue {p:g}, seed {s}: {method}")
                    start = model
                    if method == "scratch":  # D_NC alone, from a fresh initialisation
                        torch.manual_seed(5000 + s)
                        start = model_cfg.make_model()
                    try:
                        scores[method] = task.evaluate(_finetuned(start, task, method, cfg, s), CPU)
                    except TrainingDiverged as exc:  # a result of the method at this rate: no accuracy, counted
                        log.info(f"caplab mode-connectivity: cue {p:g}, seed {s}: {method} diverged ({exc})")
                        scores[method] = {**{f"{n}_accuracy": None for n in SETS}, "diverged": str(exc)}
                return {"run": run_id, "cue_fraction": p, "seed": s, "ri_chance": task.ri_chance(), "scores": scores}

            table[(p, s)] = _cached(folder / f"methods-cue{round(p * 100)}-s{s}.json", compute)
    return table


# ---------------------------------------------------------------- the study


def run_study(path: Path) -> dict:
    path = Path(path)
    study = read_json(path / "study.json")
    cfg = build_dataclass(ModeConnectivityStudyConfig, study["study"], "study")
    runs_dir = path.parent.parent
    name, base = study["recipe"], study["base"]
    experiments = [resolve(name, _run_recipe(name, base, r["label"], r["cue_fraction"], r["seed"])) for r in study["runs"]]
    reserve_all(path / "study.json", study, [(r, "run_id", e.recipe) for r, e in zip(study["runs"], experiments)])
    for i, (run, experiment) in enumerate(zip(study["runs"], experiments)):
        label = f"[{i + 1}/{len(study['runs'])}] {run['label']}"
        if complete(experiment, runs_dir, run["run_id"], label, "mode-connectivity", divergence_is_result=False) != "completed":
            raise ConfigError(f"training run {run['run_id']} did not complete; `caplab resume {run['run_id']}` retries it")
    summary: dict = {"recipe": name, "study": dataclasses.asdict(cfg)}
    paths = methods = None
    if "paths" in cfg.arms:
        paths = paths_arm(path, study, cfg, runs_dir)
        summary["paths"] = summarise_paths(paths)
    if "methods" in cfg.arms:
        methods = methods_arm(path, study, cfg, runs_dir)
        summary["methods"] = summarise_methods(methods, cfg)
    atomic_write_json(path / "summary.json", summary)
    write_report(path, summary, paths)
    return summary


def summarise_paths(results: dict) -> dict:
    """Per pair/path and set, over seeds: the barrier, the loss and accuracy at every alpha, how far B is from A,
    and each endpoint's accuracies with its own statistics; diverged fine-tunings are counted."""
    out: dict = {}
    for key in dict.fromkeys(k for seed in results.values() for k in seed):
        found = [results[s][key] for s in results if key in results[s]]
        curves = [c for c in found if "diverged" not in c]
        entry: dict = {"diverged": len(found) - len(curves)}
        if curves:
            sets, n = curves[0]["sets"], len(curves[0]["alphas"])
            entry.update({
                "alphas": curves[0]["alphas"],
                "barrier": {m: mean_interval([c["barriers"][m] for c in curves]) for m in sets},
                "loss": {m: [mean_interval([c["points"][i][f"{m}_loss"] for c in curves])["mean"] for i in range(n)] for m in sets},
                "accuracy": {m: [mean_interval([c["points"][i][f"{m}_accuracy"] for c in curves])["mean"] for i in range(n)]
                             for m in sets},
                "relative_distance": mean_interval([c["relative_distance"] for c in curves]),
                "own_statistics": {end: {f"{m}_accuracy": mean_interval([c["own_statistics"][end][f"{m}_accuracy"] for c in curves])
                                         for m in sets} for end in ("a", "b")},
            })
        out[key] = entry
    return out


def summarise_methods(table: dict, cfg: ModeConnectivityStudyConfig) -> dict:
    """Per cue fraction and method: accuracy on each set (mean, interval over seeds); ri_chance."""
    out = {}
    for p in cfg.cue_fractions:
        cells = [table[(p, s)] for s in range(cfg.seeds)]
        out[f"{p:g}"] = {"ri_chance": mean_interval([c["ri_chance"] for c in cells]),
                         **{method: {**{n: mean_interval([c["scores"][method][f"{n}_accuracy"] for c in cells]) for n in SETS},
                                     "ri_image": mean_interval([c["scores"][method].get("ri_image_accuracy") for c in cells]),
                                     "diverged": sum("diverged" in c["scores"][method] for c in cells)}
                            for method in TABLE_ROWS}}
    return out


def _cell(estimate: dict) -> str:
    if estimate["mean"] is None:
        return "-"
    if estimate["interval"] is None:
        return f"{100 * estimate['mean']:.1f}"
    half = 100 * (estimate["interval"][1] - estimate["interval"][0]) / 2
    return f"{100 * estimate['mean']:.1f} ± {half:.1f}"


def write_report(path: Path, summary: dict, paths: Optional[dict]) -> Path:
    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names, body = [], [f"<h1>Mode connectivity study {html.escape(path.name)}</h1>"]
    if "paths" in summary:
        s = summary["paths"]
        fig, axes = plots.subplots(1, len(SETS), width=4 * len(SETS), height=3.6)
        for ax, name in zip(axes, SETS):
            for key, style in (("cue-clean/linear", "-"), ("cue-clean/quadratic", "--"), ("cue-clean/aligned", ":")):
                ax.plot(s[key]["alphas"], s[key]["loss"][name], style, marker="o", ms=3,
                        label=f"{key.split('/')[1]} (barrier {s[key]['barrier'][name]['mean']:.2f})")
            ax.set_title(f"{name} set", fontsize=9)
            ax.set_xlabel("alpha (0: cue model, 1: clean model)")
            ax.grid(alpha=0.3)
            plots.legend(ax, fontsize=7)
        axes[0].set_ylabel("cross-entropy (mean over seeds)")
        plots.save(fig, figures / "paths_loss.png")
        names.append("paths_loss.png")
        fig, ax = plots.subplots(width=7, height=4)
        pairs = [k for k in s if "barrier" in s[k] and not k.endswith("/quadratic")]
        x = np.arange(len(pairs))
        for i, name in enumerate(("nc", "c")):
            means = [s[k]["barrier"][name]["mean"] for k in pairs]
            errors = [0 if s[k]["barrier"][name]["interval"] is None else
                      (s[k]["barrier"][name]["interval"][1] - s[k]["barrier"][name]["interval"][0]) / 2 for k in pairs]
            ax.bar(x + 0.4 * i - 0.2, means, 0.4, yerr=errors, label=f"{name} set")
        ax.set_xticks(x, pairs, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("loss barrier (95% interval over seeds)")
        ax.set_title("barriers: cue model against clean model, fine-tuned models, and another cue model", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        plots.legend(ax, fontsize=8)
        plots.save(fig, figures / "barriers.png")
        names.append("barriers.png")
        if paths:  # one seed's full curves, as `caplab connect` draws them
            first = paths[min(paths)]
            for key in ("cue-clean/linear", "cue-clean/quadratic"):
                plot_curve({**first[key], "run_b": "clean model", "run_a": "cue model"},
                           figures / f"seed0_{key.replace('/', '_')}.png", title=f"{key}, seed 0")
                names.append(f"seed0_{key.replace('/', '_')}.png")
    if "methods" in summary:
        m = summary["methods"]
        rows = "".join(f"<tr><td>{html.escape(p)}</td><td>{html.escape(method)}</td>"
                       + "".join(f"<td>{_cell(m[p][method][n])}</td>" for n in SETS) + "</tr>"
                       for p in m for method in TABLE_ROWS)
        body.append("<h2>Fine-tuning methods (accuracy %, mean ± 95% interval over seeds)</h2><table><tr><th>cue share</th>"
                    "<th>method</th>" + "".join(f"<th>{n}</th>" for n in SETS) + f"</tr>{rows}</table>")
        fig, ax = plots.subplots(width=8, height=4)
        methods = TABLE_ROWS
        x = np.arange(len(methods))
        for i, p in enumerate(m):
            means = [np.nan if m[p][k]["ri"]["mean"] is None else 100 * m[p][k]["ri"]["mean"] for k in methods]
            ax.plot(x, means, marker="o", label=f"cue on {float(p):.0%} of samples")
            ax.axhline(100 * m[p]["ri_chance"]["mean"], color=f"C{i}", ls=":", lw=1)
        ax.set_xticks(x, methods, fontsize=8)
        ax.set_ylabel("ri accuracy (%)")
        ax.set_title("cue reliance: accuracy on random images carrying the label's cue (dotted: a cue-blind model)", fontsize=9)
        ax.grid(alpha=0.3)
        plots.legend(ax, fontsize=8)
        plots.save(fig, figures / "cue_reliance.png")
        names.append("cue_reliance.png")
    body += [*html.images(names), html.json_block("Summary", summary)]
    return html.write_page(path / "report.html", "caplab mode-connectivity study", body)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    return resume(create_study(recipe, overrides, root))


def resume(path: Path) -> list[str]:
    return run_and_report(path, run_study, summary_lines, "mode-connectivity")


def summary_lines(s: dict) -> list[str]:
    lines = []
    for key, entry in s.get("paths", {}).items():
        if "barrier" not in entry:
            lines.append(f"{key}: diverged on every seed")
            continue
        barriers = ", ".join(f"{n} {e['mean']:.3f}" for n, e in entry["barrier"].items())
        lines.append(f"{key}: barrier {barriers}" + (f" ({entry['diverged']} diverged)" if entry["diverged"] else ""))
    for p, methods in s.get("methods", {}).items():
        for method in TABLE_ROWS:
            lines.append(f"cue {p} {method}: " + ", ".join(f"{n} {_cell(methods[method][n])}" for n in SETS))
    return lines
