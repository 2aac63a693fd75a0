"""The sampler draws the grammar exactly: per-sentence rates and the length distribution against closed forms."""

import numpy as np
import pytest
import torch

from caplab.tasks import concept_grammar as G
from caplab.tasks import make_task
from caplab.tasks.concept_sampler import draw_sentences

WIDTH = 160  # polynomial degree kept; the grammar's mass beyond it is < 1e-7


def mul(a, b):
    return np.convolve(a, b)[:WIDTH]


def power_series(pmf, item, joiner):
    """PGF of `item (joiner item){n-1}` with n ~ pmf (pmf[k] = P(n = k + 1))."""
    out, term = np.zeros(WIDTH), item
    for p in pmf:
        out[: len(term)] += p * term
        term = mul(mul(term, joiner), item)
    return out


def sentence_length_pmf(task) -> np.ndarray:
    """Exact P(sentence length = L), <eos> included, from the grammar's generating functions."""
    cfg = task.cfg
    m = cfg.modifier_prob
    z = np.array([0.0, 1.0])
    optional = np.array([1 - m, m])  # a modifier slot
    n_pii = cfg.entities_per_class - int(round((1 - cfg.pii_fraction) * cfg.entities_per_class))
    pii_share = n_pii / cfg.entities_per_class
    np_pmf = G.binary_leaves_pmf(cfg.p_np_conj, 60).numpy()
    vp_pmf = G.binary_leaves_pmf(cfg.p_vp_conj, 60).numpy()
    obj_pmf = G.list_length_pmf(cfg.p_relnp_conj, 60).numpy()

    def entity(pii):  # [adjective] identifier; PII identifiers take no adjective
        adjective = (1 - pii) * optional + pii * np.array([1.0, 0.0])
        return mul(adjective, z)

    total = np.zeros(WIDTH)
    for subject_pii, object_pii in ((pii_share, 0.0), (0.0, pii_share)):  # subject or object class phrase, each half the time
        noun_phrase = power_series(np_pmf, entity(subject_pii), z)
        objects = power_series(obj_pmf, entity(object_pii), z)
        descriptive = mul(mul(z, optional), z)  # is/has [adjective] value
        relative = mul(mul(mul(optional, z), z), objects)  # [adverb] verb on/in/to objects
        leaf = np.pad(cfg.p_desc * descriptive, (0, WIDTH - len(descriptive))) + (1 - cfg.p_desc) * np.pad(relative, (0, WIDTH - len(relative)))
        verb_phrase = power_series(vp_pmf, leaf, z)
        total += 0.5 * mul(mul(noun_phrase, verb_phrase), z)
    return total


def expected_leaves(p):  # E[n] of X -> leaf [1-p] | X Conj X [p]
    return (1 - p) / (1 - 2 * p)


@pytest.mark.parametrize("overrides", [{}, {"p_np_conj": 0.3, "p_desc": 0.8, "modifier_prob": 0.5, "pii_fraction": 0.5, "density": 0.3}])
def test_per_sentence_rates_and_lengths_match_the_grammar(overrides):
    task = make_task("concept_language", max_length=400, **overrides)
    cfg = task.cfg
    sentences, fits = draw_sentences(task, 40000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert fits.all()
    tokens, symbols = sentences.dense(int(sentences.length.max()))
    per_sentence = lambda symbol: (symbols == symbol).sum(1).double()  # noqa: E731

    def close(sample, expected):
        assert abs(sample.mean().item() - expected) < 5 * sample.std().item() / len(sample) ** 0.5 + 1e-9, (sample.mean(), expected)

    n_np, n_vp = expected_leaves(cfg.p_np_conj), expected_leaves(cfg.p_vp_conj)
    rel_leaves = n_vp * (1 - cfg.p_desc)
    objects = 1 / (1 - cfg.p_relnp_conj)
    conjunctions = (n_np - 1) + (n_vp - 1) + rel_leaves * (objects - 1)
    close(per_sentence(G.S_NP_CONJ) + per_sentence(G.S_VP_CONJ) + per_sentence(G.S_OBJECT_CONJ), conjunctions)
    if not overrides:
        assert conjunctions == pytest.approx(0.952, abs=1e-3)  # the paper's grammar
    close(per_sentence(G.S_DESC_PREP), n_vp * cfg.p_desc)
    close(per_sentence(G.S_REL_PREP), rel_leaves)
    pii = 1 - int(round((1 - cfg.pii_fraction) * cfg.entities_per_class)) / cfg.entities_per_class
    m = cfg.modifier_prob
    close(per_sentence(G.S_SUBJECT_ADJ), n_np * m * (1 - pii / 2))  # half the phrases have subjects from a class with PII
    close(per_sentence(G.S_OBJECT_ADJ), rel_leaves * objects * m * (1 - pii / 2))
    close(per_sentence(G.S_VALUE_ADJ), n_vp * cfg.p_desc * m)
    close(per_sentence(G.S_ADVERB), rel_leaves * m)

    # the whole length distribution: a chi-square over bins with enough mass
    pmf = sentence_length_pmf(task)
    assert pmf.sum() == pytest.approx(1.0, abs=1e-6)
    counts = np.bincount(sentences.length.numpy(), minlength=WIDTH)[:WIDTH]
    expected = pmf * len(sentences.length)
    bins = expected >= 10
    chi2 = ((counts[bins] - expected[bins]) ** 2 / expected[bins]).sum()
    df = bins.sum() - 1
    assert chi2 < df + 5 * np.sqrt(2 * df), (chi2, df)
    assert counts[~bins].sum() < 5 * max(expected[~bins].sum(), 1) ** 0.5 + expected[~bins].sum()
