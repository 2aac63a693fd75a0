"""Data-generating processes, one file each, registered by name."""

from __future__ import annotations

import dataclasses

from caplab.errors import ConfigError
from caplab.tasks.base import Batch, Task
from caplab.tasks.cifar10 import Cifar10
from caplab.tasks.compositions import Compositions
from caplab.tasks.concept_language import ConceptLanguage
from caplab.tasks.corpus import CORPUS_KEYS, Corpus, CorpusConfig
from caplab.tasks.cues import CUE_KEYS, CueConfig, CueTask
from caplab.tasks.digits import Digits
from caplab.tasks.images import ImageTask
from caplab.tasks.pcfg_counting import PCFGCounting
from caplab.tasks.rasp_counting import RaspCounting
from caplab.tasks.shapes import Shapes

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (Compositions, ConceptLanguage, PCFGCounting, RaspCounting,
                                                            Shapes, Digits, Cifar10)}


def make_task(name: str, **overrides) -> Task:
    """Build task `name` with its default config, changed by `overrides`.

    `corpus_size` and `corpus_seed` (any task) turn it into a finite corpus (`caplab.tasks.corpus`);
    `cue`, `cue_fraction`, ... (image tasks with a fixed training set) add a spurious cue (`caplab.tasks.cues`).
    """
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r}; valid: {', '.join(TASKS)}")
    cls = TASKS[name]
    corpus = {k: overrides.pop(k) for k in CORPUS_KEYS if k in overrides}
    cue = {k: overrides.pop(k) for k in CUE_KEYS if k in overrides}
    valid = [f.name for f in dataclasses.fields(cls.Config)]
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"unknown key 'task.{key}'; valid: {', '.join(valid + list(CORPUS_KEYS) + list(CUE_KEYS))}")
    try:
        task = cls(cls.Config(**overrides))
        corpus_cfg = CorpusConfig(**corpus)
        cue_cfg = CueConfig(**cue)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from None
    if corpus_cfg.corpus_size:
        task = Corpus(task, corpus_cfg)
    return CueTask(task, cue_cfg) if cue_cfg.cue != "none" else task


__all__ = ["Batch", "Task", "ImageTask", "TASKS", "make_task", "Corpus", "CueTask", "Compositions", "ConceptLanguage", "PCFGCounting",
           "RaspCounting", "Shapes", "Digits", "Cifar10"]
