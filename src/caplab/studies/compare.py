"""`kind: compare` recipes: variants of one training recipe, compared on loss against compute, over seeds.

    base:         a training recipe (task, model, train)
    variants:     name -> changes merged over base, plus two ways to match a control to an earlier
                  variant's run of the same seed:
                    match_active_fraction: OTHER  mat.alpha = OTHER's mean MAT active share: of its
                                                  modules, or of their parameters (weight-gradient FLOPs)
                                                  with mat.share: parameters (the random controls of MAT)
                    match_frozen: OTHER           mat.frozen = the modules OTHER's MAT had frozen
                                                  when it ended (with mat.rule: fixed, "freeze them from step 0")
                    match_frozen_most: OTHER      mat.frozen = the modules OTHER's MAT kept frozen for
                                                  at least half of its steps
    reference:    the variant savings are measured against
    seeds:        N (default 1): each variant runs once per seed s = 0..N-1, with every `seed_keys`
                  entry (default [train.seed]) set to s; variants of one seed share init and data
    target_loss:  the held-out loss to reach; every run stops there (train.stop_at), with the base's
                  step budget or train.max_flops as its cap. Without it, the target is the reference's
                  final held-out loss (mean over seeds) and runs train to their budget.
    read_targets: [losses] read from the finished curves afterwards (no run stops there): for each, the
                  same reach, censoring and saving numbers (`at_targets` in the summary)

Each run is catalogued (ids reserved in `study.json` first, so `caplab resume <id>`
continues an interrupted comparison). The summary gives, per variant, seed means
of: the final held-out loss, training FLOPs (`caplab.train.flops`, MAT's kernel
estimates included), wall time, and the FLOPs, steps and seconds at which the
held-out loss first reaches the target (interpolated between evaluations). A seed
that never reaches it is censored: the variant's reach is then None, `reached`
counts the seeds that did and `reach_flops_at_least` is the mean of reach or, for
the censored, the FLOPs spent. The FLOP saving against the reference,
1 - mean reach / mean reference reach, has a 95% bootstrap interval over seeds
resampled in pairs (a seed's variant with the same seed's reference). Also: the
reference's loss after as many FLOPs as the variant spent (iso-compute). Figures:
held-out loss against FLOPs, steps and seconds, one line per seed.

    <runs root>/studies/<id>/  study.json, summary.json, figures/, report.html
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import numpy as np

from caplab.analysis.emergence import loss_reach
from caplab.config import load_recipe, merge_recipe, move_legacy_keys, parse_value, recipe_kind, resolve, set_key
from caplab.errors import ConfigError
from caplab.runs import html, plots
from caplab.runs.store import RunStore, atomic_write_json, read_json
from caplab.studies.folder import complete, new_folder, reserve, run_and_report


def load_compare(recipe: str, overrides: list[str] = ()) -> tuple[str, dict]:
    """(name, {"description", "base", "variants", "reference"}) with `base.KEY=VALUE` / `variants.NAME.KEY=VALUE` overrides."""
    name, data = load_recipe(recipe)
    if recipe_kind(data) != "compare":
        raise ConfigError(f"recipe {recipe!r} is not a comparison")
    valid = ("kind", "description", "base", "variants", "reference", "seeds", "seed_keys", "target_loss", "read_targets")
    unknown = [k for k in data if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: {', '.join(valid)}")
    spec = {"description": str(data.get("description", "")).strip(), "base": copy.deepcopy(data.get("base") or {}),
            "variants": copy.deepcopy(data.get("variants") or {}), "reference": data.get("reference"),
            "seeds": data.get("seeds", 1), "seed_keys": list(data.get("seed_keys", ["train.seed"])),
            "target_loss": data.get("target_loss"), "read_targets": data.get("read_targets") or []}
    if not isinstance(spec["seeds"], int) or spec["seeds"] < 1:
        raise ConfigError(f"bad value {spec['seeds']!r} for 'seeds'; expected a whole number, at least 1")
    if spec["target_loss"] is not None and not isinstance(spec["target_loss"], (int, float)):
        raise ConfigError(f"bad value {spec['target_loss']!r} for 'target_loss'; expected a number")
    if not isinstance(spec["read_targets"], list) or not all(isinstance(t, (int, float)) for t in spec["read_targets"]):
        raise ConfigError(f"bad value {spec['read_targets']!r} for 'read_targets'; expected a list of losses")
    for item in overrides:
        key, sep, raw = item.partition("=")
        head, _, rest = key.partition(".")
        if not sep or not rest or head not in ("base", "variants"):
            raise ConfigError(f"bad override {item!r}; a comparison takes base.KEY=VALUE or variants.NAME.KEY=VALUE")
        spec[head] = set_key(spec[head], rest, parse_value(raw))
    if not spec["variants"] or spec["reference"] not in spec["variants"]:
        raise ConfigError(f"recipe {recipe!r} needs variants and a reference naming one of them")
    order = list(spec["variants"])
    for variant, changes in spec["variants"].items():
        for key in MATCHES:
            other = (changes or {}).get(key)
            if other is not None and (other not in spec["variants"] or order.index(other) > order.index(variant)):
                raise ConfigError(f"variants.{variant}.{key} must name an earlier variant")
    return name, spec


MATCHES = ("match_active_fraction", "match_frozen", "match_frozen_most")


def _variant_recipe(name: str, spec: dict, variant: str, seed: int, matched: Optional[dict] = None) -> dict:
    """The training recipe of one variant and seed; `matched` holds the `mat` keys a match set (see module docstring)."""
    changes = {k: v for k, v in (spec["variants"][variant] or {}).items() if k not in MATCHES}
    recipe = move_legacy_keys(merge_recipe(spec["base"], changes))
    for key, value in (matched or {}).items():
        recipe = set_key(recipe, f"mat.{key}", value)
    for key in spec.get("seed_keys", ["train.seed"]):
        recipe = set_key(recipe, key, seed)
    if spec.get("target_loss") is not None:
        recipe = set_key(set_key(recipe, "train.stop_metric", "eval_loss"), "train.stop_at", float(spec["target_loss"]))
    return {**recipe, "recipe": f"{name}.{variant}", "description": f"variant {variant} of the comparison {name}"}


def create_compare(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> Path:
    name, spec = load_compare(recipe, overrides)
    for variant in spec["variants"]:  # every variant's config is valid before anything runs
        resolve(f"{name}.{variant}", _variant_recipe(name, spec, variant, 0, {"alpha": 0.5, "frozen": []}))
    return new_folder("studies", name, "study.json",
                      {"recipe": name, "kind": "compare", **spec, "runs": {v: [None] * spec["seeds"] for v in spec["variants"]}}, root)


def _study_runs(study: dict) -> dict[str, list]:
    """variant -> run id per seed (a comparison written before seeds existed lists one id per variant)."""
    return {v: ids if isinstance(ids, list) else [ids] for v, ids in study["runs"].items()}


def _matched(study: dict, variant: str, runs_dir: Path, run_ids: dict[str, list], seed: int) -> dict:
    """The `mat` keys the variant's matches take from earlier variants' runs of this seed."""
    changes, out = study["variants"][variant] or {}, {}
    if changes.get("match_active_fraction"):
        share = resolve(variant, _variant_recipe(study["recipe"], study, variant, seed, {"frozen": []})).mat.share
        key = "mat_active_params" if share == "parameters" else "mat_active_fraction"
        out["alpha"] = _mean_active(RunStore(runs_dir / run_ids[changes["match_active_fraction"]][seed]).metrics(), key)
    if changes.get("match_frozen"):
        out["frozen"] = _frozen_at_end(RunStore(runs_dir / run_ids[changes["match_frozen"]][seed]))
    if changes.get("match_frozen_most"):
        out["frozen"] = _frozen_most(RunStore(runs_dir / run_ids[changes["match_frozen_most"]][seed]))
    return out


def run_compare(path: Path) -> dict:
    path = Path(path)
    study = read_json(path / "study.json")
    study["runs"] = run_ids = _study_runs(study)
    runs_dir = path.parent.parent
    seeds = len(next(iter(run_ids.values())))
    for seed in range(seeds):  # seed by seed, so a control's match exists before the control runs
        for i, variant in enumerate(study["variants"]):
            matched = _matched(study, variant, runs_dir, run_ids, seed)
            cfg = resolve(f"{study['recipe']}.{variant}", _variant_recipe(study["recipe"], study, variant, seed, matched))
            run_id = reserve(path / "study.json", study, run_ids[variant], seed, cfg.recipe)
            label = f"[{i + 1}/{len(study['variants'])}] {variant}" + (f" seed {seed}" if seeds > 1 else "")
            complete(cfg, runs_dir, run_id, label, "compare", divergence_is_result=False)
    curves = {v: [RunStore(runs_dir / r).metrics() for r in ids] for v, ids in run_ids.items()}
    summary = compare_curves(curves, study["reference"], study.get("target_loss"))
    if study.get("read_targets"):
        summary["at_targets"] = {f"{t:g}": compare_curves(curves, study["reference"], t)["variants"]
                                 for t in study["read_targets"]}
    summary.update({"recipe": study["recipe"], "runs": run_ids})
    mat_variants = [v for v, seeds in curves.items() if any("mat_active_fraction" in r for r in seeds[0])]
    if mat_variants:  # which modules each MAT run (or control) had frozen when it stopped, and most of the time
        summary["frozen_at_end"] = {v: [_frozen_at_end(RunStore(runs_dir / r)) for r in run_ids[v]] for v in mat_variants}
        summary["frozen_most"] = {v: [_frozen_most_or_none(RunStore(runs_dir / r)) for r in run_ids[v]] for v in mat_variants}
    atomic_write_json(path / "summary.json", summary)
    write_compare_report(path, summary, curves)
    return summary


def _mean_active(records: list[dict], key: str = "mat_active_fraction") -> float:
    shares = [r[key] for r in records if key in r]
    if not shares:
        raise ConfigError(f"match_active_fraction names a variant that did not run MAT (no {key} logged)")
    return sum(shares) / len(shares)


def _mat_state(store: RunStore, match: str) -> tuple[list[str], dict]:
    """(every module of the run's model, its MAT state at the last checkpoint)."""
    from caplab.models.gpt import GPT
    from caplab.train.mat import mat_modules

    _, _, meta = store.load_training_state()
    if "mat" not in meta:
        raise ConfigError(f"{match} names a variant that did not run MAT (run {store.run_id} has no MAT state)")
    return list(mat_modules(GPT(store.experiment_config().model))), meta["mat"]


def _frozen_most(store: RunStore) -> list[str]:
    """The modules a MAT run kept frozen for at least half of its training steps."""
    modules, state = _mat_state(store, "match_frozen_most")
    if not state.get("steps_counted"):
        raise ConfigError(f"run {store.run_id} predates the count of frozen steps; match_frozen_most cannot read it")
    return [m for m in modules if state["frozen_steps"].get(m, 0) >= state["steps_counted"] / 2]


def _frozen_at_end(store: RunStore) -> list[str]:
    """The modules a MAT run had inactive at its last checkpoint."""
    modules, state = _mat_state(store, "match_frozen")
    return [m for m in modules if m not in state["active"]]


def _frozen_most_or_none(store: RunStore) -> Optional[list[str]]:
    try:
        return _frozen_most(store)
    except ConfigError:  # a run from before the count
        return None


def _value_at(records: list[dict], key: str, x: float) -> Optional[float]:
    """eval_loss at `key` = x, interpolated between evaluations (None outside the curve)."""
    points = [(r[key], r["eval_loss"]) for r in records if key in r and "eval_loss" in r]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= x <= x1:
            return float(y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0))
    return None


