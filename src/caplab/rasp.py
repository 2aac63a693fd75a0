"""A small RASP: the categorical core of Weiss et al.'s language, with an evaluator.

Programs are graphs of sequence operations (SOps) over an input sequence:

    tokens, indices                      the inputs (indices count from 0)
    Map(f, x)                            f applied at every position
    SequenceMap(f, x, y)                 f(x_i, y_i) at every position
    Select(keys, queries, predicate)     a selector: query i selects key j where predicate(keys_j, queries_i)
    Aggregate(selector, x)               at i, the value of x at the selected positions
    SelectorWidth(selector)              at i, how many positions i selects

Every value is categorical (a hashable from a finite set), as in Tracr's
categorical encoding. `evaluate` runs a program on a list of tokens;
`caplab.rasp_compiler` turns the same program into transformer weights.

Semantics at the edges, shared by the evaluator and the compiled model:
an Aggregate that selects nothing gives None; one whose selected values
disagree gives AMBIGUOUS (a compiled model averages one-hot codes there,
which no categorical reading decodes); None never satisfies a predicate; a
Map or SequenceMap of None is None; anything computed from AMBIGUOUS is
AMBIGUOUS.

The two programs of Jain et al. (ICLR 2024, Alg. 1 and 2) are `counter` and
`max_identifier`.
"""

from __future__ import annotations

import itertools
import operator
from typing import Any, Callable, Hashable, Sequence

_ids = itertools.count()


class _Ambiguous:
    def __repr__(self) -> str:
        return "AMBIGUOUS"


AMBIGUOUS = _Ambiguous()

# predicate(key, query), named as in RASP / Tracr's Comparison
PREDICATES: dict[str, Callable[[Any, Any], bool]] = {
    "EQ": operator.eq, "NEQ": operator.ne,
    "LT": operator.lt, "LEQ": operator.le, "GT": operator.gt, "GEQ": operator.ge,
    "TRUE": lambda key, query: True, "FALSE": lambda key, query: False,
}


class SOp:
    """A sequence operation. `label` names it in compiled residual streams and error messages."""

    def __init__(self, label: str | None = None) -> None:
        self.label = label or f"{type(self).__name__.lower()}_{next(_ids)}"

    def named(self, label: str) -> "SOp":
        self.label = label
        return self

    @property
    def children(self) -> tuple["SOp", ...]:
        return ()

    def __repr__(self) -> str:
        return self.label


class _Tokens(SOp):
    pass


class _Indices(SOp):
    pass


tokens = _Tokens("tokens")
indices = _Indices("indices")


class Map(SOp):
    def __init__(self, fn: Callable[[Any], Hashable], inner: SOp, label: str | None = None) -> None:
        super().__init__(label)
        self.fn, self.inner = fn, inner

    @property
    def children(self):
        return (self.inner,)


class SequenceMap(SOp):
    def __init__(self, fn: Callable[[Any, Any], Hashable], first: SOp, second: SOp, label: str | None = None) -> None:
        super().__init__(label)
        self.fn, self.first, self.second = fn, first, second

    @property
    def children(self):
        return (self.first, self.second)


class Select:
    """A selector (not an SOp: it is a matrix, consumed by Aggregate and SelectorWidth)."""

    def __init__(self, keys: SOp, queries: SOp, predicate: str) -> None:
        if predicate not in PREDICATES:
            raise ValueError(f"unknown predicate {predicate!r}; valid: {', '.join(PREDICATES)}")
        self.keys, self.queries, self.predicate = keys, queries, predicate

    def matches(self, key, query) -> bool:
        return key is not None and query is not None and bool(PREDICATES[self.predicate](key, query))


class Aggregate(SOp):
    def __init__(self, selector: Select, inner: SOp, label: str | None = None) -> None:
        super().__init__(label)
        self.selector, self.inner = selector, inner

    @property
    def children(self):
        return (self.selector.keys, self.selector.queries, self.inner)


class SelectorWidth(SOp):
    def __init__(self, selector: Select, label: str | None = None) -> None:
        super().__init__(label)
        self.selector = selector

    @property
    def children(self):
        return (self.selector.keys, self.selector.queries)


def topological_order(program: SOp) -> list[SOp]:
    """Every SOp the program depends on, each after its children."""
    order, seen = [], set()

    def visit(sop: SOp) -> None:
        if id(sop) in seen:
            return
        seen.add(id(sop))
        for child in sop.children:
            visit(child)
        order.append(sop)

    visit(program)
    labels = [s.label for s in order]
    duplicate = next((x for x in labels if labels.count(x) > 1), None)
    if duplicate:
        raise ValueError(f"two different SOps are labelled {duplicate!r}")
    return order


