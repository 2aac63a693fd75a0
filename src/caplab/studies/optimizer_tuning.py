"""Learning-rate sweeps of optimizers: where each one is stable, and each one's best-tuned steps and seconds to a loss.

A sweep whose grid crosses `train.optimizer` with `train.lr` (and seeds) and
whose section says `analysis: optimizer_tuning` and `target_loss: L` is read
here. Per (optimizer, learning rate):

    diverged          runs whose loss or weights stopped being finite (failed runs of the sweep)
    spiked            runs with an evaluation at least 10% of their step-0 loss above their best earlier
                      held-out loss (a blow-up the decaying schedule may have let them recover from)
    unstable          diverged, spiked, or finished with a held-out loss above their loss at step 0
    final_eval_loss   mean and 95% bootstrap interval over the completed seeds
    reach_step        per seed, the step where the held-out loss first reaches L (interpolated
                      between evaluations); None when it never does (a lower bound at the last step)
    reach_train_s     the same in training seconds (wall clock minus the time spent evaluating)
    spectral          where the runs logged spectral diagnostics (`diagnostics.spectral_every`): the
                      mean over completed seeds of each seed's mean over its logged steps after step 0 of
                      grad_energy_share, grad_energy_share_random, grad_subspace_overlap and
                      spectra_cache_overlap, and the lowest single logged spectra_cache_overlap

Variants read as optimizers of their own: `spectra@R` (another spike share), `muon-plain` / `spectra-nesterov`
(train.nesterov switched from the method's default), `+adamwX` (train.adamw_side_lr = X).

Per optimizer, the best-tuned learning rate is the one with the fewest mean
steps to L among those where every seed completed and reached it (or, if
none did, the lowest mean final loss, marked as never reaching L), and the
stability edge is the smallest learning rate with an unstable seed; `best_at_edge`
flags a best rate at either end of the grid (the optimum may lie outside it). Against
the `reference` optimizer, the ratios of best-tuned mean steps and seconds
to L come with a bootstrap interval over seeds (each optimizer's seeds
resampled on their own). The best learning rate is chosen on the same seeds
it is reported on, which favours every optimizer alike by the noise of the
choice; a grid of 3+ seeds keeps that small against the differences read.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Optional

import numpy as np

from caplab.analysis.emergence import loss_reach
from caplab.errors import ConfigError
from caplab.runs.store import atomic_write_json


DEFAULT_RANK = 0.015  # TrainConfig.spectral_rank_fraction


def _records(path: Path) -> list[dict]:
    """Every run of the sweep that completed or failed: optimizer, lr, seed, status and its evaluations."""
    from caplab.studies.sweep import sweep_runs

    out = []
    for entry, store in sweep_runs(path, ("completed", "failed")):
        train = store.config_dict()["train"]
        evaluations = [{**r, "train_s": r["elapsed_s"] - r.get("eval_s", 0.0)} for r in store.metrics()
                       if "eval_loss" in r and "elapsed_s" in r]
        name = train["optimizer"]
        if name == "spectra" and train.get("spectral_rank_fraction", DEFAULT_RANK) != DEFAULT_RANK:
            name = f"spectra@{train['spectral_rank_fraction']:g}"  # another spike share (0: the rescaling-only control)
        if train.get("nesterov") is not None and train["nesterov"] != (train["optimizer"] == "muon"):
            name += "-nesterov" if train["nesterov"] else "-plain"  # the momentum form switched (a control)
        if train.get("adamw_side_lr") is not None:
            name += f"+adamw{train['adamw_side_lr']:g}"  # the AdamW-side parameters held at their own rate
        # the run's own seed, so a confirmation sweep that sets train.seed in its grid reads as more seeds
        out.append({"optimizer": name, "lr": float(train["lr"]), "seed": int(train["seed"]), "run_id": entry["run_id"],
                    "diverged": store.info()["status"] == "failed", "evaluations": evaluations})
    return out


def _interval(values, rng, n_boot: int) -> tuple[float, float]:
    values = np.asarray(values, float)
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(len(values), size=(n_boot, len(values)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


SPECTRAL_KEYS = ("grad_energy_share", "grad_energy_share_random", "grad_subspace_overlap", "spectra_cache_overlap")


def _spectral(completed: list[dict]) -> dict:
    """Seed means of per-seed means over logged steps after 0 (see the module docstring); {} if none were logged."""
    out = {}
    for key in SPECTRAL_KEYS:
        per_seed = [[e[key] for e in r["evaluations"] if key in e and e["step"] > 0] for r in completed]
        per_seed = [v for v in per_seed if v]
        if per_seed:
            out[key] = float(np.mean([np.mean(v) for v in per_seed]))
            if key == "spectra_cache_overlap":
                out["spectra_cache_overlap_min"] = float(min(min(v) for v in per_seed))
    return out


def _spiked(evaluations: list[dict], share: float = 0.1) -> bool:
    """An evaluation at least `share` x the step-0 loss above the lowest held-out loss before it."""
    losses = [e["eval_loss"] for e in evaluations]
    if len(losses) < 2:
        return False
    best = np.minimum.accumulate(losses)[:-1]
    return bool((np.asarray(losses[1:]) - best >= share * losses[0]).any())


def _setting(runs: list[dict], target: float, rng, n_boot: int) -> dict:
    completed = [r for r in runs if not r["diverged"] and r["evaluations"]]
    finals = [r["evaluations"][-1]["eval_loss"] for r in completed]
    spiked = sum(_spiked(r["evaluations"]) for r in runs)
    unstable = sum(bool(r["diverged"] or _spiked(r["evaluations"]) or (
        r["evaluations"] and r["evaluations"][-1]["eval_loss"] > r["evaluations"][0]["eval_loss"])) for r in runs)
    reach = [loss_reach(r["evaluations"], "step", target) for r in completed]
    seconds = [loss_reach(r["evaluations"], "train_s", target) for r in completed]
    return {
        "seeds": len(runs), "diverged": sum(r["diverged"] for r in runs), "spiked": int(spiked), "unstable": int(unstable),
        "final_eval_loss": float(np.mean(finals)) if finals else None,
        "final_eval_loss_interval": list(_interval(finals, rng, n_boot)) if finals else None,
        "reach_step": reach, "reach_train_s": seconds,
        "all_reach": bool(completed) and len(completed) == len(runs) and all(x is not None for x in reach),
        "spectral": _spectral(completed),
        "run_ids": [r["run_id"] for r in runs],
    }


def aggregate(path: Path, target_loss: float, reference: str = "adamw", n_boot: int = 2000, write: bool = True,
              more: tuple[Path, ...] = ()) -> dict:
    """Per optimizer and learning rate, and per optimizer best-tuned (see the module docstring).

    `more`: further sweeps of the same recipe (e.g. a grid extended to a lower rate) read as part of this one;
    the summary is written to `path`.
    """
    rng = np.random.default_rng(0)
    grouped: dict[str, dict[float, list]] = defaultdict(lambda: defaultdict(list))
    seen = set()
    for run in [r for p in (path, *more) for r in _records(p)]:
        key = (run["optimizer"], run["lr"], run["seed"])
        if key in seen:
            raise ConfigError(f"optimizer {key[0]}, lr {key[1]:g}, seed {key[2]} appears in more than one of the sweeps read together")
        seen.add(key)
        grouped[run["optimizer"]][run["lr"]].append(run)
    optimizers = {}
    for optimizer, by_lr in sorted(grouped.items()):
        settings = {lr: _setting(runs, target_loss, rng, n_boot) for lr, runs in sorted(by_lr.items())}
        reaching = {lr: s for lr, s in settings.items() if s["all_reach"]}
        if reaching:
            best = min(reaching, key=lambda lr: np.mean(reaching[lr]["reach_step"]))
        else:
            finished = {lr: s for lr, s in settings.items() if s["final_eval_loss"] is not None}
            best = min(finished, key=lambda lr: finished[lr]["final_eval_loss"]) if finished else None
        unstable = [lr for lr, s in settings.items() if s["unstable"]]
        chosen = settings.get(best, {})
        optimizers[optimizer] = {
            "settings": {f"{lr:g}": s for lr, s in settings.items()},
            "best_lr": best, "best_reaches_target": bool(reaching),
            "best_reach_step": float(np.mean(chosen["reach_step"])) if reaching else None,
            "best_reach_step_interval": list(_interval(chosen["reach_step"], rng, n_boot)) if reaching else None,
            "best_reach_train_s": float(np.mean(chosen["reach_train_s"])) if reaching else None,
            "best_final_eval_loss": chosen.get("final_eval_loss"),
            "best_at_edge": best is not None and len(settings) > 1 and best in (min(settings), max(settings)),
            "smallest_unstable_lr": min(unstable) if unstable else None,
            "largest_stable_lr": max((lr for lr in settings if lr not in unstable), default=None),
        }
    summary = {"target_loss": target_loss, "reference": reference, "optimizers": optimizers,
               "ratios": _ratios(optimizers, reference, rng, n_boot)}
    if write:
        atomic_write_json(Path(path) / "optimizer_tuning.json", summary)
    return summary


def _ratios(optimizers: dict, reference: str, rng, n_boot: int) -> dict:
    """Best-tuned mean steps and seconds to the target, each optimizer over the reference, with bootstrap intervals."""
    ref = optimizers.get(reference)
    if ref is None or not ref["best_reaches_target"]:
        return {}
    ref_setting = ref["settings"][f"{ref['best_lr']:g}"]
    out = {}
    for name, opt in optimizers.items():
        if name == reference or not opt["best_reaches_target"]:
            continue
        setting = opt["settings"][f"{opt['best_lr']:g}"]
        row = {}
        for key in ("reach_step", "reach_train_s"):
            ours, theirs = np.asarray(setting[key], float), np.asarray(ref_setting[key], float)
            if not theirs.min() > 0:  # the reference is there before training: no ratio
                row[key] = None
                continue
            samples = [ours[rng.integers(len(ours), size=len(ours))].mean() / theirs[rng.integers(len(theirs), size=len(theirs))].mean()
                       for _ in range(n_boot)]
            row[key] = {"ratio": float(ours.mean() / theirs.mean()),
                        "interval": [float(np.percentile(samples, 2.5)), float(np.percentile(samples, 97.5))]}
        out[name] = row
    return out


def tuning_figure(path: Path, summary: dict) -> Optional[Path]:
    """Final held-out loss against learning rate per optimizer (unstable seeds marked), the target dashed."""
    from caplab.runs import plots

    fig, ax = plots.subplots()
    for i, (name, opt) in enumerate(summary["optimizers"].items()):
        lrs = [float(lr) for lr in opt["settings"]]
        finals = [s["final_eval_loss"] if s["final_eval_loss"] is not None else np.nan for s in opt["settings"].values()]
        ax.plot(lrs, finals, "o-", color=f"C{i}", label=f"{name} (best lr {opt['best_lr']:g})" if opt["best_lr"] else name)
        bad = [(lr, s) for lr, s in zip(lrs, opt["settings"].values()) if s["unstable"]]
        if bad:
            top = np.nanmax(finals) if np.isfinite(finals).any() else summary["target_loss"]
            ax.plot([lr for lr, _ in bad], [s["final_eval_loss"] if s["final_eval_loss"] is not None else top for _, s in bad],
                    "x", color=f"C{i}", ms=9, mew=2)
    ax.axhline(summary["target_loss"], color="grey", ls="--", lw=0.8, label=f"target {summary['target_loss']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("final held-out loss (x: a seed diverged or ended above its start)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    out = Path(path) / "figures" / "optimizer_tuning.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.save(fig, out)
    return out


def summary_lines(tuning: dict) -> list[str]:
    """One line per optimizer: best-tuned rate, steps and seconds to the target, the stability edge, the ratios."""
    lines = [f"held-out loss target {tuning['target_loss']:g}; reference {tuning['reference']}"]
    for name, opt in tuning["optimizers"].items():
        edge = f"unstable from lr {opt['smallest_unstable_lr']:g}" if opt["smallest_unstable_lr"] else "stable across the grid"
        if opt["best_reaches_target"]:
            lo, hi = opt["best_reach_step_interval"]
            reach = f"reaches it at step {opt['best_reach_step']:.0f} [{lo:.0f}, {hi:.0f}], {opt['best_reach_train_s']:.1f} s"
        else:
            reach = f"never reaches it (best final loss {opt['best_final_eval_loss']:.3f})"
        best = f"{opt['best_lr']:g}" if opt["best_lr"] is not None else "none"
        best += " (at the grid's edge)" if opt.get("best_at_edge") else ""
        lines.append(f"{name:<10} best lr {best:<7} {reach}; {edge}")
    for name, row in tuning["ratios"].items():
        parts = [f"{key} x{r['ratio']:.2f} [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]" for key, r in row.items() if r]
        lines.append(f"{name:<10} over {tuning['reference']}: " + ", ".join(parts))
    return lines