def _mean(values: list) -> Optional[float]:
    """Mean over seeds, or None if any seed has no value (censored)."""
    return float(np.mean(values)) if values and all(v is not None for v in values) else None


def _saving_interval(ours: list, theirs: list, rng, n_boot: int = 2000) -> Optional[list]:
    """95% bootstrap interval of 1 - mean(ours) / mean(theirs), seeds resampled in pairs."""
    ours, theirs = np.asarray(ours, float), np.asarray(theirs, float)
    if len(ours) < 2 or len(ours) != len(theirs):
        return None
    picks = rng.integers(len(ours), size=(n_boot, len(ours)))
    savings = 1 - ours[picks].mean(1) / theirs[picks].mean(1)
    return [float(np.percentile(savings, 2.5)), float(np.percentile(savings, 97.5))]


def compare_curves(curves: dict[str, list[list[dict]]], reference: str, target_loss: Optional[float] = None) -> dict:
    """Per variant (curves: one list of evaluation records per seed), seed means of finals and of where each
    seed reaches the target, with the paired-seed FLOP saving against the reference (see module docstring)."""
    rng = np.random.default_rng(0)
    target = float(target_loss) if target_loss is not None else float(np.mean([c[-1]["eval_loss"] for c in curves[reference]]))
    reach = {v: {key: [loss_reach(c, key, target) for c in seeds] for key in ("flops", "step", "elapsed_s")}
             for v, seeds in curves.items()}
    ref_flops = reach[reference]["flops"]
    variants = {}
    for variant, seeds in curves.items():
        finals = [c[-1] for c in seeds]
        mine = reach[variant]["flops"]
        both = all(x is not None for x in mine + ref_flops) and np.mean(ref_flops) > 0
        shares = [r["mat_active_fraction"] for c in seeds for r in c if "mat_active_fraction" in r]
        # the reference's loss after as many FLOPs as this variant spent, per seed (None beyond its curve)
        iso = [_value_at(ref, "flops", f["flops"]) if "flops" in f else None for ref, f in zip(curves[reference], finals)]
        variants[variant] = {
            "final_eval_loss": float(np.mean([f["eval_loss"] for f in finals])),
            "final_eval_loss_per_seed": [f["eval_loss"] for f in finals],
            "flops": _mean([f.get("flops") for f in finals]), "elapsed_s": _mean([f.get("elapsed_s") for f in finals]),
            "steps": float(np.mean([f["step"] for f in finals])),
            "reach_flops": _mean(mine), "reach_step": _mean(reach[variant]["step"]), "reach_s": _mean(reach[variant]["elapsed_s"]),
            "reach_flops_per_seed": mine, "reached": sum(x is not None for x in mine),
            "reach_flops_at_least": _mean([x if x is not None else f.get("flops") for x, f in zip(mine, finals)]),
            "flops_saving": float(1 - np.mean(mine) / np.mean(ref_flops)) if both else None,
            "flops_saving_interval": _saving_interval(mine, ref_flops, rng) if both else None,
            "reference_loss_at_same_flops": _mean(iso),
            "mean_active_fraction": float(np.mean(shares)) if shares else None,
        }
    return {"reference": reference, "target_eval_loss": target, "seeds": len(curves[reference]),
            "target_from": "recipe" if target_loss is not None else "reference final loss", "variants": variants}


