"""The concept language of the percolation model of emergence (Lubana et al., ICLR 2025, arXiv 2408.12578).

A world of concept classes. Each class has entities (named by identifiers)
and descriptive properties; each property has values (the paper's
"properties" K: |K| = classes x properties per class x values per property).
Classes c and c + C/2 are linked by relative properties (verbs). Sentences
follow the grammar of `concept_grammar` and the type constraints of the world:

- a phrase has one class; its subjects are entities of that class, its verbs
  belong to the class's relative group, their objects to the linked class;
- a descriptive value belongs to a property of the subject class, and each
  entity allows only a fraction `density` (p) of every property's values: a
  fixed random set of values per property, rolled by the entity's key (its
  index in the class), so the allowed entity-value pairs form a bipartite
  graph of density p inside each class;
- adjectives before a value (entity) come from the few allowed for its
  property (class); adverbs from the few allowed for their verb. PII
  identifiers take no adjective.

Documents (one token per item, padded with <pad> to `max_length`):

    Task: T0 \\n Ops: <null> \\n Out: <sentence>            free generation
    Task: T1 \\n Ops: <sentence shuffled, no <eos>> \\n Out: <sentence>   unscramble
    Task: T2 \\n Ops: <conditions> \\n Out: <sentence>      conditional generation

with task prior `task_prior` (paper: 0.2, 0.4, 0.4). A T2 condition is, for
each token category present (subjects, objects, verbs, values), with
probability 1/2 one of its tokens; a T2 draw without conditions becomes T0.
Documents longer than `max_length` are redrawn, as in the paper.

Sampling (`concept_sampler`) is tensor code on the device, for the whole
batch at once, with work proportional to the tokens produced.
"""

from __future__ import annotations

import dataclasses
import string
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from caplab.tasks import concept_grammar as G
from caplab.tasks.base import Batch, Task
from caplab.tasks.concept_sampler import MAX_OBJECTS, MAX_SUBJECTS, MAX_VERB_PHRASES, Documents, draw_sentences, make_documents



# The paper's scale (its code's defaults): |E| = 900, |K| = 18,000; `make_task("concept_language", **PAPER_SCALE)`.
# The `emergence-paper` recipe sets the same sizes.
PAPER_SCALE = dict(n_classes=10, entities_per_class=100, properties_per_class=45, values_per_property=40, density=0.1,
                   n_relative=100, n_adjectives=20, n_adverbs=20, max_length=128)


