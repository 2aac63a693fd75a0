"""The concept language of the percolation model of emergence (Lubana et al., ICLR 2025, arXiv 2408.12578).

A world of concept classes. Each class has entities (named by identifiers)
and descriptive properties; each property has values (the paper's
"properties" K: |K| = classes x properties per class x values per property).
Classes c and c + C/2 are linked by relative properties (verbs). Sentences
follow the grammar of `concept_grammar` and the type constraints of the world:

- a phrase has one class; its subjects are entities of that class, its verbs
  belong to the class's relative group, their objects to the linked class;
- a descriptive value belongs to the subject class and is allowed for the
  last subject: inside each class the allowed entity-value pairs form a
  bipartite graph of density p (`concept_world`: a random balanced graph by
  default, the paper's rolled base sets as an option);
- adjectives and adverbs carry no information by default (uniform, as in the
  paper's code); `modifier_density` < 1 restricts each property, class and
  verb to a share of them, an ablation that gives the order parameter a
  surface cue. PII identifiers take no adjective.

Documents (one token per item, padded with <pad> to `max_length`):

    Task: T0 \\n Ops: <null> \\n Out: <sentence>            free generation
    Task: T1 \\n Ops: <sentence shuffled, no <eos>> \\n Out: <sentence>   unscramble
    Task: T2 \\n Ops: <conditions> \\n Out: <sentence>      conditional generation

with task prior `task_prior` (paper: 0.2, 0.4, 0.4). A T2 condition is, for
each token category present (subjects, objects, verbs, values), with
probability 1/2 one of its tokens; a T2 draw without conditions becomes T0.
The grammar is drawn exactly; documents longer than `max_length` are
redrawn, as in the paper, and nothing else is truncated.

`pairs_per_class` = D restricts the training data to D distinct
entity-value pairs per class, a uniform subset of the allowed graph (a
finite corpus then contains each of them, `sample_corpus`); the
order parameter is measured on pairs the training data never shows.

Sampling (`concept_sampler`) is tensor code on the device, for the whole
batch at once, with work proportional to the tokens produced.
"""

from __future__ import annotations

import copy
import dataclasses
import string
import warnings
from dataclasses import dataclass, field
from typing import Literal, Optional

import numpy as np
import torch
from torch import nn

from caplab.tasks import concept_grammar as G
from caplab.tasks import concept_world as W
from caplab.tasks.base import Batch, Task
from caplab.tasks.concept_sampler import Documents, draw_sentences, make_documents


def _batch(docs: Documents) -> Batch:
    targets = docs.tokens[:, 1:]
    mask = (targets != G.PAD).float()  # every position but the padding, prompt included (as in the paper)
    labels = {"task": docs.task, "symbols": docs.symbols[:, :-1], "phrase_class": docs.phrase_class}
    return Batch(docs.tokens[:, :-1], targets, mask, labels)


class WorldWarning(UserWarning):
    """A concept world whose class graph cannot percolate, or is split into pieces."""


