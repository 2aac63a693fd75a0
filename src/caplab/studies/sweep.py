"""Sweeps: every combination of a grid of overrides times seeds, one catalogued run each.

    <runs root>/sweeps/<sweep_id>/
        sweep.json     recipe, grid, seeds, overrides, and one entry per planned run (with its run id once created)
        summary.json   per setting: emergence point of the tracked metric with a bootstrap interval over
                       seeds, final value; a power-law fit of emergence point against a numeric grid key
        figures/, report.html

Runs execute in-process, one after another. Each run's id is written to
`sweep.json` (atomically) before the run is created, so an interrupted sweep
resumes where it stopped: finished runs are kept, a run that died is resumed from its
last checkpoint, runs never started are started.
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from caplab.analysis.emergence import bootstrap, peak_read, sigmoid_midpoint, threshold_crossing
from caplab.analysis.censored import censored_power_law
from caplab.config import load_config, load_recipe
from caplab.errors import ConfigError, TrainingDiverged
from caplab.runs.owner import owning
from caplab.runs.store import RunStore, atomic_write_json, open_folder, read_json
from caplab.studies.folder import complete, new_folder, reserve_all, run_and_report
from caplab.studies.launchers import check_launcher, launch

log = logging.getLogger(__name__)


def parse_grid(items: list[str]) -> dict[str, list]:
    """`["task.n_depths=3,4,5"]` -> `{"task.n_depths": [3, 4, 5]}` (values read as YAML)."""
    grid: dict[str, list] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise ConfigError(f"bad grid {item!r}; expected KEY=V1,V2,..., e.g. task.n_train_compositions=10,25,50")
        grid[key] = [yaml.safe_load(v) for v in raw.split(",")]
    return grid


def _setting_overrides(setting: dict) -> list[str]:
    return [f"{key}={json.dumps(value)}" for key, value in setting.items()]


def plan(grid: dict[str, list], seeds: int) -> list[dict]:
    """One entry per (grid combination, seed); seed s sets train.seed=s.

    A key naming several fields ("task.a,task.b") takes lists of values that move together.
    """
    keys = list(grid)
    for key in keys:
        names = key.split(",")
        if len(names) > 1 and not all(isinstance(v, list) and len(v) == len(names) for v in grid[key]):
            raise ConfigError(f"grid key {key!r} links {len(names)} fields: each of its values must be a list of {len(names)}")
    entries = []
    for values in itertools.product(*(grid[k] for k in keys)):
        setting = {}
        for key, value in zip(keys, values):
            setting.update(zip(key.split(","), value) if "," in key else [(key, value)])
        for seed in range(seeds):
            entries.append({"setting": setting, "seed": seed, "run_id": None})
    return entries


def _entry_overrides(sweep: dict, entry: dict) -> list[str]:
    """Overrides of one planned run: the sweep's, its setting's, and its seed on every seed key (train.seed by default)."""
    seeds = [f"{key}={entry['seed']}" for key in sweep.get("seed_keys", ["train.seed"])]
    return [*sweep["overrides"], *_setting_overrides(entry["setting"]), *seeds]


def recipe_sweep(recipe: str) -> dict:
    """The `sweep:` section of a recipe ({} if none): grid (KEY: [values]), seeds, metric, level (of the crossing)."""
    _, data = load_recipe(recipe)
    section = data.get("sweep") or {}
    if not isinstance(section, dict):
        raise ConfigError(f"recipe {recipe!r}: 'sweep' must be a mapping with grid, seeds, metric")
    valid = ("grid", "seeds", "metric", "level", "ensemble", "seed_keys", "analysis", "read", "target_loss", "reference", "fit",
             "launcher", "workers", "address", "gpus_per_run", "search", "space", "trials", "direction", "sampler_seed")
    unknown = [k for k in section if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key 'sweep.{unknown[0]}'; valid: {', '.join(valid)}")
    grid = section.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError(f"recipe {recipe!r}: 'sweep.grid' must map keys to non-empty lists of values")
    return section


def create_sweep(recipe: str, grid: dict[str, list], seeds: Optional[int], overrides: list[str] = (),
                 metric: Optional[str] = None, root: Optional[Path] = None, ensemble: Optional[int] = None,
                 launcher: Optional[str] = None, workers: Optional[int] = None, address: Optional[str] = None,
                 search: Optional[dict] = None) -> Path:
    """Validate every planned config, then write the sweep folder; return it.

    An empty `grid`, `seeds` None, `metric` None or `ensemble` None fall back to the recipe's `sweep:`
    section. `ensemble` = N > 0 trains runs of one model shape together, N at a time (`caplab.train.ensemble`).
    `search` ({engine, space, trials, direction}, any part None: the section's) replaces the grid by settings
    an engine proposes (`caplab.studies.search`).
    """
    section = recipe_sweep(recipe)
    search = _search_settings(section, search or {})
    if search and grid:
        raise ConfigError("a searched sweep takes --space, not --grid")
    grid = {} if search else grid or dict(section.get("grid") or {})
    seeds = seeds if seeds is not None else int(section.get("seeds", 1))
    metric = metric or section.get("metric")
    if seeds < 1:
        raise ConfigError(f"bad value {seeds} for '--seeds'; expected at least 1")
    ensemble = int(section.get("ensemble", 0)) if ensemble is None else ensemble
    sweep = {"recipe": recipe, "grid": grid, "seeds": seeds, "overrides": list(overrides), "metric": metric,
             "level": float(section.get("level", 0.5)), "ensemble": ensemble,
             "seed_keys": list(section.get("seed_keys", ["train.seed"])), "analysis": section.get("analysis"),
             "read": section.get("read", "final"), "target_loss": section.get("target_loss"), "fit": section.get("fit"),
             "reference": section.get("reference", "adamw"),
             "launcher": launcher or section.get("launcher", "local"), "workers": workers if workers is not None else section.get("workers", 1),
             "address": address or section.get("address"), "gpus_per_run": section.get("gpus_per_run", 0)}
    check_launcher(sweep["launcher"], sweep["workers"], sweep["address"])
    if sweep["analysis"] not in (None, "data_percolation", "optimizer_tuning"):
        raise ConfigError(f"bad value {sweep['analysis']!r} for 'sweep.analysis'; valid: data_percolation, optimizer_tuning")
    if sweep["analysis"] == "optimizer_tuning" and not isinstance(sweep["target_loss"], (int, float)):
        raise ConfigError("sweep.analysis optimizer_tuning needs a number 'sweep.target_loss' (the held-out loss to reach)")
    fit = sweep["fit"]
    if fit is not None and not (isinstance(fit, dict) and set(fit) == {"metric", "level"} and isinstance(fit["level"], (int, float))):
        raise ConfigError("sweep.fit must be {metric: NAME, level: NUMBER} (read each run where NAME first reaches NUMBER)")
    if sweep["read"] not in ("final", "peak"):  # how each run's metric is read (peak: needs its _a/_b halves)
        raise ConfigError(f"bad value {sweep['read']!r} for 'sweep.read'; valid: final, peak")
    sweep["runs"] = plan(grid, seeds)
    checked = sweep["runs"]
    if search:  # trials are asked as the sweep runs: check both corners of the space now
        from caplab.studies.search import corner_settings

        sweep["search"], sweep["runs"] = search, []
        checked = [{"setting": setting, "seed": 0} for setting in corner_settings(search["space"])]
    configs = [load_config(recipe, _entry_overrides(sweep, e)) for e in checked]  # fail early, exit 2
    if any(c.train.ensemble > 1 for c in configs):
        raise ConfigError("a sweep makes its own seeds: use `--ensemble N` (or sweep.ensemble) instead of train.ensemble")
    if ensemble:
        from caplab.train.ensemble import check_ensemble

        for cfg in configs:  # every setting (a grid may change the optimizer); settings of other shapes form their own ensembles
            check_ensemble(cfg)
    if metric is None:
        sweep["metric"] = configs[0].make_task().primary_metric
    else:
        check_metric_logged(configs[0], metric, root)
    if search and search["direction"] is None:  # a loss is minimised, a capability maximised
        search["direction"] = "minimize" if sweep["metric"].endswith("loss") else "maximize"
    return new_folder("sweeps", Path(recipe).stem, "sweep.json", sweep, root)


def _search_settings(section: dict, given: dict) -> Optional[dict]:
    """The search of a sweep ({engine, space, trials, direction, sampler_seed}): `given` over the recipe's; None: a grid."""
    engine = given.get("engine") or section.get("search")
    if engine is None:
        if given.get("space") or given.get("trials"):
            raise ConfigError("--space and --trials belong to a searched sweep: add --search optuna")
        return None
    search = {"engine": engine, "space": given.get("space") or section.get("space"),
              "trials": given.get("trials") or section.get("trials", 16),
              "direction": given.get("direction") or section.get("direction"), "sampler_seed": section.get("sampler_seed", 0)}
    from caplab.studies.search import check_search

    check_search(search)
    return search


def check_metric_logged(cfg, metric: str, root: Optional[Path] = None) -> None:
    """ConfigError unless runs of `cfg` log `metric`: read from one evaluation of the untrained model, so a
    misspelt name fails before any training."""
    from caplab.experiment import build

    task, _, trainer = build(cfg, root=root)
    logged = {"step", task.unit, "lr", "flops", "train_loss", "elapsed_s", "eval_s", *trainer.evaluate()}
    for plugin in trainer.plugins.values():
        logged.update(plugin.record())
    if hasattr(task, "data_metrics"):
        logged.update(task.data_metrics())
    if metric not in logged:
        raise ConfigError(f"bad value {metric!r} for the sweep metric; runs of this recipe log: {', '.join(sorted(logged))}")


def set_sweep_launcher(path: Path, launcher: str, workers: Optional[int] = None, address: Optional[str] = None) -> None:
    """Continue the sweep on another launcher (finished runs are kept)."""
    path = Path(path)
    with owning(path, "sweep"):
        sweep = read_json(path / "sweep.json")
        sweep.update(launcher=launcher, workers=workers or sweep.get("workers", 1), address=address)
        check_launcher(sweep["launcher"], sweep["workers"], address)
        atomic_write_json(path / "sweep.json", sweep)


def set_sweep_metric(path: Path, metric: str) -> None:
    """Track another capability in the sweep's aggregate (runs are not retrained)."""
    path = Path(path)
    with owning(path, "sweep"):
        sweep = read_json(path / "sweep.json")
        if sweep.get("search"):  # Optuna was told values of the sweep's metric, in its direction
            raise ConfigError("a searched sweep keeps the metric it was searched on; start a new search for another")
        cfg = load_config(sweep["recipe"], _entry_overrides(sweep, sweep["runs"][0]))
        check_metric_logged(cfg, metric, path.parent.parent)
        sweep["metric"] = metric
        atomic_write_json(path / "sweep.json", sweep)


def open_sweep(name: str, root: Optional[Path] = None) -> Path:
    return open_folder(name, root, "sweeps", "sweep.json")


def run_sweep(path: Path) -> dict:
    """Run (or continue) every planned run of the sweep at `path`; return the aggregate summary.

    Every run id is reserved first; then each group (an ensemble, or one run) is completed by
    `complete_group`, which only reads sweep.json, so the sweep's launcher (`caplab.studies.launchers`) can
    hand groups to workers.
    """
    path = Path(path)
    sweep = read_json(path / "sweep.json")
    if sweep.get("search"):
        from caplab.studies.search import run_search

        run_search(path, sweep, lambda trials: _train_trials(path, trials))
    else:
        _train_entries(path, sweep, range(len(sweep["runs"])))
    summary = aggregate(path)
    if sweep.get("search"):
        from caplab.studies.search import search_summary

        summary["search"] = search_summary(path, sweep["search"])
        atomic_write_json(path / "summary.json", summary)
    from caplab.studies.sweep_report import write_sweep_report

    if sweep.get("analysis") == "data_percolation":
        from caplab.studies import percolation_data
        from caplab.studies.sweep_report import data_percolation_figures

        summary["data_percolation"] = percolation_data.aggregate(path, summary["level"], read=sweep.get("read", "final"))
        data_percolation_figures(path / "figures", summary["data_percolation"])
    if sweep.get("analysis") == "optimizer_tuning":
        from caplab.studies import optimizer_tuning

        summary["optimizer_tuning"] = optimizer_tuning.aggregate(path, sweep["target_loss"], sweep.get("reference", "adamw"))
        optimizer_tuning.tuning_figure(path, summary["optimizer_tuning"])
    write_sweep_report(path, summary)
    return summary


def _train_entries(path: Path, sweep: dict, indices) -> None:
    """Reserve the ids of the planned runs `indices` (saving sweep.json once), then complete them on the launcher."""
    configs = {i: load_config(sweep["recipe"], _entry_overrides(sweep, sweep["runs"][i])) for i in indices}
    reserve_all(path / "sweep.json", sweep, [(sweep["runs"][i], "run_id", cfg.recipe) for i, cfg in configs.items()])
    launch(sweep.get("launcher", "local"), path, _groups(sweep, configs), sweep.get("workers", 1), sweep.get("address"),
           sweep.get("gpus_per_run", 0))


def _train_trials(path: Path, trials) -> dict[int, list]:
    """Train searched trials: `trials` {number: params} are new (their runs are added to the plan), a list of
    numbers are trials already planned. Returns {number: each run's final metric (None: no value)}."""
    sweep = read_json(path / "sweep.json")
    reads: dict[int, list] = {number: [] for number in trials}
    if isinstance(trials, dict):
        for number, params in trials.items():
            entries = [{"setting": params, "seed": seed, "run_id": None, "trial": number} for seed in range(sweep["seeds"])]
            try:  # a proposal inside the space that a config check refuses is a failed trial, not a stuck search
                for entry in entries:
                    load_config(sweep["recipe"], _entry_overrides(sweep, entry))
            except ConfigError as exc:
                log.info(f"caplab sweep: trial {number} {params}: refused: {exc}")
                reads[number] = [None]
                continue
            sweep["runs"] += entries
    numbers = set(trials)
    indices = [i for i, entry in enumerate(sweep["runs"]) if entry.get("trial") in numbers]
    _train_entries(path, sweep, indices)
    runs_dir = path.parent.parent
    for i in indices:
        entry = sweep["runs"][i]
        store = RunStore(runs_dir / entry["run_id"])
        completed = (store.path / "run.json").is_file() and store.info()["status"] == "completed"
        values = [r[sweep["metric"]] for r in store.metrics() if sweep["metric"] in r] if completed else []
        reads[entry["trial"]].append(values[-1] if values else None)
    return reads


def complete_group(path: Path, group: list[int]) -> None:
    """Bring the planned runs `group` (indices into the sweep's runs, ids reserved) to completion: a group of
    several runs that never started trains as one ensemble; anything else one run at a time (single runs,
    and members of an ensemble that was interrupted, each resumed from its own checkpoint)."""
    path = Path(path)
    sweep = read_json(path / "sweep.json")
    runs_dir = path.parent.parent
    configs = {i: load_config(sweep["recipe"], _entry_overrides(sweep, sweep["runs"][i])) for i in group}
    fresh = [i for i in group if not (runs_dir / sweep["runs"][i]["run_id"] / "run.json").is_file()]
    if len(group) > 1 and len(fresh) == len(group):  # never started: train them together
        from caplab.experiment import create_run, train_ensemble

        ids = [sweep["runs"][i]["run_id"] for i in group]
        log.info(f"caplab sweep: [{group[0] + 1}-{group[-1] + 1}/{len(sweep['runs'])}] ensemble of {len(group)}: "
              f"{ids[0]} ... {ids[-1]}")
        for leftover in (p for i in ids for p in runs_dir.glob(f".{i}.*")):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            train_ensemble([create_run(configs[i], runs_dir, run_id=sweep["runs"][i]["run_id"]) for i in group])
        except TrainingDiverged as exc:  # a divergent setting is a result: the others completed, the sweep goes on
            log.info(f"caplab sweep: diverged: {exc}")
        return
    for i in group:
        entry = sweep["runs"][i]
        label = f"[{i + 1}/{len(sweep['runs'])}] {entry['setting']} seed {entry['seed']}"
        complete(configs[i], runs_dir, entry["run_id"], label, "sweep", keep_failed=True)


def _groups(sweep: dict, configs: dict) -> list[list[int]]:
    """Planned runs ({index: config}) in the order they run: ensembles of runs of one shape (at most
    sweep["ensemble"]), or singles."""
    size = sweep.get("ensemble") or 0
    if size <= 1:
        return [[i] for i in configs]
    by_shape: dict[str, list[int]] = {}
    for i, cfg in configs.items():
        # the model section holds the fields the task fixes (vocabulary, context, image shape): one key, one shape
        train = {k: v for k, v in cfg.to_dict()["train"].items() if k != "seed"}
        key = json.dumps([cfg.to_dict()["model"], train], sort_keys=True, default=str)
        by_shape.setdefault(key, []).append(i)
    return [members[start : start + size] for members in by_shape.values() for start in range(0, len(members), size)]


def _setting_key(setting: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting.items()) or "default"


def sweep_runs(path: Path, statuses: tuple[str, ...] = ("completed",)):
    """(planned entry, RunStore) of every run of the sweep at `path` whose status is one of `statuses`, in plan order."""
    sweep = read_json(Path(path) / "sweep.json")
    runs_dir = Path(path).parent.parent
    for entry in sweep["runs"]:
        if entry["run_id"] is None or not (runs_dir / entry["run_id"] / "run.json").is_file():
            continue
        store = RunStore(runs_dir / entry["run_id"])
        if store.info()["status"] in statuses:
            yield entry, store


def completed_runs(path: Path):
    """(planned entry, RunStore) of every run of the sweep at `path` that has completed, in plan order."""
    return sweep_runs(path, ("completed",))


def failed_runs(path: Path) -> list[dict]:
    """Planned runs of the sweep at `path` that failed (e.g. diverged): setting, seed, run id and why."""
    return [{"setting": entry["setting"], "seed": entry["seed"], "run_id": entry["run_id"], "error": store.info().get("error")}
            for entry, store in sweep_runs(path, ("failed",))]


def curves_by_setting(path: Path) -> dict[str, dict]:
    """{setting label: {"setting", "steps", "curves" (n_seeds, n_steps), "run_ids"}} for the tracked metric.

    Runs of one setting may be evaluated at different steps (a run that stopped early, `train.stop_at`, or
    another schedule): the steps are their union, and each run reads, at every step, its latest evaluation at
    or before it, so a run that stopped keeps its last value and no run is left out.
    """
    sweep = read_json(Path(path) / "sweep.json")
    groups: dict[str, dict] = {}
    for entry, store in completed_runs(path):
        records = store.metrics()
        group = groups.setdefault(_setting_key(entry["setting"]), {"setting": entry["setting"], "runs": []})
        group["runs"].append((entry["run_id"], [r["step"] for r in records], [r.get(sweep["metric"], np.nan) for r in records]))
    for group in groups.values():
        steps = np.array(sorted({step for _, run_steps, _ in group["runs"] for step in run_steps}), float)
        curves = []
        for _, run_steps, values in group["runs"]:
            latest = np.searchsorted(np.asarray(run_steps, float), steps, side="right") - 1
            curves.append(np.where(latest >= 0, np.asarray(values, float)[np.maximum(latest, 0)], np.nan))
        group["steps"], group["curves"] = steps, np.array(curves, float)
        group["run_ids"] = [run_id for run_id, _, _ in group["runs"]]
        del group["runs"]
    return groups


def aggregate(path: Path, level: Optional[float] = None) -> dict:
    """Per-setting emergence points (threshold crossing at `level`, sigmoid midpoint) and the scaling fit.

    `level` defaults to the sweep's own (0.5 unless its recipe says otherwise).
    """
    path = Path(path)
    sweep = read_json(path / "sweep.json")
    level = level if level is not None else sweep.get("level", 0.5)
    groups = curves_by_setting(path)
    settings = []
    for label, group in groups.items():
        steps, curves = group["steps"], group["curves"]
        crossing = bootstrap(steps, curves, lambda s, v: threshold_crossing(s, v, level), n_boot=500)
        try:
            midpoint = bootstrap(steps, curves, sigmoid_midpoint, n_boot=200).__dict__
        except ValueError:
            midpoint = None
        settings.append({
            "setting": group["setting"], "label": label, "run_ids": group["run_ids"], "n_seeds": len(curves),
            "final_mean": float(np.nanmean(curves[:, -1])), "final_std": float(np.nanstd(curves[:, -1])),
            "crossing": crossing.__dict__, "sigmoid_midpoint": midpoint,
        })
    for s in settings:  # strict JSON: no NaN
        for key in ("crossing", "sigmoid_midpoint"):
            if s[key] is not None:
                s[key] = {k: (v if v == v else None) for k, v in s[key].items()}
    if sweep.get("read") == "peak":
        _add_peak_reads(path, sweep["metric"], settings)
    if sweep.get("fit"):
        _add_fit_reads(path, sweep["metric"], sweep["fit"], settings)
    summary = {"recipe": sweep["recipe"], "metric": sweep["metric"], "level": level, "read": sweep.get("read", "final"),
               "failed_runs": failed_runs(path),
               "runs_planned": len(sweep["runs"]), "runs_completed": sum(s["n_seeds"] for s in settings),
               "settings": settings, "scaling": _scaling_fit(sweep, groups, level)}
    atomic_write_json(path / "summary.json", summary)
    return summary


def _add_peak_reads(path: Path, metric: str, settings: list[dict], n_boot: int = 2000) -> None:
    """Each setting's runs read at their peak (`peak_read`): mean, a percentile bootstrap interval over runs, steps."""
    reads: dict[str, list] = {}
    for entry, store in completed_runs(path):
        evaluations = [e for e in store.metrics() if f"{metric}_a" in e]
        if not evaluations:
            raise ConfigError(f"run {entry['run_id']} logs no {metric}_a/_b (split-half scores): it cannot be read at its peak")
        reads.setdefault(_setting_key(entry["setting"]), []).append(peak_read(evaluations, metric))
    rng = np.random.default_rng(0)
    for s in settings:
        scores = np.array([r[0] for r in reads[s["label"]]])
        means = scores[rng.integers(len(scores), size=(n_boot, len(scores)))].mean(1)
        s["peak"] = {"mean": float(scores.mean()), "low": float(np.percentile(means, 2.5)), "high": float(np.percentile(means, 97.5)),
                     "scores": scores.tolist(), "median_step": float(np.median([r[1] for r in reads[s["label"]]])),
                     "at_last_evaluation": int(sum(r[2] for r in reads[s["label"]]))}


def _add_fit_reads(path: Path, metric: str, fit: dict, settings: list[dict], n_boot: int = 2000) -> None:
    """Each run read at its first evaluation where `fit["metric"]` reaches `fit["level"]` (e.g. the training set
    fitted: seen_exact >= 0.99); a run that never gets there is censored, its value None, and not averaged."""
    reads: dict[str, list] = {}
    for entry, store in completed_runs(path):
        evaluations = [e for e in store.metrics() if fit["metric"] in e and metric in e]
        hit = next((e for e in evaluations if e[fit["metric"]] >= fit["level"]), None)
        reads.setdefault(_setting_key(entry["setting"]), []).append((hit[metric], hit["step"]) if hit else (None, None))
    rng = np.random.default_rng(0)
    for s in settings:
        runs = reads.get(s["label"], [])
        values = np.array([v for v, _ in runs if v is not None], float)
        at_fit = {"metric": fit["metric"], "level": fit["level"], "reached": len(values), "runs": len(runs),
                  "values": [v for v, _ in runs], "steps": [step for _, step in runs], "mean": None, "low": None, "high": None}
        if len(values):
            means = values[rng.integers(len(values), size=(n_boot, len(values)))].mean(1)
            at_fit.update(mean=float(values.mean()), low=float(np.percentile(means, 2.5)), high=float(np.percentile(means, 97.5)))
        s["at_fit"] = at_fit


def _scaling_fit(sweep: dict, groups: dict, level: float, n_boot: int = 500) -> Optional[dict]:
    """Power law of the emergence step against the one numeric grid key, with a bootstrap interval over seeds."""
    numeric = [k for k, values in sweep["grid"].items() if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)]
    if len(sweep["grid"]) != 1 or len(numeric) != 1 or len(groups) < 3:
        return None
    key = numeric[0]
    xs, group_list = [], []
    for group in groups.values():
        xs.append(float(group["setting"][key]))
        group_list.append(group)

    def fit(curve_sets) -> float:
        # a setting that never reaches the level is censored at its last evaluation (a lower bound), never dropped
        points = [threshold_crossing(g["steps"], c.mean(0), level) for g, c in zip(group_list, curve_sets)]
        censored = [not np.isfinite(p) for p in points]
        points = [g["steps"][-1] if cens else p for g, p, cens in zip(group_list, points, censored)]
        if sum(not c for c in censored) < 3 or min(xs) <= 0:
            return float("nan")
        return censored_power_law(xs, points, censored).exponent

    exponent = fit([g["curves"] for g in group_list])
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(n_boot):
        resampled = [g["curves"][rng.integers(len(g["curves"]), size=len(g["curves"]))] for g in group_list]
        samples.append(fit(resampled))
    samples = np.array([s for s in samples if np.isfinite(s)])
    if not np.isfinite(exponent) or len(samples) == 0:
        return None  # fewer than 3 settings reached the level
    low, high = np.percentile(samples, [2.5, 97.5])
    n_censored = sum(not np.isfinite(threshold_crossing(g["steps"], g["curves"].mean(0), level)) for g in group_list)
    return {"key": key, "exponent": exponent, "low": float(low), "high": float(high), "censored_settings": n_censored}


