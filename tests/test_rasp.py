"""The RASP evaluator against closed forms, and compiled models against the evaluator."""

import random

import pytest
import torch

from caplab import rasp
from caplab.rasp import AMBIGUOUS, Aggregate, Map, Select, SelectorWidth, SequenceMap, evaluate, indices, tokens
from caplab.rasp_compiler import agreement, compile_program, densify

LETTERS = list("abcdefghi")


def random_sequences(rng, alphabet, max_len, count, replace=True):
    out = []
    for _ in range(count):
        n = rng.randint(1, max_len)
        out.append([rng.choice(alphabet) for _ in range(n)] if replace else rng.sample(alphabet, n))
    return out


def test_counter_evaluator_matches_closed_form():
    rng = random.Random(1)
    for seq in random_sequences(rng, LETTERS, 30, 50):
        values = evaluate(rasp.counter("a"), seq)
        assert values[0] == sum(t != "a" for t in seq)  # the quirk: index 0 counts the other tokens
        if len(seq) > 1:
            assert values[1] == seq.count("a")
            assert all(v == 0 for v in values[2:])


def test_max_identifier_evaluator_matches_closed_form():
    rng = random.Random(2)
    alphabet = [chr(97 + i) for i in range(26)]
    for seq in random_sequences(rng, alphabet, 12, 50, replace=False):
        values = evaluate(rasp.max_identifier(4), seq)
        if len(seq) > 1:
            assert values[1] == (sorted(seq)[4] if len(seq) >= 5 else None)


def test_aggregate_edge_semantics():
    none_selected = Aggregate(Select(tokens, tokens, "FALSE"), tokens)
    assert evaluate(none_selected, ["a", "b"]) == [None, None]
    mixed = Aggregate(Select(tokens, tokens, "TRUE"), tokens)
    assert evaluate(mixed, ["a", "b"]) == [AMBIGUOUS, AMBIGUOUS]
    assert evaluate(mixed, ["a", "a"]) == ["a", "a"]
    assert evaluate(Map(lambda v: v, mixed), ["a", "b"]) == [AMBIGUOUS, AMBIGUOUS]


def _length():
    return SelectorWidth(Select(tokens, tokens, "TRUE"), label="length")


def _reverse():
    opposite = SequenceMap(lambda n, i: n - i - 1, _length(), indices, label="opposite")
    return Aggregate(Select(indices, opposite, "EQ"), tokens, label="reverse")


def _histogram():
    return SelectorWidth(Select(tokens, tokens, "EQ"), label="histogram")


def _sort_unique():
    smaller = SelectorWidth(Select(tokens, tokens, "LT"), label="smaller")
    return Aggregate(Select(smaller, indices, "EQ"), tokens, label="sorted")


def _shift_then_compare():
    previous = Aggregate(Select(indices, Map(lambda i: i - 1, indices, label="prev_index"), "EQ"), tokens, label="previous")
    return SequenceMap(lambda x, y: int(x == y), previous, tokens, label="repeat")


@pytest.mark.parametrize("make, alphabet, max_len, replace", [
    (lambda: rasp.counter("a"), LETTERS, 40, True),
    (lambda: rasp.max_identifier(4), [chr(97 + i) for i in range(26)], 12, False),
    (_length, LETTERS, 20, True),
    (_reverse, LETTERS, 16, True),
    (_histogram, list("abc"), 20, True),
    (_sort_unique, [chr(97 + i) for i in range(26)], 10, False),
    (_shift_then_compare, list("ab"), 12, True),
])
def test_compiled_model_agrees_with_evaluator(make, alphabet, max_len, replace):
    program = make()
    compiled = compile_program(program, alphabet, max_len)
    rng = random.Random(3)
    for seq in random_sequences(rng, alphabet, max_len, 120, replace):
        got = compiled.run([seq])[0]
        want = evaluate(program, seq)
        for w, g in zip(want, got):
            if w is not AMBIGUOUS:
                assert g == w, (seq, want, got)
    # and a full-length batch at once
    batch = [[rng.choice(alphabet) for _ in range(max_len)] if replace else rng.sample(alphabet, max_len) for _ in range(64)]
    assert agreement(compiled, batch) == 1.0


def test_compiled_shapes_follow_the_program():
    counter = compile_program(rasp.counter("a"), LETTERS, 40)
    cfg = counter.model.cfg
    assert (cfg.n_layers, cfg.n_heads) == (3, 1)  # Map | SelectorWidth | Aggregate: the paper's 3 blocks, 1 head
    assert counter.model.blocks[2].mlp.fc_in.weight.abs().sum() == 0  # the last block's MLP is empty
    reverse = compile_program(_reverse(), LETTERS, 16)
    assert reverse.model.cfg.n_layers == 3  # length (attn + MLP), opposite (MLP), reverse (attn)


def test_counter_readout_changes_with_one_weight():
    """Swapping the letter the Map tests for is a change of two MLP weights: the counter then counts b."""
    compiled = compile_program(rasp.counter("a"), LETTERS, 20)
    w_in = compiled.model.blocks[0].mlp.fc_in.weight
    names = compiled.residual_names
    unit_a = w_in[:, names.index("tokens:'a'")].nonzero().item()
    unit_b = w_in[:, names.index("tokens:'b'")].nonzero().item()
    with torch.no_grad():
        w_in[unit_a, names.index("tokens:'a'")], w_in[unit_a, names.index("tokens:'b'")] = 0.0, 1.0
        w_in[unit_b, names.index("tokens:'b'")], w_in[unit_b, names.index("tokens:'a'")] = 0.0, 1.0
    rng = random.Random(4)
    seqs = [[rng.choice(LETTERS) for _ in range(20)] for _ in range(32)]
    assert [row[1] for row in compiled.run(seqs)] == [s.count("b") for s in seqs]


def test_densified_counter_keeps_counting():
    """Jain et al. add N(0, 1e-3) noise before fine-tuning: the compiled counter must survive it (mostly)."""
    rng = random.Random(5)
    seqs = [[rng.choice(LETTERS) for _ in range(40)] for _ in range(256)]
    truth = [s.count("a") for s in seqs]
    for std, floor in ((1e-4, 1.0), (1e-3, 0.9)):
        compiled = compile_program(rasp.counter("a"), LETTERS, 40)
        densify(compiled.model, std, torch.Generator().manual_seed(0))
        hits = sum(row[1] == t for row, t in zip(compiled.run(seqs), truth)) / len(seqs)
        assert hits >= floor, (std, hits)


def test_bad_programs_and_inputs_fail_clearly():
    with pytest.raises(ValueError, match="predicate"):
        Select(tokens, tokens, "ALMOST")
    compiled = compile_program(rasp.counter("a"), LETTERS, 8)
    with pytest.raises(ValueError, match="input vocabulary"):
        compiled.encode([["a", "z"]])
    with pytest.raises(ValueError, match="1..8"):
        compiled.encode([list("abcdefghia")])
