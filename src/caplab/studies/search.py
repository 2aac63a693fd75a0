"""Searched sweeps: Optuna proposes the settings of continuous knobs (a learning rate, a density p).

    caplab sweep RECIPE --search optuna --space train.lr=log:1e-4:1e-2 --trials 16 --seeds 2
    (or a recipe's `sweep: {search: optuna, space: {train.lr: [log, 1e-4, 1e-2]}, trials: 16}`)

A space entry is KEY=KIND:LOW:HIGH with KIND `float`, `log` (float on a log
scale) or `int`, or KEY=choice:A,B,C. Each trial is one setting of a sweep,
trained on `seeds` seeds (one run each, through the sweep's launcher, so
`--workers N` trains N trials at once); its value is the mean over seeds of
the sweep's metric at each run's last evaluation, minimised when the metric
is a loss and maximised otherwise (`direction`). A trial whose runs all
diverged is told to Optuna as failed.

The Optuna study lives beside the sweep (`<sweep>/optuna.sqlite`, study name
= the sweep's id) and every trial's runs are reserved in `sweep.json` before
they train, so `caplab sweep --resume` finishes the trials that were
running, tells Optuna their values and then asks for the rest. Optuna's TPE
sampler is seeded (`sampler_seed`, default 0) and uses the constant liar for
trials asked together.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from caplab.errors import ConfigError

ENGINES = ("optuna",)
KINDS = ("float", "log", "int", "choice")


def parse_space(items: list[str]) -> dict[str, list]:
    """`["train.lr=log:1e-4:1e-2"]` -> `{"train.lr": ["log", 0.0001, 0.01]}`; `KEY=choice:a,b` -> `["choice", a, b]`."""
    space = {}
    for item in items:
        key, sep, raw = item.partition("=")
        kind, _, rest = raw.partition(":")
        if not sep or not key or kind not in KINDS or not rest:
            raise ConfigError(f"bad search space {item!r}; expected KEY=float|log|int:LOW:HIGH or KEY=choice:A,B,...")
        values = [_scalar(v) for v in (rest.split(",") if kind == "choice" else rest.split(":"))]
        space[key] = [kind, *values]
    return space


def _scalar(text: str):
    """A number where `text` is one (1e-3 too, which YAML reads as a string), else YAML's reading."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def check_space(space: dict) -> None:
    """ConfigError for a malformed space (its keys are checked by loading a config of each trial)."""
    if not isinstance(space, dict) or not space:
        raise ConfigError("a searched sweep needs a space: --space KEY=log:LOW:HIGH (or sweep.space in the recipe)")
    for key, spec in space.items():
        if not isinstance(spec, list) or not spec or spec[0] not in KINDS:
            raise ConfigError(f"bad search space for {key!r}: {spec!r}; expected [float|log|int, LOW, HIGH] or [choice, A, B, ...]")
        kind, values = spec[0], spec[1:]
        if kind == "choice":
            if len(values) < 2:
                raise ConfigError(f"search space {key!r}: choice needs at least two values")
            continue
        numeric = len(values) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not numeric or not values[0] < values[1] or not all(math.isfinite(v) for v in values):
            raise ConfigError(f"search space {key!r}: expected LOW < HIGH, two finite numbers, got {values}")
        if kind == "log" and values[0] <= 0:
            raise ConfigError(f"search space {key!r}: a log scale needs LOW > 0, got {values[0]}")
        if kind == "int" and not all(float(v).is_integer() for v in values):
            raise ConfigError(f"search space {key!r}: int bounds must be whole numbers, got {values}")


def check_search(search: dict) -> None:
    """ConfigError unless `search` ({engine, space, trials, direction, sampler_seed}) can run here."""
    if search["engine"] not in ENGINES:
        raise ConfigError(f"bad value {search['engine']!r} for the sweep search; valid: {', '.join(ENGINES)}")
    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("--search optuna needs optuna: pip install 'caplab[scale]'")
    check_space(search["space"])
    if not isinstance(search["trials"], int) or search["trials"] < 1:
        raise ConfigError(f"bad value {search['trials']!r} for the search trials; expected a whole number >= 1")
    if search["direction"] not in (None, "minimize", "maximize"):  # None: chosen from the metric
        raise ConfigError(f"bad value {search['direction']!r} for the search direction; valid: minimize, maximize")


