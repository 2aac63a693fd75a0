import numpy as np
import pytest
import torch

from caplab.tasks.pcfg_grammar import RULES, SYMBOLS, TERMINALS, sample_strings, windows

CPU = torch.device("cpu")


def test_lengths_lie_between_two_and_three_to_the_sixth():
    strings = sample_strings(2000, torch.Generator().manual_seed(0), CPU)
    assert strings.length.min() >= 64 and strings.length.max() <= 729
    assert int(strings.length.sum()) == len(strings.tokens)
    assert torch.equal(strings.string, torch.sort(strings.string).values)
    assert set(strings.tokens.unique().tolist()) <= {0, 1, 2}


def test_every_sampled_string_is_derivable():
    nltk = pytest.importorskip("nltk")
    productions = [f"{lhs} -> " + " | ".join(" ".join(f"'{p}'" if p in TERMINALS else p for p in rule.split()) for rule in rules)
                   for lhs, rules in RULES.items()]
    parser = nltk.ChartParser(nltk.CFG.fromstring("\n".join(productions)))
    strings = sample_strings(400, torch.Generator().manual_seed(1), CPU)
    shortest = torch.argsort(strings.length)[:3].tolist()
    first = (strings.length.cumsum(0) - strings.length).tolist()
    for i in shortest:  # chart parsing is cubic: the shortest strings keep the test fast
        words = [TERMINALS[t] for t in strings.tokens[first[i] : first[i] + int(strings.length[i])].tolist()]
        assert any(True for _ in parser.parse(words))
        corrupted = words[:-1] + [{"a": "b", "b": "c", "c": "a"}[words[-1]]]
        assert not any(True for _ in parser.parse(corrupted))


def test_each_rule_is_chosen_half_the_time():
    strings = sample_strings(3000, torch.Generator().manual_seed(2), CPU)
    counts = strings.rule_counts
    for symbol in RULES:
        n0, n1 = counts[SYMBOLS.index(symbol)].tolist()
        total = n0 + n1
        assert total > 0
        assert abs(n0 / total - 0.5) < 4.5 * np.sqrt(0.25 / total), symbol


def test_windows_are_contiguous_pieces_of_their_string():
    g = torch.Generator().manual_seed(3)
    strings = sample_strings(300, g, CPU)
    window, length = windows(strings, 250, g)
    first = (strings.length.cumsum(0) - strings.length).tolist()
    for i in range(0, 300, 37):
        whole = strings.tokens[first[i] : first[i] + int(strings.length[i])].tolist()
        piece = window[i, : int(length[i])].tolist()
        assert any(whole[s : s + len(piece)] == piece for s in range(len(whole) - len(piece) + 1))
        assert (window[i, int(length[i]):] == -1).all()
    assert (length == strings.length.clamp(max=250)).all()
