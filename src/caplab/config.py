"""Experiment configuration: typed dataclasses, YAML recipes and `--set a.b=c` overrides.

Each component owns its defaults (GPTConfig, TrainConfig, a task's Config);
an ExperimentConfig composes them. A recipe sets only what differs from the
defaults. Every unknown or ill-typed key raises ConfigError naming the key and
the valid choices.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import yaml

from caplab.errors import ConfigError
from caplab.names import check_name
from caplab.models.gpt import GPTConfig
from caplab.recipe_files import SECTIONS, load_recipe, recipe_kind
from caplab.models.registry import MODEL_KINDS, build_model, kinds_reading, model_kind_of, task_fields
from caplab.tasks import TASKS, Task, make_task
from caplab.tasks.corpus import CORPUS_KEYS, Corpus, CorpusConfig
from caplab.tasks.cues import CUE_KEYS, CueConfig, CueTask
from caplab.train.plugins import LEGACY_TRAIN_KEYS, DiagnosticsConfig, MATConfig
from caplab.tracker_config import TRACKER_CONFIGS
from caplab.train.trainer import TrainConfig, resolve_device


@dataclass
class ExperimentConfig:
    """A fully resolved experiment: what to learn, with which model, how to train."""

    recipe: str
    description: str
    task: dict  # {"name": ..., **task Config fields}, validated by the task
    model: Any = field(default_factory=GPTConfig)  # the config of a kind in caplab.models.registry.MODEL_KINDS
    train: TrainConfig = field(default_factory=TrainConfig)
    mat: MATConfig = field(default_factory=MATConfig)  # modular adaptive training (off unless mat.every > 0)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    loggers: dict = field(default_factory=dict)  # tracker name -> its options (caplab.tracker_config)

    @property
    def model_kind(self) -> str:
        return model_kind_of(self.model)

    def to_dict(self) -> dict:
        # a GPT's section has no `kind` key, as before model kinds existed (old and new configs read the same)
        kind = {} if self.model_kind == "gpt" else {"kind": self.model_kind}
        return {
            "recipe": self.recipe,
            "description": self.description,
            "task": dict(self.task),
            "model": {**kind, **dataclasses.asdict(self.model)},
            "train": dataclasses.asdict(self.train),
            "mat": dataclasses.asdict(self.mat),
            "diagnostics": dataclasses.asdict(self.diagnostics),
            # only when set: configs without trackers read and compare as they always did
            **({"loggers": {name: dataclasses.asdict(opts) for name, opts in self.loggers.items()}} if self.loggers else {}),
        }

    def make_model(self):
        """A freshly initialised model of this config (seed torch first)."""
        return build_model(self.model)

    def make_task(self) -> Task:
        params = {k: v for k, v in self.task.items() if k != "name"}
        return make_task(self.task["name"], **params)


# ---------------------------------------------------------------- recipes (caplab.recipe_files)


# ---------------------------------------------------------------- overrides


def parse_value(raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides to a nested dict; values are parsed as YAML scalars."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad override {item!r}; expected KEY=VALUE, e.g. train.steps=2000")
        value = parse_value(raw)
        parts = key.split(".")
        if parts[0] not in SECTIONS + ("description",):
            raise ConfigError(f"unknown key {key!r}; valid sections: {', '.join(SECTIONS)}")
        if parts[0] in SECTIONS and len(parts) == 1:  # `train=null` would drop the section and earlier overrides
            raise ConfigError(f"bad override {item!r}; set a key inside the section, e.g. {key}.KEY=VALUE")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"unknown key {key!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


def merge_recipe(base: dict, changes: Optional[dict]) -> dict:
    """`base` with `changes` merged in, section by section (nested mappings merge, other values replace)."""
    out = copy.deepcopy(base)
    for key, value in (changes or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_recipe(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten_config(config: dict, prefix: str = "") -> dict:
    """A nested config as {"train.lr": 0.001, ...} (dotted keys, as overrides name them)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def load_sectioned_recipe(recipe: str, kind: str, sections: tuple[str, ...], overrides: list[str] = ()) -> tuple[str, dict]:
    """(name, data) of a `kind:` study recipe made of `sections`, with SECTION.KEY=VALUE overrides applied and
    every top-level key checked."""
    name, data = load_recipe(recipe)
    if recipe_kind(data) != kind:
        raise ConfigError(f"recipe {recipe!r} is not a {kind} recipe")
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or key.split(".")[0] not in sections or "." not in key:
            raise ConfigError(f"bad override {item!r}; a {kind} recipe takes SECTION.KEY=VALUE, sections {', '.join(sections)}")
        data = set_key(data, key, parse_value(raw))
    unknown = [k for k in data if k not in ("kind", "description", *sections)]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: kind, description, {', '.join(sections)}")
    return name, data


