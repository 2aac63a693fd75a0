"""The report of one run (or of runs overlaid): PNG figures of every logged curve, and report.html.

Figures are drawn with `caplab.runs.plots` and pages built with
`caplab.runs.html`, the helpers every study's report shares.
"""

from __future__ import annotations

import json

import re
from pathlib import Path

import numpy as np

from caplab.config import flatten_config
from caplab.errors import DamagedRun
from caplab.runs import html, plots
from caplab.runs.store import RunStore, read_or_note
from caplab.tasks.base import DATA_UNITS

NOT_CAPABILITIES = {"step", *DATA_UNITS, "flops", "lr", "elapsed_s", "eval_s", "train_loss", "eval_loss"}


class _Readable:
    """What a report can read of a run: each damaged file is noted in `damaged` and read as empty."""

    def __init__(self, store: RunStore, damaged: list[str]) -> None:
        self.path = store.path
        self._info = read_or_note(store.info, {"run_id": store.path.name, "recipe": "?", "status": "?"}, damaged)
        self._metrics = read_or_note(store.metrics, [], damaged)
        self._config = read_or_note(store.config_dict, {}, damaged)
        self._summary = read_or_note(store.summary, {}, damaged)

    def summary(self) -> dict:
        return self._summary

    def info(self) -> dict:
        return self._info

    def metrics(self) -> list[dict]:
        return self._metrics

    def config_dict(self) -> dict:
        return self._config


def _labels(stores: list[RunStore]) -> list[str]:
    """Recipe name, the config values that differ among the overlaid runs (at most two, e.g. task.format=direct),
    and the run id's random suffix: short, and unique among overlaid runs."""
    flat = [flatten_config(s.config_dict()) if (s.path / "config.json").is_file() else {} for s in stores]
    differing = [k for k in sorted(set().union(*flat)) if k != "recipe" and len({repr(f.get(k)) for f in flat}) > 1]
    labels = []
    for store, config in zip(stores, flat):
        info = store.info()
        shown = " ".join(f"{k}={config.get(k)}" for k in differing[:2])
        labels.append(f"{info['recipe']}{' ' + shown if shown and len(stores) > 1 else ''} ({info['run_id'][-4:]})")
    return labels



def make_figures(stores: list[RunStore], out_dir: Path) -> list[Path]:
    """Write the PNG figures for `stores` into `out_dir/figures`; return their paths."""
    figures = Path(out_dir) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = list(zip(_labels(stores), [s.metrics() for s in stores]))
    paths = []

    fig, ax = plots.step_axes("loss", "the task's objective (held-out and training)")
    for i, (label, records) in enumerate(runs):
        for key, style in (("train_loss", ":"), ("eval_loss", "-")):
            x, y = plots.series(records, key)
            if x:
                ax.plot(x, y, style, color=f"C{i}", marker=".", label=f"{label} {key}")
    ax.set_yscale("log")
    plots.legend(ax, fontsize=7)
    paths.append(figures / "loss.png")
    plots.save(fig, paths[-1])

    capabilities = sorted({k for _, records in runs for r in records for k in r if k not in NOT_CAPABILITIES})
    families = metric_families(capabilities)
    for family, members in families.items():  # exact_k1, exact_k2, ...: one figure, one line per member and run
        values = [v for _, records in runs for key in members for v in plots.series(records, key)[1]]
        fig, ax = plots.step_axes(f"{family}*", "fraction" if all(0.0 <= v <= 1.0 for v in values) else family)
        for i, (label, records) in enumerate(runs):
            for j, key in enumerate(members):
                x, y = plots.series(records, key)
                ax.plot(x, y, marker=".", color=f"C{j}", ls=("-", "--", ":", "-.")[i % 4],
                        label=f"{key}" if len(runs) == 1 else f"{label} {key}")
        plots.legend(ax, fontsize=7)
        paths.append(figures / f"{plots.slug(family)}family.png")
        plots.save(fig, paths[-1])
    for key in (k for k in capabilities if not any(k in members for members in families.values())):
        values = [v for _, records in runs for v in plots.series(records, key)[1]]
        is_fraction = all(0.0 <= v <= 1.0 for v in values)
        fig, ax = plots.step_axes(key, "fraction" if is_fraction else key)
        for label, records in runs:
            x, y = plots.series(records, key)
            ax.plot(x, y, marker=".", label=label)
        if is_fraction:
            ax.set_ylim(-0.03, 1.03)
        plots.legend(ax, fontsize=7)
        paths.append(figures / f"{plots.slug(key)}.png")
        plots.save(fig, paths[-1])

    phases = _phase_metrics(stores[0])
    if len(stores) == 1 and phases and phase_figure(runs[0][1], phases, figures / "phases.png"):
        paths.append(figures / "phases.png")
    same_task = len({s.config_dict().get("task", {}).get("name") for s in stores}) == 1
    if len(stores) > 1 and same_task and phases and seed_phase_figure([r for _, r in runs], phases, figures / "phases.png"):
        paths.append(figures / "phases.png")

    if any("unseen_exact" in r for _, records in runs for r in records):
        fig, ax = plots.step_axes("seen vs unseen compositions (exact match)", "exact-match accuracy")
        for i, (label, records) in enumerate(runs):
            color = f"C{i}"
            for key, style in (("seen_exact", "--"), ("unseen_exact", "-")):
                x, y = plots.series(records, key)
                ax.plot(x, y, style, color=color, marker=".", label=f"{label} {key.split('_')[0]}")
        ax.set_ylim(-0.03, 1.03)
        plots.legend(ax, fontsize=7)
        paths.append(figures / "seen_vs_unseen.png")
        plots.save(fig, paths[-1])

    if any("ri_accuracy" in r for _, records in runs for r in records):  # a cue task (caplab.tasks.cues)
        fig, ax = plots.step_axes("cue reliance: accuracy on the counterfactual sets", "accuracy")
        for i, (label, records) in enumerate(runs):
            for key, style in (("nc_accuracy", "-"), ("c_accuracy", "--"), ("rc_accuracy", "-."), ("ri_accuracy", ":")):
                x, y = plots.series(records, key)
                ax.plot(x, y, style, color=f"C{i}", marker=".", label=key.split("_")[0] if len(runs) == 1 else f"{label} {key.split('_')[0]}")
        chances = {_ri_chance(store) for store in stores} - {None}
        for chance in chances:
            ax.axhline(chance, color="grey", lw=1, ls=":")
        if chances:
            ax.text(0.99, min(chances), "ri of a cue-blind model", transform=ax.get_yaxis_transform(), ha="right",
                    va="bottom", fontsize=7, color="grey")
        ax.set_ylim(-0.03, 1.03)
        plots.legend(ax, fontsize=7)
        paths.append(figures / "cue_reliance.png")
        plots.save(fig, paths[-1])
    return paths


