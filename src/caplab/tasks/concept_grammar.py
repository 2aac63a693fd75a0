"""The grammar of the concept language: its special tokens, rule probabilities and an exact parser.

The grammar (Lubana et al., ICLR 2025; probabilities as in the paper's code):

    S        -> NP VP <eos>
    NP       -> subject [0.8] | NP Conj NP [0.2]
    VP       -> descPreP descV [0.4] | relV relPreP relNP [0.4] | VP Conj VP [0.2]
    relNP    -> object [0.7] | object Conj relNP [0.3]
    descPreP -> is [0.5] | has [0.5]
    relPreP  -> on [0.4] | in [0.3] | to [0.3]
    Conj     -> and [0.5] | or [0.5]

with optional modifiers: an adjective before a subject, an object or a
descriptive value, an adverb before a relative verb. The surface language is
regular (NP is `subject (Conj subject)*`, VP is `leaf (Conj leaf)*`, relNP is
`object (Conj object)*`), so a deterministic finite automaton recognises it
exactly; `parse` runs that automaton over a whole batch at once and labels
every token with its grammar symbol. The only ambiguous token, a Conj after an
object, is resolved by the next token (an object continues relNP, a verb
phrase starts a new VP).
"""

from __future__ import annotations

from math import comb

import torch

# ------------------------------------------------------------------ special tokens (ids 0..16)

SPECIAL_TOKENS = ["<pad>", "<eos>", "Task:", "T0", "T1", "T2", "\\n", "Ops:", "<null>", "Out:",
                  "is", "has", "on", "in", "to", "and", "or"]
PAD, EOS, TASK, T0, T1, T2, NEWLINE, OPS, NULL, OUT, IS, HAS, ON, IN, TO, AND, OR = range(len(SPECIAL_TOKENS))
TASK_TOKENS = (T0, T1, T2)

# ------------------------------------------------------------------ rule probabilities

P_NP_CONJ = 0.2  # NP -> NP Conj NP
P_VP_CONJ = 0.2  # VP -> VP Conj VP
P_VP_DESC = 0.5  # of the non-recursive VP rules, descPreP descV (0.4 / 0.8)
P_RELNP_CONJ = 0.3  # relNP -> object Conj relNP
DESC_PREPOSITIONS = {IS: 0.5, HAS: 0.5}
REL_PREPOSITIONS = {ON: 0.4, IN: 0.3, TO: 0.3}
CONJUNCTIONS = {AND: 0.5, OR: 0.5}


def binary_leaves_pmf(p_branch: float, n_max: int) -> torch.Tensor:
    """P(n leaves) for n = 1..n_max of X -> leaf [1-p] | X Conj X [p].

    A tree with n leaves has n-1 branchings and n leaf choices, and there are
    Catalan(n-1) such trees: P(n) = C(n-1) p^(n-1) (1-p)^n.
    """
    n = torch.arange(1, n_max + 1, dtype=torch.float64)
    catalan = torch.tensor([comb(2 * (k - 1), k - 1) / k for k in range(1, n_max + 1)], dtype=torch.float64)
    return catalan * p_branch ** (n - 1) * (1 - p_branch) ** n


def list_length_pmf(p_more: float, n_max: int) -> torch.Tensor:
    """P(n items) for n = 1..n_max of X -> item [1-p] | item Conj X [p] (geometric)."""
    n = torch.arange(1, n_max + 1, dtype=torch.float64)
    return p_more ** (n - 1) * (1 - p_more)


# ------------------------------------------------------------------ categories and symbols

# token categories the automaton reads
(C_PAD, C_EOS, C_PROMPT, C_DESC_PREP, C_REL_PREP, C_CONJ, C_ADJ, C_ADV, C_VERB, C_ENTITY, C_VALUE) = range(11)
N_CATEGORIES = 11

# grammar symbols, one per token (the parse labels instruments use)
SYMBOLS = ["pad", "prompt", "ops", "subject_adj", "subject", "np_conj", "desc_prep", "value_adj", "value",
           "vp_conj", "adverb", "verb", "rel_prep", "object_adj", "object", "object_conj", "eos"]
(S_PAD, S_PROMPT, S_OPS, S_SUBJECT_ADJ, S_SUBJECT, S_NP_CONJ, S_DESC_PREP, S_VALUE_ADJ, S_VALUE, S_VP_CONJ,
 S_ADVERB, S_VERB, S_REL_PREP, S_OBJECT_ADJ, S_OBJECT, S_OBJECT_CONJ, S_EOS) = range(len(SYMBOLS))

