"""`kind: finetune` recipes: what fine-tuning does to a capability (Jain et al., ICLR 2024).

One study chains catalogued runs and then dissects them:

    pretrain               the `pretrain:` recipe (or, with `study.compiled`, the compiled RASP program,
                           densified with N(0, study.noise^2), saved as a run at step 0)
    finetune-<lr>-ctr<c>   from pretrain: the `finetune:` changes, at every learning rate x CTr
    reverse                from the focus cell: the `reverse:` changes (train the pretraining capability again)
    scratch                the same reverse training from a fresh initialisation
    swapped, swapped-ft    pretraining with the operand roles swapped (`swapped:` changes, or the program
                           compiled for the other letter), then the reverse training from it (Scr.+FT)

That chain runs once per (prior, seed) of `study.priors` x `study.seeds` (stage names then end in
-<prior>-s<seed>). On every cell (`study.instruments: all`; or only the focus cell, `study.focus_lr`,
`study.focus_correlation`): pruning by theta x grad of the pretraining capability's loss (accuracy of both
capabilities against the number of units pruned) with two controls (as many random units; the same units
zeroed in the pretrained model), and linear probes of count(a), count(b) and count(c) after every block
against the majority-class rate. Per chain: the same pruning procedure and the probes on the pretrained
model, the probes on an untrained model of the same shape, how often count(b) = count(a) + 1 holds without
any shortcut made (the score of a pure wrapper at CTe = 0), the focus cell's attention from the readout
position onto the two operands, and the revival speeds.

    <runs root>/studies/<study id>/
        study.json    the recipe, resolved, and the run id of every stage (reserved before the run starts)
        summary.json  `table` (per prior, lr and CTr: mean and 95% t-interval over seeds),
                      `baselines` (per prior), `chains` (every number of every chain)
        figures/, report.html

An interrupted study continues with `caplab resume <study id>`: finished runs are kept, a run that
died resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from caplab.analysis.intervals import mean_interval
from caplab.config import ExperimentConfig, build_dataclass, load_recipe, merge_recipe, resolve, set_key
from caplab.errors import ConfigError
from caplab.runs.store import RunStore, atomic_write_json, read_json
from caplab.studies.folder import complete, new_folder, reserve_all, run_and_report

log = logging.getLogger(__name__)

SECTIONS = ("pretrain", "finetune", "reverse", "swapped")


@dataclass
class FinetuneStudyConfig:
    lr_names: list[str] = field(default_factory=lambda: ["large", "medium", "small"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-5])  # fine-tuning lr of each name
    correlations: list[float] = field(default_factory=lambda: [0.0, 1.0])  # CTr values
    focus_lr: str = "medium"  # the cell reverse fine-tuning starts from, and whose attention is read
    focus_correlation: float = 1.0
    source_metric: str = "count_a"  # the pretraining capability
    target_metric: str = "count_b"  # the fine-tuning capability
    prune_granularity: Literal["row", "head", "weight"] = "row"
    prune_max: int = 15  # K = 0..prune_max units
    control_ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 15])  # K of the pruning controls (<= prune_max)
    random_prune_draws: int = 3  # draws of the random-units pruning control, averaged
    probe_samples: int = 2048
    probe_steps: int = 300
    reach: float = 0.9  # revival speed: the first evaluated step where source_metric reaches this
    compiled: Optional[Literal["counter"]] = None  # the pretrained model is this compiled RASP program
    noise: float = 1e-3  # densifying noise (std) of the compiled weights
    seeds: int = 1  # the whole chain once per seed (train.seed 0..seeds-1); 1: the recipe's own seed
    priors: list[str] = field(default_factory=list)  # pretraining operand priors, one chain each ([]: the recipe's)
    instruments: Literal["all", "focus"] = "all"  # the cells pruned and probed
    shortcut_samples: int = 20000  # windows drawn to measure how often count(b) = count(a) + 1 by itself
    workers: int = 1  # chains (prior x seed) trained, and then dissected, in this many processes at once

    def __post_init__(self) -> None:
        if len(self.lr_names) != len(self.learning_rates) or not self.lr_names:
            raise ValueError("study.lr_names and study.learning_rates must be lists of the same, non-zero length")
        if self.focus_lr not in self.lr_names or self.focus_correlation not in self.correlations:
            raise ValueError(f"study.focus_lr / focus_correlation must name a cell of the grid "
                             f"({self.lr_names} x {self.correlations})")
        if self.prune_max < 1 or self.probe_samples < 8 or self.probe_steps < 1:
            raise ValueError("study.prune_max, probe_samples and probe_steps must be positive (probe_samples >= 8)")
        if self.seeds < 1 or self.random_prune_draws < 1 or self.shortcut_samples < 1 or self.workers < 1:
            raise ValueError("study.seeds, random_prune_draws, shortcut_samples and workers must be at least 1")
        if len(set(self.priors)) != len(self.priors):
            raise ValueError(f"study.priors has a repeated prior: {self.priors}")

    @property
    def groups(self) -> list[tuple[Optional[str], Optional[int]]]:
        """(prior, seed) of every chain: None where the recipe's own is kept."""
        return [(prior, seed if self.seeds > 1 else None) for prior in (self.priors or [None]) for seed in range(self.seeds)]