def write_compare_report(path: Path, summary: dict, curves: dict[str, list[list[dict]]]) -> Path:
    figures = path / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = []
    for key, label, log in (("flops", "training FLOPs", True), ("step", "training step", True), ("elapsed_s", "wall-clock seconds", False)):
        fig, ax = plots.subplots()
        for i, (variant, seeds) in enumerate(curves.items()):
            for seed, records in enumerate(seeds):
                points = [(r[key], r["eval_loss"]) for r in records if key in r and r[key] and "eval_loss" in r]
                ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", color=f"C{i}", lw=1.0 if len(seeds) > 1 else 1.5,
                        label=variant if seed == 0 else None)
        what = "target" if summary["target_from"] == "recipe" else f"final loss of {summary['reference']}"
        ax.axhline(summary["target_eval_loss"], color="grey", lw=0.8, ls="--", label=what)
        if log:
            ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out loss")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        names.append(f"loss_vs_{key}.png")
        plots.save(fig, figures / names[-1])
    rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{s['final_eval_loss']:.4f}</td><td>{(s['flops'] or 0):.3g}</td>"
        f"<td>{_fmt(s['reach_flops'], '.3g')} ({s['reached']}/{summary['seeds']})</td><td>{_fmt(s['flops_saving'], '+.1%')}"
        f"{_interval_text(s['flops_saving_interval'])}</td><td>{_fmt(s['reach_step'], '.0f')}</td>"
        f"<td>{_fmt(s['mean_active_fraction'], '.2f')}</td></tr>" for v, s in summary["variants"].items())
    body = [f"<h1>Comparison {html.escape(path.name)}</h1><p>target held-out loss "
            f"{summary['target_eval_loss']:.4f} ({html.escape(summary['target_from'])}); seed means over {summary['seeds']} "
            f"seed(s)</p><table><tr><th>variant</th>"
            "<th>final loss</th><th>FLOPs</th><th>FLOPs to target (seeds reaching)</th><th>saving [95% CI]</th><th>step at target</th>"
            f"<th>active share</th></tr>{rows}</table>", *html.images(names), html.json_block("Summary", summary)]
    return html.write_page(path / "report.html", "caplab comparison", body)


