"""Study kinds, one file each, registered by the `kind` of their recipe.

Every kind's module offers the same three functions, through which `caplab run`
and `caplab resume` dispatch (a new kind is one file and one line in KINDS):

    execute(recipe, overrides, root) -> lines   create the study (validating everything first) and run it
    resume(path) -> lines                       continue a study (or run) that stopped, from what is on disk
    summary_lines(summary) -> lines             what the CLI prints of a finished study's summary.json

`lines` are what the CLI prints on stdout: the summary, then the path(s) written.
Modules are imported only when their kind is used, so the CLI starts fast.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Optional

KINDS = {
    "train": "caplab.studies.run",  # one training run, or an ensemble of seeds
    "sweep": "caplab.studies.sweep",  # a grid of settings x seeds
    "percolation": "caplab.studies.percolation",  # the class-graph percolation model alone
    "finetune": "caplab.studies.finetune",  # pretrain, fine-tune, instruments, reverse fine-tune
    "compare": "caplab.studies.compare",  # variants of one recipe to a shared target, with controls
    "normalization": "caplab.studies.normalization",  # Beyond BatchNorm's three claims across the zoo
    "mode-connectivity": "caplab.studies.mode_connectivity",  # paths between cue and clean models; CBFT and peers
}


def kind_module(kind: str) -> ModuleType:
    return importlib.import_module(KINDS[kind])


def run_recipe(recipe: str, overrides: list[str] = (), root: Optional[Path] = None) -> list[str]:
    """Run recipe `recipe` (a name or a YAML path) as its kind says; return the lines to print."""
    from caplab.config import load_recipe, recipe_kind
    from caplab.errors import ConfigError

    kind = recipe_kind(load_recipe(recipe)[1])
    if kind not in KINDS:
        raise ConfigError(f"bad value {kind!r} for 'kind'; valid: {', '.join(k for k in KINDS if k != 'sweep')}")
    refuse_under_torchrun(kind)
    return kind_module(kind).execute(recipe, list(overrides), root)


def refuse_under_torchrun(kind: str) -> None:
    """torchrun trains one run over its processes; a sweep or study would run once per process."""
    from caplab.errors import ConfigError
    from caplab.train import distributed

    if kind != "train" and distributed.launched():
        raise ConfigError(f"a {kind} recipe does not run under torchrun (every process would run it all); spread its "
                          "runs with caplab sweep --launcher ray|submitit|slurm, or give torchrun one training recipe")


def locate(name: str, root: Optional[Path] = None) -> tuple[str, Path]:
    """(kind, path) of the run, sweep or study `name` (an id or a path).

    Sweeps and studies are found by their folder; anything else is looked up as a run (id, path or unique prefix).
    """
    from caplab.runs.store import RunStore, read_json, runs_root

    root = Path(root) if root is not None else runs_root()
    for path in (Path(name), root / "sweeps" / name, root / "studies" / name):
        if (path / "sweep.json").is_file():
            return "sweep", path
        if (path / "study.json").is_file():  # studies written before kinds were recorded are fine-tuning studies
            return read_json(path / "study.json").get("kind", "finetune"), path
    return "train", RunStore.open(name, root).path


def resume(name: str, root: Optional[Path] = None) -> list[str]:
    """Continue the run, sweep or study `name` from what is on disk; return the lines to print."""
    kind, path = locate(name, root)
    refuse_under_torchrun(kind)
    return kind_module(kind).resume(path)