def load_study(recipe: str, overrides: list[str] = ()) -> tuple[str, str, dict, FinetuneStudyConfig]:
    """(name, description, raw sections, study config) of a `kind: finetune` recipe with `SECTION.KEY=VALUE` overrides."""
    from caplab.config import parse_value, recipe_kind

    name, data = load_recipe(recipe)
    if recipe_kind(data) != "finetune":
        raise ConfigError(f"recipe {recipe!r} is not a fine-tuning study")
    unknown = [k for k in data if k not in ("kind", "description", "study") + SECTIONS]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: kind, description, study, {', '.join(SECTIONS)}")
    sections = {s: copy.deepcopy(data.get(s) or {}) for s in SECTIONS}
    study = dict(data.get("study") or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        head, _, rest = key.partition(".")
        if not sep or not rest or head not in SECTIONS + ("study",):
            raise ConfigError(f"bad override {item!r}; a fine-tuning study takes SECTION.KEY=VALUE with SECTION one of "
                              f"study, {', '.join(SECTIONS)}")
        if head == "study":
            study[rest] = parse_value(raw)
        else:
            sections[head] = set_key(sections[head], rest, parse_value(raw))
    cfg = build_dataclass(FinetuneStudyConfig, study, "study")
    if not sections["pretrain"]:
        raise ConfigError(f"recipe {recipe!r} needs a 'pretrain' section (task, model, train)")
    return name, str(data.get("description", "")).strip(), sections, cfg


# ---------------------------------------------------------------- the plan


def _cell(lr_name: str, correlation: float) -> str:
    return f"finetune-{lr_name}-ctr{correlation:g}"


def _suffix(prior: Optional[str], seed: Optional[int]) -> str:
    return "".join(f"-{part}" for part in (prior, None if seed is None else f"s{seed}") if part is not None)


def plan(name: str, sections: dict, cfg: FinetuneStudyConfig) -> list[dict]:
    """Every stage: {"stage" (unique), "base", "prior", "seed", "recipe", "init_from" (a stage or None), "compile"}.

    One chain of stages per (prior, seed) of `cfg.groups`; with one seed and no priors the stage names are the
    bare base names (pretrain, finetune-medium-ctr1, ...), otherwise they end in -<prior>-s<seed>.
    """
    if cfg.priors and (cfg.compiled or sections["pretrain"].get("task", {}).get("name") != "pcfg_counting"):
        raise ConfigError("study.priors needs a pcfg_counting pretraining (operand priors belong to that task)")
    stages = []
    for prior, seed in cfg.groups:
        stages += _chain(sections, cfg, prior, seed)
    for stage in stages:
        stage["recipe"] = {**stage["recipe"], "recipe": f"{name}.{stage['stage']}",
                           "description": f"stage {stage['stage']} of the fine-tuning study {name}"}
        stage["run_id"] = None
    return stages


def _chain(sections: dict, cfg: FinetuneStudyConfig, prior: Optional[str], seed: Optional[int]) -> list[dict]:
    pretrain = copy.deepcopy(sections["pretrain"])
    if prior is not None:
        pretrain = set_key(pretrain, "task.operand_prior", prior)
    if seed is not None:
        pretrain = set_key(pretrain, "train.seed", seed)
    if cfg.compiled:
        pretrain["model"] = _compile(cfg.compiled, pretrain, "a").model.cfg.to_dict()
    suffix = _suffix(prior, seed)
    stages = []

    def add(base: str, recipe: dict, init_from: Optional[str], compile_for: Optional[str] = None) -> None:
        stages.append({"stage": base + suffix, "base": base, "prior": prior, "seed": seed, "recipe": recipe,
                       "init_from": None if init_from is None else init_from + suffix, "compile": compile_for})

    add("pretrain", pretrain, None, "a" if cfg.compiled else None)
    finetune = merge_recipe(pretrain, sections["finetune"])
    for lr_name, lr in zip(cfg.lr_names, cfg.learning_rates):
        for correlation in cfg.correlations:
            add(_cell(lr_name, correlation),
                merge_recipe(finetune, {"task": {"correlation": correlation}, "train": {"lr": lr, "min_lr": lr / 100}}),
                "pretrain")
    reverse = merge_recipe(pretrain, sections["reverse"])
    add("reverse", reverse, _cell(cfg.focus_lr, cfg.focus_correlation))
    add("scratch", reverse, None)
    if cfg.compiled or sections["swapped"]:
        add("swapped", merge_recipe(pretrain, sections["swapped"]), None, "b" if cfg.compiled else None)
        add("swapped-ft", reverse, "swapped")
    return stages


def _experiment(stage: dict, run_ids: dict) -> ExperimentConfig:
    recipe = stage["recipe"]
    if stage["init_from"]:
        recipe = set_key(recipe, "train.init_from", run_ids.get(stage["init_from"]) or "pending")
    return resolve(recipe["recipe"], recipe)


def _compile(program: str, pretrain: dict, letter: str):
    from caplab import rasp
    from caplab.rasp_compiler import compile_program

    cfg = resolve("compiled", {k: v for k, v in pretrain.items() if k != "model"})
    task = cfg.make_task()
    if program != "counter" or task.name != "rasp_counting":
        raise ConfigError("study.compiled=counter needs pretrain.task.name=rasp_counting")
    return compile_program(rasp.counter(letter), list(task.cfg.letters), task.cfg.length,
                           output_vocabulary=task.vocabulary[1 + len(task.cfg.letters):])


def create_study(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> Path:
    """Validate every stage's config, then write the study folder; return it."""
    name, description, sections, cfg = load_study(recipe, overrides)
    stages = plan(name, sections, cfg)
    for stage in stages:  # a bad key in any stage fails here, before anything runs
        _experiment(stage, {})
    return new_folder("studies", name, "study.json", {"recipe": name, "kind": "finetune", "description": description,
                                                      "sections": sections, "study": dataclasses.asdict(cfg), "stages": stages}, root)


# ---------------------------------------------------------------- running


def run_study(path: Path) -> dict:
    """Run (or continue) every stage, then the instruments; write summary, figures and report; return the summary.

    Every run id is reserved first, so chains run in parallel (`study.workers`) only read study.json; each
    chain's stages run in order in one process, and each run is owned by the process training it.
    """
    path = Path(path)
    study = read_json(path / "study.json")
    cfg = build_dataclass(FinetuneStudyConfig, study["study"], "study")
    reserve_all(path / "study.json", study, [(stage, "run_id", stage["recipe"]["recipe"]) for stage in study["stages"]])
    _in_parallel(_run_chain, path, _chains(study), cfg.workers)
    log.info("caplab study: instruments (pruning, probes, attention)")
    summary = analyse(study, cfg, path.parent.parent, _in_parallel(_analyse_chain_of, path, _chains(study), cfg.workers))
    atomic_write_json(path / "summary.json", summary)
    from caplab.studies.finetune_report import write_finetune_report

    write_finetune_report(path, summary)
    return summary


def _chains(study: dict) -> list[tuple]:
    """(prior, seed) of every chain, in plan order."""
    return list(dict.fromkeys((s.get("prior"), s.get("seed")) for s in study["stages"]))


def _in_parallel(fn, path: Path, chains: list[tuple], workers: int) -> list:
    """[fn(path, chain) for chain in chains], in `workers` fresh processes when there is more than one."""
    if workers <= 1 or len(chains) <= 1:
        return [fn(path, chain) for chain in chains]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from caplab.console import configure_console

    with ProcessPoolExecutor(min(workers, len(chains)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=configure_console) as pool:
        return [future.result() for future in [pool.submit(fn, path, chain) for chain in chains]]


def _run_chain(path: Path, chain: tuple) -> None:
    """Complete the stages of one (prior, seed) chain, in order (a stage may start from the one before)."""
    study = read_json(Path(path) / "study.json")
    cfg = build_dataclass(FinetuneStudyConfig, study["study"], "study")
    runs_dir = Path(path).parent.parent
    run_ids = {s["stage"]: s["run_id"] for s in study["stages"]}
    for i, stage in enumerate(study["stages"]):
        if (stage.get("prior"), stage.get("seed")) != tuple(chain):
            continue
        label = f"[{i + 1}/{len(study['stages'])}] {stage['stage']}"
        experiment = _experiment(stage, run_ids)
        fill = functools.partial(_record_compiled, experiment=experiment, stage=stage, cfg=cfg) if stage["compile"] else None
        # a fine-tuning cell that diverges is a result (that learning rate is too large), unless a later stage needs it
        may_diverge = _may_diverge(stage, cfg)
        if may_diverge and _diverged(runs_dir, stage["run_id"]):
            log.info(f"caplab study: {label}: kept as diverged; `caplab resume {stage['run_id']}` retries it")
            continue
        complete(experiment, runs_dir, stage["run_id"], label, "study", fill, divergence_is_result=may_diverge)


def _may_diverge(stage: dict, cfg: FinetuneStudyConfig) -> bool:
    base = stage.get("base", stage["stage"])
    return base.startswith("finetune-") and base != _cell(cfg.focus_lr, cfg.focus_correlation)


def _diverged(runs_dir: Path, run_id: str) -> bool:
    """The run failed because its loss became NaN or infinite (not for any other reason, which a resume retries)."""
    if not (runs_dir / run_id / "run.json").is_file():
        return False
    info = RunStore(runs_dir / run_id).info()
    return info["status"] == "failed" and bool(info.get("diverged"))


def _record_compiled(store: RunStore, experiment: ExperimentConfig, stage: dict, cfg: FinetuneStudyConfig) -> None:
    from caplab.experiment import record_model_run
    from caplab.rasp_compiler import densify

    compiled = _compile(cfg.compiled, {k: v for k, v in stage["recipe"].items() if k in ("task", "train")}, stage["compile"])
    model = densify(compiled.model, cfg.noise, torch.Generator().manual_seed(experiment.train.seed))
    record_model_run(store, experiment, model)


# ---------------------------------------------------------------- instruments


def analyse(study: dict, cfg: FinetuneStudyConfig, runs_dir: Path, chains: Optional[list[dict]] = None) -> dict:
    """The study's numbers from its finished runs (see module docstring): every chain (unless given, as
    `_analyse_chain_of` computes them), then the table over seeds."""
    stages = study["stages"]
    if chains is None:
        chains = [_analyse_chain(_stages_of(stages, chain), *chain, cfg, runs_dir) for chain in _chains(study)]
    src, tgt = cfg.source_metric, cfg.target_metric
    summary = {
        "recipe": study["recipe"], "source_metric": src, "target_metric": tgt, "reach": cfg.reach,
        "seeds": cfg.seeds, "priors": cfg.priors, "instruments": cfg.instruments,
        "focus": _cell(cfg.focus_lr, cfg.focus_correlation),
        "runs": {s["stage"]: s["run_id"] for s in stages},
        "table": _table(chains, cfg),
        "baselines": _baselines(chains, cfg),
        "chains": chains,
    }
    return summary


def _stages_of(stages: list[dict], chain: tuple) -> dict:
    """The stages of one (prior, seed) chain, keyed by base stage name."""
    return {s.get("base", s["stage"]): s for s in stages if (s.get("prior"), s.get("seed")) == tuple(chain)}


def _analyse_chain_of(path: Path, chain: tuple) -> dict:
    """`_analyse_chain` of one chain of the study at `path` (a top-level function, so a worker process can run it)."""
    study = read_json(Path(path) / "study.json")
    cfg = build_dataclass(FinetuneStudyConfig, study["study"], "study")
    return _analyse_chain(_stages_of(study["stages"], chain), *chain, cfg, Path(path).parent.parent)


def _analyse_chain(chain: dict, prior: Optional[str], seed: Optional[int], cfg: FinetuneStudyConfig,
                   runs_dir: Path) -> dict:
    """Grid, instruments and revival of one (prior, seed) chain of stages, keyed by base stage name."""
    from caplab.experiment import load_model

    src, tgt = cfg.source_metric, cfg.target_metric
    ids = {base: stage["run_id"] for base, stage in chain.items()}
    final = {base: (RunStore(runs_dir / run_id).metrics() or [{}])[-1] for base, run_id in ids.items()}
    focus = _cell(cfg.focus_lr, cfg.focus_correlation)
    pretrained, pretrain_cfg = load_model(ids["pretrain"], root=runs_dir)
    _, focus_cfg = load_model(ids[focus], root=runs_dir)
    # the fine-tuning inputs without the shortcut (CTe = 0), and the pretraining capability's inputs
    target_task = dataclasses.replace(focus_cfg, task={**focus_cfg.task, "correlation": 0.0, "eval_correlations": [0.0]}).make_task()
    source_task = _experiment(chain["reverse"], {stage["stage"]: stage["run_id"] for stage in chain.values()}).make_task()
    torch.manual_seed(pretrain_cfg.train.seed + 1)
    untrained = type(pretrained)(pretrained.cfg).eval()  # same shape, never trained: the probes' floor
    seed_offset = 1000 * pretrain_cfg.train.seed  # the instruments' own random draws differ between chains
    pretrained_scores = _scores(pretrained, source_task, cfg, seed_offset)
    out = {
        "prior": prior, "seed": seed,
        "runs": {chain[base]["stage"]: run_id for base, run_id in ids.items()},
        # how often count(b) = count(a) + 1 holds by itself: what a pure count(a) + 1 wrapper scores at CTe = 0
        "natural_shortcut_rate": _natural_rate(target_task, cfg.shortcut_samples),
        "pretrained": {k: v for k, v in focus_cfg.make_task().evaluate(pretrained, torch.device("cpu")).items()
                       if k.split("_cte")[0] in (src, tgt)},
        # the same pruning procedure on the model before fine-tuning: what pruning does where there is no wrapper
        "pretrained_pruning": _curve(pretrained, pretrained_scores, _control_ks(cfg), target_task, cfg),
        "probes": {"pretrained": _probes(pretrained, target_task, cfg), "untrained": _probes(untrained, target_task, cfg)},
        "attention": {"pretrained": _attention(pretrained, target_task)},
        **_shortcut_readings(pretrained, target_task),
        # what each pure reading of the shortcut would show under letter_knockout, on the same documents
        **({"knockout_references": target_task.knockout_references(torch.device("cpu"))}
           if hasattr(target_task, "knockout_references") else {}),
        "cells": [],
        "revival": {base: _revival(RunStore(runs_dir / ids[base]).metrics(), src, cfg.reach)
                    for base in ("reverse", "scratch", "swapped-ft") if base in ids},
    }
    for index, (lr_name, lr, correlation) in enumerate((n, r, c) for n, r in zip(cfg.lr_names, cfg.learning_rates)
                                                      for c in cfg.correlations):
        base = _cell(lr_name, correlation)
        diverged = _diverged(runs_dir, ids[base])
        record = {} if diverged else final[base]
        cell = {"stage": chain[base]["stage"], "base": base, "lr_name": lr_name, "lr": lr, "correlation": correlation,
                "diverged": diverged, **{k: record.get(k) for k in (tgt, f"{tgt}_cte1", src, f"{src}_cte1")}}
        if not diverged and (cfg.instruments == "all" or base == focus):
            tuned, _ = load_model(ids[base], root=runs_dir)
            cell["pruning"] = _pruning(tuned, pretrained, source_task, target_task, cfg, seed_offset + index)
            cell["probes"] = _probes(tuned, target_task, cfg)
            cell.update(_shortcut_readings(tuned, target_task))
            if base == focus:
                out["attention"]["finetuned"] = _attention(tuned, target_task)
        out["cells"].append(cell)
    return out


# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (1.96 beyond)
def _table(chains: list[dict], cfg: FinetuneStudyConfig) -> list[dict]:
    """One row per (prior, lr, CTr): each number as mean and interval over the seeds of that prior."""
    src, tgt = cfg.source_metric, cfg.target_metric
    rows = []
    for prior in dict.fromkeys(c["prior"] for c in chains):
        mine = [c for c in chains if c["prior"] == prior]
        for i, first in enumerate(mine[0]["cells"]):
            cells = [c["cells"][i] for c in mine]
            row = {"prior": prior, "lr_name": first["lr_name"], "lr": first["lr"], "correlation": first["correlation"],
                   "diverged": sum(bool(c.get("diverged")) for c in cells),
                   **{k: mean_interval([c.get(k) for c in cells]) for k in (tgt, f"{tgt}_cte1", src)}}
            pruned = [c["pruning"] for c in cells if "pruning" in c]
            if pruned:
                row["pruning_gain"] = mean_interval([p["gain"] for p in pruned])
                row["pruning_gain_random"] = mean_interval([p["gain_random"] for p in pruned])
                row["pruning_gain_pretrained"] = mean_interval([p["gain_pretrained_same_units"] for p in pruned])
                last = [c["probes"] for c in cells if "probes" in c]
                row["probe_last"] = {label: mean_interval([p["accuracy"][label][-1] for p in last])
                                     for label in last[0]["accuracy"]}
                row["probe_majority"] = {label: mean_interval([p["majority"][label] for p in last])
                                         for label in last[0]["majority"]}
            for reading in SHORTCUT_READINGS:
                found = [c[reading] for c in cells if reading in c]
                if found:
                    row[reading] = {key: mean_interval([f[key] for f in found]) for key in found[0]}
            rows.append(row)
    return rows


def _baselines(chains: list[dict], cfg: FinetuneStudyConfig) -> dict:
    """Per prior, over seeds: the pretrained model, its probes, the untrained model's probes, the natural rate."""
    out = {}
    for prior in dict.fromkeys(c["prior"] for c in chains):
        mine = [c for c in chains if c["prior"] == prior]
        out[str(prior)] = {
            "natural_shortcut_rate": mean_interval([c["natural_shortcut_rate"] for c in mine]),
            "pretrained": {k: mean_interval([c["pretrained"].get(k) for c in mine]) for k in mine[0]["pretrained"]},
            **{f"probe_last_{model}": {label: mean_interval([c["probes"][model]["accuracy"][label][-1] for c in mine])
                                       for label in mine[0]["probes"][model]["accuracy"]}
               for model in ("pretrained", "untrained")},
            "probe_majority": {label: mean_interval([c["probes"]["pretrained"]["majority"][label] for c in mine])
                               for label in mine[0]["probes"]["pretrained"]["majority"]},
            "revival_steps": {base: [c["revival"][base]["steps_to_reach"] for c in mine] for base in mine[0]["revival"]},
            **{reading: {key: mean_interval([c[reading][key] for c in mine]) for key in mine[0][reading]}
               for reading in SHORTCUT_READINGS if reading in mine[0]},
            # the evaluation documents do not depend on the training seed, so every chain's references are these
            **({"knockout_references": mine[0]["knockout_references"]} if "knockout_references" in mine[0] else {}),
            # the same pruning procedure on the pretrained model: the change of the source capability per K
            "pretrained_pruning_change": {
                str(row["k"]): mean_interval([c["pretrained_pruning"][i][cfg.source_metric] - c["pretrained_pruning"][0][cfg.source_metric]
                                               for c in mine])
                for i, row in enumerate(mine[0]["pretrained_pruning"]) if row["k"] > 0},
        }
    return out


# PCFG counting's instruments of how a shortcut is read: which rule the count(b) answers follow (count(a) + 1,
# or the same shortcut as (K + 1 - count(c)) / 2), and how they move when one window letter is blanked
SHORTCUT_READINGS = ("answer_rules", "letter_knockout")


def _shortcut_readings(model, target_task) -> dict:
    """{instrument: result} for the SHORTCUT_READINGS the task has ({} for tasks without them)."""
    return {reading: getattr(target_task, reading)(model, torch.device("cpu"))
            for reading in SHORTCUT_READINGS if hasattr(target_task, reading)}


def _masked_loss(model, batch) -> torch.Tensor:
    logits = model(batch.tokens)
    per_token = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
    mask = batch.loss_mask.flatten()
    return (per_token * mask).sum() / mask.sum()


def _scores(model, source_task, cfg: FinetuneStudyConfig, seed: int = 0):
    """theta x grad of the pretraining capability's loss on one batch, per unit."""
    from caplab.analysis.pruning import unit_scores

    batch = source_task.sample(256, torch.Generator().manual_seed(1234 + seed), torch.device("cpu"))
    return unit_scores(model, lambda m: _masked_loss(m, batch), cfg.prune_granularity)


def _evaluate(model, target_task, cfg: FinetuneStudyConfig) -> dict:
    keep = (cfg.source_metric, cfg.target_metric)
    return {k: v for k, v in target_task.evaluate(model, torch.device("cpu")).items() if k in keep}


def _curve(model, scores, ks, target_task, cfg: FinetuneStudyConfig) -> list[dict]:
    from caplab.analysis.pruning import pruning_curve

    return [{"k": k, **v} for k, v in pruning_curve(model, scores, ks, lambda m: _evaluate(m, target_task, cfg)).items()]


def _control_ks(cfg: FinetuneStudyConfig) -> list[int]:
    """K = 0 and the `control_ks` within 1..prune_max: where every pruning curve and control is read."""
    return [0] + sorted({k for k in cfg.control_ks if 1 <= k <= cfg.prune_max})


def _pruning(tuned, pretrained, source_task, target_task, cfg: FinetuneStudyConfig, seed: int = 0) -> dict:
    """Both capabilities with the top-K theta x grad units (for the source loss) of the fine-tuned model zeroed
    (K = 0..prune_max, for the figure), and two controls: as many units drawn at random (mean of
    `random_prune_draws` draws), and the same units zeroed in the pretrained model (do they carry the
    capability itself, or only what fine-tuning changed?).

    The gains compare like with like: each is the largest change of the source capability over the same
    K (`control_ks`), so the top units are not credited with a K picked on the readings they are scored by
    while the controls are read at it.
    """
    from caplab.analysis.pruning import prune

    src = cfg.source_metric
    scores = _scores(tuned, source_task, cfg, seed)
    curve = _curve(tuned, scores, range(cfg.prune_max + 1), target_task, cfg)
    ks = _control_ks(cfg)
    generator = torch.Generator().manual_seed(4321 + seed)
    random_rows, same_rows = [], []
    for k in ks:
        draws = [_evaluate(prune(tuned, [scores.units[i] for i in torch.randperm(len(scores.units), generator=generator)[:k].tolist()],
                                 scores.granularity).eval(), target_task, cfg) for _ in range(cfg.random_prune_draws)]
        random_rows.append({"k": k, **{key: sum(d[key] for d in draws) / len(draws) for key in draws[0]}})
        same_rows.append({"k": k, **_evaluate(prune(pretrained, scores.top(k), scores.granularity).eval(), target_task, cfg)})
    top_rows = [row for row in curve if row["k"] in ks]
    gain = lambda rows: max(row[src] for row in rows[1:]) - rows[0][src]  # noqa: E731  (rows[0] is K = 0)
    return {"granularity": cfg.prune_granularity, "units": [f"{n}[{i}]" for n, i in scores.top(cfg.prune_max)],
            "curve": curve, "best_k": max(top_rows[1:], key=lambda row: row[src])["k"],
            "gain": gain(top_rows), "gain_random": gain(random_rows), "gain_pretrained_same_units": gain(same_rows),
            "random": random_rows, "pretrained_same_units": same_rows}


def _probes(model, task, cfg: FinetuneStudyConfig) -> dict:
    """Held-out accuracy, per layer, of linear probes for count(a), count(b) and count(c) at the readout of
    fine-tuning inputs, and the majority-class accuracy of each label (what a probe learns from the label alone)."""
    from caplab.analysis.probes import probe_accuracy_by_layer

    tokens, positions, counts, _ = task.probe_set(cfg.probe_samples, torch.Generator().manual_seed(99), torch.device("cpu"))
    cut = int(0.75 * len(tokens))  # probe_accuracy_by_layer's split
    accuracy, majority = {}, {}
    for letter, labels in counts.items():
        accuracy[f"count({letter})"] = probe_accuracy_by_layer(model, tokens, positions, labels, steps=cfg.probe_steps)
        majority[f"count({letter})"] = (labels[cut:] == torch.mode(labels[:cut]).values).float().mean().item()
    return {"accuracy": accuracy, "majority": majority}


def _natural_rate(task, n: int) -> float:
    """Share of fine-tuning inputs (no shortcut made) in which count(b) = count(a) + 1 anyway."""
    _, _, counts, _ = task.probe_set(n, torch.Generator().manual_seed(7), torch.device("cpu"))
    return (counts["b"] == counts["a"] + 1).float().mean().item()


def _attention(model, task) -> list[dict]:
    """Mean attention of each head from the readout position onto the a tokens and the b tokens."""
    from caplab.analysis.probes import attention_patterns

    tokens, positions, _, letter_ids = task.probe_set(256, torch.Generator().manual_seed(98), torch.device("cpu"))
    heads = [(layer, head) for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    patterns = attention_patterns(model, tokens, heads)  # (heads, batch, query, key)
    rows = torch.arange(len(tokens))
    out = []
    for (layer, head), pattern in zip(heads, patterns):
        from_readout = pattern[rows, positions]  # (batch, key)
        out.append({"layer": layer, "head": head,
                    **{f"onto_{letter}": (from_readout * (tokens == token)).sum(1).mean().item()
                       for letter, token in letter_ids.items()}})
    return out


def _revival(records: list[dict], metric: str, reach: float) -> dict:
    curve = [(r["step"], r[metric]) for r in records if metric in r]
    hit = next((step for step, value in curve if value >= reach), None)
    return {"curve": curve, "steps_to_reach": hit, "final": curve[-1][1] if curve else None, "reach": reach}


# ---------------------------------------------------------------- the study-kind interface (caplab.studies)


def execute(recipe: str, overrides: list[str], root: Optional[Path] = None) -> list[str]:
    return resume(create_study(recipe, overrides, root))


def resume(path: Path) -> list[str]:
    return run_and_report(path, run_study, summary_lines, "study")


def summary_lines(s: dict) -> list[str]:
    """The Table 3 / Table 5 analogue, one line per cell, then each prior's baselines."""
    from caplab.studies.finetune_report import cell_text

    src, tgt = s["source_metric"], s["target_metric"]
    lines = [f"mean [95% t-interval] over {s['seeds']} seed(s)"]
    for row in s["table"]:
        prior = f"prior {row['prior']} " if row["prior"] else ""
        line = (f"{prior}lr {row['lr_name']:<7} CTr {row['correlation']:<4g} {tgt} {cell_text(row[tgt])} (CTe 0) "
                f"{cell_text(row[tgt + '_cte1'])} (CTe 1)   {src} {cell_text(row[src])}")
        if "answer_rules" in row:
            line += "   answers follow " + ", ".join(f"{rule} {cell_text(v)}" for rule, v in row["answer_rules"].items()
                                                     if rule != "n_separating")
        if "letter_knockout" in row:
            line += "   answer change when one letter is blanked " + ", ".join(
                f"{key} {cell_text(row['letter_knockout'][key])}" for key in ("a", "b", "c", "outside"))
        if "pruning_gain" in row:
            line += (f"   pruning {src} {cell_text(row['pruning_gain'])} (random units {cell_text(row['pruning_gain_random'])},"
                     f" same units pretrained {cell_text(row['pruning_gain_pretrained'])})")
        lines.append(line)
    for prior, base in s["baselines"].items():
        steps = ", ".join(f"{stage} {values}" for stage, values in base["revival_steps"].items())
        prior = "of the recipe" if prior == "None" else prior
        lines.append(f"prior {prior}: count(b) = count(a) + 1 by itself in {cell_text(base['natural_shortcut_rate'])}; "
                     f"steps to {src} >= {s['reach']}: {steps}")
    return lines
