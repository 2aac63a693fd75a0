"""`kind: compare` recipes: variants of one training recipe, compared on loss against compute.

    base:       a training recipe (task, model, train)
    variants:   name -> changes merged over base; `match_active_fraction: OTHER` sets
                train.mat_alpha to OTHER's mean MAT active share (the random control of MAT)
    reference:  the variant whose final eval loss is the target

Each variant is a catalogued run (ids reserved in `study.json` first, so
`caplab resume <id>` continues an interrupted comparison). The summary gives,
per variant: final eval loss, total training FLOPs (`caplab.train.flops`,
MAT's kernel estimates included), wall time, the FLOPs, steps and seconds
at which its eval loss first reaches the reference's final eval loss
(linear interpolation between evaluations), with the saving against the
reference, and the reference's loss after the same number of FLOPs. Figures: eval loss against FLOPs, steps and seconds.

    <runs root>/studies/<id>/  study.json, summary.json, figures/, report.html
"""

from __future__ import annotations

import copy
import html
import json
import sys
from pathlib import Path
from typing import Optional

from caplab.analysis.emergence import loss_reach
from caplab.config import load_recipe, merge_recipe, parse_value, recipe_kind, resolve, set_key
from caplab.errors import ConfigError
from caplab.runs.store import RunStore, atomic_write_bytes, atomic_write_json, read_json, runs_root


def load_compare(recipe: str, overrides: list[str] = ()) -> tuple[str, dict]:
    """(name, {"description", "base", "variants", "reference"}) with `base.KEY=VALUE` / `variants.NAME.KEY=VALUE` overrides."""
    name, data = load_recipe(recipe)
    if recipe_kind(data) != "compare":
        raise ConfigError(f"recipe {recipe!r} is not a comparison")
    unknown = [k for k in data if k not in ("kind", "description", "base", "variants", "reference")]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: kind, description, base, variants, reference")
    spec = {"description": str(data.get("description", "")).strip(), "base": copy.deepcopy(data.get("base") or {}),
            "variants": copy.deepcopy(data.get("variants") or {}), "reference": data.get("reference")}
    for item in overrides:
        key, sep, raw = item.partition("=")
        head, _, rest = key.partition(".")
        if not sep or not rest or head not in ("base", "variants"):
            raise ConfigError(f"bad override {item!r}; a comparison takes base.KEY=VALUE or variants.NAME.KEY=VALUE")
        spec[head] = set_key(spec[head], rest, parse_value(raw))
    if not spec["variants"] or spec["reference"] not in spec["variants"]:
        raise ConfigError(f"recipe {recipe!r} needs variants and a reference naming one of them")
    for variant, changes in spec["variants"].items():
        other = (changes or {}).get("match_active_fraction")
        if other is not None and (other not in spec["variants"] or list(spec["variants"]).index(other) > list(spec["variants"]).index(variant)):
            raise ConfigError(f"variants.{variant}.match_active_fraction must name an earlier variant")
    return name, spec


def _variant_recipe(name: str, spec: dict, variant: str, matched: Optional[float] = None) -> dict:
    changes = {k: v for k, v in (spec["variants"][variant] or {}).items() if k != "match_active_fraction"}
    recipe = merge_recipe(spec["base"], changes)
    if matched is not None:
        recipe = set_key(recipe, "train.mat_alpha", matched)
    return {**recipe, "recipe": f"{name}.{variant}", "description": f"variant {variant} of the comparison {name}"}


