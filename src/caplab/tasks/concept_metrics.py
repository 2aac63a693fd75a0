"""Capability metrics of the concept language, batched on the model.

    grammaticality          free generations (T0 prompt) the exact parser accepts
    type_desc               values whose property belongs to the class of the last subject
    type_desc_entity        values the last subject allows (edges of the type-constraint graph)
    type_rel                verbs linking the class of every subject to that of each object
    type_adj, type_adv      modifiers allowed for the token they modify
    type_constraints        type_desc * type_rel * type_adj * type_adv (the paper's product)
    unscramble_exact/_token T1: the whole sentence / per position, generated after the prompt
    conditional_satisfied   T2: every condition token appears, as a whole token, in the generation
    conditional_grammatical T2 generations the parser accepts
    reachable_pairs         the percolation order parameter: for entity-value pairs that are class
                            consistent but never allowed in training, the share ranked within the
                            top 1.5 x (values per class) tokens after `[adj] subject is [adj]` (T0 prompt)
    reachable_rank          their mean rank / values per class; `_unscramble`: the same under a T1 prompt
    reachable_pairs_swap    the control: the same prompts with the subject replaced by one of another class
    reachable_pairs_specific  class knowledge: (normal - swap), 0 without it, 1 with the subject's class ranked first
    reachable_pairs_specific_a/_b  the same on the first / second half of the prompts: one half picks a
                            run's best evaluation, the other scores it (an unbiased read at the peak)
    loss_T0, loss_T1, loss_T2  teacher-forced loss of held-out documents of each task

Type-constraint fractions are taken over grammatical generations; a constraint
with no occurrence there counts as satisfied, and all are 0 when nothing
parses. Generation samples from the softmax (as the paper does) unless
`eval_decoding=greedy`; the random draws are the same at every evaluation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from caplab.tasks import concept_grammar as G
from caplab.tasks.concept_sampler import Sentences, make_documents

RANK_FACTOR = 1.5  # the order parameter's rank threshold, in units of values per class


def cut_at_eos(tokens: torch.Tensor) -> torch.Tensor:
    """Replace everything after the first <eos> of each row by <pad>."""
    is_eos = (tokens == G.EOS).long()
    after = (is_eos.cumsum(1) - is_eos) > 0
    return tokens.masked_fill(after, G.PAD)


def parse_sentences(task, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut at <eos> and parse: returns (cut tokens, grammatical (n,), symbols (n, width))."""
    tokens = cut_at_eos(tokens)
    grammatical, symbols = G.parse(task.on(tokens.device)["category"][tokens])
    return tokens, grammatical, symbols


