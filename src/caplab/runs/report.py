"""Figures and an HTML report for one run or several runs overlaid.

Figures (PNG, log-scaled step axis): loss, one per capability metric, and
seen vs unseen exact match. `report.html` embeds them beside the config and
the final numbers.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from caplab.runs.store import RunStore, atomic_write_bytes  # noqa: E402
from caplab.tasks.base import DATA_UNITS  # noqa: E402

NOT_CAPABILITIES = {"step", *DATA_UNITS, "flops", "lr", "elapsed_s", "eval_s", "train_loss", "eval_loss"}


def _label(store: RunStore) -> str:
    """Recipe name plus the run id's random suffix: short, and unique among overlaid runs."""
    info = store.info()
    return f"{info['recipe']} ({info['run_id'][-4:]})"


def _series(records: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in records if key in r and r[key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _axes(title: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.set_xscale("symlog", linthresh=1)  # log steps, with step 0 still on the axis
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def make_figures(stores: list[RunStore], out_dir: Path) -> list[Path]:
    """Write the PNG figures for `stores` into `out_dir/figures`; return their paths."""
    figures = Path(out_dir) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    runs = [(_label(s), s.metrics()) for s in stores]
    paths = []

    fig, ax = _axes("loss", "cross-entropy (nats/token)")
    for i, (label, records) in enumerate(runs):
        for key, style in (("train_loss", ":"), ("eval_loss", "-")):
            x, y = _series(records, key)
            if x:
                ax.plot(x, y, style, color=f"C{i}", marker=".", label=f"{label} {key}")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    paths.append(figures / "loss.png")
    _save(fig, paths[-1])

    capabilities = sorted({k for _, records in runs for r in records for k in r if k not in NOT_CAPABILITIES})
    for key in capabilities:
        values = [v for _, records in runs for v in _series(records, key)[1]]
        is_fraction = all(0.0 <= v <= 1.0 for v in values)
        fig, ax = _axes(key, "fraction" if is_fraction else key)
        for label, records in runs:
            x, y = _series(records, key)
            ax.plot(x, y, marker=".", label=label)
        if is_fraction:
            ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        paths.append(figures / f"{_slug(key)}.png")
        _save(fig, paths[-1])

    phases = _phase_metrics(stores[0])
    if len(stores) == 1 and phases and phase_figure(runs[0][1], phases, figures / "phases.png"):
        paths.append(figures / "phases.png")
    same_task = len({s.config_dict().get("task", {}).get("name") for s in stores}) == 1
    if len(stores) > 1 and same_task and phases and seed_phase_figure([r for _, r in runs], phases, figures / "phases.png"):
        paths.append(figures / "phases.png")

    if any("unseen_exact" in r for _, records in runs for r in records):
        fig, ax = _axes("seen vs unseen compositions (exact match)", "exact-match accuracy")
        for i, (label, records) in enumerate(runs):
            color = f"C{i}"
            for key, style in (("seen_exact", "--"), ("unseen_exact", "-")):
                x, y = _series(records, key)
                ax.plot(x, y, style, color=color, marker=".", label=f"{label} {key.split('_')[0]}")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=7)
        paths.append(figures / "seen_vs_unseen.png")
        _save(fig, paths[-1])
    return paths


def _phase_metrics(store: RunStore) -> tuple[str, ...]:
    from caplab.tasks import TASKS

    task = store.config_dict().get("task", {}).get("name")
    return TASKS[task].phase_metrics if task in TASKS else ()


def phase_figure(records: list[dict], metrics: tuple[str, ...], path: Path) -> list[tuple[str, float]]:
    """One run's phase curves on one axis, with each emergence point (sigmoid midpoint) marked; returns the order."""
    from caplab.analysis.emergence import emergence_order

    curves = {k: _series(records, k) for k in metrics if sum(step > 0 for step in _series(records, k)[0]) >= 4}
    if not curves:  # too few evaluations for a sigmoid fit
        return []
    order = emergence_order(curves)
    fig, ax = _axes("phases of learning (dashed: emergence point, sigmoid midpoint)", "fraction")
    for i, (key, point) in enumerate(order):
        ax.plot(*curves[key], marker=".", color=f"C{i}", label=key if not np.isfinite(point) else f"{key} ({point:.0f})")
        if np.isfinite(point):
            ax.axvline(point, color=f"C{i}", ls="--", lw=0.8)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    return order


def seed_phases(runs: list[list[dict]], metrics: tuple[str, ...]) -> dict[str, list[float]]:
    """Per phase metric, each run's emergence point (sigmoid midpoint; nan where it never emerges)."""
    from caplab.analysis.emergence import sigmoid_midpoint

    points: dict[str, list[float]] = {}
    for key in metrics:
        series = [_series(records, key) for records in runs]
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
    fig, ax = _axes(f"phases, {len(runs)} runs (mean, min-max band; dashed: median midpoint)", "fraction")
    for i, key in enumerate(order):
        steps = _series(runs[0], key)[0]
        curves = np.array([_series(records, key)[1] for records in runs if _series(records, key)[0] == steps], float)
        emerged = int(np.isfinite(points[key]).sum())
        label = f"{key} ({medians[key]:.0f}, {emerged}/{len(runs)} runs)" if emerged else f"{key} (never)"
        ax.plot(steps, curves.mean(0), marker=".", color=f"C{i}", label=label)
        ax.fill_between(steps, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.2, lw=0)
        if emerged:
            ax.axvline(medians[key], color=f"C{i}", ls="--", lw=0.8)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path)
    return points


def write_report(stores: list[RunStore], out_dir: Path) -> Path:
    """Figures plus `out_dir/report.html` embedding them with configs and final numbers."""
    out_dir = Path(out_dir)
    paths = make_figures(stores, out_dir)
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>caplab report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px;overflow:auto}</style>",
             "</head><body>", f"<h1>caplab report: {html.escape(', '.join(s.path.name for s in stores))}</h1>"]
    parts.append("<h2>Final metrics</h2><table><tr><th>run</th><th>status</th><th>metric</th><th>value</th></tr>")
    for store in stores:
        records = store.metrics()
        final = records[-1] if records else {}
        for key, value in final.items():
            if key not in ("step", *DATA_UNITS, "lr", "elapsed_s"):
                parts.append(f"<tr><td>{html.escape(store.path.name)}</td><td>{html.escape(store.info()['status'])}</td>"
                             f"<td>{html.escape(key)}</td><td>{value:.4f}</td></tr>")
    parts.append("</table><h2>Figures</h2>")
    parts += [f"<img src='figures/{p.name}' alt='{html.escape(p.stem)}'>" for p in paths]
    for store in stores:
        parts.append(f"<h2>Config of {html.escape(store.path.name)}</h2><pre>{html.escape(json.dumps(store.config_dict(), indent=2))}</pre>")
    parts.append("</body></html>")
    report = out_dir / "report.html"
    atomic_write_bytes(report, "\n".join(parts).encode())
    return report


