"""The sequential sampling step both sampler benchmarks' peers share: recursive expansion of an nltk.PCFG."""

from __future__ import annotations

import random


def expand(grammar, symbol, rng: random.Random) -> list[str]:
    """Terminals derived from `symbol`, one production drawn at a time with `random.choices`."""
    import nltk

    if not isinstance(symbol, nltk.Nonterminal):
        return [symbol]
    productions = grammar.productions(lhs=symbol)
    chosen = rng.choices(productions, weights=[p.prob() for p in productions])[0]
    return [word for part in chosen.rhs() for word in expand(grammar, part, rng)]
