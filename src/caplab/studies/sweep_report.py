"""A sweep's report: curves per setting with their seed bands, the emergence-point scaling fit, the data-percolation
figures, and report.html."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caplab.runs import html, plots
from caplab.studies.sweep import curves_by_setting


def write_sweep_report(path: Path, summary: dict) -> Path:
    """Figures (curves per setting, emergence points and scaling fit) and report.html for a sweep."""
    path = Path(path)
    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    metric = summary["metric"]
    groups = curves_by_setting(path)

    fig, ax = plots.step_axes(f"{metric}: mean over seeds per setting (band: min-max)", metric)
    for i, (label, group) in enumerate(groups.items()):
        steps, curves = group["steps"], group["curves"]
        ax.plot(steps, curves.mean(0), color=f"C{i}", marker=".", label=f"{label} (n={len(curves)})")
        ax.fill_between(steps, curves.min(0), curves.max(0), color=f"C{i}", alpha=0.15)
    ax.axhline(summary["level"], color="grey", lw=0.8, ls="--")
    ax.legend(fontsize=7)
    names = ["curves.png"]
    plots.save(fig, figures / names[-1])

    scaling = summary.get("scaling")
    if scaling:
        key = scaling["key"]
        points = [(s["setting"][key], s["crossing"]) for s in summary["settings"] if s["crossing"]["value"] is not None]
        fig, ax = plots.subplots()
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
        plots.save(fig, figures / names[-1])

    if summary.get("search"):
        names.append(search_figure(figures, summary["search"], metric))

    rows = []
    for s in summary["settings"]:
        c = s["crossing"]
        peak = f"; at its peak {s['peak']['mean']:.3f} [{s['peak']['low']:.3f}, {s['peak']['high']:.3f}]" if "peak" in s else ""
        rows.append(f"<tr><td>{html.escape(s['label'])}</td><td>{s['n_seeds']}</td><td>{s['final_mean']:.3f} +- {s['final_std']:.3f}{peak}</td>"
                    f"<td>{format_interval(c)}</td></tr>")
    body = [f"<h1>caplab sweep {html.escape(path.name)}</h1>",
            f"<p>recipe {html.escape(summary['recipe'])}; metric {html.escape(metric)}; "
            f"{summary['runs_completed']} of {summary['runs_planned']} runs completed</p>",
            f"<table><tr><th>setting</th><th>seeds</th><th>final {html.escape(metric)}</th>"
            f"<th>step reaching {summary['level']} [95% CI]</th></tr>", *rows, "</table>"]
    if scaling:
        body.append(f"<p>scaling: step ~ {html.escape(scaling['key'])}^{scaling['exponent']:.3f} "
                    f"(95% CI [{scaling['low']:.3f}, {scaling['high']:.3f}])</p>")
    body += html.images(names)
    body.append(html.json_block("Summary", summary))
    return html.write_page(path / "report.html", "caplab sweep", body)


def search_figure(figures: Path, search: dict, metric: str) -> str:
    """Each searched knob against the trials' values (log axis for log-scale knobs); the best trial ringed."""
    keys = [k for k, spec in search["space"].items() if spec[0] != "choice"] or list(search["space"])
    fig, axes = plots.subplots(1, len(keys), width=4.2 * len(keys), height=3.6, squeeze=False)
    done = [t for t in search["trials"] if t["value"] is not None]
    for ax, key in zip(axes[0], keys):
        ax.plot([t["params"][key] for t in done], [t["value"] for t in done], "o", alpha=0.7, label="trial")
        if search["best"]:
            ax.plot([search["best"]["params"][key]], [search["best"]["value"]], "o", ms=12, mfc="none", color="C3", label="best")
        if search["space"][key][0] == "log":
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (mean over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    plots.save(fig, figures / "search.png")
    return "search.png"


def format_interval(estimate: dict) -> str:
    """'value [low, high]' of a bootstrap estimate, or 'never' when the level was not reached."""
    if estimate["value"] is None:
        return "never"
    low, high = (f"{estimate[k]:.0f}" if estimate[k] is not None else "?" for k in ("low", "high"))
    return f"{estimate['value']:.0f} [{low}, {high}]"


def data_percolation_figures(figures: Path, summary: dict) -> list[str]:
    """Class knowledge against D / sqrt(|E_c||K_c|) per world size (with the graph's reachable share), and D* vs |E_c||K_c|."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    names = ["data_percolation_curves.png", "data_percolation_scaling.png"]
    fig, ax = plots.subplots(width=7.0, height=4.4)
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
    plots.finish_log(fig, ax, figures / names[0], "distinct observed pairs per class D / sqrt(|E_c| |K_c|)",
                       "reachable_pairs_specific / reachable share")

    fig, ax = plots.subplots()
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
    plots.finish_log(fig, ax, figures / names[1], "|E_c| |K_c|", f"D* (first D with score >= {summary['level']})", log_y=True)
    return names
