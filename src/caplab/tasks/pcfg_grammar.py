"""The PCFG of Jain et al. (ICLR 2024, App. B.2, Fig. 14) and its batched sampler.

Fifteen nonterminals in six levels (s; p q r; m n o; j k l; g h i; d e f)
over the terminals a, b, c. Every nonterminal has two rules, each chosen with
probability 1/2, and every rule has two or three children of the next level,
so a string has between 2^6 = 64 and 3^6 = 729 terminals.

Sampling expands a whole batch one level at a time on flat arrays: the
symbols of all strings side by side, in order, with the string each belongs
to. A level replaces every symbol by its chosen rule's children
(`repeat_interleave` by the rule lengths), which keeps every string's
symbols contiguous and in order. No per-string or per-symbol Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TERMINALS = ("a", "b", "c")
RULES: dict[str, tuple[str, str]] = {
    "s": ("r q", "q p"),
    "p": ("m n o", "n o m"), "q": ("n m o", "m n"), "r": ("o m", "m o n"),
    "m": ("l j", "j l k"), "n": ("k j l", "l j k"), "o": ("l k j", "k j"),
    "j": ("h i", "i h"), "k": ("h g i", "g h i"), "l": ("i h g", "h i g"),
    "g": ("d f e", "f e d"), "h": ("e d f", "d e f"), "i": ("e f d", "f d e"),
    "d": ("c a", "a b c"), "e": ("c b", "c a b"), "f": ("c b a", "b a"),
}
DEPTH = 6  # levels of rules between s and the terminals
SYMBOLS = TERMINALS + tuple(RULES)  # terminal ids 0, 1, 2 first


def _tables() -> tuple[torch.Tensor, torch.Tensor]:
    """children (symbols, 2 rules, 3) padded with -1, and rule lengths (symbols, 2)."""
    index = {s: i for i, s in enumerate(SYMBOLS)}
    children = torch.full((len(SYMBOLS), 2, 3), -1, dtype=torch.long)
    lengths = torch.zeros(len(SYMBOLS), 2, dtype=torch.long)
    for symbol, rules in RULES.items():
        for r, rule in enumerate(rules):
            parts = [index[p] for p in rule.split()]
            children[index[symbol], r, : len(parts)] = torch.tensor(parts)
            lengths[index[symbol], r] = len(parts)
    return children, lengths


CHILDREN, RULE_LENGTHS = _tables()


@dataclass
class Strings:
    """Sampled strings, flat: terminal `tokens[i]` (0 = a, 1 = b, 2 = c) belongs to string `string[i]`."""

    tokens: torch.Tensor  # (N,)
    string: torch.Tensor  # (N,) sorted
    length: torch.Tensor  # (n,)
    rule_counts: torch.Tensor  # (len(SYMBOLS), 2): how often each rule was used (for tests and diagnostics)


def sample_strings(n: int, generator: torch.Generator, device) -> Strings:
    """n strings of the grammar, expanded level by level."""
    children, rule_lengths = CHILDREN.to(device), RULE_LENGTHS.to(device)
    symbols = torch.full((n,), SYMBOLS.index("s"), dtype=torch.long, device=device)
    string = torch.arange(n, device=device)
    rule_counts = torch.zeros(len(SYMBOLS), 2, dtype=torch.long, device=device)
    for _ in range(DEPTH):
        rule = (torch.rand(len(symbols), generator=generator, device=device) < 0.5).long()
        rule_counts.view(-1).index_add_(0, symbols * 2 + rule, torch.ones_like(rule))
        sizes = rule_lengths.view(-1).index_select(0, symbols * 2 + rule)
        parent = torch.repeat_interleave(torch.arange(len(symbols), device=device), sizes)
        child = torch.arange(len(parent), device=device) - (sizes.cumsum(0) - sizes).index_select(0, parent)
        symbols = children.view(-1).index_select(0, (symbols * 2 + rule).index_select(0, parent) * 3 + child)
        string = string.index_select(0, parent)
    if int(symbols.max()) >= len(TERMINALS):
        raise AssertionError("expansion ended on a nonterminal: the grammar tables are inconsistent")
    return Strings(symbols, string, torch.bincount(string, minlength=n), rule_counts)


def windows(strings: Strings, size: int, generator: torch.Generator, pad: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """A uniformly placed window of `size` terminals from each string.

    Returns (n, size) terminals (strings shorter than `size` are kept whole,
    left-aligned and padded with `pad`) and (n,) window lengths.
    """
    n = len(strings.length)
    device = strings.tokens.device
    room = (strings.length - size).clamp(min=0)
    start = (torch.rand(n, generator=generator, device=device) * (room + 1)).long()
    first = strings.length.cumsum(0) - strings.length  # where each string starts in the flat array
    offsets = torch.arange(size, device=device)
    window_length = strings.length.clamp(max=size)
    index = (first + start)[:, None] + offsets
    inside = offsets < window_length[:, None]
    out = strings.tokens.index_select(0, index.clamp(max=len(strings.tokens) - 1).flatten()).view(n, size)
    return out.masked_fill(~inside, pad), window_length