def _ri_chance(store) -> "float | None":
    """The ri accuracy of a model that ignores the cue, from the run's task.json (None if it has none)."""
    path = store.path / "task.json"
    try:
        return json.loads(path.read_text())["cue"]["ri_chance"] if path.is_file() else None
    except (KeyError, TypeError, ValueError):
        return None


def metric_families(keys: list[str]) -> dict[str, list[str]]:
    """Metrics that differ only in a trailing number (exact_k1, exact_k2, exact_k4), grouped when there are at
    least two: {"exact_k": ["exact_k1", "exact_k2", "exact_k4"]}, members in numeric order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        match = re.fullmatch(r"(.*\D)(\d+)", key)
        if match:
            groups.setdefault(match.group(1), []).append((int(match.group(2)), key))
    return {family: [k for _, k in sorted(members)] for family, members in groups.items() if len(members) >= 2}


def _phase_metrics(store: RunStore) -> tuple[str, ...]:
    from caplab.tasks import TASKS

    task = store.config_dict().get("task", {}).get("name")
    return TASKS[task].phase_metrics if task in TASKS else ()


def phase_figure(records: list[dict], metrics: tuple[str, ...], path: Path) -> list[tuple[str, float]]:
    """One run's phase curves on one axis, with each emergence point (sigmoid midpoint) marked; returns the order."""
    from caplab.analysis.emergence import emergence_order

    curves = {k: plots.series(records, k) for k in metrics if sum(step > 0 for step in plots.series(records, k)[0]) >= 4}
    if not curves:  # too few evaluations for a sigmoid fit
        return []
    order = emergence_order(curves)
    fig, ax = plots.step_axes("phases of learning (dashed: emergence point, sigmoid midpoint)", "fraction")
    for i, (key, point) in enumerate(order):
        ax.plot(*curves[key], marker=".", color=f"C{i}", label=key if not np.isfinite(point) else f"{key} ({point:.0f})")
        if np.isfinite(point):
            ax.axvline(point, color=f"C{i}", ls="--", lw=0.8)
    ax.set_ylim(-0.03, 1.03)
    plots.legend(ax, fontsize=7, loc="upper left")
    plots.save(fig, path)
    return order


