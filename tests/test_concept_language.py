import numpy as np
import pytest
import torch

from caplab import GPT, GPTConfig
from caplab.tasks import make_task
from caplab.tasks import concept_grammar as G
from caplab.tasks.concept_language import WorldWarning
from caplab.tasks.concept_metrics import conditions_satisfied, cut_at_eos, parse_sentences, type_checks

CPU = torch.device("cpu")


def sentences_of(docs):
    """The sentence part of each document, left-aligned and padded."""
    width = docs.tokens.shape[1]
    index = docs.prompt_length[:, None] + torch.arange(width)
    return docs.tokens.gather(1, index.clamp(max=width - 1)).masked_fill(index >= width, G.PAD)


@pytest.mark.parametrize("overrides", [{}, {"n_classes": 2, "n_relative": 3, "density": 0.3, "values_per_property": 13},
                                       {"n_classes": 6, "n_relative": 6, "entities_per_class": 10, "pii_fraction": 0.5, "max_length": 40, "density": 0.3},
                                       {"graph": "rolled", "modifier_density": 0.25, "pairs_per_class": 30}])
@pytest.mark.filterwarnings("ignore::caplab.tasks.concept_language.WorldWarning")  # the rolled graph may split; irrelevant here
def test_every_sampled_sentence_parses_and_satisfies_the_type_constraints(overrides):
    task = make_task("concept_language", **overrides)
    docs = task.sample_documents(3000, torch.Generator().manual_seed(1), CPU)
    sentences = sentences_of(docs)
    tokens, grammatical, symbols = parse_sentences(task, sentences)
    assert grammatical.all()
    assert torch.equal(tokens, sentences)  # nothing after <eos>
    # the parser's symbols are the sampler's own parse labels
    doc_symbols = docs.symbols.gather(1, (docs.prompt_length[:, None] + torch.arange(docs.tokens.shape[1])).clamp(max=docs.tokens.shape[1] - 1))
    in_sentence = sentences != G.PAD
    assert torch.equal(symbols[in_sentence], doc_symbols[in_sentence].long())
    for name, (ok, total) in type_checks(task, tokens, symbols).items():
        assert total > 0 and ok == total, name
    assert (docs.length <= task.cfg.max_length).all()


def test_documents_follow_the_three_formats():
    task = make_task("concept_language")
    docs = task.sample_documents(2000, torch.Generator().manual_seed(2), CPU)
    sentences = sentences_of(docs)
    for row in range(len(docs.task)):
        tokens = docs.tokens[row].tolist()
        t, p, n = int(docs.task[row]), int(docs.prompt_length[row]), int(docs.length[row])
        assert tokens[:4] == [G.TASK, G.T0 + t, G.NEWLINE, G.OPS] and tokens[p - 2 : p] == [G.NEWLINE, G.OUT]
        assert tokens[n - 1] == G.EOS and set(tokens[n:]) <= {G.PAD}
        ops, sentence = tokens[4 : p - 2], [x for x in sentences[row].tolist() if x != G.PAD]
        if t == 0:
            assert ops == [G.NULL]
        elif t == 1:
            assert sorted(ops) == sorted(sentence[:-1])  # a permutation of the sentence without <eos>
        else:
            assert 1 <= len(ops) <= 4 and set(ops) <= set(sentence)
            counts = np.bincount(task.tables["category"][ops], minlength=G.N_CATEGORIES)
            assert counts[G.C_VALUE] <= 1 and counts[G.C_VERB] <= 1 and counts[G.C_ENTITY] <= 2  # one subject, one object
            assert counts[[G.C_VALUE, G.C_VERB, G.C_ENTITY]].sum() == len(ops)
    batch = task.sample(64, torch.Generator().manual_seed(0), CPU)
    assert batch.tokens.shape == (64, task.seq_len) and torch.equal(batch.loss_mask, (batch.targets != G.PAD).float())
    assert batch.labels["symbols"].shape == batch.tokens.shape


def test_sampling_is_seeded():
    task = make_task("concept_language")
    a = task.sample(32, torch.Generator().manual_seed(5), CPU)
    b = task.sample(32, torch.Generator().manual_seed(5), CPU)
    c = task.sample(32, torch.Generator().manual_seed(6), CPU)
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)


