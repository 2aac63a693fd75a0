"""The data-limited percolation experiment: class knowledge against distinct observed pairs D.

The percolation model of emergence (Lubana et al., ICLR 2025) predicts that a
model generalises class membership to unseen entity-value pairs once the
pairs it has observed percolate, at D* ~ sqrt(|E_c| |K_c|) distinct pairs per
class. Here each run trains for a fixed budget on a finite corpus showing exactly
D pairs per class (`task.pairs_scale` = D / sqrt(|E_c| |K_c|)), and its
class-specific order parameter (`reachable_pairs_specific`: unseen pairs
ranked high for their own subject and not for a subject of another class) is
read against D, either at the last evaluation (`read="final"`) or at the
run's peak (`read="peak"`). Class knowledge rises and then falls with further
training, so the peak is the run's best generalisation; to read it
without the upward bias of a maximum over noisy evaluations, the prompts are
split in two halves: the evaluation where half a peaks is scored on half b and
vice versa (cross-fitting), and the two are averaged. Per (world size, world, seed) the curve over D gives D*, the
first D where the score reaches the level; a curve that never does is
censored at its largest D. The exponent of D* against |E_c| |K_c| (theory:
1/2) comes from a censored power-law fit, with a bootstrap over (world, seed)
curves within each size.

The same analysis is run on the graph alone: the share of unseen pairs whose
entity and value are connected by the shown pairs, for worlds drawn the same
way (not the runs' own) and the same D, gives the percolation model's own D* for this grid (finite sizes
included), the prediction the network is compared with.

`aggregate` reads a finished sweep (runs are ordinary runs; any recipe whose
sweep section says `analysis: data_percolation`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from caplab.analysis.censored import censored_power_law, first_reach
from caplab.analysis.emergence import peak_read
from caplab.analysis.percolation import component_labels
from caplab.errors import ConfigError
from caplab.runs.store import atomic_write_json
from caplab.tasks import concept_world as W

SCORE = "reachable_pairs_specific"
READS = ("final", "peak")
PREDICTED_EXPONENT = 0.5  # of D* against |E_c| |K_c|


def graph_reachability(n_entities: int, n_values: int, density: float, pairs: list[int], trials: int = 30,
                       seed: int = 0) -> np.ndarray:
    """Mean share of unshown pairs of a class whose entity and value the shown pairs connect, per D in `pairs`.

    Worlds are drawn as the concept language draws them (balanced, density p), the shown pairs uniformly from them.
    """
    rng = np.random.default_rng(seed)
    out = np.zeros((len(pairs), trials))
    for t in range(trials):
        world = W.balanced_bipartite(n_entities, n_values, int(round(density * n_entities * n_values)), rng)
        for i, d in enumerate(pairs):
            shown = W.random_subgraph(world, int(d), rng)
            left, right = np.nonzero(shown)
            labels = component_labels(n_entities + n_values, left, n_entities + right)
            entities = np.bincount(labels[:n_entities], minlength=n_entities + n_values)
            values = np.bincount(labels[n_entities:], minlength=n_entities + n_values)
            connected = float((entities * values).sum()) - d  # connected pairs that are not shown themselves
            out[i, t] = connected / (n_entities * n_values - d)
    return out.mean(1)


def _runs(path: Path, read: str) -> list[dict]:
    """One record per completed run of the sweep: its world size, D, world, seed and scores (as `read`)."""
    from caplab.studies.sweep import completed_runs

    records = []
    for entry, store in completed_runs(path):
        task, evaluations = store.config_dict()["task"], store.metrics()
        evaluations = [e for e in evaluations if SCORE in e]
        final, previous = evaluations[-1], evaluations[-2] if len(evaluations) > 1 else {}
        if read == "peak":
            if f"{SCORE}_a" not in final:
                raise ConfigError(f"run {entry['run_id']} logs no {SCORE}_a/_b (split-half scores): it cannot be read at its peak")
            score, peak_step, at_end = peak_read(evaluations, SCORE)
        else:
            score, peak_step, at_end = final[SCORE], float(final["step"]), True
        facts = store.read_json("task.json")
        shown = facts["shown_graph"]["edges"] if facts.get("shown_graph") else facts["class_graph"]["edges"]
        records.append({
            "run_id": entry["run_id"], "entities": facts["entities_per_class"][0], "values": facts["values_per_class"],
            "density": task["density"], "world": task["seed"], "seed": entry["seed"], "pairs": float(np.mean(shown)),
            **{k: final[k] for k in ("reachable_pairs", "reachable_pairs_swap", "eval_loss", "train_loss") if k in final},
            SCORE: score, "final": final[SCORE], "peak_step": peak_step, "peak_at_end": at_end,
            "previous": previous.get(SCORE, float("nan")), "previous_step": previous.get("step"), "step": final["step"],
        })
    return records


def _fit(units: list[dict]):
    return censored_power_law([u["entities"] * u["values"] for u in units], [u["threshold"] for u in units],
                              [u["censored"] for u in units])


def _bootstrap(units: list[dict], n_boot: int, rng) -> tuple[float, float]:
    by_size = defaultdict(list)
    for u in units:
        by_size[(u["entities"], u["values"])].append(u)
    samples = []
    for _ in range(n_boot):
        resampled = [group[i] for group in by_size.values() for i in rng.integers(len(group), size=len(group))]
        samples.append(_fit(resampled).exponent)
    samples = np.array([s for s in samples if np.isfinite(s)])
    if len(samples) == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(samples, [2.5, 97.5])
    return float(low), float(high)


def aggregate(path: Path, level: float = 0.5, n_boot: int = 1000, read: str = "final", write: bool = True) -> dict:
    """Thresholds D* per curve, the censored fits of D* against |E_c| |K_c| (network and graph), and their intervals.

    A peak read also carries the final read's fit (`final_read`), so the two can be compared on the same runs.
    """
    if read not in READS:
        raise ConfigError(f"bad read {read!r}; valid: {', '.join(READS)}")
    path = Path(path)
    runs = _runs(path, read)
    curves = defaultdict(list)
    for r in runs:
        curves[(r["entities"], r["values"], r["density"], r["world"], r["seed"])].append(r)
    units = []
    for (E, K, density, world, seed), points in sorted(curves.items()):
        points.sort(key=lambda r: r["pairs"])
        D = [p["pairs"] for p in points]
        threshold, censored = first_reach(D, [p[SCORE] for p in points], level)
        units.append({"entities": E, "values": K, "density": density, "world": world, "seed": seed,
                      "pairs": D, "score": [p[SCORE] for p in points], "threshold": threshold, "censored": censored,
                      # the same curve one evaluation earlier: how far from converged the runs still were
                      "score_previous": [p["previous"] for p in points], "steps": [points[0]["previous_step"], points[0]["step"]],
                      "score_final": [p["final"] for p in points], "peak_step": [p["peak_step"] for p in points],
                      "peak_at_end": [p["peak_at_end"] for p in points]})
    rng = np.random.default_rng(0)
    network = _fit(units)
    low, high = _bootstrap(units, n_boot, rng)

    sizes = sorted({(u["entities"], u["values"], u["density"]) for u in units})
    graph = []
    for E, K, density in sizes:
        D = sorted({d for u in units if (u["entities"], u["values"]) == (E, K) for d in u["pairs"]})
        fine = np.unique(np.round(np.geomspace(max(1, min(D) / 2), max(D), 40)).astype(int))
        reach = graph_reachability(E, K, density, list(fine))
        threshold, censored = first_reach(fine, reach, level)
        graph.append({"entities": E, "values": K, "density": density, "pairs": fine.tolist(), "reachable": reach.tolist(),
                      "threshold": threshold, "censored": censored})
    graph_fit = _fit(graph)

    def arm(rows, fixed: str):  # exponent along one axis, the other held at its most common value
        value = max({r[fixed] for r in rows}, key=lambda v: sum(r[fixed] == v for r in rows))
        chosen = [r for r in rows if r[fixed] == value]
        return _fit(chosen).exponent if len({(r["entities"], r["values"]) for r in chosen}) >= 2 else None

    summary = {
        "metric": SCORE, "read": read, "level": level, "runs": len(runs), "curves": len(units), "censored": sum(u["censored"] for u in units),
        "exponent": network.exponent, "interval": [low, high], "sigma": network.sigma,
        "exponent_vs_values": arm(units, "entities"), "exponent_vs_entities": arm(units, "values"),
        "graph_exponent": graph_fit.exponent, "graph_exponent_vs_values": arm(graph, "entities"),
        "graph_exponent_vs_entities": arm(graph, "values"), "predicted_exponent": PREDICTED_EXPONENT,
        "sizes": [{"entities": E, "values": K, "density": density,
                   "thresholds": [u["threshold"] for u in units if (u["entities"], u["values"]) == (E, K)],
                   "censored": [u["censored"] for u in units if (u["entities"], u["values"]) == (E, K)],
                   "graph_threshold": g["threshold"], "graph_censored": g["censored"],
                   # median step of the read, and the share of runs whose read is their last evaluation (peak maybe not reached)
                   "read_step": float(np.median([s for u in units if (u["entities"], u["values"]) == (E, K) for s in u["peak_step"]])),
                   "read_at_last_evaluation": float(np.mean([a for u in units if (u["entities"], u["values"]) == (E, K) for a in u["peak_at_end"]])),
                   "change_since_previous_evaluation": float(np.abs(np.mean([np.subtract(u["score_final"], u["score_previous"]) for u in units
                                                                             if (u["entities"], u["values"]) == (E, K)], axis=0)).max())}
                  for (E, K, density), g in zip(sizes, graph)],
        "units": units, "graph": graph,
    }
    if read == "peak":
        final = aggregate(path, level, n_boot, read="final", write=False)
        summary["final_read"] = {k: final[k] for k in ("exponent", "interval", "censored", "exponent_vs_values", "exponent_vs_entities")}
        summary["final_read"]["thresholds"] = [size["thresholds"] for size in final["sizes"]]
    if write:
        atomic_write_json(path / "data_percolation.json", summary)
    return summary