# ---------------------------------------------------------------- evaluation


def _selected(selector: Select, keys: list, queries: list, i: int) -> list[int] | _Ambiguous:
    if queries[i] is AMBIGUOUS or any(k is AMBIGUOUS for k in keys):
        return AMBIGUOUS
    return [j for j, key in enumerate(keys) if selector.matches(key, queries[i])]


def evaluate(program: SOp, sequence: Sequence[Hashable]) -> list:
    """The value of `program` at every position of `sequence` (None / AMBIGUOUS as in the module docstring)."""
    n = len(sequence)
    values: dict[int, list] = {}
    for sop in topological_order(program):
        if isinstance(sop, _Tokens):
            out = list(sequence)
        elif isinstance(sop, _Indices):
            out = list(range(n))
        elif isinstance(sop, Map):
            out = [x if x is None or x is AMBIGUOUS else sop.fn(x) for x in values[id(sop.inner)]]
        elif isinstance(sop, SequenceMap):
            pairs = zip(values[id(sop.first)], values[id(sop.second)])
            out = [AMBIGUOUS if AMBIGUOUS in (x, y) else None if x is None or y is None else sop.fn(x, y) for x, y in pairs]
        elif isinstance(sop, (Aggregate, SelectorWidth)):
            keys, queries = values[id(sop.selector.keys)], values[id(sop.selector.queries)]
            out = []
            for i in range(n):
                chosen = _selected(sop.selector, keys, queries, i)
                if chosen is AMBIGUOUS:
                    out.append(AMBIGUOUS)
                elif isinstance(sop, SelectorWidth):
                    out.append(len(chosen))
                else:
                    picked = {values[id(sop.inner)][j] for j in chosen}
                    out.append(None if not picked else picked.pop() if len(picked) == 1 else AMBIGUOUS)
        else:
            raise TypeError(f"not a RASP operation: {sop!r}")
        values[id(sop)] = out
    return values[id(program)]


def value_sets(program: SOp, vocabulary: Sequence[Hashable], max_len: int) -> dict[str, list]:
    """The values each SOp can take on inputs over `vocabulary` of length at most `max_len` (sorted where possible)."""
    sets: dict[str, list] = {}
    for sop in topological_order(program):
        if isinstance(sop, _Tokens):
            values = list(dict.fromkeys(vocabulary))
        elif isinstance(sop, _Indices):
            values = list(range(max_len))
        elif isinstance(sop, Map):
            values = [sop.fn(x) for x in sets[sop.inner.label]]
        elif isinstance(sop, SequenceMap):
            values = [sop.fn(x, y) for x in sets[sop.first.label] for y in sets[sop.second.label]]
        elif isinstance(sop, Aggregate):
            values = list(sets[sop.inner.label])
        elif isinstance(sop, SelectorWidth):
            values = list(range(max_len + 1))
        else:
            raise TypeError(f"not a RASP operation: {sop!r}")
        values = list(dict.fromkeys(values))
        if None in values:
            raise ValueError(f"{sop.label} can produce None; a Map must return a value for every input")
        try:
            values = sorted(values)
        except TypeError:
            pass
        sets[sop.label] = values
    return sets


# ---------------------------------------------------------------- the programs of Jain et al.


def counter(letter: Hashable = "a") -> SOp:
    """Alg. 1: at query index 1, how many tokens equal `letter` (Jain et al.'s counter, quirk kept).

    The selector compares the 0/1 indicator of each key with the query's index, so
    position 1 counts the `letter` tokens, position 0 the others, and positions >= 2 see 0.
    """
    is_letter = Map(lambda t: int(t == letter), tokens, label="is_letter")
    count = SelectorWidth(Select(is_letter, indices, "EQ"), label="count")
    return Aggregate(Select(indices, indices, "EQ"), count, label="counter")


def max_identifier(rank: int = 4) -> SOp:
    """Alg. 2: at query index 1, the token with exactly `rank` smaller tokens in the sequence.

    (Jain et al. call it the fifth largest under their order a > b > ...; with the
    natural order it is the (rank+1)-th smallest.) Other positions are None or AMBIGUOUS.
    """
    smaller = SelectorWidth(Select(tokens, tokens, "LT"), label="n_smaller")
    is_target = Map(lambda n: int(n == rank), smaller, label="has_rank")
    return Aggregate(Select(is_target, indices, "EQ"), tokens, label="max_identifier")