def set_key(data: dict, dotted: str, value) -> dict:
    """A copy of `data` with the value at `dotted` (e.g. "train.init_from") set."""
    out = copy.deepcopy(data)
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"unknown key {dotted!r}: {part!r} is not a section")
    node[last] = value
    return out


# ---------------------------------------------------------------- validation


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Construct dataclass `cls` from `values`, checking every key and type."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in values:
        if key not in names:
            raise ConfigError(f"unknown key '{prefix}.{key}'; valid: {', '.join(names)}")
    checked = {key: check_type(value, hints[key], f"{prefix}.{key}") for key, value in values.items()}
    try:
        return cls(**checked)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


def check_type(value: Any, annotation: Any, key: str) -> Any:
    """Return `value` (coerced int->float where harmless) if it fits `annotation`, else raise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return check_type(value, inner[0], key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"bad value {value!r} for '{key}'; valid: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a list")
        return [check_type(v, args[0], key) for v in value]
    if annotation is dict or origin is dict:  # options handed on as they are (e.g. another task's config)
        if not isinstance(value, dict):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a mapping")
        return dict(value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected true or false")
        return value
    if annotation is int:
        if isinstance(value, str):  # YAML 1.1 reads 1e5 as a string: an integral number is accepted
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected an integer")
        return value
    if annotation is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML 1.1 reads 1e-3 as a string
            except ValueError:
                pass
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"bad value {value!r} for '{key}'; expected a string")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def resolve(name: str, data: dict) -> ExperimentConfig:
    """Turn a raw recipe dict into a validated, fully resolved ExperimentConfig."""
    kind = recipe_kind(data)
    if kind not in ("train", "sweep"):
        raise ConfigError(f"recipe {name!r} is a {kind} recipe, not a training run; run it with `caplab run {name}`")
    data = move_legacy_keys(data)
    unknown = [k for k in data if k not in SECTIONS + ("description", "recipe", "kind", "sweep")]
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r}; valid: description, {', '.join(SECTIONS)}, sweep")
    if isinstance(data.get("loggers"), list):  # `loggers: [tensorboard, wandb]`: each with its defaults
        data = {**data, "loggers": {name: {} for name in data["loggers"]}}
    for section in SECTIONS:
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"section {section!r} must be a mapping of keys, got {type(data[section]).__name__}")
    recipe = check_name(str(data.get("recipe", name)), "recipe name")
    task_raw = dict(data.get("task") or {})
    task_name = task_raw.pop("name", None)
    if task_name not in TASKS:
        raise ConfigError(f"bad value {task_name!r} for 'task.name'; valid: {', '.join(TASKS)}")
    corpus_cfg = build_dataclass(CorpusConfig, {k: task_raw.pop(k) for k in CORPUS_KEYS if k in task_raw}, "task")
    cue_cfg = build_dataclass(CueConfig, {k: task_raw.pop(k) for k in CUE_KEYS if k in task_raw}, "task")
    task_cfg = build_dataclass(TASKS[task_name].Config, task_raw, "task")
    for config in (task_cfg, corpus_cfg, cue_cfg):  # seeds feed torch.Generator.manual_seed, which takes 64-bit values
        for key, value in dataclasses.asdict(config).items():
            if key.endswith("seed") and isinstance(value, int) and not 0 <= value < 2**63:
                raise ConfigError(f"task.{key} must be in [0, 2^63), got {value}")
    try:
        task = TASKS[task_name](task_cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cue_cfg.cue != "none":  # the cue decides the model's input shape (dominoes stack two images)
        task = CueTask(Corpus(task, corpus_cfg) if corpus_cfg.corpus_size else task, cue_cfg)

    model = resolve_model(dict(data.get("model") or {}), task, task_name)
    train = build_dataclass(TrainConfig, dict(data.get("train") or {}), "train")
    mat = build_dataclass(MATConfig, dict(data.get("mat") or {}), "mat")
    diagnostics = build_dataclass(DiagnosticsConfig, dict(data.get("diagnostics") or {}), "diagnostics")
    loggers = {}
    for name, options in (data.get("loggers") or {}).items():
        if name not in TRACKER_CONFIGS:
            raise ConfigError(f"unknown logger {name!r}; valid: {', '.join(TRACKER_CONFIGS)}")
        loggers[name] = build_dataclass(TRACKER_CONFIGS[name], dict(options or {}), f"loggers.{name}")
    if model_kind_of(model) != "gpt" and mat.every:  # MAT's modules are a GPT's heads and MLPs
        raise ConfigError("mat.every (modular adaptive training) needs model.kind=gpt: its modules are "
                          "attention heads and MLPs")
    return ExperimentConfig(
        recipe=recipe,
        description=str(data.get("description", "")).strip(),
        task={"name": task_name, **dataclasses.asdict(task_cfg), **dataclasses.asdict(corpus_cfg),
              **(dataclasses.asdict(cue_cfg) if cue_cfg.cue != "none" else {})},  # cue keys only where there is a cue
        model=model,
        train=train,
        mat=mat,
        diagnostics=diagnostics,
        loggers=loggers,
    )


def move_legacy_keys(data: dict) -> dict:
    """A copy of recipe `data` with old `train.mat_*` / `train.spectral_diagnostics_every` keys moved to their
    sections (`mat.every`, `diagnostics.spectral_every`, ...); a key given both ways must agree."""
    train = data.get("train") or {}
    if not any(key in LEGACY_TRAIN_KEYS for key in train):
        return data
    data = copy.deepcopy(data)
    for key in [k for k in data["train"] if k in LEGACY_TRAIN_KEYS]:
        section, name = LEGACY_TRAIN_KEYS[key]
        value = data["train"].pop(key)
        target = data.setdefault(section, {}) or {}
        data[section] = target
        if name in target and target[name] != value:
            raise ConfigError(f"train.{key}={value!r} and {section}.{name}={target[name]!r} disagree; "
                              f"train.{key} is the old name of {section}.{name}")
        target[name] = value
    return data


def resolve_model(model_raw: dict, task: Task, task_name: str):
    """The model config of `model_raw` (`kind` picks the family, default gpt), its task-fixed fields filled in."""
    kind = model_raw.pop("kind", "gpt")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"bad value {kind!r} for 'model.kind'; valid: {', '.join(MODEL_KINDS)}")
    if MODEL_KINDS[kind].reads != task.input_kind:
        raise ConfigError(f"model.kind={kind} cannot read task {task_name!r} ({task.input_kind}); "
                          f"kinds that fit: {', '.join(kinds_reading(task.input_kind))}")
    fixed = task_fields(kind, task)
    if kind == "gpt":  # a GPT may be larger than the task needs (a shared vocabulary), never smaller
        for key, value in fixed.items():
            model_raw.setdefault(key, value)
        model = build_dataclass(GPTConfig, model_raw, "model")
        if model.d_vocab < task.vocab_size:
            raise ConfigError(f"model.d_vocab={model.d_vocab} is smaller than the task's vocabulary ({task.vocab_size})")
        if model.n_ctx < task.seq_len:
            raise ConfigError(f"model.n_ctx={model.n_ctx} is shorter than the task's sequences ({task.seq_len})")
        return model
    for key, value in fixed.items():
        if key in model_raw and model_raw[key] != value:
            raise ConfigError(f"model.{key}={model_raw[key]} does not fit task {task_name!r} ({key} = {value}); "
                              "the task sets it")
        model_raw[key] = value
    return build_dataclass(MODEL_KINDS[kind].config, model_raw, "model")


def load_config(recipe: str, overrides: list[str] = ()) -> ExperimentConfig:
    """Load a recipe (name or path), apply overrides, validate and resolve."""
    name, data = load_recipe(recipe)
    cfg = resolve(name, apply_overrides(data, list(overrides)))
    resolve_device(cfg.train.device)  # a new run on a device this machine lacks fails here, before anything exists
    return cfg


def config_from_json(text: str) -> ExperimentConfig:
    data = json.loads(text)
    return resolve(data["recipe"], data)
