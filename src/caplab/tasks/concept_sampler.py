"""The concept language's tensor sampler: sentences and documents for a whole batch at once.

Work is proportional to the tokens produced. A sentence is a list of items
(subjects, verb-phrase leaves, objects), each drawn as a flat array over the
batch (`repeat_interleave` by the per-row counts, which follow the grammar's
rules); every item emits a few token slots, some optional (a conjunction, a
modifier). Segmented prefix sums of the kept slots give each token's position
in its sentence, so sentences are built by one scatter, with no per-token or
per-row Python and no padded template.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from caplab.tasks import concept_grammar as G

HEADER = 4  # Task: T \n Ops:
TRAILER = 2  # \n Out:


@dataclass
class Sentences:
    """Sentences as flat token lists: token i belongs to sentence `row[i]`, at position `pos[i]`.

    Within each grammar symbol, tokens are ordered by row.
    """

    row: torch.Tensor  # (N,)
    pos: torch.Tensor  # (N,)
    tokens: torch.Tensor  # (N,)
    symbols: torch.Tensor  # (N,)
    length: torch.Tensor  # (n,) tokens per sentence, <eos> included
    phrase_class: torch.Tensor  # (n,)

    def dense(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, width) tokens and symbols, padded."""
        n = len(self.length)
        tokens = torch.full((n, width), G.PAD, dtype=torch.long, device=self.length.device)
        symbols = torch.full((n, width), G.S_PAD, dtype=torch.long, device=self.length.device)
        tokens[self.row, self.pos] = self.tokens
        symbols[self.row, self.pos] = self.symbols
        return tokens, symbols

    @classmethod
    def from_dense(cls, tokens: torch.Tensor, symbols: torch.Tensor, length: torch.Tensor, phrase_class: torch.Tensor) -> "Sentences":
        row, pos = (torch.arange(tokens.shape[1], device=tokens.device) < length[:, None]).nonzero(as_tuple=True)
        return cls(row, pos, tokens[row, pos], symbols[row, pos], length, phrase_class)


@dataclass
class Documents:
    """A batch of documents: prompt, ops and sentence, padded to max_length."""

    tokens: torch.Tensor  # (n, max_length)
    symbols: torch.Tensor  # (n, max_length) uint8 ids into concept_grammar.SYMBOLS
    task: torch.Tensor  # (n,) 0, 1, 2
    prompt_length: torch.Tensor  # (n,) tokens up to and including Out:
    length: torch.Tensor  # (n,) tokens before the padding
    phrase_class: torch.Tensor  # (n,)

    @classmethod
    def cat(cls, parts: list["Documents"]) -> "Documents":
        return cls(*(torch.cat([getattr(p, name) for p in parts]) for name in cls.__dataclass_fields__))


# ------------------------------------------------------------------ helpers