def _binomial_ok(count, n, p, z=4.5):
    return abs(count / n - p) <= z * np.sqrt(p * (1 - p) / n) + 1e-12


def test_rule_frequencies_match_the_grammar_probabilities():
    # max_length large enough that no document is redrawn for length: the grammar is drawn untruncated
    task = make_task("concept_language", max_length=320, task_prior=[1.0, 0.0, 0.0])
    docs = task.sample_documents(20000, torch.Generator().manual_seed(3), CPU)
    _, _, symbols = parse_sentences(task, sentences_of(docs))
    sentences = sentences_of(docs)
    n = len(sentences)

    n_subjects = (symbols == G.S_SUBJECT).sum(1)
    pmf = G.binary_leaves_pmf(G.P_NP_CONJ, 10)
    for k in range(1, 5):
        assert _binomial_ok((n_subjects == k).sum().item(), n, pmf[k - 1].item()), k
    n_vps = ((symbols == G.S_DESC_PREP) | (symbols == G.S_VERB)).sum(1)
    pmf = G.binary_leaves_pmf(G.P_VP_CONJ, 10)
    for k in range(1, 5):
        assert _binomial_ok((n_vps == k).sum().item(), n, pmf[k - 1].item()), k
    # one relative verb phrase: its object count is geometric
    single_rel = (n_vps == 1) & (symbols == G.S_VERB).any(1)
    n_objects = (symbols == G.S_OBJECT).sum(1)[single_rel]
    pmf = G.list_length_pmf(G.P_RELNP_CONJ, 10)
    for k in range(1, 4):
        assert _binomial_ok((n_objects == k).sum().item(), len(n_objects), pmf[k - 1].item()), k
    # leaf kinds, prepositions, conjunctions
    n_desc, n_rel = (symbols == G.S_DESC_PREP).sum().item(), (symbols == G.S_VERB).sum().item()
    assert _binomial_ok(n_desc, n_desc + n_rel, G.P_VP_DESC)
    desc = sentences[symbols == G.S_DESC_PREP]
    assert _binomial_ok((desc == G.IS).sum().item(), len(desc), G.DESC_PREPOSITIONS[G.IS])
    rel = sentences[symbols == G.S_REL_PREP]
    for token, p in G.REL_PREPOSITIONS.items():
        assert _binomial_ok((rel == token).sum().item(), len(rel), p)
    conj = sentences[torch.isin(symbols, torch.tensor([G.S_NP_CONJ, G.S_VP_CONJ, G.S_OBJECT_CONJ]))]
    assert _binomial_ok((conj == G.AND).sum().item(), len(conj), 0.5)


def test_task_prior_with_the_t2_fallback():
    task = make_task("concept_language", max_length=320)
    docs = task.sample_documents(20000, torch.Generator().manual_seed(4), CPU)
    n = len(docs.task)
    assert _binomial_ok((docs.task == 1).sum().item(), n, 0.4)
    # T2 falls back to T0 when no category was drawn: P = 0.4 * P(no condition), checked against its own estimate
    assert (docs.task == 2).sum().item() / n < 0.4 and (docs.task == 0).sum().item() / n > 0.2
    assert abs((docs.task != 1).float().mean().item() - 0.6) < 0.02


def test_the_class_graph_is_random_balanced_and_connected_above_p_c():
    task = make_task("concept_language", values_per_property=40, density=0.1)
    for graph, E_c in zip(task.class_graphs(), task.entity_count):
        K_c = task.values_per_class
        assert graph.sum() == round(0.1 * E_c * K_c)  # density p
        for degrees in (graph.sum(1), graph.sum(0)):  # balanced on both sides
            assert degrees.max() - degrees.min() <= 1
    report = task.describe()["class_graph"]
    assert report["components"] == [1] * 4 and report["largest_component_fraction"] == [1.0] * 4
    assert all(p > p_c for p, p_c in zip(report["density"], report["critical_density"]))
    # different worlds draw different graphs
    assert not np.array_equal(task.tables["allowed"], make_task("concept_language", values_per_property=40, seed=1).tables["allowed"])


