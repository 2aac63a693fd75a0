"""`caplab run percolation`: the graph model of emergence alone, no training, in seconds.

Simulates the bipartite entity-value graph of one concept class and measures
(1) the critical edge density, against p_c = 1 / sqrt(|E_c| |K_c|);
(2) the critical number of observed pairs, against sqrt(|E_c| |K_c|);
(3) how the critical number of pairs scales with |K_c|, against the exponent 1/2
of the emergence law D* ~ sqrt(|E| |K|).
Critical points are where the mean second-largest component peaks (a
finite-size estimate); intervals are percentile bootstraps over trials.
Writes a run directory (config.json, summary.json, figures, report.html),
catalogued like every run.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from caplab.analysis.percolation import critical_density, fit_power_law, percolation_curve, predicted_critical_pairs
from caplab.config import build_dataclass, load_recipe, parse_value, recipe_kind
from caplab.errors import ConfigError
from caplab.runs import html, plots
from caplab.runs.catalog import Catalog
from caplab.runs.owner import owning
from caplab.runs.store import RunStore

log = logging.getLogger(__name__)

PREDICTED_EXPONENT = 0.5


@dataclass
class PercolationStudyConfig:
    entities_per_class: int = 90  # |E_c| (the paper: 900 entities over 10 classes)
    properties_per_class: int = 1800  # |K_c| (18,000 values over 10 classes)
    scaling_properties: list[int] = field(default_factory=lambda: [360, 720, 1080, 1440, 1800])  # the paper's |K| sweep / 10
    span: float = 4.0  # the control variable runs from prediction/span to prediction*span
    points: int = 61
    trials: int = 100
    n_boot: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("entities_per_class", "properties_per_class", "points", "trials", "n_boot"):
            if getattr(self, name) < 1:
                raise ValueError(f"percolation.{name} must be at least 1, got {getattr(self, name)}")
        if len(self.scaling_properties) < 3 or min(self.scaling_properties) < 1:
            raise ValueError("percolation.scaling_properties needs at least 3 positive sizes for a fit")
        if self.span <= 1:
            raise ValueError(f"percolation.span must exceed 1, got {self.span}")


def _interval(samples: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def simulate(cfg: PercolationStudyConfig) -> tuple[dict, dict]:
    """(summary, curves for the figures)."""
    E, K = cfg.entities_per_class, cfg.properties_per_class
    rng = np.random.default_rng(cfg.seed + 1)
    ratios = np.geomspace(1 / cfg.span, cfg.span, cfg.points)
    boot = lambda: rng.integers(cfg.trials, size=(cfg.n_boot, cfg.trials))  # noqa: E731

    p_c = critical_density(E, K)
    by_density = percolation_curve(E, K, p_c * ratios, by="density", trials=cfg.trials, seed=cfg.seed)
    density_samples = np.array([by_density.critical_point(t) for t in boot()])

    sizes = sorted(set(cfg.scaling_properties) | {K})
    by_pairs, measured, samples = {}, {}, {}
    for size in sizes:
        pairs = np.unique(np.round(predicted_critical_pairs(E, size) * ratios).astype(int))
        curve = percolation_curve(E, size, pairs, by="pairs", trials=cfg.trials, seed=cfg.seed + size)
        by_pairs[size], measured[size] = curve, curve.critical_point()
        samples[size] = np.array([curve.critical_point(t) for t in boot()])

    fit_sizes = sorted(set(cfg.scaling_properties))
    exponent = fit_power_law(fit_sizes, [measured[s] for s in fit_sizes])[0]
    exponents = np.array([fit_power_law(fit_sizes, [samples[s][b] for s in fit_sizes])[0] for b in range(cfg.n_boot)])
    summary = {
        "entities_per_class": E, "properties_per_class": K,
        "critical_density_measured": by_density.critical_point(),
        "critical_density_predicted": p_c,
        "critical_density_interval": _interval(density_samples),
        "critical_pairs_measured": float(measured[K]),
        "critical_pairs_predicted": predicted_critical_pairs(E, K),
        "critical_pairs_interval": _interval(samples[K]),
        "scaling_exponent": float(exponent),
        "scaling_interval": _interval(exponents),
        "scaling_exponent_predicted": PREDICTED_EXPONENT,
        "scaling_points": [{"properties_per_class": s, "critical_pairs_measured": float(measured[s]),
                            "critical_pairs_predicted": predicted_critical_pairs(E, s)} for s in fit_sizes],
    }
    return summary, {"by_density": by_density, "by_pairs": by_pairs}


def load_percolation_config(recipe: str, overrides: list[str] = ()):
    """The PercolationStudyConfig of a `kind: percolation` recipe, with `percolation.KEY=VALUE` overrides."""
    name, data = load_recipe(recipe)
    if recipe_kind(data) != "percolation":
        raise ConfigError(f"recipe {recipe!r} is not a percolation recipe")
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        section, _, field_name = key.partition(".")
        if not sep or section != "percolation" or not field_name:
            raise ConfigError(f"bad override {item!r}; a percolation recipe takes percolation.KEY=VALUE")
        data.setdefault("percolation", {})[field_name] = parse_value(raw)
    unknown = [k for k in data if k not in ("kind", "description", "percolation")]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: kind, description, percolation")
    cfg = build_dataclass(PercolationStudyConfig, dict(data.get("percolation") or {}), "percolation")
    return name, str(data.get("description", "")).strip(), cfg


def run_percolation_study(cfg: PercolationStudyConfig, recipe: str = "percolation", description: str = "",
                          root: Optional[Path] = None) -> Path:
    """Simulate, then write and catalogue a run directory; return its path."""
    config = {"recipe": recipe, "kind": "percolation", "description": description, "percolation": dataclasses.asdict(cfg)}
    store = RunStore.create(recipe, root, files={"config.json": config})
    catalog = Catalog(store.path.parent)
    with owning(store.path):  # "running" is true only while this process lives
        store.set_status("running")
        catalog.upsert_run(store)
        summary, curves = simulate(cfg)
        store.write_json("summary.json", summary)
        write_percolation_report(store.path, cfg, summary, curves)
        store.set_status("completed")
        catalog.upsert_run(store)
    return store.path


def write_percolation_report(path: Path, cfg: PercolationStudyConfig, summary: dict, curves: dict) -> Path:

    names = percolation_figures(path / "figures", cfg.entities_per_class, summary, curves)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in summary.items() if k != "scaling_points")
    body = [f"<h1>Percolation of the class graph ({html.escape(path.name)})</h1><table>{rows}</table>", *html.images(names)]
    return html.write_page(path / "report.html", "caplab percolation", body)


def percolation_figures(figures: Path, n_entities: int, summary: dict, curves: dict) -> list[str]:
    """Component fractions against density and against observed pairs, and the critical-pairs scaling."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    names = ["percolation_density.png", "percolation_pairs.png", "percolation_scaling.png"]
    p_c = summary["critical_density_predicted"]
    curve = curves["by_density"]
    fig, ax = plots.subplots()
    ax.plot(curve.control / p_c, curve.largest, marker=".", label="largest component")
    ax.plot(curve.control / p_c, curve.second, marker=".", label="second largest")
    ax.axvline(1.0, color="grey", ls="--", lw=0.8, label="predicted p_c = 1/sqrt(|E_c||K_c|)")
    ax.axvline(summary["critical_density_measured"] / p_c, color="C3", lw=0.8, label="measured (second-largest peak)")
    ax.set_title(f"|E_c| = {n_entities}, |K_c| = {summary['properties_per_class']}")
    plots.finish_log(fig, ax, figures / names[0], "edge density / predicted p_c", "fraction of nodes")

    fig, ax = plots.subplots()
    for i, (size, curve) in enumerate(sorted(curves["by_pairs"].items())):
        ax.plot(curve.control / np.sqrt(n_entities * size), curve.largest, color=f"C{i}", label=f"|K_c| = {size}")
    ax.axvline(1.0, color="grey", ls="--", lw=0.8)
    ax.set_title("curves collapse when pairs are scaled by sqrt(|E_c||K_c|)")
    plots.finish_log(fig, ax, figures / names[1], "observed pairs / sqrt(|E_c| |K_c|)", "largest component fraction")

    points = summary["scaling_points"]
    xs = np.array([p["properties_per_class"] for p in points], float)
    ys = np.array([p["critical_pairs_measured"] for p in points], float)
    exponent, prefactor = fit_power_law(xs, ys)
    low, high = summary["scaling_interval"]
    fig, ax = plots.subplots()
    ax.plot(xs, ys, "o", label="measured critical pairs")
    ax.plot(xs, np.sqrt(n_entities * xs), "--", color="grey", label="predicted sqrt(|E_c||K_c|) (slope 1/2)")
    ax.plot(xs, prefactor * xs**exponent, "-", label=f"fit: slope {exponent:.2f} [{low:.2f}, {high:.2f}]")
    plots.finish_log(fig, ax, figures / names[2], "|K_c| (values per class)", "observed pairs at the transition", log_y=True)
    return names


