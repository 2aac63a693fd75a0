"""Recipe files: the shipped YAML recipes by name, or a YAML path, read without building anything.

Only YAML and the standard library: `caplab recipes` and `caplab --help` answer without importing torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from caplab.errors import ConfigError

SECTIONS = ("task", "model", "train", "mat", "diagnostics", "loggers")


def recipe_names() -> list[str]:
    folder = resources.files("caplab") / "recipes"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str) -> tuple[str, dict]:
    """Return `(recipe name, raw dict)` for a shipped recipe name or a YAML file path."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) and path.is_file():
        try:
            text, name = path.read_text(encoding="utf-8"), path.stem
        except UnicodeDecodeError:
            raise ConfigError(f"recipe {name_or_path!r} is not UTF-8 text (a YAML file is expected)") from None
    elif name_or_path in recipe_names():
        text, name = (resources.files("caplab") / "recipes" / f"{name_or_path}.yaml").read_text(), name_or_path
    else:
        raise ConfigError(f"unknown recipe {name_or_path!r}; valid: {', '.join(recipe_names())} (or a .yaml path)")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {name_or_path!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {name_or_path!r} must be a mapping of sections ({', '.join(SECTIONS)})")
    return name, data


def recipe_description(name: str) -> str:
    return str(load_recipe(name)[1].get("description", "")).strip().splitlines()[0]


def recipe_kind(data: dict) -> str:
    """The recipe's `kind` ("train" when absent; "sweep" for a training recipe with a `sweep:` section).

    Which kinds exist is the studies registry's to say (`caplab.studies.KINDS`), which checks it.
    """
    kind = data.get("kind", "train")
    if not isinstance(kind, str):
        raise ConfigError(f"bad value {kind!r} for 'kind'; expected a name")
    return "sweep" if kind == "train" and "sweep" in data else kind
