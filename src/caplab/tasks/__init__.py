"""Data-generating processes, one file each, registered by name."""

from __future__ import annotations

import dataclasses

from caplab.errors import ConfigError
from caplab.tasks.base import Batch, Task
from caplab.tasks.compositions import Compositions
from caplab.tasks.concept_language import ConceptLanguage
from caplab.tasks.pcfg_counting import PCFGCounting
from caplab.tasks.rasp_counting import RaspCounting

TASKS: dict[str, type[Task]] = {Compositions.name: Compositions, ConceptLanguage.name: ConceptLanguage, PCFGCounting.name: PCFGCounting,
                               RaspCounting.name: RaspCounting}


def make_task(name: str, **overrides) -> Task:
    """Build task `name` with its default config, changed by `overrides`."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    cls = TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls.Config)]
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"unknown key 'task.{key}'; valid: {', '.join(valid)}")
    try:
        return cls(cls.Config(**overrides))
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None


__all__ = ["Batch", "Task", "TASKS", "make_task", "Compositions", "ConceptLanguage", "PCFGCounting", "RaspCounting"]