def test_the_papers_rolled_graph_and_its_disconnected_case():
    with pytest.warns(WorldWarning, match="split"):  # 20 keys roll over 40 values: some values no entity allows
        task = make_task("concept_language", values_per_property=40, density=0.1, graph="rolled")
    allowed = task.class_graphs()[0].reshape(20, 5, 40)  # (entity key, property, value)
    assert (allowed.sum(2) == 4).all()  # 4 of 40 values of every property
    for prop in range(5):  # entity key r allows the base set rolled by r
        base = np.flatnonzero(allowed[0, prop])
        for key in (1, 7, 19):
            assert set(np.flatnonzero(allowed[key, prop])) == set((base + key) % 40)
    # one allowed value per property: the class falls apart into `values_per_property` pieces, and says so
    with pytest.warns(WorldWarning, match="split into 10 components"):
        split = make_task("concept_language", values_per_property=10, density=0.1, graph="rolled")
    assert split.describe()["class_graph"]["largest_component_fraction"][0] == pytest.approx(0.1, abs=0.02)


def test_a_world_below_p_c_is_warned_about_and_impossible_requests_are_errors():
    from caplab.errors import ConfigError

    with pytest.warns(WorldWarning, match="p_c"):
        make_task("concept_language", entities_per_class=20, properties_per_class=10, values_per_property=20, density=0.012)
    with pytest.raises(ConfigError, match="pairs_per_class"):
        make_task("concept_language", pairs_per_class=1000)  # a class allows 200
    with pytest.raises(ConfigError, match="at least one value"):
        make_task("concept_language", density=0.001)


def test_training_shows_exactly_the_requested_pairs():
    task = make_task("concept_language", pairs_per_class=30, max_length=64)
    shown = task.class_graphs("shown")
    assert [g.sum() for g in shown] == [30] * 4
    assert not (task.tables["shown"] & ~task.tables["allowed"]).any()  # a subset of the world's pairs
    docs = task.sample_documents(4000, torch.Generator().manual_seed(0), CPU)
    tokens, _, symbols = parse_sentences(task, sentences_of(docs))
    pairs = described_pairs(task, tokens, symbols)
    assert task.tables["shown"][pairs[:, 0], pairs[:, 1]].all()
    assert len(np.unique(pairs, axis=0)) == 120  # every shown pair turns up in 4,000 documents


def described_pairs(task, tokens, symbols) -> np.ndarray:
    """(n, 2) (entity, value within its class) of every descriptive value and the last subject before it."""
    pos = torch.arange(tokens.shape[1])
    last_subject = torch.where(symbols == G.S_SUBJECT, pos, -1).cummax(1).values
    is_value = symbols == G.S_VALUE
    entity = tokens.gather(1, last_subject.clamp(min=0))[is_value] - task.entity_offset
    value = (tokens[is_value] - task.value_offset) % task.values_per_class
    return torch.stack([entity, value], 1).numpy()


def test_paper_scale_preset_sizes():
    from caplab.config import load_config
    from caplab.tasks.concept_language import PAPER_SCALE

    task = make_task("concept_language", **PAPER_SCALE)
    recipe = load_config("emergence-paper").task
    assert {k: recipe[k] for k in PAPER_SCALE} == PAPER_SCALE  # the recipe is the same preset
    assert task.n_entities == 900 and task.n_values == 18000  # |E| and |K| of the paper
    assert 18900 < task.vocab_size < 19500