_WARNED: dict = {}  # the warnings registry of WorldWarning


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
    density: float = 0.1  # p: share of a class's entity-value pairs the world allows
    graph: Literal["balanced", "rolled"] = "balanced"  # how allowed pairs are drawn (concept_world); rolled: the paper's code
    pairs_per_class: int = 0  # D > 0: training data shows only D distinct allowed pairs per class (0: all)
    pairs_scale: float = 0.0  # s > 0: D = round(s * sqrt(|E_c| |K_c|)) per class instead (s = 1: the predicted threshold)
    pairs_seed: int = 0  # which D pairs (the world stays the same)
    n_relative: int = 4  # relative properties (verbs), split evenly over the C/2 linked pairs
    n_adjectives: int = 8
    n_adverbs: int = 8
    modifier_density: float = 1.0  # share of adjectives (adverbs) each property/class (verb) allows; 1: uniform, as in the paper
    modifier_prob: float = 0.9  # chance that an optional modifier slot is filled
    p_np_conj: float = G.P_NP_CONJ  # NP -> NP Conj NP
    p_vp_conj: float = G.P_VP_CONJ  # VP -> VP Conj VP
    p_desc: float = G.P_VP_DESC  # share of descriptive among the other VP rules (paper: 0.4 / 0.8)
    p_relnp_conj: float = G.P_RELNP_CONJ  # relNP -> object Conj relNP
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
        for name in ("density", "modifier_density", "pii_fraction", "modifier_prob", "p_desc"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"task.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("p_np_conj", "p_vp_conj"):  # a binary branching rule at 1/2 or more never stops
            if not 0 <= getattr(self, name) < 0.5:
                raise ValueError(f"task.{name} must lie in [0, 0.5), got {getattr(self, name)}")
        if not 0 <= self.p_relnp_conj < 1:
            raise ValueError(f"task.p_relnp_conj must lie in [0, 1), got {self.p_relnp_conj}")
        if self.density <= 0 or self.modifier_density <= 0:
            raise ValueError("task.density and task.modifier_density must be positive")
        if self.pairs_per_class < 0 or self.pairs_scale < 0:
            raise ValueError("task.pairs_per_class and task.pairs_scale must be non-negative")
        if self.pairs_per_class and self.pairs_scale:
            raise ValueError("set task.pairs_per_class or task.pairs_scale, not both")
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
    phase_metrics = ("grammaticality", "type_desc", "type_constraints", "reachable_pairs_specific", "unscramble_exact",
                     "conditional_satisfied")

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
        self.values_per_class = P * nV  # |K_c|
        self.n_values = self.n_properties * nV  # |K|
        self.verbs_per_group = cfg.n_relative // half

        # vocabulary: specials, adjectives, adverbs, verbs, entities, values
        self.adjective_offset = len(G.SPECIAL_TOKENS)
        self.adverb_offset = self.adjective_offset + cfg.n_adjectives
        self.verb_offset = self.adverb_offset + cfg.n_adverbs
        self.entity_offset = self.verb_offset + cfg.n_relative
        self.value_offset = self.entity_offset + self.n_entities
        self.vocab_size = self.value_offset + self.n_values
        self.seq_len = cfg.max_length - 1

        # the type-constraint graph of each class (entities x its values), then the pairs training shows
        allowed = np.zeros((self.n_entities, self.values_per_class), bool)
        for c in range(C):
            rows = slice(self.entity_start[c], self.entity_start[c] + self.entity_count[c])
            allowed[rows] = self._class_graph(int(self.entity_count[c]), rng)
        shown = allowed
        if cfg.pairs_per_class or cfg.pairs_scale:
            shown = np.zeros_like(allowed)
            pairs_rng = np.random.default_rng([cfg.seed, cfg.pairs_seed])
            for c in range(C):
                rows = slice(self.entity_start[c], self.entity_start[c] + self.entity_count[c])
                wanted = self.pairs_wanted(c)
                try:
                    shown[rows] = W.random_subgraph(allowed[rows], wanted, pairs_rng)
                except ValueError as exc:
                    raise ValueError(f"task.pairs_per_class / pairs_scale asks for {wanted} pairs: {exc} (class {c})") from None
        self.allowed, self.shown = allowed, shown
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
        token_class[self.value_offset :] = np.arange(self.n_values) // self.values_per_class

        def mask(rows: np.ndarray, width: int) -> np.ndarray:
            out = np.zeros((len(rows), width), bool)
            np.put_along_axis(out, rows, True, axis=1)
            return out

        self.tables = {
            "category": category, "token_class": token_class,
            "entity_class": entity_class, "entity_key": entity_key, "entity_pii": entity_pii,
            "entity_count": self.entity_count, "entity_start": self.entity_start,
            "allowed": allowed,  # (entities, values per class): the world's graph
            **self._shown_tables(shown, entity_class),  # the pairs the training data shows
            "property_adjectives": self.property_adjectives, "class_adjectives": self.class_adjectives,
            "verb_adverbs": self.verb_adverbs,
            "property_adjective_mask": mask(self.property_adjectives, cfg.n_adjectives),
            "class_adjective_mask": mask(self.class_adjectives, cfg.n_adjectives),
            "verb_adverb_mask": mask(self.verb_adverbs, cfg.n_adverbs),
            # subject, verb-phrase and object counts up to max_length: more can never fit a document
            "np_cdf": G.binary_leaves_pmf(cfg.p_np_conj, cfg.max_length).cumsum(0).numpy(),
            "vp_cdf": G.binary_leaves_pmf(cfg.p_vp_conj, cfg.max_length).cumsum(0).numpy(),
            "relnp_cdf": G.list_length_pmf(cfg.p_relnp_conj, cfg.max_length).cumsum(0).numpy(),
            "rel_prep_cdf": np.cumsum(list(G.REL_PREPOSITIONS.values())),
            "task_cdf": np.cumsum(cfg.task_prior) / np.sum(cfg.task_prior),
        }
        self._device_tables: dict = {}
        self._eval_cache: dict = {}
        self._seen: Optional[torch.Tensor] = None  # pairs the training batches described so far
        self._warn_about_the_graph()

    def pairs_wanted(self, cls: int) -> int:
        """D of class `cls`: pairs_per_class, or pairs_scale x sqrt(|E_c| |K_c|)."""
        if self.cfg.pairs_per_class:
            return self.cfg.pairs_per_class
        return int(round(self.cfg.pairs_scale * np.sqrt(self.entity_count[cls] * self.values_per_class)))

    def _shown_tables(self, shown: np.ndarray, entity_class: np.ndarray) -> dict[str, np.ndarray]:
        """The sampler's view of the pairs it may describe: each entity's values, and who can be described."""
        C = self.cfg.n_classes
        describable = shown.any(1)
        desc_subjects = np.zeros((C, int(self.entity_count.max())), np.int64)
        desc_subject_count = np.zeros(C, np.int64)
        for c in range(C):  # the last subject of a sentence with a descriptive value shows at least one pair
            members = np.flatnonzero(describable & (entity_class == c))
            desc_subjects[c, : len(members)] = members
            desc_subject_count[c] = len(members)
        shown_degree = shown.sum(1)
        shown_values = np.zeros((self.n_entities, max(1, int(shown_degree.max()))), np.int64)
        for e in np.flatnonzero(describable):
            shown_values[e, : shown_degree[e]] = np.flatnonzero(shown[e])
        return {"shown": shown, "shown_values": shown_values, "shown_degree": shown_degree,
                "desc_subjects": desc_subjects, "desc_subject_count": desc_subject_count}

    def showing(self, shown: np.ndarray) -> "ConceptLanguage":
        """A view of this world whose sentences describe only the pairs in `shown` (entities, values per class)."""
        view = copy.copy(self)
        view.tables = {**self.tables, **self._shown_tables(shown, self.tables["entity_class"])}
        view._device_tables, view._eval_cache = {}, {}
        return view

    def _class_graph(self, n_entities: int, rng: np.random.Generator) -> np.ndarray:
        cfg = self.cfg
        if cfg.graph == "rolled":
            return W.rolled_graph(n_entities, cfg.properties_per_class, cfg.values_per_property, cfg.density, rng)
        edges = int(round(cfg.density * n_entities * self.values_per_class))
        if edges < n_entities:
            raise ValueError(f"task.density={cfg.density} gives {edges} allowed pairs for {n_entities} entities; "
                             "every entity needs at least one value")
        return W.balanced_bipartite(n_entities, self.values_per_class, edges, rng)

    def class_graphs(self, which: str = "allowed") -> list[np.ndarray]:
        """Each class's (entities, values) adjacency: the world's (`allowed`) or the training data's (`shown`)."""
        graph = self.tables[which]
        return [graph[s : s + n] for s, n in zip(self.entity_start, self.entity_count)]

    def graph_reports(self, which: str = "allowed") -> list[dict]:
        return [W.graph_report(g) for g in self.class_graphs(which)]

    def _warn_about_the_graph(self) -> None:
        reports = self.graph_reports("allowed")
        worst = min(reports, key=lambda r: (r["density"] / r["critical_density"], -r["components"]))
        if worst["density"] <= worst["critical_density"]:
            message = (f"concept world: density p = {worst['density']:.4g} is at or below p_c = "
                       f"{worst['critical_density']:.4g} = 1/sqrt(|E_c| |K_c|); the class graph cannot percolate")
        elif max(r["components"] for r in reports) > 1:
            r = max(reports, key=lambda r: r["components"])
            message = (f"concept world: a class graph is split into {r['components']} components (largest "
                       f"{r['largest_component_fraction']:.0%} of its nodes) at p = {r['density']:.4g} "
                       f"(p_c = {r['critical_density']:.4g})")
        else:
            return
        # one place and one registry, so a world built several times in a process is warned about once
        warnings.warn_explicit(message, WorldWarning, "caplab.tasks.concept_language", 0, registry=_WARNED)

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
        return _batch(self.sample_documents(batch_size, generator, device))

    def sample_corpus(self, n: int, generator, device) -> Batch:
        """n documents that show every pair of the training graph at least once (when `pairs_per_class` is set).

        Documents are drawn as usual; for pairs that did not turn up, documents
        describing only missing pairs are drawn and each replaces a document of
        the same class whose pairs all appear elsewhere, so the corpus keeps n
        documents and holds exactly the requested distinct pairs.
        """
        docs = self.sample_documents(n, generator, device)
        if not (self.cfg.pairs_per_class or self.cfg.pairs_scale):
            return _batch(docs)
        shown = self.tables["shown"]
        K = self.values_per_class
        rows, entity, value = (x.cpu().numpy() for x in self.described_pairs(docs.tokens, docs.symbols))
        counts = np.bincount(entity * K + value, minlength=shown.size).reshape(shown.shape)
        pairs_of = [[] for _ in range(n)]
        for r, e, v in zip(rows, entity, value):
            pairs_of[r].append((e, v))
        doc_class = docs.phrase_class.cpu().numpy()
        rng = np.random.default_rng(int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device)))
        for _ in range(100):
            missing = shown & (counts == 0)
            if not missing.any():
                return _batch(docs)
            view = self.showing(missing)
            extra = view.sample_documents(4 * int(missing.sum()) + 64, generator, device)
            e_rows, e_entity, e_value = (x.cpu().numpy() for x in view.described_pairs(extra.tokens, extra.symbols))
            for r in np.unique(e_rows):
                new_pairs = list(zip(e_entity[e_rows == r], e_value[e_rows == r]))
                if not all(missing[e, v] for e, v in new_pairs):
                    continue  # a class with no missing pair: its sentences describe nothing real
                cls = int(extra.phrase_class[r])
                victims = [i for i in rng.permutation(n) if doc_class[i] == cls
                           and all(counts[e, v] - sum(p == (e, v) for p in pairs_of[i]) > 0 for e, v in pairs_of[i])]
                if not victims:
                    continue
                i = victims[0]
                for e, v in pairs_of[i]:
                    counts[e, v] -= 1
                for e, v in new_pairs:
                    counts[e, v] += 1
                    missing[e, v] = False
                pairs_of[i] = new_pairs
                for name in Documents.__dataclass_fields__:
                    getattr(docs, name)[i] = getattr(extra, name)[r]
        raise ValueError(f"could not fit {[self.pairs_wanted(c) for c in range(self.cfg.n_classes)]} distinct pairs per "
                         f"class into {n} documents; raise task.corpus_size or lower task.pairs_per_class / pairs_scale")

    def described_pairs(self, tokens: torch.Tensor, symbols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row, entity, value within its class) of every descriptive value in `tokens` and the last subject before it.

        `symbols` are the parse labels of the same positions (documents' or batches' labels["symbols"]).
        """
        pos = torch.arange(tokens.shape[1], device=tokens.device)
        is_value = symbols == G.S_VALUE
        last_subject = torch.where(symbols == G.S_SUBJECT, pos, -1).cummax(1).values
        row, at = is_value.nonzero(as_tuple=True)
        entity = tokens[row, last_subject[row, at].clamp(min=0)] - self.entity_offset
        return row, entity, (tokens[row, at] - self.value_offset) % self.values_per_class

    # ------------------------------------------------------------ what training has shown

    def observe(self, batch: Batch) -> None:
        """Mark the entity-value pairs a training batch describes (logged as `observed_pairs`)."""
        _, entity, value = self.described_pairs(batch.tokens, batch.labels["symbols"])
        if self._seen is None or self._seen.device != entity.device:
            self._seen = torch.zeros(self.n_entities, self.values_per_class, dtype=torch.bool, device=entity.device)
        self._seen[entity, value] = True

    def data_metrics(self) -> dict[str, float]:
        seen = 0 if self._seen is None else int(self._seen.sum())
        return {"observed_pairs": seen / self.cfg.n_classes}  # distinct pairs per class seen so far

    def data_state(self) -> dict[str, torch.Tensor]:
        return {} if self._seen is None else {"seen_pairs": self._seen.cpu()}

    def load_data_state(self, state: dict[str, torch.Tensor]) -> None:
        self._seen = state["seen_pairs"].clone() if "seen_pairs" in state else None

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

    def special_tokens(self) -> dict:
        return {"bos": None, "eos": G.SPECIAL_TOKENS.index("<eos>"), "pad": G.SPECIAL_TOKENS.index("<pad>")}

    def decode(self, tokens) -> str:
        return " ".join(self.token_name(t) for t in tokens if int(t) != G.PAD)

    def describe(self) -> dict:
        """Sizes, the class graphs (world and training data) against p_c, and the order parameter's floor and oracle."""
        from caplab.tasks.concept_metrics import adjective_oracle, reachable_floor

        def summary(reports: list[dict]) -> dict:
            keys = ("edges", "density", "critical_density", "components", "largest_component_fraction", "isolated_entities",
                    "isolated_values")
            return {k: [r[k] for r in reports] for k in keys}

        return {
            "config": dataclasses.asdict(self.cfg),
            "vocab_size": self.vocab_size,
            "n_entities": self.n_entities,  # |E|
            "n_values": self.n_values,  # |K|
            "entities_per_class": self.entity_count.tolist(),
            "values_per_class": self.values_per_class,
            "class_graph": summary(self.graph_reports("allowed")),  # one entry per class
            "shown_graph": summary(self.graph_reports("shown")) if self.cfg.pairs_per_class or self.cfg.pairs_scale else None,
            "reachable_floor": reachable_floor(self),
            "reachable_adjective_oracle": adjective_oracle(self),
        }
