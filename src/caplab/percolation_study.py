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

import dataclasses
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from caplab.analysis.percolation import critical_density, fit_power_law, percolation_curve, predicted_critical_pairs
from caplab.runs.catalog import Catalog
from caplab.runs.store import RunStore, atomic_write_bytes

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


def run_percolation_study(cfg: PercolationStudyConfig, recipe: str = "percolation", description: str = "",
                          root: Optional[Path] = None) -> Path:
    """Simulate, then write and catalogue a run directory; return its path."""
    config = {"recipe": recipe, "kind": "percolation", "description": description, "percolation": dataclasses.asdict(cfg)}
    store = RunStore.create(recipe, root, files={"config.json": config})
    catalog = Catalog(store.path.parent)
    store.set_status("running")
    catalog.upsert_run(store)
    summary, curves = simulate(cfg)
    store.write_json("summary.json", summary)
    write_percolation_report(store.path, cfg, summary, curves)
    store.set_status("completed")
    catalog.upsert_run(store)
    return store.path


def write_percolation_report(path: Path, cfg: PercolationStudyConfig, summary: dict, curves: dict) -> Path:
    from caplab.runs.report import percolation_figures

    names = percolation_figures(path / "figures", cfg.entities_per_class, summary, curves)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(json.dumps(v))}</td></tr>"
                   for k, v in summary.items() if k != "scaling_points")
    text = ("<!doctype html><html><head><meta charset='utf-8'><title>caplab percolation</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
            "table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}</style></head><body>"
            f"<h1>Percolation of the class graph ({path.name})</h1><table>{rows}</table>"
            + "".join(f"<img src='figures/{n}' alt='{n}'>" for n in names) + "</body></html>")
    atomic_write_bytes(path / "report.html", text.encode())
    return path / "report.html"
