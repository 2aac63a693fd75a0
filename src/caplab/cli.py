"""The `caplab` command line: run | demo | sweep | resume | runs | show | report | recipes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from caplab.errors import CaplabError, ConfigError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        print(f"caplab: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _root(args) -> Path | None:
    return Path(args.root) if args.root else None


def cmd_run(args) -> None:
    from caplab.config import load_config, load_recipe, recipe_kind
    from caplab.experiment import run_experiment

    kind = recipe_kind(load_recipe(args.recipe)[1])
    if kind == "sweep":
        from caplab.runs.sweep import create_sweep

        return _run_sweep(create_sweep(args.recipe, {}, None, args.set, None, _root(args)))
    if kind == "percolation":
        return _run_percolation(args)
    if kind == "finetune":
        from caplab.finetune_study import create_study

        return _run_study(create_study(args.recipe, args.set, _root(args)))
    if kind == "compare":
        from caplab.compare_study import create_compare

        return _run_compare(create_compare(args.recipe, args.set, _root(args)))
    cfg = load_config(args.recipe, args.set)
    if cfg.train.ensemble > 1:
        from caplab.experiment import run_ensemble

        print(f"caplab: training {cfg.recipe} ({cfg.train.steps} steps), an ensemble of {cfg.train.ensemble} seeds", file=sys.stderr)
        for path in run_ensemble(cfg, _root(args)):
            print(path)
        return
    print(f"caplab: training {cfg.recipe} ({cfg.train.steps} steps)", file=sys.stderr)
    path = run_experiment(cfg, _root(args))
    print(path)


def cmd_demo(args) -> None:
    from caplab.demo import run_demo

    run_demo(args.set, _root(args))


def _run_percolation(args) -> None:
    from caplab.config import load_percolation_config
    from caplab.percolation_study import run_percolation_study
    from caplab.runs.store import read_json

    name, description, cfg = load_percolation_config(args.recipe, args.set)
    print(f"caplab: simulating the class graph ({cfg.trials} trials per point)", file=sys.stderr)
    path = run_percolation_study(cfg, name, description, _root(args))
    s = read_json(path / "summary.json")
    print(f"critical density: measured {s['critical_density_measured']:.5f} "
          f"[{s['critical_density_interval'][0]:.5f}, {s['critical_density_interval'][1]:.5f}], "
          f"predicted 1/sqrt(|E_c||K_c|) = {s['critical_density_predicted']:.5f}")
    print(f"critical pairs:   measured {s['critical_pairs_measured']:.0f} "
          f"[{s['critical_pairs_interval'][0]:.0f}, {s['critical_pairs_interval'][1]:.0f}], "
          f"predicted sqrt(|E_c||K_c|) = {s['critical_pairs_predicted']:.0f}")
    print(f"scaling with |K_c|: exponent {s['scaling_exponent']:.3f} "
          f"[{s['scaling_interval'][0]:.3f}, {s['scaling_interval'][1]:.3f}], predicted {s['scaling_exponent_predicted']}")
    print(path)


def cmd_sweep(args) -> None:
    from caplab.runs.sweep import create_sweep, open_sweep, parse_grid

    if args.resume:
        path = open_sweep(args.resume, _root(args))
        if args.metric:  # finished runs are kept; only the aggregate changes
            from caplab.runs.sweep import set_sweep_metric

            set_sweep_metric(path, args.metric)
    elif args.recipe:
        path = create_sweep(args.recipe, parse_grid(args.grid), args.seeds, args.set, args.metric, _root(args), args.ensemble)
    else:
        raise ConfigError("give a recipe to sweep, or --resume SWEEP")
    _run_sweep(path)


def _run_sweep(path: Path) -> None:
    from caplab.runs.sweep import run_sweep

    print(f"caplab sweep: {path}", file=sys.stderr)
    summary = run_sweep(path)
    from caplab.runs.report import format_interval

    if "optimizer_tuning" in summary:
        _print_tuning(summary["optimizer_tuning"])
    for s in ([] if "optimizer_tuning" in summary else summary["settings"]):
        print(f"{s['label']:<40} final {summary['metric']} {s['final_mean']:.3f} +- {s['final_std']:.3f}   "
              f"reaches {summary['level']} at step {format_interval(s['crossing'])}")
        if "at_fit" in s:
            af = s["at_fit"]
            where = f"{af['metric']} >= {af['level']:g}"
            value = f"{af['mean']:.3f} [{af['low']:.3f}, {af['high']:.3f}]" if af["mean"] is not None else "none"
            print(f"{'':<40} where {where}: {value} ({af['reached']}/{af['runs']} runs got there)")
        if "peak" in s:
            pk = s["peak"]
            print(f"{'':<40} at its peak {pk['mean']:.3f} [{pk['low']:.3f}, {pk['high']:.3f}] (median step {pk['median_step']:g})")
    for failed in summary.get("failed_runs", []):
        label = ", ".join(f"{k}={v}" for k, v in failed["setting"].items()) or "default"
        print(f"{label:<40} seed {failed['seed']} failed: {failed['error']}")
    if summary["scaling"]:
        sc = summary["scaling"]
        print(f"scaling: step ~ {sc['key']}^{sc['exponent']:.3f}  95% CI [{sc['low']:.3f}, {sc['high']:.3f}]")
    print(path)


def _print_tuning(tuning: dict) -> None:
    """One line per optimizer: best-tuned rate, steps and seconds to the target, the stability edge, the ratios."""
    print(f"held-out loss target {tuning['target_loss']:g}; reference {tuning['reference']}")
    for name, opt in tuning["optimizers"].items():
        edge = f"unstable from lr {opt['smallest_unstable_lr']:g}" if opt["smallest_unstable_lr"] else "stable across the grid"
        if opt["best_reaches_target"]:
            lo, hi = opt["best_reach_step_interval"]
            reach = f"reaches it at step {opt['best_reach_step']:.0f} [{lo:.0f}, {hi:.0f}], {opt['best_reach_train_s']:.1f} s"
        else:
            reach = f"never reaches it (best final loss {opt['best_final_eval_loss']:.3f})"
        best = f"{opt['best_lr']:g}" if opt["best_lr"] is not None else "none"
        best += " (at the grid's edge)" if opt.get("best_at_edge") else ""
        print(f"{name:<10} best lr {best:<7} {reach}; {edge}")
    for name, row in tuning["ratios"].items():
        parts = [f"{key} x{r['ratio']:.2f} [{r['interval'][0]:.2f}, {r['interval'][1]:.2f}]" for key, r in row.items() if r]
        print(f"{name:<10} over {tuning['reference']}: " + ", ".join(parts))


def _run_study(path: Path) -> None:
    from caplab.finetune_study import run_study

    print(f"caplab study: {path}", file=sys.stderr)
    s = run_study(path)
    from caplab.runs.finetune_report import cell_text

    src, tgt = s["source_metric"], s["target_metric"]
    print(f"mean [95% t-interval] over {s['seeds']} seed(s)")
    for row in s["table"]:
        prior = f"prior {row['prior']} " if row["prior"] else ""
        line = (f"{prior}lr {row['lr_name']:<7} CTr {row['correlation']:<4g} {tgt} {cell_text(row[tgt])} (CTe 0) "
                f"{cell_text(row[tgt + '_cte1'])} (CTe 1)   {src} {cell_text(row[src])}")
        if "pruning_gain" in row:
            line += (f"   pruning {src} {cell_text(row['pruning_gain'])} (random units {cell_text(row['pruning_gain_random'])},"
                     f" same units pretrained {cell_text(row['pruning_gain_pretrained'])})")
        print(line)
    for prior, base in s["baselines"].items():
        steps = ", ".join(f"{stage} {values}" for stage, values in base["revival_steps"].items())
        prior = "of the recipe" if prior == "None" else prior
        print(f"prior {prior}: count(b) = count(a) + 1 by itself in {cell_text(base['natural_shortcut_rate'])}; "
              f"steps to {src} >= {s['reach']}: {steps}")
    print(path)


def _run_compare(path: Path) -> None:
    from caplab.compare_study import run_compare

    print(f"caplab compare: {path}", file=sys.stderr)
    s = run_compare(path)
    what = "target" if s["target_from"] == "recipe" else f"target: final held-out loss of {s['reference']} ="
    print(f"{what} {s['target_eval_loss']:.4f}; means over {s['seeds']} seed(s)")
    for name, v in s["variants"].items():
        if v["reach_flops"] is None:
            reach = f"reached by {v['reached']}/{s['seeds']} seeds (>= {v['reach_flops_at_least']:.3g} FLOPs)"
        else:
            reach = f"reached at {v['reach_flops']:.3g} FLOPs (step {v['reach_step']:.0f})"
        saving = "" if v["flops_saving"] is None else f", saving {v['flops_saving']:+.1%}"
        if v["flops_saving_interval"]:
            saving += f" [{v['flops_saving_interval'][0]:+.1%}, {v['flops_saving_interval'][1]:+.1%}]"
        print(f"{name:<14} final loss {v['final_eval_loss']:.4f}  {v['flops']:.3g} FLOPs  {v['elapsed_s']:.0f} s  {reach}{saving}")
    for target, variants in s.get("at_targets", {}).items():
        parts = []
        for name, v in variants.items():
            text = f"{name} {v['reached']}/{s['seeds']}"
            if v["flops_saving"] is not None and name != s["reference"]:
                text += f" {v['flops_saving']:+.0%}"
            parts.append(text)
        print(f"held-out loss {target}: seeds reaching it and FLOP saving: " + ", ".join(parts))
    print(path)


def cmd_resume(args) -> None:
    from caplab.experiment import resume_run
    from caplab.runs.store import runs_root

    root = _root(args)
    if (Path(args.run) / "study.json").is_file() or ((root or runs_root()) / "studies" / args.run / "study.json").is_file():
        from caplab.finetune_study import open_study
        from caplab.runs.store import read_json

        path = open_study(args.run, root)
        return _run_compare(path) if read_json(path / "study.json").get("kind") == "compare" else _run_study(path)
    print(resume_run(args.run, root))


def cmd_runs(args) -> None:
    from caplab.runs.catalog import Catalog
    from caplab.tasks.base import DATA_UNITS

    catalog = Catalog(_root(args))
    if args.rebuild:
        print(f"caplab: catalog rebuilt from {catalog.rebuild()} run directories", file=sys.stderr)
    rows = catalog.runs(recipe=args.recipe, status=args.status)
    headline = sorted({k for r in rows for k, v in r["summary"].items() if k not in ("step", *DATA_UNITS) and isinstance(v, float)})
    table = [["run", "recipe", "status", "step", *headline]]
    for r in rows:
        s = r["summary"]
        table.append([r["run_id"], r["recipe"], r["status"], str(s.get("step", "")),
                      *(f"{s[k]:.3f}" if isinstance(s.get(k), float) else "" for k in headline)])
    print(format_table(table))


def cmd_show(args) -> None:
    from caplab.runs.store import RunStore

    store = RunStore.open(args.run, _root(args))
    info = store.info()
    print(f"run      {info['run_id']}\npath     {store.path}\nrecipe   {info['recipe']}\nstatus   {info['status']}")
    if info.get("error"):
        print(f"error    {info['error']}")
    print("config")
    print(json.dumps(store.config_dict(), indent=2))
    facts = store.read_json("task.json") if (store.path / "task.json").is_file() else {}
    if "reachable_adjective_oracle" in facts:  # the concept world: can the order parameter be passed without the subject?
        graph = facts["class_graph"]
        print(f"world    class graphs: density {min(graph['density']):.3g}-{max(graph['density']):.3g} "
              f"(p_c {min(graph['critical_density']):.3g}-{max(graph['critical_density']):.3g}), components "
              f"{max(graph['components'])} at most, largest {min(graph['largest_component_fraction']):.0%} of nodes at least")
        print(f"         reachable_pairs floor {facts['reachable_floor']:.3f}, adjective-only oracle "
              f"{facts['reachable_adjective_oracle']:.3f}")
    records = store.metrics()
    if records:
        print(f"final metrics (step {records[-1]['step']})")
        width = max(len(k) for k in records[-1])
        for key, value in records[-1].items():
            print(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    checkpoints = store.manifest()["checkpoints"]
    print(f"checkpoints: {len(checkpoints)} (steps {', '.join(str(c['step']) for c in checkpoints)})")


def cmd_report(args) -> None:
    from caplab.runs.report import write_report
    from caplab.runs.store import RunStore, now, runs_root

    stores = [RunStore.open(name, _root(args)) for name in args.runs]
    if args.out:
        out = Path(args.out)
    elif len(stores) == 1:
        out = stores[0].path
    else:
        out = (_root(args) or runs_root()) / "reports" / f"report-{now().replace(':', '')[:17]}"
    print(write_report(stores, out))


def cmd_recipes(args) -> None:
    from caplab.config import recipe_description, recipe_names

    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {recipe_description(name)}")


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="caplab", description="caplab: controlled experiments on how capabilities emerge, compose and change.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_root(p):
        p.add_argument("--root", help="runs root (default: $CAPLAB_HOME/runs or ./runs)")
        return p

    p = with_root(sub.add_parser("run", help="run a recipe: train it, or sweep / simulate when the recipe says so"))
    p.add_argument("recipe", help="a shipped recipe name (see `caplab recipes`) or a .yaml path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.steps=2000")
    p.set_defaults(fn=cmd_run)

    p = with_root(sub.add_parser("demo", help="step-by-step vs direct on one compositions split (CPU, minutes)"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of both runs")
    p.set_defaults(fn=cmd_demo)

    p = with_root(sub.add_parser("sweep", help="a grid of overrides times seeds, one run each, with an aggregate report"))
    p.add_argument("recipe", nargs="?", help="recipe name or .yaml path")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="values of one field, e.g. task.n_train_compositions=10,25,50 (default: the recipe's sweep section)")
    p.add_argument("--seeds", type=int, help="seeds per setting (train.seed = 0..N-1; default: the recipe's sweep section, else 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field of every run")
    p.add_argument("--metric", help="capability to locate emergence of (default: the task's primary metric)")
    p.add_argument("--ensemble", type=int, nargs="?", const=16, metavar="N",
                   help="train runs of one model shape together, N at a time (default 16): seed ensembles in one kernel")
    p.add_argument("--resume", metavar="SWEEP", help="continue an interrupted sweep (its folder or name)")
    p.set_defaults(fn=cmd_sweep)

    p = with_root(sub.add_parser("resume", help="continue a run from its last checkpoint, or an interrupted fine-tuning study"))
    p.add_argument("run")
    p.set_defaults(fn=cmd_resume)

    p = with_root(sub.add_parser("runs", help="list runs from the catalog"))
    p.add_argument("--recipe")
    p.add_argument("--status", choices=["created", "running", "completed", "failed", "interrupted"])
    p.add_argument("--rebuild", action="store_true", help="rebuild the catalog from the run directories first")
    p.set_defaults(fn=cmd_runs)

    p = with_root(sub.add_parser("show", help="config and final metrics of a run"))
    p.add_argument("run")
    p.set_defaults(fn=cmd_show)

    p = with_root(sub.add_parser("report", help="figures and report.html for one or several runs"))
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", help="output folder (default: the run's own folder, or runs/reports/...)")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(fn=cmd_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        args.fn(args)
    except CaplabError as exc:
        print(f"caplab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("caplab: interrupted; resume with `caplab resume RUN`", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