def _at(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values[index] for a 1-D integer index (index_select is several times faster than advanced indexing on CPU)."""
    return values.index_select(0, index)


def _groups(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For groups of `counts` items: (group of each item, index of each item within its group)."""
    group = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = counts.cumsum(0) - counts
    return group, torch.arange(len(group), device=counts.device) - _at(first, group)


def _offsets(sizes: torch.Tensor, group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Items of `sizes` laid out in order within contiguous groups: (offset of each item in its group, group totals)."""
    end = sizes.cumsum(0)
    totals = torch.zeros(n_groups, dtype=sizes.dtype, device=sizes.device).index_add_(0, group, sizes)
    group_start = totals.cumsum(0) - totals
    return end - sizes - _at(group_start, group), totals


def _from_cdf(cdf: torch.Tensor, n: int, generator) -> torch.Tensor:
    """Indices drawn from a cumulative distribution; len(cdf) stands for the tail beyond it."""
    return torch.searchsorted(cdf, torch.rand(n, generator=generator, device=cdf.device), right=True)


def _pick(table: torch.Tensor, rows: torch.Tensor, generator) -> torch.Tensor:
    """A uniform entry of table[row] for each row."""
    column = (torch.rand(len(rows), generator=generator, device=rows.device) * table.shape[1]).long()
    return _at(table.view(-1), rows * table.shape[1] + column)


# ------------------------------------------------------------------ sentences


def draw_sentences(world, n: int, generator, device) -> tuple[Sentences, torch.Tensor]:
    """n sentences from the grammar and the world's type constraints, and whether each can fit a document.

    Counts of subjects, verb phrases and objects come from the grammar's exact
    distributions; a count larger than the document length can never fit, so
    such rows are only marked (and kept short) instead of being built.
    """
    cfg, T = world.cfg, world.on(device)
    rand = lambda m: torch.rand(m, generator=generator, device=device)  # noqa: E731
    half = cfg.n_classes // 2

    def entities(classes):
        return _at(T["entity_start"], classes) + (rand(len(classes)) * _at(T["entity_count"], classes)).long()

    def conjunctions(m):
        return torch.where(rand(m) < G.CONJUNCTIONS[G.AND], G.AND, G.OR)

    phrase_class = (rand(n) * cfg.n_classes).long()
    n_subjects = _from_cdf(T["np_cdf"], n, generator) + 1
    n_leaves = _from_cdf(T["vp_cdf"], n, generator) + 1
    fits = (n_subjects <= len(T["np_cdf"])) & (n_leaves <= len(T["vp_cdf"]))
    n_subjects, n_leaves = n_subjects.clamp(max=len(T["np_cdf"])), n_leaves.clamp(max=len(T["vp_cdf"]))
    l_row, l_index = _groups(n_leaves)
    m = len(l_row)
    is_desc = rand(m) < cfg.p_desc
    has_desc = torch.zeros(n, dtype=torch.bool, device=device).index_fill_(0, l_row[is_desc], True)

    # subjects: [Conj, adjective, entity]; the last one of a sentence with values shows at least one pair
    s_row, s_index = _groups(n_subjects)
    s_class = _at(phrase_class, s_row)
    s_entity = entities(s_class)
    is_last = s_index == _at(n_subjects, s_row) - 1
    describes = (is_last & _at(has_desc, s_row)).nonzero().squeeze(1)
    d_class = _at(s_class, describes)
    d_pick = (rand(len(describes)) * _at(T["desc_subject_count"], d_class)).long()
    s_entity[describes] = _at(T["desc_subjects"].view(-1), d_class * T["desc_subjects"].shape[1] + d_pick)
    s_tokens = torch.stack([conjunctions(len(s_row)), world.adjective_offset + _pick(T["class_adjectives"], s_class, generator),
                            world.entity_offset + s_entity], 1)
    s_keep = torch.stack([s_index > 0, (rand(len(s_row)) < cfg.modifier_prob) & ~_at(T["entity_pii"], s_entity),
                          torch.ones_like(s_index, dtype=torch.bool)], 1)
    last_subject = torch.zeros(n, dtype=torch.long, device=device)
    last_subject[s_row[is_last]] = s_entity[is_last]  # descriptive values follow the last subject

    # verb-phrase leaves: [Conj, is/has, adjective, value] or [Conj, adverb, verb, on/in/to]
    l_class = _at(phrase_class, l_row)
    l_subject = _at(last_subject, l_row)
    offset = (rand(m) * _at(T["shown_degree"], l_subject)).long()
    value = _at(T["shown_values"].view(-1), l_subject * T["shown_values"].shape[1] + offset)  # within the class
    prop = l_class * cfg.properties_per_class + value // cfg.values_per_property
    verb = (l_class % half) * world.verbs_per_group + (rand(m) * world.verbs_per_group).long()
    rel_prep = torch.tensor([G.ON, G.IN, G.TO], device=device)[_from_cdf(T["rel_prep_cdf"], m, generator).clamp(max=2)]
    desc_tokens = torch.stack([torch.where(rand(m) < G.DESC_PREPOSITIONS[G.IS], G.IS, G.HAS),
                               world.adjective_offset + _pick(T["property_adjectives"], prop, generator),
                               world.value_offset + l_class * world.values_per_class + value], 1)
    rel_tokens = torch.stack([world.adverb_offset + _pick(T["verb_adverbs"], verb, generator), world.verb_offset + verb, rel_prep], 1)
    l_tokens = torch.cat([conjunctions(m)[:, None], torch.where(is_desc[:, None], desc_tokens, rel_tokens)], 1)
    has_modifier = rand(m) < cfg.modifier_prob
    l_keep = torch.stack([l_index > 0, is_desc | has_modifier, ~is_desc | has_modifier, torch.ones_like(is_desc)], 1)
    n_objects = torch.where(is_desc, 0, _from_cdf(T["relnp_cdf"], m, generator) + 1)
    too_many = n_objects > len(T["relnp_cdf"])
    fits[l_row[too_many]] = False
    n_objects = n_objects.clamp(max=len(T["relnp_cdf"]))

    # objects of relative leaves: [Conj, adjective, entity]
    o_leaf, o_index = _groups(n_objects)
    o_row = _at(l_row, o_leaf)
    o_class = (_at(phrase_class, o_row) + half) % cfg.n_classes
    o_entity = entities(o_class)
    o_tokens = torch.stack([conjunctions(len(o_leaf)), world.adjective_offset + _pick(T["class_adjectives"], o_class, generator),
                            world.entity_offset + o_entity], 1)
    o_keep = torch.stack([o_index > 0, (rand(len(o_leaf)) < cfg.modifier_prob) & ~_at(T["entity_pii"], o_entity),
                          torch.ones_like(o_index, dtype=torch.bool)], 1)

    # positions: subjects first, then each leaf followed by its objects, then <eos>
    s_size, l_size, o_size = s_keep.sum(1), l_keep.sum(1), o_keep.sum(1)
    s_start, s_total = _offsets(s_size, s_row, n)
    o_start, o_per_leaf = _offsets(o_size, o_leaf, m)
    l_start, vp_total = _offsets(l_size + o_per_leaf, l_row, n)
    l_start = l_start + _at(s_total, l_row)
    o_start = o_start + _at(l_start + l_size, o_leaf)
    length = s_total + vp_total + 1

    desc_symbols = torch.tensor([G.S_VP_CONJ, G.S_DESC_PREP, G.S_VALUE_ADJ, G.S_VALUE], device=device)
    rel_symbols = torch.tensor([G.S_VP_CONJ, G.S_ADVERB, G.S_VERB, G.S_REL_PREP], device=device)
    parts = [
        (s_row, s_start, s_tokens, s_keep, torch.tensor([G.S_NP_CONJ, G.S_SUBJECT_ADJ, G.S_SUBJECT], device=device).expand(len(s_row), 3)),
        (l_row, l_start, l_tokens, l_keep, torch.where(is_desc[:, None], desc_symbols, rel_symbols)),
        (o_row, o_start, o_tokens, o_keep, torch.tensor([G.S_OBJECT_CONJ, G.S_OBJECT_ADJ, G.S_OBJECT], device=device).expand(len(o_leaf), 3)),
    ]
    rows, positions, tokens, symbols, keeps = [], [], [], [], []
    for row, start, item_tokens, keep, item_symbols in parts:
        rows.append(row[:, None].expand_as(keep).flatten())
        positions.append((start[:, None] + keep.cumsum(1) - keep.long()).flatten())  # position of each kept slot
        tokens.append(item_tokens.flatten())
        symbols.append(item_symbols.flatten())
        keeps.append(keep.flatten())
    rows.append(torch.arange(n, device=device))
    positions.append(length - 1)
    tokens.append(torch.full((n,), G.EOS, device=device))
    symbols.append(torch.full((n,), G.S_EOS, device=device))
    keeps.append(torch.ones(n, dtype=torch.bool, device=device))
    kept = torch.cat(keeps).nonzero().squeeze(1)
    flat = [torch.cat(x).index_select(0, kept) for x in (rows, positions, tokens, symbols)]
    return Sentences(*flat, length, phrase_class), fits


# ------------------------------------------------------------------ documents


def _one_per_row(rows: torch.Tensor, values: torch.Tensor, n: int, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniform choice among each row's entries (entries ordered by row): (chosen value, row has any)."""
    counts = torch.bincount(rows, minlength=n)
    first = counts.cumsum(0) - counts
    pick = first + (torch.rand(n, generator=generator, device=rows.device) * counts).long()
    has = counts > 0
    return _at(values, pick.clamp(max=max(len(values) - 1, 0))) if len(values) else torch.zeros_like(counts), has


def make_documents(world, sentences: Sentences, task: torch.Tensor, generator, device,
                   accept: Optional[torch.Tensor] = None, limit: Optional[int] = None) -> Documents:
    """Documents of the given tasks (T2 without conditions becomes T0) around `sentences`.

    Only documents that fit max_length (and whose row `accept` allows) are
    built, the first `limit` of them, in row order.
    """
    L = world.cfg.max_length
    n = len(sentences.length)
    rand = lambda m: torch.rand(m, generator=generator, device=device)  # noqa: E731
    row, pos, tokens, symbols = sentences.row, sentences.pos, sentences.tokens, sentences.symbols

    # T2 conditions: per category present, with probability 1/2, one of its tokens; shuffled
    categories = (G.S_SUBJECT, G.S_OBJECT, G.S_VERB, G.S_VALUE)
    is_category = torch.zeros(len(G.SYMBOLS), dtype=torch.bool, device=device)
    is_category[list(categories)] = True
    row_task = _at(task, row)
    candidate = ((row_task == 2) & _at(is_category, symbols)).nonzero().squeeze(1)
    c_row, c_tokens, c_symbols = _at(row, candidate), _at(tokens, candidate), _at(symbols, candidate)
    chosen, included = [], []
    for symbol in categories:
        of_symbol = (c_symbols == symbol).nonzero().squeeze(1)
        value, has = _one_per_row(_at(c_row, of_symbol), _at(c_tokens, of_symbol), n, generator)
        chosen.append(value)
        included.append(has & (rand(n) < 0.5))
    chosen, included = torch.stack(chosen, 1), torch.stack(included, 1)
    order = torch.where(included, torch.rand(n, 4, generator=generator, device=device), 2.0).argsort(1)
    conditions = chosen.gather(1, order)
    n_conditions = included.sum(1)
    task = torch.where((task == 2) & (n_conditions == 0), 0, task)

    ops_length = torch.where(task == 1, sentences.length - 1, torch.where(task == 2, n_conditions, 1))
    length = HEADER + ops_length + TRAILER + sentences.length
    keep = length <= L if accept is None else (length <= L) & accept
    out_row = keep.long().cumsum(0) - 1  # the output row of each kept document
    if limit is not None:
        keep &= out_row < limit
    n_out = int(keep.sum())
    # a spare row and a spare column take what belongs to dropped or over-long documents
    out_row = torch.where(keep, out_row, n_out)
    docs = torch.full((n_out + 1, L + 1), G.PAD, dtype=torch.long, device=device)
    doc_symbols = torch.full((n_out + 1, L + 1), G.S_PAD, dtype=torch.uint8, device=device)
    task_tokens = G.T0 + task[keep]
    docs[:n_out, :HEADER] = torch.stack([torch.full_like(task_tokens, G.TASK), task_tokens, torch.full_like(task_tokens, G.NEWLINE),
                                         torch.full_like(task_tokens, G.OPS)], 1)
    doc_symbols[:n_out, :HEADER] = G.S_PROMPT
    flat_docs, flat_symbols = docs.view(-1), doc_symbols.view(-1)

    def place(at_row, at_pos, values, value_symbols):
        at = _at(out_row, at_row) * (L + 1) + at_pos.clamp(max=L)
        flat_docs.scatter_(0, at, values)
        flat_symbols.scatter_(0, at, value_symbols.to(torch.uint8).expand_as(at))

    # ops: <null> (T0), the sentence without <eos> shuffled (T1), the conditions (T2)
    all_rows = torch.arange(n, device=device)
    t0 = (task == 0).nonzero().squeeze(1)
    place(t0, torch.full_like(t0, HEADER), torch.full_like(t0, G.NULL), torch.tensor(G.S_OPS, device=device))
    t2_row, t2_slot = (torch.arange(4, device=device) < torch.where(task == 2, n_conditions, 0)[:, None]).nonzero(as_tuple=True)
    place(t2_row, HEADER + t2_slot, conditions[t2_row, t2_slot], torch.tensor(G.S_OPS, device=device))
    shuffle = ((row_task == 1) & (symbols != G.S_EOS)).nonzero().squeeze(1)
    s_row, s_tokens = _at(row, shuffle), _at(tokens, shuffle)
    shuffle_keys = torch.randint(1 << 20, (len(s_row),), generator=generator, device=device)
    order = ((s_row << 20) + shuffle_keys).argsort()  # by row, then in random order
    _, rank = _groups(torch.bincount(s_row, minlength=n))  # s_row is sorted by row after the shuffle too
    place(_at(s_row, order), HEADER + rank, _at(s_tokens, order), torch.tensor(G.S_OPS, device=device))
    # trailer, then the sentence
    trailer_at = HEADER + ops_length
    place(all_rows, trailer_at, torch.full_like(all_rows, G.NEWLINE), torch.tensor(G.S_PROMPT, device=device))
    place(all_rows, trailer_at + 1, torch.full_like(all_rows, G.OUT), torch.tensor(G.S_PROMPT, device=device))
    place(row, _at(trailer_at, row) + TRAILER + pos, tokens, symbols)
    return Documents(docs[:n_out, :L], doc_symbols[:n_out, :L], task[keep], (HEADER + TRAILER + ops_length)[keep], length[keep],
                     sentences.phrase_class[keep])