def seed_phases(runs: list[list[dict]], metrics: tuple[str, ...]) -> dict[str, list[float]]:
    """Per phase metric, each run's emergence point (sigmoid midpoint; nan where it never emerges)."""
    from caplab.analysis.emergence import sigmoid_midpoint

    points: dict[str, list[float]] = {}
    for key in metrics:
        series = [plots.series(records, key) for records in runs]
        if all(sum(step > 0 for step in x) >= 4 for x, _ in series):
            points[key] = [sigmoid_midpoint(*xy) for xy in series]
    return points


def seed_phase_figure(runs: list[list[dict]], metrics: tuple[str, ...], path: Path) -> dict[str, list[float]]:
    """Several runs (seeds) of one task: each phase curve's mean with its min-max band, the median emergence point dashed.

    Returns `seed_phases` (empty, and no figure, when the runs have too few evaluations).
    """
    points = seed_phases(runs, metrics)
    if not points:
        return {}
    medians = {k: float(np.median([p for p in v if np.isfinite(p)])) if np.isfinite(v).any() else float("inf")
               for k, v in points.items()}
    order = sorted(points, key=medians.get)  # never-emerging curves last
    fig, ax = plots.step_axes(f"phases, {len(runs)} runs (mean, min-max band; dashed: median midpoint)", "fraction")
    for i, key in enumerate(order):
        steps = plots.series(runs[0], key)[0]
        curves = np.array([plots.series(records, key)[1] for records in runs if plots.series(records, key)[0] == steps], float)
        emerged = int(np.isfinite(points[key]).sum())
        label = f"{key} ({medians[key]:.0f}, {emerged}/{len(runs)} runs)" if emerged else f"{key} (never)"
        ax.plot(steps, curves.mean(0), marker=".", color=f"C{i}", label=label)
        ax.fill_between(steps, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2, lw=0)
        if emerged:
            ax.axvline(medians[key], color=f"C{i}", ls="--", lw=0.8)
    ax.set_ylim(-0.03, 1.03)
    plots.legend(ax, fontsize=7, loc="upper left")
    plots.save(fig, path)
    return points


BOOKKEEPING = {"lr", "elapsed_s", "eval_s", "nonfinite"}  # logged for the record, not results: left out of the table


def final_metrics_table(stores: list) -> str:
    """The runs side by side: one column per run (its label and status), one row per metric of the last
    evaluation; the step and the task's headline numbers (its summary) first, then the rest by name."""
    finals = [(records[-1] if records else {}) for records in (s.metrics() for s in stores)]
    headline = [k for s in stores for k in s.summary() if k not in ("step", *DATA_UNITS, "flops")]
    rest = sorted({k for f in finals for k in f} - set(headline) - BOOKKEEPING - {"step"})
    rows = [k for k in dict.fromkeys(["step", *headline, *rest]) if any(k in f for f in finals)]
    head = "".join(f"<th>{html.escape(label)}<br><small>{html.escape(s.info().get('status', '?'))}</small></th>"
                   for label, s in zip(_labels(stores), stores))
    cells = ["<table><tr><th>metric</th>" + head + "</tr>"]
    for key in rows:
        values = "".join(f"<td style='text-align:right'>{readable(f.get(key))}</td>" for f in finals)
        cells.append(f"<tr><td>{html.escape(key)}</td>{values}</tr>")
    return "".join(cells) + "</table>"


def readable(value) -> str:
    """A table cell: 1,234,567 for counts, 0.8125 for fractions, 3.2e-05 / 1.5e+12 at the extremes, '' if absent."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return html.escape(str(value))
    if abs(value) >= 1e9 or (value != 0 and abs(value) < 1e-3):  # FLOPs, tiny rates
        return f"{value:.3g}"
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):  # steps, tokens
        return f"{value:,.0f}"
    return f"{value:.4f}"


def write_report(stores: list[RunStore], out_dir: Path) -> Path:
    """Figures plus `out_dir/report.html` embedding them with configs and final numbers.

    A damaged run file leaves its part out; the page is written, then DamagedRun names every damaged file.
    """
    out_dir = Path(out_dir)
    damaged: list[str] = []
    stores = [_Readable(store, damaged) for store in stores]
    page = _write_report(stores, out_dir)
    if damaged:
        raise DamagedRun(f"report written to {page} without what could not be read: {'; '.join(damaged)}")
    return page


def _write_report(stores: list[_Readable], out_dir: Path) -> Path:
    paths = make_figures(stores, out_dir)
    body = [f"<h1>caplab report: {html.escape(', '.join(s.path.name for s in stores))}</h1>",
            "<h2>Final metrics</h2>", final_metrics_table(stores), "<h2>Figures</h2>"]
    body += html.images([p.name for p in paths])
    body += [html.json_block(f"Config of {store.path.name}", store.config_dict()) for store in stores]
    return html.write_page(out_dir / "report.html", "caplab report", body)
