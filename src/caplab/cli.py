"""The `caplab` command line: run | demo | sweep | resume | runs | show | report | connect | export | recipes."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from caplab.errors import CaplabError, ConfigError, DamagedRun


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints usage too)
        print(f"caplab: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _root(args) -> Path | None:
    return Path(args.root) if args.root else None


def _print(lines: list[str]) -> None:
    for line in lines:
        print(line)


def _logger_overrides(names: str | None) -> list[str]:
    """`--log tensorboard,wandb` as overrides of the loggers section (each tracker with its defaults)."""
    return [f"loggers.{name.strip()}={{}}" for name in (names or "").split(",") if name.strip()]


def cmd_run(args) -> None:
    from caplab.studies import run_recipe

    _print(run_recipe(args.recipe, [*args.set, *_logger_overrides(args.log)], _root(args)))


def cmd_export(args) -> None:
    from caplab.runs.store import RunStore

    store = RunStore.open(args.run, _root(args))
    if not (args.to or args.checkpoints or args.data):
        raise ConfigError("say what to export: --to TRACKER, --checkpoints hf DIR, or --data FILE.parquet")
    if args.to:
        from caplab.runs.trackers import export_run

        export_run(store, args.to)
        print(f"caplab: exported {store.run_id} to {args.to}", file=sys.stderr)
    if args.checkpoints:
        from caplab.interop import export_checkpoints

        kind, folder = args.checkpoints
        if kind != "hf":
            raise ConfigError(f"bad value {kind!r} for --checkpoints; valid: hf")
        written = export_checkpoints(store.run_id, Path(folder), store.path.parent)
        print(f"caplab: {len(written)} checkpoints of {store.run_id} as HuggingFace folders in {folder}", file=sys.stderr)
    if args.data:
        from caplab.tasks.export import write_parquet

        cfg = store.experiment_config()
        write_parquet(cfg.make_task(), Path(args.data), args.samples, args.seed, cfg.task)
        print(f"caplab: {args.samples} samples of {cfg.task['name']} in {args.data}", file=sys.stderr)


def cmd_demo(args) -> None:
    from caplab.studies.demo import run_demo

    run_demo(args.set, _root(args))


def cmd_sweep(args) -> None:
    from caplab.studies import refuse_under_torchrun, sweep

    refuse_under_torchrun("sweep")
    if args.resume:
        path = sweep.open_sweep(args.resume, _root(args))
        if args.metric:  # finished runs are kept; only the aggregate changes
            sweep.set_sweep_metric(path, args.metric)
        if args.launcher:
            sweep.set_sweep_launcher(path, args.launcher, args.workers, args.address)
    elif args.recipe:
        from caplab.studies.search import parse_space

        search = {"engine": args.search, "space": parse_space(args.space), "trials": args.trials, "direction": args.direction}
        path = sweep.create_sweep(args.recipe, sweep.parse_grid(args.grid), args.seeds, args.set, args.metric, _root(args),
                                  args.ensemble, args.launcher, args.workers, args.address, search)
    else:
        raise ConfigError("give a recipe to sweep, or --resume SWEEP")
    _print(sweep.resume(path))


def cmd_resume(args) -> None:
    from caplab.studies import resume

    _print(resume(args.run, _root(args)))


def cmd_runs(args) -> None:
    from caplab.runs.catalog import Catalog
    from caplab.tasks.base import DATA_UNITS

    catalog = Catalog(_root(args)) if args.rebuild else Catalog.for_reading(_root(args))
    if args.rebuild:
        count, damaged = catalog.rebuild()
        for line in damaged:
            print(f"caplab: warning: skipped damaged run {line}", file=sys.stderr)
        print(f"caplab: catalog rebuilt from {count} run directories" + (f" ({len(damaged)} damaged, skipped)" if damaged else ""),
              file=sys.stderr)
    rows = catalog.live_runs(recipe=args.recipe, status=args.status)
    if args.json:
        keys = ("run_id", "recipe", "status", "created", "updated", "path", "summary", "error")
        print(json.dumps([{k: r.get(k) for k in keys if k in r} for r in rows], indent=1))
        return
    headline = sorted({k for r in rows for k, v in r["summary"].items() if k not in ("step", *DATA_UNITS) and isinstance(v, float)})
    table = [["run", "recipe", "status", "step", *headline]]
    for r in rows:
        s = r["summary"]
        table.append([r["run_id"], r["recipe"], r["status"], str(s.get("step", "")),
                      *(f"{s[k]:.3f}" if isinstance(s.get(k), float) else "" for k in headline)])
    print(format_table(table))


def cmd_show(args) -> None:
    """Everything of the run that can be read; a damaged part is named on stderr and the exit is non-zero."""
    from caplab.runs.owner import live_status
    from caplab.runs.store import RunStore, read_document, read_or_note

    store = RunStore.open(args.run, _root(args))
    damaged: list[str] = []
    part = lambda read, default: read_or_note(read, default, damaged)  # noqa: E731
    if args.json:
        info = part(store.info, {})
        records = part(store.metrics, [])
        checkpoints = part(lambda: store.manifest()["checkpoints"], None)
        print(json.dumps({"run_id": info.get("run_id", store.path.name), "path": str(store.path), "recipe": info.get("recipe"),
                          "status": live_status(info["status"], store.path) if "status" in info else None,
                          "error": info.get("error"), "config": part(store.config_dict, None),
                          "final_metrics": records[-1] if records else None, "summary": part(store.summary, None),
                          "checkpoints": [c.get("step") for c in checkpoints] if checkpoints is not None else None,
                          "damaged": damaged}, indent=1))
        if damaged:
            raise DamagedRun("; ".join(damaged))
        return

    info = part(store.info, {})
    print(f"run      {info.get('run_id', store.path.name)}\npath     {store.path}\nrecipe   {info.get('recipe', '?')}\n"
          f"status   {live_status(info['status'], store.path) if 'status' in info else '?'}")
    if info.get("error"):
        print(f"error    {info['error']}")
    config = part(store.config_dict, None)
    if config is not None:
        print("config")
        print(json.dumps(config, indent=2))
    facts = part(lambda: read_document(store.path / "task.json") if (store.path / "task.json").is_file() else {}, {})
    if "reachable_adjective_oracle" in facts:  # the concept world: can the order parameter be passed without the subject?
        graph = facts["class_graph"]
        print(f"world    class graphs: density {min(graph['density']):.3g}-{max(graph['density']):.3g} "
              f"(p_c {min(graph['critical_density']):.3g}-{max(graph['critical_density']):.3g}), components "
              f"{max(graph['components'])} at most, largest {min(graph['largest_component_fraction']):.0%} of nodes at least")
        print(f"         reachable_pairs floor {facts['reachable_floor']:.3f}, adjective-only oracle "
              f"{facts['reachable_adjective_oracle']:.3f}")
    records = part(store.metrics, [])
    if records:
        print(f"final metrics (step {records[-1]['step']})")
        width = max(len(k) for k in records[-1])
        for key, value in records[-1].items():
            print(f"  {key:<{width}}  {value:.4f}" if isinstance(value, float) else f"  {key:<{width}}  {value}")
    checkpoints = part(lambda: store.manifest()["checkpoints"], None)
    if checkpoints is not None:
        print(f"checkpoints: {len(checkpoints)} (steps {', '.join(str(c.get('step')) for c in checkpoints)})")
    if damaged:
        raise DamagedRun("; ".join(damaged))


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


def cmd_connect(args) -> None:
    from caplab.studies.connect import connect_runs

    out = connect_runs(args.run_a, args.run_b, args.path, _root(args), Path(args.out) if args.out else None, args.points,
                       args.steps, args.lr, args.batch_size, args.start, args.seed)
    print(out)


def cmd_recipes(args) -> None:
    from caplab.recipe_files import recipe_description, recipe_names

    names = recipe_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {recipe_description(name)}")


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="caplab", description="caplab: controlled experiments on how capabilities emerge, compose and change.")
    from caplab import __version__

    parser.add_argument("--version", action="version", version=f"caplab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def with_root(p):
        p.add_argument("--root", help="runs root (default: $CAPLAB_HOME/runs or ./runs)")
        return p

    p = with_root(sub.add_parser("run", help="run a recipe: train it, or sweep / simulate when the recipe says so"))
    p.add_argument("recipe", help="a shipped recipe name (see `caplab recipes`) or a .yaml path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. train.steps=2000")
    p.add_argument("--log", metavar="TRACKERS", help="also stream to experiment trackers: tensorboard,wandb,mlflow (extra 'tracking')")
    p.set_defaults(fn=cmd_run)

    p = with_root(sub.add_parser("export", help="a run into other tools: a tracker, HuggingFace checkpoints, Parquet data"))
    p.add_argument("run", help="a run id, a unique id prefix, or a run directory")
    p.add_argument("--to", choices=["tensorboard", "wandb", "mlflow"], help="replay into an experiment tracker")
    p.add_argument("--checkpoints", nargs=2, metavar=("hf", "DIR"),
                   help="every checkpoint as a HuggingFace model folder DIR/step<N> (Pythia-style revisions)")
    p.add_argument("--data", metavar="FILE.parquet", help="samples of the run's task as Parquet (pandas, HF datasets)")
    p.add_argument("--samples", type=int, default=10_000, help="with --data: how many (default 10,000)")
    p.add_argument("--seed", type=int, default=0, help="with --data: the sampling seed (default 0)")
    p.set_defaults(fn=cmd_export)

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
    p.add_argument("--launcher", help="where runs train: local (default), ray, submitit (Slurm or its local executor), slurm")
    p.add_argument("--workers", type=int, help="runs at once (ray: CPUs of the local Ray instance; submitit/slurm: jobs)")
    p.add_argument("--address", help="ray: the address of an existing Ray cluster, HOST:PORT (default: start one here)")
    p.add_argument("--search", help="let an engine propose the settings instead of a grid: optuna")
    p.add_argument("--space", action="append", default=[], metavar="KEY=KIND:LOW:HIGH",
                   help="a searched knob: KIND float, log or int (e.g. train.lr=log:1e-4:1e-2), or KEY=choice:A,B")
    p.add_argument("--trials", type=int, help="settings the search tries (default: the recipe's, else 16)")
    p.add_argument("--direction", choices=["minimize", "maximize"],
                   help="of the metric (default: minimize a *loss, maximize anything else)")
    p.set_defaults(fn=cmd_sweep)

    p = with_root(sub.add_parser("resume", help="continue a run from its last checkpoint, or an interrupted sweep or study"))
    p.add_argument("run", help="a run id, a unique id prefix or a run directory; or a sweep or study folder name or path")
    p.set_defaults(fn=cmd_resume)

    p = with_root(sub.add_parser("runs", help="list runs from the catalog"))
    p.add_argument("--recipe")
    p.add_argument("--status", choices=["created", "running", "completed", "failed", "interrupted"])
    p.add_argument("--rebuild", action="store_true", help="rebuild the catalog from the run directories first")
    p.add_argument("--json", action="store_true", help="one JSON list of the runs (id, recipe, status, path, summary)")
    p.set_defaults(fn=cmd_runs)

    p = with_root(sub.add_parser("show", help="config and final metrics of a run"))
    p.add_argument("run", help="a run id, a unique id prefix, or a run directory")
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.set_defaults(fn=cmd_show)

    p = with_root(sub.add_parser("report", help="figures and report.html for one or several runs"))
    p.add_argument("runs", nargs="+", help="run ids, unique id prefixes or run directories (several: overlaid)")
    p.add_argument("--out", help="output folder (default: the run's own folder, or runs/reports/...)")
    p.set_defaults(fn=cmd_report)

    p = with_root(sub.add_parser("connect", help="loss and accuracy along a path between two runs' weights, and its barrier"))
    p.add_argument("run_a", help="run at alpha = 0 (id, unique prefix or directory)")
    p.add_argument("run_b", help="run at alpha = 1")
    p.add_argument("--path", default="linear", help="linear (default), quadratic (a trained Bezier curve) or aligned "
                   "(linear after permuting B's channels to match A's)")
    p.add_argument("--points", type=int, default=10, help="segments of the path (default 10: 11 points)")
    p.add_argument("--steps", type=int, default=240, help="quadratic: training steps of the control point (default 240)")
    p.add_argument("--lr", type=float, default=0.1, help="quadratic: SGD rate of the control point (default 0.1, the paper's; x 0.1 for the last third)")
    p.add_argument("--batch-size", type=int, default=128, help="quadratic: images per step (default 128)")
    p.add_argument("--start", default="random", help="quadratic: the control point starts from a fresh init (random, "
                   "default) or the linear midpoint (linear)")
    p.add_argument("--seed", type=int, default=0, help="the statistics batches, the control point's init and data")
    p.add_argument("--out", help="output folder (default: <root>/connections/<A>--<B>-<path>)")
    p.set_defaults(fn=cmd_connect)

    p = sub.add_parser("recipes", help="list the shipped recipes")
    p.set_defaults(fn=cmd_recipes)
    return parser


class Terminated(BaseException):
    """SIGTERM, handled as Ctrl-C is: runs are marked interrupted and stay resumable."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    import sqlite3

    from safetensors import SafetensorError

    args = make_parser().parse_args(argv)
    from caplab.console import configure_console

    configure_console()  # caplab's log lines (progress, warnings) on stderr
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding program): leave its handlers alone
        previous = None
    try:
        args.fn(args)
    except CaplabError as exc:
        print(f"caplab: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `caplab runs | head`: the reader has what it wanted; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not fail again
        return 0
    except (KeyboardInterrupt, Terminated) as exc:
        runs = " ".join(getattr(exc, "caplab_runs", [])) or "RUN"
        print(f"caplab: interrupted; resume with `caplab resume {runs}`", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    except OSError as exc:  # a full disk, a read-only folder, a missing permission: the OS's words, one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"caplab: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except (sqlite3.Error, SafetensorError) as exc:  # e.g. "database or disk is full"
        print(f"caplab: error: cannot write: {exc}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "torch" in sys.modules:  # a torchrun process group, if this process joined one
            from caplab.train import distributed

            distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
