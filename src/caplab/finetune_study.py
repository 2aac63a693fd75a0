"""`kind: finetune` recipes: what fine-tuning does to a capability (Jain et al., ICLR 2024).

One study chains catalogued runs and then dissects them:

    pretrain               the `pretrain:` recipe (or, with `study.compiled`, the compiled RASP program,
                           densified with N(0, study.noise^2), saved as a run at step 0)
    finetune-<lr>-ctr<c>   from pretrain: the `finetune:` changes, at every learning rate x CTr
    reverse                from the focus cell: the `reverse:` changes (train the pretraining capability again)
    scratch                the same reverse training from a fresh initialisation
    swapped, swapped-ft    pretraining with the operand roles swapped (`swapped:` changes, or the program
                           compiled for the other letter), then the reverse training from it (Scr.+FT)

then, on the focus cell (`study.focus_lr`, `study.focus_correlation`): pruning by theta x grad of the
pretraining capability's loss (accuracy of both capabilities against the number of units pruned), linear
probes of both counts after every block, and attention from the readout position onto the two operands.

    <runs root>/studies/<study id>/
        study.json    the recipe, resolved, and the run id of every stage (reserved before the run starts)
        summary.json  the grid (target accuracy at CTe 0 and 1), pruning, probes, attention, revival speeds
        figures/, report.html

An interrupted study continues with `caplab resume <study id>`: finished runs are kept, a run that
died resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F

from caplab.config import ExperimentConfig, build_dataclass, load_recipe, merge_recipe, resolve, set_key
from caplab.errors import ConfigError
from caplab.runs.store import RunStore, atomic_write_json, open_folder, read_json, runs_root

SECTIONS = ("pretrain", "finetune", "reverse", "swapped")


@dataclass
class FinetuneStudyConfig:
    lr_names: list[str] = field(default_factory=lambda: ["large", "medium", "small"])
    learning_rates: list[float] = field(default_factory=lambda: [1e-3, 1e-4, 1e-5])  # fine-tuning lr of each name
    correlations: list[float] = field(default_factory=lambda: [0.0, 1.0])  # CTr values
    focus_lr: str = "medium"  # the cell the instruments dissect
    focus_correlation: float = 1.0
    source_metric: str = "count_a"  # the pretraining capability
    target_metric: str = "count_b"  # the fine-tuning capability
    prune_granularity: Literal["row", "head", "weight"] = "row"
    prune_max: int = 15  # K = 0..prune_max units
    probe_samples: int = 2048
    probe_steps: int = 300
    reach: float = 0.9  # revival speed: the first evaluated step where source_metric reaches this
    compiled: Optional[Literal["counter"]] = None  # the pretrained model is this compiled RASP program
    noise: float = 1e-3  # densifying noise (std) of the compiled weights

    def __post_init__(self) -> None:
        if len(self.lr_names) != len(self.learning_rates) or not self.lr_names:
            raise ValueError("study.lr_names and study.learning_rates must be lists of the same, non-zero length")
        if self.focus_lr not in self.lr_names or self.focus_correlation not in self.correlations:
            raise ValueError(f"study.focus_lr / focus_correlation must name a cell of the grid "
                             f"({self.lr_names} x {self.correlations})")
        if self.prune_max < 1 or self.probe_samples < 8 or self.probe_steps < 1:
            raise ValueError("study.prune_max, probe_samples and probe_steps must be positive (probe_samples >= 8)")


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


def plan(name: str, sections: dict, cfg: FinetuneStudyConfig) -> list[dict]:
    """Every stage: {"stage", "recipe" (a training recipe dict), "init_from" (a stage or None), "compile"}."""
    pretrain = copy.deepcopy(sections["pretrain"])
    compiled_model = None
    if cfg.compiled:
        compiled_model = _compile(cfg.compiled, pretrain, "a").model.cfg.to_dict()
        pretrain["model"] = compiled_model
    stages = [{"stage": "pretrain", "recipe": pretrain, "init_from": None, "compile": "a" if cfg.compiled else None}]
    finetune = merge_recipe(pretrain, sections["finetune"])
    for lr_name, lr in zip(cfg.lr_names, cfg.learning_rates):
        for correlation in cfg.correlations:
            recipe = merge_recipe(finetune, {"task": {"correlation": correlation}, "train": {"lr": lr, "min_lr": lr / 100}})
            stages.append({"stage": _cell(lr_name, correlation), "recipe": recipe, "init_from": "pretrain", "compile": None})
    reverse = merge_recipe(pretrain, sections["reverse"])
    focus = _cell(cfg.focus_lr, cfg.focus_correlation)
    stages.append({"stage": "reverse", "recipe": reverse, "init_from": focus, "compile": None})
    stages.append({"stage": "scratch", "recipe": reverse, "init_from": None, "compile": None})
    if cfg.compiled or sections["swapped"]:
        swapped = merge_recipe(pretrain, sections["swapped"])
        stages.append({"stage": "swapped", "recipe": swapped, "init_from": None, "compile": "b" if cfg.compiled else None})
        stages.append({"stage": "swapped-ft", "recipe": reverse, "init_from": "swapped", "compile": None})
    for stage in stages:
        stage["recipe"] = {**stage["recipe"], "recipe": f"{name}.{stage['stage']}",
                           "description": f"stage {stage['stage']} of the fine-tuning study {name}"}
        stage["run_id"] = None
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
    root = Path(root) if root is not None else runs_root()
    path = root / "studies" / RunStore.new_run_id(name)
    path.mkdir(parents=True)
    atomic_write_json(path / "study.json", {"recipe": name, "kind": "finetune", "description": description,
                                            "sections": sections, "study": dataclasses.asdict(cfg), "stages": stages})
    return path


def open_study(name: str, root: Optional[Path] = None) -> Path:
    return open_folder(name, root, "studies", "study.json")


# ---------------------------------------------------------------- running


def run_study(path: Path) -> dict:
    """Run (or continue) every stage, then the instruments; write summary, figures and report; return the summary."""
    from caplab.experiment import complete_reserved_run

    path = Path(path)
    study = read_json(path / "study.json")
    cfg = build_dataclass(FinetuneStudyConfig, study["study"], "study")
    runs_dir = path.parent.parent
    run_ids = {s["stage"]: s["run_id"] for s in study["stages"]}
    for i, stage in enumerate(study["stages"]):
        label = f"[{i + 1}/{len(study['stages'])}] {stage['stage']}"
        if stage["run_id"] is None:  # reserve the id first, so a crash never leaves an unlisted run
            stage["run_id"] = run_ids[stage["stage"]] = RunStore.new_run_id(stage["recipe"]["recipe"])
            atomic_write_json(path / "study.json", study)
        experiment = _experiment(stage, run_ids)
        fill = functools.partial(_record_compiled, experiment=experiment, stage=stage, cfg=cfg) if stage["compile"] else None
        complete_reserved_run(experiment, runs_dir, stage["run_id"],
                              lambda how: print(f"caplab study: {label}: {how} {stage['run_id']}", file=sys.stderr), fill)
    print("caplab study: instruments (pruning, probes, attention)", file=sys.stderr)
    summary = analyse(study, cfg, runs_dir)
    atomic_write_json(path / "summary.json", summary)
    from caplab.runs.finetune_report import write_finetune_report

    write_finetune_report(path, summary)
    return summary


def _record_compiled(store: RunStore, experiment: ExperimentConfig, stage: dict, cfg: FinetuneStudyConfig) -> None:
    from caplab.experiment import record_model_run
    from caplab.rasp_compiler import densify

    compiled = _compile(cfg.compiled, {k: v for k, v in stage["recipe"].items() if k in ("task", "train")}, stage["compile"])
    model = densify(compiled.model, cfg.noise, torch.Generator().manual_seed(experiment.train.seed))
    record_model_run(store, experiment, model)


# ---------------------------------------------------------------- instruments


def analyse(study: dict, cfg: FinetuneStudyConfig, runs_dir: Path) -> dict:
    """The study's numbers from its finished runs (see module docstring)."""
    from caplab.experiment import load_model

    ids = {s["stage"]: s["run_id"] for s in study["stages"]}
    final = {stage: RunStore(runs_dir / run_id).metrics()[-1] for stage, run_id in ids.items()}
    src, tgt = cfg.source_metric, cfg.target_metric
    grid = []
    for lr_name, lr in zip(cfg.lr_names, cfg.learning_rates):
        for correlation in cfg.correlations:
            record = final[_cell(lr_name, correlation)]
            grid.append({"lr_name": lr_name, "lr": lr, "correlation": correlation,
                         **{k: record.get(k) for k in (tgt, f"{tgt}_cte1", src, f"{src}_cte1")}})
    focus = _cell(cfg.focus_lr, cfg.focus_correlation)
    pretrained, _ = load_model(ids["pretrain"], root=runs_dir)
    tuned, tuned_cfg = load_model(ids[focus], root=runs_dir)
    reverse_cfg = _experiment(next(s for s in study["stages"] if s["stage"] == "reverse"), ids)
    target_task = dataclasses.replace(tuned_cfg, task={**tuned_cfg.task, "correlation": 0.0, "eval_correlations": [0.0]}).make_task()
    source_task = reverse_cfg.make_task()
    summary = {
        "recipe": study["recipe"],
        "source_metric": src, "target_metric": tgt, "reach": cfg.reach,
        "runs": ids,
        # the pretrained model on the fine-tuning task's evaluation (both CTe values)
        "pretrained": {k: v for k, v in tuned_cfg.make_task().evaluate(pretrained, torch.device("cpu")).items()
                       if k.split("_cte")[0] in (src, tgt)},
        "grid": grid,
        "focus": {"stage": focus, "lr_name": cfg.focus_lr, "correlation": cfg.focus_correlation,
                  **{k: final[focus].get(k) for k in (tgt, f"{tgt}_cte1", src)}},
        "pruning": _pruning(tuned, source_task, target_task, cfg),
        "probes": {"pretrained": _probes(pretrained, target_task, cfg), "finetuned": _probes(tuned, target_task, cfg)},
        "attention": {"pretrained": _attention(pretrained, target_task), "finetuned": _attention(tuned, target_task)},
        "revival": {stage: _revival(RunStore(runs_dir / ids[stage]).metrics(), src, cfg.reach)
                    for stage in ("reverse", "scratch", "swapped-ft") if stage in ids},
    }
    curve = summary["pruning"]["curve"]
    summary["pruning"]["best_k"] = max(curve, key=lambda row: row[src])["k"]
    summary["pruning"]["source_gain"] = max(row[src] for row in curve) - curve[0][src]
    return summary