# automaton states
(START, AFTER_SUBJECT_ADJ, AFTER_SUBJECT, AFTER_NP_CONJ, AFTER_DESC_PREP, AFTER_VALUE_ADJ, AFTER_ADVERB, AFTER_VERB,
 AFTER_REL_PREP, AFTER_VALUE, AFTER_OBJECT_ADJ, AFTER_OBJECT, AFTER_VP_CONJ, AFTER_OBJECT_CONJ, ACCEPT, REJECT) = range(16)
N_STATES = 16

_VP_START = {C_DESC_PREP: (AFTER_DESC_PREP, S_DESC_PREP), C_ADV: (AFTER_ADVERB, S_ADVERB), C_VERB: (AFTER_VERB, S_VERB)}
_NP_ITEM = {C_ADJ: (AFTER_SUBJECT_ADJ, S_SUBJECT_ADJ), C_ENTITY: (AFTER_SUBJECT, S_SUBJECT)}
_OBJECT_ITEM = {C_ADJ: (AFTER_OBJECT_ADJ, S_OBJECT_ADJ), C_ENTITY: (AFTER_OBJECT, S_OBJECT)}
_TRANSITIONS = {
    START: _NP_ITEM,
    AFTER_SUBJECT_ADJ: {C_ENTITY: (AFTER_SUBJECT, S_SUBJECT)},
    AFTER_SUBJECT: {C_CONJ: (AFTER_NP_CONJ, S_NP_CONJ), **_VP_START},
    AFTER_NP_CONJ: _NP_ITEM,
    AFTER_DESC_PREP: {C_ADJ: (AFTER_VALUE_ADJ, S_VALUE_ADJ), C_VALUE: (AFTER_VALUE, S_VALUE)},
    AFTER_VALUE_ADJ: {C_VALUE: (AFTER_VALUE, S_VALUE)},
    AFTER_ADVERB: {C_VERB: (AFTER_VERB, S_VERB)},
    AFTER_VERB: {C_REL_PREP: (AFTER_REL_PREP, S_REL_PREP)},
    AFTER_REL_PREP: _OBJECT_ITEM,
    AFTER_VALUE: {C_CONJ: (AFTER_VP_CONJ, S_VP_CONJ), C_EOS: (ACCEPT, S_EOS)},
    AFTER_OBJECT_ADJ: {C_ENTITY: (AFTER_OBJECT, S_OBJECT)},
    AFTER_OBJECT: {C_CONJ: (AFTER_OBJECT_CONJ, S_OBJECT_CONJ), C_EOS: (ACCEPT, S_EOS)},
    AFTER_VP_CONJ: _VP_START,
    AFTER_OBJECT_CONJ: {**_OBJECT_ITEM, **_VP_START},
    ACCEPT: {C_PAD: (ACCEPT, S_PAD)},
}


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    next_state = torch.full((N_STATES, N_CATEGORIES), REJECT, dtype=torch.long)
    symbol = torch.full((N_STATES, N_CATEGORIES), S_PAD, dtype=torch.long)
    for state, moves in _TRANSITIONS.items():
        for category, (target, sym) in moves.items():
            next_state[state, category] = target
            symbol[state, category] = sym
    return next_state, symbol


NEXT_STATE, SYMBOL_OF_MOVE = _tables()


def parse(categories: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact recognition of sentences, batched.

    Arguments:
        categories: (batch, length) token categories of sentences, each
            starting at its first token; positions after `<eos>` must be C_PAD.
    Returns:
        grammatical: (batch,) bool, the sentence is in the language.
        symbols: (batch, length) grammar symbol of every token (meaningful up
            to the first token that breaks the grammar).
    """
    next_state, symbol_of_move = NEXT_STATE.to(categories.device), SYMBOL_OF_MOVE.to(categories.device)
    B, L = categories.shape
    state = torch.full((B,), START, dtype=torch.long, device=categories.device)
    symbols = torch.empty(B, L, dtype=torch.long, device=categories.device)
    for t in range(L):
        symbols[:, t] = symbol_of_move[state, categories[:, t]]
        state = next_state[state, categories[:, t]]
    # a Conj after an object joins two verb phrases when a verb phrase follows it
    starts_vp = torch.isin(symbols[:, 1:], torch.tensor([S_DESC_PREP, S_ADVERB, S_VERB], device=categories.device))
    joins_vps = (symbols[:, :-1] == S_OBJECT_CONJ) & starts_vp
    symbols[:, :-1][joins_vps] = S_VP_CONJ
    return state == ACCEPT, symbols