def type_checks(task, tokens: torch.Tensor, symbols: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per constraint, (occurrences that satisfy it, occurrences) over all rows (parsed sentences)."""
    T, cfg = task.on(tokens.device), task.cfg
    B, W = tokens.shape
    pos = torch.arange(W, device=tokens.device)
    nV, half = cfg.values_per_property, cfg.n_classes // 2
    token_class = T["token_class"][tokens]
    value = (tokens - task.value_offset).clamp(0, task.n_values - 1)
    following = torch.cat([tokens[:, 1:], torch.full_like(tokens[:, :1], G.PAD)], 1)

    is_subject = symbols == G.S_SUBJECT
    last_subject = torch.where(is_subject, pos, -1).cummax(1).values
    subject_token = tokens.gather(1, last_subject.clamp(min=0))
    subject_entity = (subject_token - task.entity_offset).clamp(0, task.n_entities - 1)
    is_value = (symbols == G.S_VALUE) & (last_subject >= 0)
    desc_ok = is_value & (token_class == T["token_class"][subject_token])
    entity_ok = desc_ok & T["allowed"][subject_entity, value % task.values_per_class]

    # a verb of group g links classes g and g + C/2: all subjects in one of them, each object in the other
    subject_low = torch.where(is_subject, token_class, cfg.n_classes).min(1).values
    subject_high = torch.where(is_subject, token_class, -1).max(1).values
    subject_class = subject_low[:, None]
    is_verb = symbols == G.S_VERB
    group = ((tokens - task.verb_offset).clamp(0, cfg.n_relative - 1)) // task.verbs_per_group
    subjects_fit = (subject_low == subject_high)[:, None] & ((subject_class == group) | (subject_class == group + half))
    last_verb = torch.where(is_verb, pos, -1).cummax(1).values
    bad_object = (symbols == G.S_OBJECT) & (token_class != (subject_class + half) % cfg.n_classes) & (last_verb >= 0)
    bad_objects_of_verb = torch.zeros(B, W + 1, device=tokens.device)
    bad_objects_of_verb.scatter_add_(1, torch.where(bad_object, last_verb, W), torch.ones_like(bad_objects_of_verb[:, :W]))
    rel_ok = is_verb & subjects_fit & (bad_objects_of_verb[:, :W] == 0)

    is_adj = torch.isin(symbols, torch.tensor([G.S_SUBJECT_ADJ, G.S_VALUE_ADJ, G.S_OBJECT_ADJ], device=tokens.device))
    adjective = (tokens - task.adjective_offset).clamp(0, cfg.n_adjectives - 1)
    next_entity = (following - task.entity_offset).clamp(0, task.n_entities - 1)
    next_prop = ((following - task.value_offset).clamp(0, task.n_values - 1)) // nV
    next_class = T["token_class"][following].clamp(min=0)
    next_is_value = following >= task.value_offset
    adj_for_entity = T["class_adjective_mask"][next_class, adjective] & ~T["entity_pii"][next_entity]
    adj_ok = is_adj & torch.where(next_is_value, T["property_adjective_mask"][next_prop, adjective], adj_for_entity)
    is_adv = symbols == G.S_ADVERB
    adverb = (tokens - task.adverb_offset).clamp(0, cfg.n_adverbs - 1)
    next_verb = (following - task.verb_offset).clamp(0, cfg.n_relative - 1)
    adv_ok = is_adv & T["verb_adverb_mask"][next_verb, adverb]

    return {
        "desc": (desc_ok.sum(), is_value.sum()),
        "desc_entity": (entity_ok.sum(), is_value.sum()),
        "rel": (rel_ok.sum(), is_verb.sum()),
        "adj": (adj_ok.sum(), is_adj.sum()),
        "adv": (adv_ok.sum(), is_adv.sum()),
    }


def type_metrics(task, tokens: torch.Tensor, symbols: torch.Tensor, grammatical: torch.Tensor) -> dict[str, float]:
    """type_* fractions over the grammatical rows, and their product type_constraints."""
    if not grammatical.any():
        return {f"type_{k}": 0.0 for k in ("desc", "desc_entity", "rel", "adj", "adv", "constraints")}
    checks = type_checks(task, tokens[grammatical], symbols[grammatical])
    out = {f"type_{k}": (ok / total).item() if total > 0 else 1.0 for k, (ok, total) in checks.items()}
    out["type_constraints"] = out["type_desc"] * out["type_rel"] * out["type_adj"] * out["type_adv"]
    return out


def conditions_satisfied(conditions: torch.Tensor, n_conditions: torch.Tensor, sentences: torch.Tensor) -> torch.Tensor:
    """(n,) whether each of a row's first `n_conditions` condition tokens occurs in its sentence.

    Tokens are compared whole (by id), so a value never counts as another value
    whose name it prefixes (the official code's substring test does).

    Arguments:
        conditions: (n, k) condition token ids; n_conditions: (n,); sentences: (n, width).
    """
    is_condition = torch.arange(conditions.shape[1], device=conditions.device) < n_conditions[:, None]
    present = (conditions[:, :, None] == sentences[:, None, :]).any(-1)
    return (present | ~is_condition).all(1)


# ------------------------------------------------------------------ held-out sets


def _prompt_t0(n: int, device) -> torch.Tensor:
    return torch.tensor([G.TASK, G.T0, G.NEWLINE, G.OPS, G.NULL, G.NEWLINE, G.OUT], device=device).expand(n, -1)


def reachable_sentences(task, n: int, generator, device) -> tuple[Sentences, Sentences]:
    """The order parameter's prompts `adj subject is adj value <eos>`, and the same with the subject swapped.

    The value belongs to the subject's class, but the training data never
    shows the pair (never allowed, or, with `pairs_per_class`, not among the
    pairs shown). Subjects are non-PII entities (those take adjectives),
    uniform over classes. The control replaces the subject by a non-PII entity
    of another class and keeps every other token.
    """
    T, cfg = task.on(device), task.cfg
    uniform = lambda bound: (torch.rand(n, generator=generator, device=device) * bound).long()  # noqa: E731
    n_nonpii = int(round((1 - cfg.pii_fraction) * cfg.entities_per_class))
    cls = uniform(cfg.n_classes)
    subject = T["entity_start"][cls] + uniform(n_nonpii)
    value = uniform(task.values_per_class)
    for _ in range(1000):  # rejection: a value the data never shows for this subject
        shown = T["shown"][subject, value]
        if not shown.any():
            break
        value = torch.where(shown, uniform(task.values_per_class), value)
    other = (cls + 1 + uniform(cfg.n_classes - 1)) % cfg.n_classes
    swapped = T["entity_start"][other] + uniform(n_nonpii)
    prop = cls * cfg.properties_per_class + value // cfg.values_per_property
    subj_adj = T["class_adjectives"][cls, uniform(T["class_adjectives"].shape[1])]
    value_adj = T["property_adjectives"][prop, uniform(T["property_adjectives"].shape[1])]
    symbols = torch.tensor([G.S_SUBJECT_ADJ, G.S_SUBJECT, G.S_DESC_PREP, G.S_VALUE_ADJ, G.S_VALUE, G.S_EOS], device=device)

    def sentences(subjects):
        tokens = torch.stack([task.adjective_offset + subj_adj, task.entity_offset + subjects, torch.full_like(cls, G.IS),
                              task.adjective_offset + value_adj, task.value_offset + cls * task.values_per_class + value,
                              torch.full_like(cls, G.EOS)], 1)
        return Sentences.from_dense(tokens, symbols.expand(n, -1), torch.full_like(cls, 6), cls)

    return sentences(subject), sentences(swapped)


def eval_sets(task, device) -> dict:
    """Fixed held-out documents (the same at every evaluation), cached on the task per device."""
    key = ("eval", str(device))
    if key not in task._eval_cache:
        cfg = task.cfg
        generator = torch.Generator(device=device).manual_seed(cfg.seed + 1_000_003)
        n = cfg.eval_samples
        sets = {f"T{t}": task.sample_documents(n, generator, device, task=t) for t in range(3)}
        pairs, swapped = reachable_sentences(task, cfg.eval_reachable, generator, device)
        everywhere = lambda t: torch.full((len(pairs.length),), t, device=device)  # noqa: E731
        for t in (0, 1):
            sets[f"reachable_T{t}"] = make_documents(task, pairs, everywhere(t), generator, device)
        sets["reachable_swap_T0"] = make_documents(task, swapped, everywhere(0), generator, device)
        task._eval_cache[key] = sets
    return task._eval_cache[key]


def reachable_floor(task) -> float:
    """The order parameter of a model that knows a value comes next but not which: 1.5 |K_c| / |K| = 1.5 / C."""
    return RANK_FACTOR / task.cfg.n_classes


def class_specific(task, normal: float, swapped: float) -> float:
    """(normal - swap) scaled so that 0 is no class knowledge and 1 a model that ranks the subject's class first.

    Such a model scores 1 on normal prompts and, on swapped ones, puts the value
    among the other classes' values in random order: 0.5 / (C - 1).
    """
    return (normal - swapped) / (1 - (RANK_FACTOR - 1) / (task.cfg.n_classes - 1))


def adjective_oracle(task, device=torch.device("cpu"), seed: int = 0) -> float:
    """The order parameter of an oracle that sees only the prompt's two adjectives.

    It scores each value v by log P(value adjective | v's property) + log
    P(subject adjective | v's class) under the world's modifier tables, breaks
    ties at random, and knows that a value comes next. With uninformative
    modifiers (the default) it sits at the floor; with restricted ones it
    shows how much the metric can be passed without knowing the subject.
    """
    docs = eval_sets(task, device)["reachable_T0"]
    T, cfg = task.on(device), task.cfg
    at = docs.prompt_length[:, None] + torch.tensor([0, 3, 4], device=device)
    subj_adj, value_adj, value = (docs.tokens.gather(1, at) - torch.tensor([task.adjective_offset] * 2 + [task.value_offset],
                                                                           device=device)).unbind(1)
    prop_of = torch.arange(task.n_values, device=device) // cfg.values_per_property
    class_of = torch.arange(task.n_values, device=device) // task.values_per_class
    fits = T["property_adjective_mask"][prop_of][:, value_adj].T & T["class_adjective_mask"][class_of][:, subj_adj].T  # (n, K)
    score = torch.where(fits, -(T["property_adjective_mask"].sum(1)[prop_of].float().log()
                                + T["class_adjective_mask"].sum(1)[class_of].float().log()), float("-inf"))
    own = score.gather(1, value[:, None])
    greater = (score > own).sum(1)
    ties = (score == own).sum(1) - 1
    generator = torch.Generator(device=device).manual_seed(seed)
    rank = greater + (torch.rand(len(value), generator=generator, device=device) * (ties + 1)).floor().long()
    return (rank < RANK_FACTOR * task.values_per_class).float().mean().item()


# ------------------------------------------------------------------ the metrics


def _teacher_forced_loss(model: nn.Module, tokens: torch.Tensor) -> float:
    logits = model(tokens[:, :-1]).float()
    targets = tokens[:, 1:]
    per_token = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)
    mask = (targets != G.PAD).float()
    return ((per_token * mask).sum() / mask.sum()).item()


def _generate_after_prompt(model, docs, width: int, sample: bool, generator) -> torch.Tensor:
    """Generate each row after its own prompt up to `width`; return the generated part, left-aligned."""
    prompt_width = int(docs.prompt_length.max())
    out = model.generate(docs.tokens[:, :prompt_width], width - prompt_width, prompt_lengths=docs.prompt_length,
                         sample=sample, generator=generator)
    index = docs.prompt_length[:, None] + torch.arange(width, device=out.device)
    return out.gather(1, index.clamp(max=width - 1)).masked_fill(index >= width, G.PAD)


def _value_ranks(task, model, docs) -> torch.Tensor:
    """Per prompt, the rank of its value among all tokens after `adj subject is adj`, over |K_c|."""
    value_position = docs.prompt_length + 4  # adj subject is adj VALUE
    logits = model(docs.tokens[:, : int(value_position.max())]).float()
    at = logits.gather(1, (value_position - 1)[:, None, None].expand(-1, 1, logits.shape[-1])).squeeze(1)  # (n, vocab)
    target = docs.tokens.gather(1, value_position[:, None])
    return (at > at.gather(1, target)).sum(1).float() / task.values_per_class


def _order_parameter(task, model, docs) -> tuple[float, float]:
    """(share of prompts whose value ranks below 1.5 |K_c|, mean rank / |K_c|)."""
    rank = _value_ranks(task, model, docs)
    return (rank < RANK_FACTOR).float().mean().item(), rank.mean().item()


@torch.no_grad()
def evaluate_concept_language(task, model: nn.Module, device) -> dict[str, float]:
    cfg = task.cfg
    sets = eval_sets(task, device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 7)
    sample = cfg.eval_decoding == "sample"
    L = cfg.max_length
    metrics: dict[str, float] = {}

    prompt = _prompt_t0(cfg.eval_samples, device)
    free = model.generate(prompt, L - prompt.shape[1], sample=sample, generator=generator)[:, prompt.shape[1]:]
    tokens, grammatical, symbols = parse_sentences(task, free)
    metrics["grammaticality"] = grammatical.float().mean().item()
    metrics.update(type_metrics(task, tokens, symbols, grammatical))

    docs = sets["T1"]
    width = int(docs.length.max())
    generated = _generate_after_prompt(model, docs, width, sample, generator)
    target = docs.tokens.gather(1, (docs.prompt_length[:, None] + torch.arange(width, device=device)).clamp(max=L - 1))
    in_sentence = torch.arange(width, device=device) < (docs.length - docs.prompt_length)[:, None]
    right = (generated == target) & in_sentence
    metrics["unscramble_exact"] = (right | ~in_sentence).all(1).float().mean().item()
    metrics["unscramble_token"] = (right.sum(1) / in_sentence.sum(1)).mean().item()

    docs = sets["T2"]
    docs_t2 = docs.task == 2
    generated = _generate_after_prompt(model, docs, L, sample, generator)[docs_t2]
    tokens, grammatical, _ = parse_sentences(task, generated)
    n_conditions = (docs.prompt_length - 6)[docs_t2]
    satisfied = conditions_satisfied(docs.tokens[docs_t2, 4:8], n_conditions, tokens)
    metrics["conditional_satisfied"] = satisfied.float().mean().item() if len(tokens) else 0.0
    metrics["conditional_grammatical"] = grammatical.float().mean().item() if len(tokens) else 0.0

    rank, swapped = _value_ranks(task, model, sets["reachable_T0"]), _value_ranks(task, model, sets["reachable_swap_T0"])
    hit, hit_swapped = (rank < RANK_FACTOR).float(), (swapped < RANK_FACTOR).float()
    metrics["reachable_pairs"], metrics["reachable_rank"] = hit.mean().item(), rank.mean().item()
    metrics["reachable_pairs_swap"] = hit_swapped.mean().item()
    metrics["reachable_pairs_specific"] = class_specific(task, metrics["reachable_pairs"], metrics["reachable_pairs_swap"])
    half = len(hit) // 2
    for name, part in (("a", slice(None, half)), ("b", slice(half, None))):
        metrics[f"reachable_pairs_specific_{name}"] = class_specific(task, hit[part].mean().item(), hit_swapped[part].mean().item())
    metrics["reachable_pairs_unscramble"], _ = _order_parameter(task, model, sets["reachable_T1"])
    for t in range(3):
        docs = sets[f"T{t}"]
        keep = docs.task == t
        if keep.any():
            metrics[f"loss_T{t}"] = _teacher_forced_loss(model, docs.tokens[keep, : int(docs.length.max())])
    return metrics