def _masked_loss(model, batch) -> torch.Tensor:
    logits = model(batch.tokens)
    per_token = F.cross_entropy(logits.flatten(0, 1), batch.targets.flatten(), reduction="none")
    mask = batch.loss_mask.flatten()
    return (per_token * mask).sum() / mask.sum()


def _pruning(model, source_task, target_task, cfg: FinetuneStudyConfig) -> dict:
    """Accuracy of both capabilities with the top-K theta x grad units (for the source loss) zeroed."""
    from caplab.analysis.pruning import pruning_curve, unit_scores

    batch = source_task.sample(256, torch.Generator().manual_seed(1234), torch.device("cpu"))
    scores = unit_scores(model, lambda m: _masked_loss(m, batch), cfg.prune_granularity)
    keep = (cfg.source_metric, cfg.target_metric)
    evaluate = lambda m: {k: v for k, v in target_task.evaluate(m, torch.device("cpu")).items() if k in keep}  # noqa: E731
    curve = pruning_curve(model, scores, range(cfg.prune_max + 1), evaluate)
    return {"granularity": cfg.prune_granularity, "units": [f"{n}[{i}]" for n, i in scores.top(cfg.prune_max)],
            "curve": [{"k": k, **v} for k, v in curve.items()]}


def _probes(model, task, cfg: FinetuneStudyConfig) -> dict:
    """Held-out accuracy, per layer, of linear probes for both counts at the readout of target-task inputs."""
    from caplab.analysis.probes import probe_accuracy_by_layer

    tokens, positions, counts, _ = task.probe_set(cfg.probe_samples, torch.Generator().manual_seed(99), torch.device("cpu"))
    return {f"count({letter})": probe_accuracy_by_layer(model, tokens, positions, labels, steps=cfg.probe_steps)
            for letter, labels in counts.items()}


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