def test_parser_agrees_with_an_nltk_chart_parser():
    nltk = pytest.importorskip("nltk")
    grammar = nltk.CFG.fromstring("""
        S -> NP VP 'eos'
        NP -> SUBJ | NP 'conj' NP
        SUBJ -> 'entity' | 'adj' 'entity'
        VP -> DESC | REL | VP 'conj' VP
        DESC -> 'dprep' 'value' | 'dprep' 'adj' 'value'
        REL -> VERB 'rprep' RELNP
        VERB -> 'verb' | 'adv' 'verb'
        RELNP -> 'entity' | 'adj' 'entity' | 'entity' 'conj' RELNP | 'adj' 'entity' 'conj' RELNP
    """)
    parser = nltk.ChartParser(grammar)
    names = {G.C_EOS: "eos", G.C_CONJ: "conj", G.C_ENTITY: "entity", G.C_ADJ: "adj", G.C_DESC_PREP: "dprep",
             G.C_VALUE: "value", G.C_VERB: "verb", G.C_ADV: "adv", G.C_REL_PREP: "rprep"}
    task = make_task("concept_language")
    category = torch.as_tensor(task.tables["category"])
    sentences = cut_at_eos(sentences_of(task.sample_documents(150, torch.Generator().manual_seed(7), CPU)))
    rng = np.random.default_rng(0)
    cases = []
    for row in category[sentences].tolist():
        words = [c for c in row if c != G.C_PAD]
        cases.append(words)
        mutated = list(words)
        i = int(rng.integers(len(mutated)))
        kind = rng.integers(3)
        if kind == 0:
            del mutated[i]
        elif kind == 1:
            j = int(rng.integers(len(mutated)))
            mutated[i], mutated[j] = mutated[j], mutated[i]
        else:
            mutated[i] = int(rng.choice(list(names)))
        cases.append(mutated)
    width = max(map(len, cases))
    batch = torch.tensor([c + [G.C_PAD] * (width - len(c)) for c in cases])
    grammatical, _ = G.parse(batch)
    reference = [any(True for _ in parser.parse([names[c] for c in case])) for case in cases]
    assert grammatical.tolist() == reference
    assert 0 < sum(reference) < len(reference)  # both kinds of case occur


def _sentence(task, *parts):
    return torch.tensor([parts])


def test_type_checks_on_hand_built_sentences():
    task = make_task("concept_language", values_per_property=20, modifier_density=0.25)  # restricted modifiers can fail
    C0, C2 = task.entity_start[0], task.entity_start[2]  # class 0 and its linked class 2
    e = lambda i: task.entity_offset + i  # noqa: E731
    nV, P = task.cfg.values_per_property, task.cfg.properties_per_class
    key = 3
    subject = e(C0 + key)
    prop = 1  # property 1 of class 0
    row = task.tables["allowed"][C0 + key, prop * nV : (prop + 1) * nV]
    allowed, disallowed = int(np.flatnonzero(row)[0]), int(np.flatnonzero(~row)[0])
    value = lambda p, v: task.value_offset + p * nV + v  # noqa: E731
    adj_ok = task.adjective_offset + int(task.property_adjectives[prop][0])
    adj_bad = task.adjective_offset + next(a for a in range(task.cfg.n_adjectives) if a not in task.property_adjectives[prop])
    verb_ok = task.verb_offset + 0  # group 0 links classes 0 and 2
    verb_bad = task.verb_offset + task.verbs_per_group  # group 1 links classes 1 and 3

    def checks(tokens):
        tokens = torch.tensor([tokens])
        _, grammatical, symbols = parse_sentences(task, tokens)
        assert grammatical.all()
        return {k: (int(ok), int(total)) for k, (ok, total) in type_checks(task, tokens, symbols).items()}

    good = checks([subject, G.IS, adj_ok, value(prop, allowed), G.AND, verb_ok, G.ON, e(C2), G.EOS])
    assert good == {"desc": (1, 1), "desc_entity": (1, 1), "rel": (1, 1), "adj": (1, 1), "adv": (0, 0)}
    assert checks([subject, G.IS, value(prop, disallowed), G.EOS])["desc_entity"] == (0, 1)
    assert checks([subject, G.IS, value(prop, disallowed), G.EOS])["desc"] == (1, 1)
    assert checks([subject, G.HAS, value(P + prop, allowed), G.EOS])["desc"] == (0, 1)  # a class-1 property
    assert checks([subject, G.HAS, adj_bad, value(prop, allowed), G.EOS])["adj"] == (0, 1)
    assert checks([subject, verb_bad, G.TO, e(C2), G.EOS])["rel"] == (0, 1)
    assert checks([subject, verb_ok, G.TO, e(C2), G.AND, e(C0), G.EOS])["rel"] == (0, 1)  # second object in the wrong class
    pii = e(C0 + task.cfg.entities_per_class - 1)
    assert task.tables["entity_pii"][pii - task.entity_offset]
    class_adj = task.adjective_offset + int(task.class_adjectives[0][0])
    assert checks([class_adj, pii, G.IS, value(prop, 0), G.EOS])["adj"] == (0, 1)  # PII identifiers take no adjective