# ---------------------------------------------------------------- the study-kind interface (caplab.studies)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    name, description, cfg = load_percolation_config(recipe, overrides)
    log.info(f"caplab: simulating the class graph ({cfg.trials} trials per point)")
    path = run_percolation_study(cfg, name, description, root)
    return summary_lines(json.loads((path / "summary.json").read_text())) + [str(path)]


def resume(path: Path) -> list[str]:
    from caplab.studies.run import resume as resume_run_dir

    return resume_run_dir(path)


def summary_lines(s: dict) -> list[str]:
    """Measured critical density and pairs beside the predictions, and the scaling exponent."""
    return [
        f"critical density: measured {s['critical_density_measured']:.5f} "
        f"[{s['critical_density_interval'][0]:.5f}, {s['critical_density_interval'][1]:.5f}], "
        f"predicted 1/sqrt(|E_c||K_c|) = {s['critical_density_predicted']:.5f}",
        f"critical pairs:   measured {s['critical_pairs_measured']:.0f} "
        f"[{s['critical_pairs_interval'][0]:.0f}, {s['critical_pairs_interval'][1]:.0f}], "
        f"predicted sqrt(|E_c||K_c|) = {s['critical_pairs_predicted']:.0f}",
        f"scaling with |K_c|: exponent {s['scaling_exponent']:.3f} "
        f"[{s['scaling_interval'][0]:.3f}, {s['scaling_interval'][1]:.3f}], predicted {s['scaling_exponent_predicted']}",
    ]