def write_sweep_report(path: Path, summary: dict) -> Path:
    """Figures (curves per setting, emergence points and scaling fit) and report.html for a sweep."""
    from caplab.runs.sweep import curves_by_setting

    path = Path(path)
    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metric = summary["metric"]
    groups = curves_by_setting(path)

    fig, ax = _axes(f"{metric}: mean over seeds per setting (band: min-max)", metric)
    for i, (label, group) in enumerate(groups.items()):
        steps, curves = group["steps"], group["curves"]
        ax.plot(steps, curves.mean(0), color=f"C{i}", marker=".", label=f"{label} (n={len(curves)})")
        ax.fill_between(steps, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.15)
    ax.axhline(summary["level"], color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    names = ["curves.png"]
    _save(fig, figures / names[-1])

    scaling = summary.get("scaling")
    if scaling:
        key = scaling["key"]
        points = [(s["setting"][key], s["crossing"]) for s in summary["settings"] if s["crossing"]["value"] is not None]
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        xs = [p[0] for p in points]
        ys = [p[1]["value"] for p in points]
        yerr = [[y - p[1]["low"] for y, p in zip(ys, points)], [p[1]["high"] - y for y, p in zip(ys, points)]]
        ax.errorbar(xs, ys, yerr=yerr, fmt="o", capsize=3, label="measured (95% bootstrap over seeds)")
        if len(xs) >= 2:
            from caplab.analysis.percolation import fit_power_law

            exponent, prefactor = fit_power_law(xs, ys)
            grid = np.geomspace(min(xs), max(xs), 50)
            ax.plot(grid, prefactor * grid**exponent, "-",
                    label=f"fit: exponent {scaling['exponent']:.2f} [{scaling['low']:.2f}, {scaling['high']:.2f}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"step where {metric} reaches {summary['level']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        names.append("emergence_scaling.png")
        _save(fig, figures / names[-1])

    rows = []
    for s in summary["settings"]:
        c = s["crossing"]
        peak = f"; at its peak {s['peak']['mean']:.3f} [{s['peak']['low']:.3f}, {s['peak']['high']:.3f}]" if "peak" in s else ""
        rows.append(f"<tr><td>{html.escape(s['label'])}</td><td>{s['n_seeds']}</td><td>{s['final_mean']:.3f} +- {s['final_std']:.3f}{peak}</td>"
                    f"<td>{format_interval(c)}</td></tr>")
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>caplab sweep</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px}</style>",
             f"</head><body><h1>caplab sweep {html.escape(path.name)}</h1>",
             f"<p>recipe {html.escape(summary['recipe'])}; metric {html.escape(metric)}; "
             f"{summary['runs_completed']} of {summary['runs_planned']} runs completed</p>",
             f"<table><tr><th>setting</th><th>seeds</th><th>final {html.escape(metric)}</th>"
             f"<th>step reaching {summary['level']} [95% CI]</th></tr>", *rows, "</table>"]
    if scaling:
        parts.append(f"<p>scaling: step ~ {html.escape(scaling['key'])}^{scaling['exponent']:.3f} "
                     f"(95% CI [{scaling['low']:.3f}, {scaling['high']:.3f}])</p>")
    parts += [f"<img src='figures/{n}' alt='{n}'>" for n in names]
    parts.append(f"<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre></body></html>")
    report = path / "report.html"
    atomic_write_bytes(report, "\n".join(parts).encode())
    return report


def format_interval(estimate: dict) -> str:
    """'value [low, high]' of a bootstrap estimate, or 'never' when the level was not reached."""
    if estimate["value"] is None:
        return "never"
    low, high = (f"{estimate[k]:.0f}" if estimate[k] is not None else "?" for k in ("low", "high"))
    return f"{estimate['value']:.0f} [{low}, {high}]"


def _finish_log_figure(fig, ax, path: Path, xlabel: str, ylabel: str, log_y: bool = False) -> None:
    """Log x (and y) axes, labels, grid and legend, then save."""
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)