def create_compare(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> Path:
    name, spec = load_compare(recipe, overrides)
    for variant in spec["variants"]:  # every variant's config is valid before anything runs
        resolve(f"{name}.{variant}", _variant_recipe(name, spec, variant, 0.5))
    root = Path(root) if root is not None else runs_root()
    path = root / "studies" / RunStore.new_run_id(name)
    path.mkdir(parents=True)
    atomic_write_json(path / "study.json", {"recipe": name, "kind": "compare", **spec,
                                            "runs": {v: None for v in spec["variants"]}})
    return path


def run_compare(path: Path) -> dict:
    from caplab.experiment import complete_reserved_run

    path = Path(path)
    study = read_json(path / "study.json")
    runs_dir = path.parent.parent
    for i, variant in enumerate(study["variants"]):
        other = (study["variants"][variant] or {}).get("match_active_fraction")
        matched = _mean_active_fraction(RunStore(runs_dir / study["runs"][other]).metrics()) if other else None
        cfg = resolve(f"{study['recipe']}.{variant}", _variant_recipe(study["recipe"], study, variant, matched))
        if study["runs"][variant] is None:
            study["runs"][variant] = RunStore.new_run_id(cfg.recipe)
            atomic_write_json(path / "study.json", study)
        label = f"[{i + 1}/{len(study['variants'])}] {variant}"
        complete_reserved_run(cfg, runs_dir, study["runs"][variant],
                              lambda how: print(f"caplab compare: {label}: {how} {study['runs'][variant]}", file=sys.stderr))
    curves = {v: RunStore(runs_dir / run_id).metrics() for v, run_id in study["runs"].items()}
    summary = compare_curves(curves, study["reference"])
    summary.update({"recipe": study["recipe"], "runs": study["runs"]})
    atomic_write_json(path / "summary.json", summary)
    write_compare_report(path, summary, curves)
    return summary


def _mean_active_fraction(records: list[dict]) -> float:
    shares = [r["mat_active_fraction"] for r in records if "mat_active_fraction" in r]
    if not shares:
        raise ConfigError("match_active_fraction names a variant that did not run MAT (no mat_active_fraction)")
    return sum(shares) / len(shares)


def _value_at(records: list[dict], key: str, x: float) -> Optional[float]:
    """eval_loss at `key` = x, interpolated between evaluations (None outside the curve)."""
    points = [(r[key], r["eval_loss"]) for r in records if key in r and "eval_loss" in r]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return float(y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return None


def compare_curves(curves: dict[str, list[dict]], reference: str) -> dict:
    """Per variant: finals, and where each reaches the reference's final eval loss (see module docstring)."""
    target = curves[reference][-1]["eval_loss"]
    ref_flops = loss_reach(curves[reference], "flops", target)
    variants = {}
    for variant, records in curves.items():
        final = records[-1]
        reach = {key: loss_reach(records, key, target) for key in ("flops", "step", "elapsed_s")}
        variants[variant] = {
            "final_eval_loss": final["eval_loss"], "flops": final.get("flops"), "elapsed_s": final.get("elapsed_s"),
            "steps": final["step"], "reach_flops": reach["flops"], "reach_step": reach["step"], "reach_s": reach["elapsed_s"],
            "flops_saving": (1 - reach["flops"] / ref_flops) if reach["flops"] is not None and ref_flops else None,
            # the reference's loss after the same number of FLOPs (an iso-compute comparison)
            "reference_loss_at_same_flops": _value_at(curves[reference], "flops", final["flops"]) if "flops" in final else None,
            "mean_active_fraction": (sum(r["mat_active_fraction"] for r in records if "mat_active_fraction" in r)
                                     / max(1, sum("mat_active_fraction" in r for r in records))) if any(
                                         "mat_active_fraction" in r for r in records) else None,
        }
    return {"reference": reference, "target_eval_loss": target, "variants": variants}


def write_compare_report(path: Path, summary: dict, curves: dict[str, list[dict]]) -> Path:
    from caplab.runs.report import _save, plt

    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = []
    for key, label, log in (("flops", "training FLOPs", True), ("step", "training step", True), ("elapsed_s", "wall-clock seconds", False)):
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
        for i, (variant, records) in enumerate(curves.items()):
            points = [(r[key], r["eval_loss"]) for r in records if key in r and r[key] and "eval_loss" in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=f"C{i}", label=variant)
        ax.axhline(summary["target_eval_loss"], color="grey", lw=0.8, ls="--", label=f"final loss of {summary['reference']}")
        if log:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        names.append(f"loss_vs_{key}.png")
        _save(fig, figures / names[-1])
    rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{s['final_eval_loss']:.4f}</td><td>{(s['flops'] or 0):.3g}</td>"
        f"<td>{_fmt(s['reach_flops'], '.3g')}</td><td>{_fmt(s['flops_saving'], '+.1%')}</td><td>{_fmt(s['reach_step'], '.0f')}</td>"
        f"<td>{_fmt(s['mean_active_fraction'], '.2f')}</td></tr>" for v, s in summary["variants"].items())
    text = ("<!doctype html><html><head><meta charset='utf-8'><title>caplab comparison</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}img{max-width:49%}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}pre{background:#f6f6f6;padding:8px}</style>"
            f"</head><body><h1>Comparison {html.escape(path.name)}</h1><p>target: the final held-out loss of "
            f"{html.escape(summary['reference'])}, {summary['target_eval_loss']:.4f}</p><table><tr><th>variant</th>"
            "<th>final loss</th><th>FLOPs</th><th>FLOPs to target</th><th>saving</th><th>step at target</th>"
            f"<th>active share</th></tr>{rows}</table>" + "".join(f"<img src='figures/{n}' alt='{n}'>" for n in names)
            + f"<h2>Summary</h2><pre>{html.escape(json.dumps(summary, indent=2))}</pre></body></html>")
    atomic_write_bytes(path / "report.html", text.encode())
    return path / "report.html"


def _fmt(value, spec: str) -> str:
    return "never" if value is None else format(value, spec)