def _interval_text(interval: Optional[list]) -> str:
    return f" [{interval[0]:+.1%}, {interval[1]:+.1%}]" if interval else ""


def _fmt(value, spec: str) -> str:
    return "never" if value is None else format(value, spec)


# ---------------------------------------------------------------- the study-kind interface (caplab.studies)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    return resume(create_compare(recipe, overrides, root))


def resume(path: Path) -> list[str]:
    return run_and_report(path, run_compare, summary_lines, "compare")


def summary_lines(s: dict) -> list[str]:
    """Per variant: final loss, FLOPs, where it reached the target and its saving; then each read target."""
    what = "target" if s["target_from"] == "recipe" else f"target: final held-out loss of {s['reference']} ="
    lines = [f"{what} {s['target_eval_loss']:.4f}; means over {s['seeds']} seed(s)"]
    for name, v in s["variants"].items():
        if v["reach_flops"] is None:
            reach = f"reached by {v['reached']}/{s['seeds']} seeds (>= {v['reach_flops_at_least']:.3g} FLOPs)"
        else:
            reach = f"reached at {v['reach_flops']:.3g} FLOPs (step {v['reach_step']:.0f})"
        saving = "" if v["flops_saving"] is None else f", saving {v['flops_saving']:+.1%}"
        if v["flops_saving_interval"]:
            saving += f" [{v['flops_saving_interval'][0]:+.1%}, {v['flops_saving_interval'][1]:+.1%}]"
        lines.append(f"{name:<14} final loss {v['final_eval_loss']:.4f}  {v['flops']:.3g} FLOPs  {v['elapsed_s']:.0f} s  {reach}{saving}")
    for target, variants in s.get("at_targets", {}).items():
        parts = []
        for name, v in variants.items():
            text = f"{name} {v['reached']}/{s['seeds']}"
            if v["flops_saving"] is not None and name != s["reference"]:
                text += f" {v['flops_saving']:+.0%}"
            parts.append(text)
        lines.append(f"held-out loss {target}: seeds reaching it and FLOP saving: " + ", ".join(parts))
    return lines