# ---------------------------------------------------------------- the study-kind interface (caplab.studies)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    return resume(create_sweep(recipe, {}, None, overrides, None, root))


def resume(path: Path) -> list[str]:
    return run_and_report(path, run_sweep, summary_lines, "sweep")


def summary_lines(summary: dict) -> list[str]:
    """Per setting: the final metric, the step reaching the level, the fit and peak reads; failures; the scaling fit."""
    from caplab.studies.sweep_report import format_interval

    if "search" in summary:
        from caplab.studies.search import summary_lines as search_lines

        return search_lines(summary["search"], summary["metric"])
    if "optimizer_tuning" in summary:
        from caplab.studies.optimizer_tuning import summary_lines as tuning_lines

        return tuning_lines(summary["optimizer_tuning"])
    lines = []
    for s in summary["settings"]:
        lines.append(f"{s['label']:<40} final {summary['metric']} {s['final_mean']:.3f} +- {s['final_std']:.3f}   "
                     f"reaches {summary['level']} at step {format_interval(s['crossing'])}")
        if "at_fit" in s:
            af = s["at_fit"]
            where = f"{af['metric']} >= {af['level']:g}"
            value = f"{af['mean']:.3f} [{af['low']:.3f}, {af['high']:.3f}]" if af["mean"] is not None else "none"
            lines.append(f"{'':<40} where {where}: {value} ({af['reached']}/{af['runs']} runs got there)")
        if "peak" in s:
            pk = s["peak"]
            lines.append(f"{'':<40} at its peak {pk['mean']:.3f} [{pk['low']:.3f}, {pk['high']:.3f}] (median step {pk['median_step']:g})")
    for failed in summary.get("failed_runs", []):
        label = ", ".join(f"{k}={v}" for k, v in failed["setting"].items()) or "default"
        lines.append(f"{label:<40} seed {failed['seed']} failed: {failed['error']}")
    if summary["scaling"]:
        sc = summary["scaling"]
        lines.append(f"scaling: step ~ {sc['key']}^{sc['exponent']:.3f}  95% CI [{sc['low']:.3f}, {sc['high']:.3f}]")
    return lines