def corner_settings(space: dict) -> list[dict]:
    """Settings to validate before a search starts: the low and the high corner of the space, and every value
    of each choice (the other knobs at their low end)."""
    low = {key: spec[1] for key, spec in space.items()}
    settings = [low, {key: spec[-1] for key, spec in space.items()}]
    for key, (kind, *values) in space.items():
        if kind == "choice":
            settings += [{**low, key: value} for value in values[1:-1]]
    return settings


def _distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    made = {}
    for key, (kind, *values) in space.items():
        if kind == "choice":
            made[key] = CategoricalDistribution(values)
        elif kind == "int":
            made[key] = IntDistribution(int(values[0]), int(values[1]))
        else:
            made[key] = FloatDistribution(float(values[0]), float(values[1]), log=kind == "log")
    return made


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's per-trial INFO lines off while caplab prints its own (its verbosity restored after)."""
    import optuna

    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def open_study(path: Path, search: dict):
    """The sweep's Optuna study (created on first use) in `<path>/optuna.sqlite`."""
    import optuna

    storage = optuna.storages.RDBStorage(f"sqlite:///{Path(path).resolve() / 'optuna.sqlite'}")
    study = optuna.create_study(storage=storage, study_name=Path(path).name, direction=search["direction"],
                                load_if_exists=True)
    # the sampler's seed moves with the study's size: a resumed search does not replay the proposals it began with
    seed = int(np.random.SeedSequence([search.get("sampler_seed", 0), len(study.get_trials(deepcopy=False))]).generate_state(1)[0])
    study.sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    return study


def trial_value(values: list[Optional[float]]) -> Optional[float]:
    """A trial's value: the mean of its runs' reads; None (the trial failed) when any seed has none (it diverged,
    or its config was refused): a setting that fails on one seed is not scored on its lucky ones."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return float(np.mean(values))


def run_search(path: Path, sweep: dict, train_trials) -> None:
    """Ask, train and tell until the sweep has `trials` finished trials.

    `train_trials(numbers)` (the sweep's) adds each trial's runs to `sweep.json`, trains them through the
    launcher and returns {trial number: [each run's final metric, None where it has none]}.
    """
    search = sweep["search"]
    with _quiet_optuna():
        study = open_study(path, search)
        # trials an interrupted sweep asked for but never told: those with runs in sweep.json resume them, those
        # asked just before the interruption train from the start; then Optuna hears their values
        recorded = {entry["trial"] for entry in sweep["runs"]}
        running = {t.number: t.params for t in study.get_trials(deepcopy=False) if t.state.name == "RUNNING"}
        if any(n in recorded for n in running):
            _tell(study, train_trials(sorted(n for n in running if n in recorded)))
        if any(n not in recorded for n in running):
            _tell(study, train_trials({n: params for n, params in running.items() if n not in recorded}))
        distributions = _distributions(search["space"])
        while True:
            done = sum(t.state.name in ("COMPLETE", "FAIL") for t in study.get_trials(deepcopy=False))
            batch = min(search["trials"] - done, max(1, int(sweep.get("workers", 1))))
            if batch <= 0:
                break
            asked = [study.ask(distributions) for _ in range(batch)]
            _tell(study, train_trials({t.number: t.params for t in asked}))


def _tell(study, values: dict[int, list]) -> None:
    from optuna.trial import TrialState

    for number, reads in values.items():
        value = trial_value(reads)
        if value is None:
            study.tell(number, state=TrialState.FAIL)
        else:
            study.tell(number, value)


def search_summary(path: Path, search: dict) -> dict:
    """Every trial (number, state, params, value) in order, and the best one."""
    with _quiet_optuna():
        study = open_study(path, search)
        trials = [{"trial": t.number, "state": t.state.name, "params": t.params, "value": t.value}
                  for t in study.get_trials(deepcopy=False)]
        complete = [t for t in trials if t["state"] == "COMPLETE"]
        best = None
        if complete:
            pick = min if search["direction"] == "minimize" else max
            best = pick(complete, key=lambda t: t["value"])
    return {"engine": search["engine"], "direction": search["direction"], "space": search["space"],
            "trials": trials, "best": best, "storage": "optuna.sqlite", "study_name": Path(path).name}


def summary_lines(search: dict, metric: str) -> list[str]:
    lines = []
    for t in search["trials"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        value = f"{t['value']:.4f}" if t["value"] is not None else t["state"].lower()
        lines.append(f"trial {t['trial']:>3}  {params:<50} {metric} {value}")
    if search["best"]:
        best = search["best"]
        lines.append(f"best: trial {best['trial']} {best['params']} {metric} {best['value']:.4f} ({search['direction']})")
    return lines