def percolation_figures(figures: Path, n_entities: int, summary: dict, curves: dict) -> list[str]:
    """Component fractions against density and against observed pairs, and the critical-pairs scaling."""
    from caplab.analysis.percolation import fit_power_law

    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    names = ["percolation_density.png", "percolation_pairs.png", "percolation_scaling.png"]
    p_c = summary["critical_density_predicted"]
    curve = curves["by_density"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(curve.control / p_c, curve.largest, marker=".", label="largest component")
    ax.plot(curve.control / p_c, curve.second, marker=".", label="second largest")
    ax.axvline(1.0, color="grey", ls="--", lw=0.8, label="predicted p_c = 1/sqrt(|E_c||K_c|)")
    ax.axvline(summary["critical_density_measured"] / p_c, color="C3", lw=0.8, label="measured (second-largest peak)")
    ax.set_title(f"|E_c| = {n_entities}, |K_c| = {summary['properties_per_class']}")
    _finish_log_figure(fig, ax, figures / names[0], "edge density / predicted p_c", "fraction of nodes")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for i, (size, curve) in enumerate(sorted(curves["by_pairs"].items())):
        ax.plot(curve.control / np.sqrt(n_entities * size), curve.largest, color=f"C{i}", label=f"|K_c| = {size}")
    ax.axvline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_title("curves collapse when pairs are scaled by sqrt(|E_c||K_c|)")
    _finish_log_figure(fig, ax, figures / names[1], "observed pairs / sqrt(|E_c| |K_c|)", "largest component fraction")

    points = summary["scaling_points"]
    xs = np.array([p["properties_per_class"] for p in points], float)
    ys = np.array([p["critical_pairs_measured"] for p in points], float)
    exponent, prefactor = fit_power_law(xs, ys)
    low, high = summary["scaling_interval"]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(xs, ys, "o", label="measured critical pairs")
    ax.plot(xs, np.sqrt(n_entities * xs), "--", color="grey", label="predicted sqrt(|E_c||K_c|) (slope 1/2)")
    ax.plot(xs, prefactor * xs**exponent, "-", label=f"fit: slope {exponent:.2f} [{low:.2f}, {high:.2f}]")
    _finish_log_figure(fig, ax, figures / names[2], "|K_c| (values per class)", "observed pairs at the transition", log_y=True)
    return names


def data_percolation_figures(figures: Path, summary: dict) -> list[str]:
    """Class knowledge against D / sqrt(|E_c||K_c|) per world size (with the graph's reachable share), and D* vs |E_c||K_c|."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    names = ["data_percolation_curves.png", "data_percolation_scaling.png"]
    fig, ax = plt.subplots(figsize=(7.0, 4.4), dpi=110)
    for i, (size, graph) in enumerate(zip(summary["sizes"], summary["graph"])):
        E, K = size["entities"], size["values"]
        units = [u for u in summary["units"] if (u["entities"], u["values"]) == (E, K)]
        scale = np.sqrt(E * K)
        D = np.array(units[0]["pairs"])
        scores = np.array([u["score"] for u in units if len(u["score"]) == len(D)])
        mean = scores.mean(0)
        half = 1.96 * scores.std(0, ddof=1) / np.sqrt(len(scores)) if len(scores) > 1 else np.zeros_like(mean)
        ax.errorbar(D / scale, mean, yerr=half, color=f"C{i}", marker="o", ms=3, capsize=2,
                    label=f"|E_c| {E}, |K_c| {K}, p {size['density']:g} (n={len(scores)})")
        ax.plot(np.array(graph["pairs"]) / scale, graph["reachable"], color=f"C{i}", ls=":", lw=1)
    ax.axhline(summary["level"], color="grey", lw=0.8, ls="--")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_title(f"network: class-specific order parameter, {summary.get('read', 'final')} read (dots, 95% CI); "
                 "graph: unseen pairs connected (dotted)", fontsize=8)
    ax.legend(fontsize=6)
    _finish_log_figure(fig, ax, figures / names[0], "distinct observed pairs per class D / sqrt(|E_c| |K_c|)",
                       "reachable_pairs_specific / reachable share")

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for kind, rows, marker in (("network", summary["units"], "o"), ("graph", summary["graph"], "s")):
        x = np.array([r["entities"] * r["values"] for r in rows], float)
        y = np.array([r["threshold"] for r in rows], float)
        cens = np.array([r["censored"] for r in rows], bool)
        color = "C0" if kind == "network" else "C1"
        jitter = np.exp(np.random.default_rng(0).normal(0, 0.03, len(x))) if kind == "network" else 1.0
        ax.plot((x * jitter)[~cens], y[~cens], marker, color=color, alpha=0.6, ms=4, ls="none", label=f"{kind} D*")
        if cens.any():
            ax.plot((x * jitter)[cens], y[cens], "^", color=color, alpha=0.6, ms=5, ls="none", label=f"{kind}: never reached (lower bound)")
    grid = np.geomspace(min(r["entities"] * r["values"] for r in summary["graph"]),
                        max(r["entities"] * r["values"] for r in summary["graph"]), 20)
    ax.plot(grid, np.sqrt(grid), "--", color="grey", label="sqrt(|E_c||K_c|) (slope 1/2)")
    low, high = summary["interval"]
    ax.set_title(f"network exponent {summary['exponent']:.2f} [{low:.2f}, {high:.2f}], graph {summary['graph_exponent']:.2f}", fontsize=9)
    _finish_log_figure(fig, ax, figures / names[1], "|E_c| |K_c|", f"D* (first D with score >= {summary['level']})", log_y=True)
    return names


def attention_figure(patterns, heads: list[tuple[int, int]], labels: list[str], path: Path) -> Path:
    """Heat maps of attention patterns of one sequence, one panel per (layer, head).

    Arguments:
        patterns: (len(heads), query_pos, key_pos), e.g. `attention_patterns(model, tokens, heads)[:, row]`.
        labels: one name per position (the sequence's tokens).
    """
    n = len(heads)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.4), dpi=110, squeeze=False)
    for ax, pattern, (layer, head) in zip(axes[0], patterns, heads):
        ax.imshow(np.asarray(pattern.detach().cpu().float()), cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title(f"layer {layer}, head {head}", fontsize=8)
        ax.set_xlabel("key")
    axes[0][0].set_ylabel("query")
    _save(fig, Path(path))
    return Path(path)
