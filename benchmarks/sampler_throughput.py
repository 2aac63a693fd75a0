"""Concept-language sampler throughput: caplab's tensor sampler vs a sequential NLTK sampler.

The peer is the straightforward way to sample this grammar (the way the
paper's code does it): an `nltk.PCFG` expanded recursively, one production
at a time with `random.choices`, then every token filled in Python from the
same world (same classes, type-constraint graph and modifier tables), then
the T0/T1/T2 document built. Both run in this process, by default on one CPU
thread, and are timed alternately; throughput counts document tokens before
the padding.

    python benchmarks/sampler_throughput.py [--batch 4096] [--repeats 5] [--recipe-scale cpu|paper] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from nltk_peer import expand

from caplab.tasks import make_task
from caplab.tasks import concept_grammar as G
from caplab.tasks.concept_language import PAPER_SCALE

GRAMMAR = """
S -> NP VP 'eos' [1.0]
NP -> 'subject' [0.8] | NP 'conj' NP [0.2]
VP -> 'desc_prep' 'value' [0.4] | 'verb' 'rel_prep' RELNP [0.4] | VP 'conj' VP [0.2]
RELNP -> 'object' [0.7] | 'object' 'conj' RELNP [0.3]
"""


class NltkSampler:
    """Sequential reference: PCFG expansion with NLTK, Python filling and formatting."""

    def __init__(self, task) -> None:
        import nltk

        self.nltk = nltk
        self.grammar = nltk.PCFG.fromstring(GRAMMAR)
        self.task, self.cfg, self.rng = task, task.cfg, random.Random(0)

    def expand(self, symbol) -> list[str]:
        return expand(self.grammar, symbol, self.rng)

    def entity(self, cls: int) -> int:
        return int(self.task.entity_start[cls]) + self.rng.randrange(int(self.task.entity_count[cls]))

    def adjective(self, row) -> list[int]:
        if self.rng.random() < self.cfg.modifier_prob:
            return [self.task.adjective_offset + int(self.rng.choice(row))]
        return []

    def sentence(self) -> tuple[list[int], dict]:
        t, cfg, rng = self.task, self.cfg, self.rng
        cls = rng.randrange(cfg.n_classes)
        linked = (cls + cfg.n_classes // 2) % cfg.n_classes
        symbols = self.expand(self.grammar.start())
        subjects = [self.entity(cls) for s in symbols if s == "subject"]
        allowed = t.tables["shown_values"][subjects[-1], : t.tables["shown_degree"][subjects[-1]]]  # the last subject's values
        out, i = [], 0
        members = {"subject": [], "object": [], "verb": [], "value": []}
        for s in symbols:
            if s == "subject":
                e = subjects[i]
                i += 1
                out += ([] if t.tables["entity_pii"][e] else self.adjective(t.class_adjectives[cls])) + [t.entity_offset + e]
            elif s == "object":
                e = self.entity(linked)
                out += ([] if t.tables["entity_pii"][e] else self.adjective(t.class_adjectives[linked])) + [t.entity_offset + e]
            elif s == "conj":
                out.append(rng.choice([G.AND, G.OR]))
            elif s == "desc_prep":
                out.append(rng.choice([G.IS, G.HAS]))
            elif s == "value":
                v = int(rng.choice(allowed))  # within the class
                prop = cls * cfg.properties_per_class + v // cfg.values_per_property
                out += self.adjective(t.property_adjectives[prop]) + [t.value_offset + cls * t.values_per_class + v]
            elif s == "verb":
                verb = (cls % (cfg.n_classes // 2)) * t.verbs_per_group + rng.randrange(t.verbs_per_group)
                if rng.random() < cfg.modifier_prob:
                    out.append(t.adverb_offset + int(rng.choice(t.verb_adverbs[verb])))
                out.append(t.verb_offset + verb)
            elif s == "rel_prep":
                out.append(rng.choices([G.ON, G.IN, G.TO], weights=[0.4, 0.3, 0.3])[0])
            else:
                out.append(G.EOS)
            if s in members:
                members[s].append(out[-1])
        return out, members

    def document(self) -> list[int]:
        while True:
            sentence, members = self.sentence()
            task = self.rng.choices([0, 1, 2], weights=self.cfg.task_prior)[0]
            if task == 1:
                ops = sentence[:-1]
                self.rng.shuffle(ops)
            elif task == 2:
                ops = [self.rng.choice(m) for m in members.values() if m and self.rng.random() < 0.5]
                self.rng.shuffle(ops)
                if not ops:
                    task, ops = 0, [G.NULL]
            else:
                ops = [G.NULL]
            doc = [G.TASK, G.T0 + task, G.NEWLINE, G.OPS, *ops, G.NEWLINE, G.OUT, *sentence]
            if len(doc) <= self.cfg.max_length:
                return doc + [G.PAD] * (self.cfg.max_length - len(doc))

    def batch(self, n: int) -> int:
        docs = [self.document() for _ in range(n)]
        torch.tensor(docs)
        return sum(sum(1 for x in d if x != G.PAD) for d in docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--nltk-batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--recipe-scale", choices=["cpu", "paper"], default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for caplab (the NLTK peer is single-threaded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = {} if args.recipe_scale == "cpu" else PAPER_SCALE
    task = make_task("concept_language", **overrides)
    reference = NltkSampler(task)
    generator = torch.Generator().manual_seed(0)
    task.sample_documents(256, generator, torch.device("cpu"))  # warm-up
    ours, theirs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        docs = task.sample_documents(args.batch, generator, torch.device("cpu"))
        ours.append(docs.length.sum().item() / (time.perf_counter() - start))
        start = time.perf_counter()
        tokens = reference.batch(args.nltk_batch)
        theirs.append(tokens / (time.perf_counter() - start))
    a, b = sorted(ours)[len(ours) // 2], sorted(theirs)[len(theirs) // 2]
    print(f"scale {args.recipe_scale}: vocab {task.vocab_size}, max_length {task.cfg.max_length}, {args.threads} torch thread(s)")
    print(f"caplab tensor sampler : {a / 1e6:8.2f} M tokens/s (batch {args.batch}, median of {args.repeats})")
    print(f"NLTK sequential       : {b / 1e6:8.3f} M tokens/s (batch {args.nltk_batch})")
    print(f"ratio caplab / NLTK   : {a / b:8.1f}x")


if __name__ == "__main__":
    main()