@dataclass
class ConceptLanguageConfig:
    n_classes: int = 4  # C (even): class c and class c + C/2 are linked by relative properties
    entities_per_class: int = 20  # subject classes; object classes hold the non-PII share only
    pii_fraction: float = 0.2  # share of a subject class's entities named by PII identifiers
    properties_per_class: int = 5  # descriptive properties per class
    values_per_property: int = 20
    density: float = 0.1  # p: fraction of a property's values each entity allows
    n_relative: int = 4  # relative properties (verbs), split evenly over the C/2 linked pairs
    n_adjectives: int = 8
    n_adverbs: int = 8
    modifier_density: float = 0.25  # fraction of adjectives (adverbs) each property/class (verb) allows
    modifier_prob: float = 0.9  # chance that an optional modifier slot is filled
    max_length: int = 48  # tokens per document, padding included (the paper: 128)
    task_prior: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.4])  # T0, T1, T2
    seed: int = 0  # the world (training has its own seed)
    eval_samples: int = 128  # generations per generation-based metric
    eval_reachable: int = 512  # held-out entity-value pairs of the order parameter
    eval_decoding: Literal["sample", "greedy"] = "sample"  # the paper samples

    def __post_init__(self) -> None:
        positive = ("n_classes", "entities_per_class", "properties_per_class", "values_per_property", "n_relative",
                    "n_adjectives", "n_adverbs", "eval_samples", "eval_reachable")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be at least 1, got {getattr(self, name)}")
        if self.n_classes % 2:
            raise ValueError(f"task.n_classes must be even (subject and object classes pair up), got {self.n_classes}")
        if self.n_relative % (self.n_classes // 2):
            raise ValueError(f"task.n_relative={self.n_relative} must be a multiple of n_classes/2={self.n_classes // 2}")
        for name in ("density", "modifier_density", "pii_fraction", "modifier_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"task.{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.density <= 0 or self.modifier_density <= 0:
            raise ValueError("task.density and task.modifier_density must be positive")
        if round((1 - self.pii_fraction) * self.entities_per_class) < 1:
            raise ValueError("task.pii_fraction leaves object classes without entities")
        if len(self.task_prior) != 3 or min(self.task_prior) < 0 or sum(self.task_prior) <= 0:
            raise ValueError(f"task.task_prior must be three non-negative weights (T0, T1, T2), got {self.task_prior}")
        if self.max_length < 16:
            raise ValueError(f"task.max_length must be at least 16, got {self.max_length}")


class ConceptLanguage(Task):
    """The concept-language DGP (see module docstring)."""

    name = "concept_language"
    Config = ConceptLanguageConfig
    primary_metric = "unscramble_exact"
    phase_metrics = ("grammaticality", "type_desc", "type_constraints", "reachable_pairs", "unscramble_exact", "conditional_satisfied")

    def __init__(self, cfg: Optional[ConceptLanguageConfig] = None) -> None:
        self.cfg = cfg = cfg or ConceptLanguageConfig()
        C, P, nV = cfg.n_classes, cfg.properties_per_class, cfg.values_per_property
        rng = np.random.default_rng(cfg.seed)
        half = C // 2

        # entities: subject classes (c < C/2) hold entities_per_class, the last ones PII; object classes the non-PII share
        n_nonpii = int(round((1 - cfg.pii_fraction) * cfg.entities_per_class))
        self.entity_count = np.array([cfg.entities_per_class if c < half else n_nonpii for c in range(C)])
        self.entity_start = np.concatenate([[0], np.cumsum(self.entity_count)[:-1]])
        self.n_entities = int(self.entity_count.sum())
        entity_class = np.repeat(np.arange(C), self.entity_count)
        entity_key = np.arange(self.n_entities) - self.entity_start[entity_class]
        entity_pii = entity_key >= n_nonpii
        self.n_properties = C * P
        self.n_values = self.n_properties * nV  # |K|
        self.allowed_per_property = max(1, int(round(cfg.density * nV)))
        self.verbs_per_group = cfg.n_relative // half

        # vocabulary: specials, adjectives, adverbs, verbs, entities, values
        self.adjective_offset = len(G.SPECIAL_TOKENS)
        self.adverb_offset = self.adjective_offset + cfg.n_adjectives
        self.verb_offset = self.adverb_offset + cfg.n_adverbs
        self.entity_offset = self.verb_offset + cfg.n_relative
        self.value_offset = self.entity_offset + self.n_entities
        self.vocab_size = self.value_offset + self.n_values
        self.seq_len = cfg.max_length - 1

        # the type-constraint graph: base allowed values per property, rolled by the entity key
        self.value_base = np.stack([np.sort(rng.choice(nV, self.allowed_per_property, replace=False)) for _ in range(self.n_properties)])
        m_adj = max(1, int(round(cfg.modifier_density * cfg.n_adjectives)))
        m_adv = max(1, int(round(cfg.modifier_density * cfg.n_adverbs)))
        self.property_adjectives = np.stack([rng.choice(cfg.n_adjectives, m_adj, replace=False) for _ in range(self.n_properties)])
        self.class_adjectives = np.stack([rng.choice(cfg.n_adjectives, m_adj, replace=False) for _ in range(C)])
        self.verb_adverbs = np.stack([rng.choice(cfg.n_adverbs, m_adv, replace=False) for _ in range(cfg.n_relative)])
        pii_names = set()
        while len(pii_names) < int(entity_pii.sum()):
            pii_names.add("".join(rng.choice(list(string.ascii_uppercase + string.digits), 10)))
        self._pii_names = sorted(pii_names)

        # per-token facts for checking sentences
        V = self.vocab_size
        category = np.full(V, G.C_PROMPT)
        category[[G.PAD, G.EOS, G.IS, G.HAS, G.ON, G.IN, G.TO, G.AND, G.OR]] = [
            G.C_PAD, G.C_EOS, G.C_DESC_PREP, G.C_DESC_PREP, G.C_REL_PREP, G.C_REL_PREP, G.C_REL_PREP, G.C_CONJ, G.C_CONJ]
        category[self.adjective_offset : self.adverb_offset] = G.C_ADJ
        category[self.adverb_offset : self.verb_offset] = G.C_ADV
        category[self.verb_offset : self.entity_offset] = G.C_VERB
        category[self.entity_offset : self.value_offset] = G.C_ENTITY
        category[self.value_offset :] = G.C_VALUE
        token_class = np.full(V, -1)
        token_class[self.entity_offset : self.value_offset] = entity_class
        token_class[self.value_offset :] = np.arange(self.n_values) // (P * nV)

        def mask(rows: np.ndarray, width: int) -> np.ndarray:
            out = np.zeros((len(rows), width), bool)
            np.put_along_axis(out, rows, True, axis=1)
            return out

        self.tables = {
            "category": category, "token_class": token_class,
            "entity_class": entity_class, "entity_key": entity_key, "entity_pii": entity_pii,
            "entity_count": self.entity_count, "entity_start": self.entity_start,
            "value_base": self.value_base, "allowed_values": mask(self.value_base, nV),  # before rolling by the key
            "property_adjectives": self.property_adjectives, "class_adjectives": self.class_adjectives,
            "verb_adverbs": self.verb_adverbs,
            "property_adjective_mask": mask(self.property_adjectives, cfg.n_adjectives),
            "class_adjective_mask": mask(self.class_adjectives, cfg.n_adjectives),
            "verb_adverb_mask": mask(self.verb_adverbs, cfg.n_adverbs),
            "value_complement": np.stack([np.setdiff1d(np.arange(nV), row) for row in self.value_base]),
            "np_cdf": G.binary_leaves_pmf(G.P_NP_CONJ, MAX_SUBJECTS).cumsum(0).numpy(),
            "vp_cdf": G.binary_leaves_pmf(G.P_VP_CONJ, MAX_VERB_PHRASES).cumsum(0).numpy(),
            "relnp_cdf": G.list_length_pmf(G.P_RELNP_CONJ, MAX_OBJECTS).cumsum(0).numpy(),
            "rel_prep_cdf": np.cumsum(list(G.REL_PREPOSITIONS.values())),
            "task_cdf": np.cumsum(cfg.task_prior) / np.sum(cfg.task_prior),
        }
        self._device_tables: dict = {}
        self._eval_cache: dict = {}

    # ------------------------------------------------------------ helpers

    def on(self, device) -> dict[str, torch.Tensor]:
        """The world's tables as tensors on `device` (cached)."""
        key = str(device)
        if key not in self._device_tables:
            self._device_tables[key] = {
                k: torch.as_tensor(v, device=device, dtype=torch.float32 if v.dtype.kind == "f" else (torch.bool if v.dtype == bool else torch.long))
                for k, v in self.tables.items()
            }
        return self._device_tables[key]

    # ------------------------------------------------------------ documents

    def sample_documents(self, n: int, generator, device, task: Optional[int] = None) -> Documents:
        """n documents (task drawn from the prior unless given), redrawing any that do not fit."""
        parts, have = [], 0
        cdf = self.on(device)["task_cdf"]
        while have < n:
            m = int((n - have) * 1.1) + 16
            sentences, fits = draw_sentences(self, m, generator, device)
            tasks = torch.full((m,), task, device=device) if task is not None else \
                torch.searchsorted(cdf, torch.rand(m, generator=generator, device=device), right=True).clamp(max=2)
            docs = make_documents(self, sentences, tasks, generator, device, accept=fits, limit=n - have)
            parts.append(docs)
            have += len(docs.task)
        return parts[0] if len(parts) == 1 else Documents.cat(parts)

    def sample(self, batch_size: int, generator: torch.Generator, device: torch.device) -> Batch:
        docs = self.sample_documents(batch_size, generator, device)
        targets = docs.tokens[:, 1:]
        mask = (targets != G.PAD).float()  # every position but the padding, prompt included (as in the paper)
        labels = {"task": docs.task, "symbols": docs.symbols[:, :-1], "phrase_class": docs.phrase_class}
        return Batch(docs.tokens[:, :-1], targets, mask, labels)

    # ------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        from caplab.tasks.concept_metrics import evaluate_concept_language

        return evaluate_concept_language(self, model, device)

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        keys = ("grammaticality", "type_constraints", "unscramble_exact", "conditional_satisfied", "reachable_pairs")
        return {k: metrics[k] for k in keys if k in metrics}

    # ------------------------------------------------------------ reading

    def token_name(self, token: int) -> str:
        token = int(token)
        if token < self.adjective_offset:
            return G.SPECIAL_TOKENS[token]
        if token < self.adverb_offset:
            return f"adj{token - self.adjective_offset}"
        if token < self.verb_offset:
            return f"adv{token - self.adverb_offset}"
        if token < self.entity_offset:
            return f"rel{token - self.verb_offset}"
        if token < self.value_offset:
            e = token - self.entity_offset
            cls, key = int(self.tables["entity_class"][e]), int(self.tables["entity_key"][e])
            if self.tables["entity_pii"][e]:
                return self._pii_names[int(self.tables["entity_pii"][:e].sum())]
            return f"c{cls}_e{key}"
        prop, v = divmod(token - self.value_offset, self.cfg.values_per_property)
        cls, k = divmod(prop, self.cfg.properties_per_class)
        return f"c{cls}_p{k}_v{v}"

    def decode(self, tokens) -> str:
        return " ".join(self.token_name(t) for t in tokens if int(t) != G.PAD)

    def describe(self) -> dict:
        C = self.cfg.n_classes
        return {
            "config": dataclasses.asdict(self.cfg),
            "vocab_size": self.vocab_size,
            "n_entities": self.n_entities,  # |E|
            "n_values": self.n_values,  # |K|
            "entities_per_class": self.entity_count.tolist(),
            "values_per_class": self.n_values // C,
            "allowed_values_per_entity_property": self.allowed_per_property,
        }