def test_conditions_match_whole_tokens_not_name_prefixes():
    task = make_task("concept_language", values_per_property=20)
    short = task.value_offset + 1  # c0_p0_v1
    long = task.value_offset + 12  # c0_p0_v12
    assert task.token_name(long).startswith(task.token_name(short))
    sentence = torch.tensor([[task.entity_offset, G.IS, long, G.EOS]])
    assert not conditions_satisfied(torch.tensor([[short]]), torch.tensor([1]), sentence).item()
    assert conditions_satisfied(torch.tensor([[long]]), torch.tensor([1]), sentence).item()
    # only the first n_conditions count
    assert conditions_satisfied(torch.tensor([[long, short]]), torch.tensor([1]), sentence).item()
    # the official substring test would have accepted the prefix
    assert task.token_name(short) in task.decode(sentence[0])


def test_evaluate_on_an_untrained_model_returns_every_metric_in_range():
    task = make_task("concept_language", eval_samples=16, eval_reachable=32)
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layers=1, n_heads=2, d_model=32, d_vocab=task.vocab_size, n_ctx=task.seq_len)).eval()
    metrics = task.evaluate(model, CPU)
    for name in ("grammaticality", "type_constraints", "unscramble_exact", "unscramble_token", "conditional_satisfied",
                 "reachable_pairs", "reachable_pairs_unscramble", "reachable_pairs_swap"):
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["grammaticality"] == 0.0  # an untrained model does not stop at <eos> in a grammatical way
    # the class-specific score is linear in the hit rates, so its two equal halves average to the whole
    halves = (metrics["reachable_pairs_specific_a"] + metrics["reachable_pairs_specific_b"]) / 2
    assert halves == pytest.approx(metrics["reachable_pairs_specific"], abs=1e-6)
    for t in range(3):  # near the uniform loss ln(vocab)
        assert abs(metrics[f"loss_T{t}"] - np.log(task.vocab_size)) < 0.5
    assert metrics == task.evaluate(model, CPU)  # the same draws at every evaluation
    greedy = make_task("concept_language", eval_samples=16, eval_reachable=32, eval_decoding="greedy")
    assert set(greedy.evaluate(model, CPU)) == set(metrics)


def test_order_parameter_ranks_unseen_class_consistent_pairs():
    from caplab.tasks.concept_metrics import eval_sets

    task = make_task("concept_language", eval_reachable=64)
    docs = eval_sets(task, CPU)["reachable_T0"]
    value_position = docs.prompt_length + 4
    values = docs.tokens.gather(1, value_position[:, None]).squeeze(1) - task.value_offset
    subjects = docs.tokens.gather(1, (value_position - 3)[:, None]).squeeze(1) - task.entity_offset
    # class consistent ...
    assert torch.equal(torch.as_tensor(task.tables["token_class"])[values + task.value_offset],
                       torch.as_tensor(task.tables["entity_class"])[subjects])
    # ... but never allowed in training
    assert not torch.as_tensor(task.tables["allowed"])[subjects, values % task.values_per_class].any()
    # the control swaps the subject for one of another class and keeps every other token
    swap = eval_sets(task, CPU)["reachable_swap_T0"]
    swapped = swap.tokens.gather(1, (value_position - 3)[:, None]).squeeze(1) - task.entity_offset
    classes = torch.as_tensor(task.tables["entity_class"])
    assert (classes[swapped] != classes[subjects]).all()
    same = torch.ones_like(docs.tokens, dtype=torch.bool).scatter_(1, (value_position - 3)[:, None], False)
    assert torch.equal(swap.tokens[same], docs.tokens[same])

