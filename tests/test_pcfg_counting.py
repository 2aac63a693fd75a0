import numpy as np
import pytest
import torch
from torch import nn

from caplab.tasks import make_task
from caplab.tasks.pcfg_counting import ART, EOS, EOT, OPERAND_PRIORS, SOS, SOT, TASK_NAMES

CPU = torch.device("cpu")


def reference_answer(task, text, first, second, offset, K, occurrence=6):
    """Straightforward Python answers, or None when outside 0..K."""
    tail = text[-K:]
    if task == "count":
        return sum(t == first for t in tail)
    if task == "count_bigram":
        return sum(tail[i] == first and tail[i + 1] == second for i in range(K - 1))
    if task == "token_at":
        return ("terminal", text[-offset])
    seen = 0
    for distance in range(1, len(text) + 1):
        i = len(text) - distance
        hit = text[i] == first if task == "index" else (i >= 1 and text[i - 1] == first and text[i] == second)
        seen += hit
        if seen == occurrence:
            return distance if distance <= K else None
    return None


@pytest.mark.parametrize("occurrence", [6, 2])
def test_answers_match_a_python_reference(occurrence):
    task = make_task("pcfg_counting", window=48, count_window=20, index_occurrence=occurrence)
    g = torch.Generator().manual_seed(0)
    n = 400
    text = torch.randint(3, (n, 48), generator=g)
    tasks = torch.randint(5, (n,), generator=g)
    first, second = torch.randint(3, (n,), generator=g), torch.randint(3, (n,), generator=g)
    offset = 1 + torch.randint(20, (n,), generator=g)
    answers = task.answers(text, tasks, first, second, offset)
    for i in range(n):
        expected = reference_answer(TASK_NAMES[int(tasks[i])], text[i].tolist(), int(first[i]), int(second[i]), int(offset[i]), 20,
                                    occurrence)
        if expected is None:
            assert answers[i] == -1
        elif isinstance(expected, tuple):
            assert answers[i] == task.terminal_offset + expected[1]
        else:
            assert answers[i] == task.number_offset + expected


def test_documents_have_the_layout_and_their_answers():
    task = make_task("pcfg_counting")
    docs, tasks, first = task.sample_documents(300, torch.Generator().manual_seed(1), CPU)
    W = task.cfg.window
    assert docs.shape == (300, task.doc_len) and docs.max() < task.vocab_size
    assert (docs[:, 0] == SOS).all() and (docs[:, 4] == SOT).all()
    assert (docs[:, 5 + W] == EOT).all() and (docs[:, 6 + W] == ART).all() and (docs[:, -1] == EOS).all()
    text = docs[:, 5 : 5 + W] - task.terminal_offset
    assert text.min() >= 0 and text.max() <= 2
    for i in range(300):
        name = TASK_NAMES[int(tasks[i])]
        operand = task.token_name(int(docs[i, 2]))
        if name == "token_at":
            assert operand == "<null>"
            offset = int(task.token_name(int(docs[i, 3])))
            assert task.token_name(int(docs[i, task.answer_position])) == "abc"[text[i, W - offset]]
        else:
            letters = ["abc".index(ch) for ch in operand]
            expected = reference_answer(name, text[i].tolist(), letters[0], letters[-1], 1, task.cfg.count_window)
            assert int(task.token_name(int(docs[i, task.answer_position]))) == expected
            assert letters[0] == first[i]
    assert set(tasks.tolist()) == set(range(5))


def test_operands_follow_the_prior():
    task = make_task("pcfg_counting", tasks=["count"], operand_prior="medium2")
    _, _, first = task.sample_documents(6000, torch.Generator().manual_seed(2), CPU)
    for letter, p in enumerate(OPERAND_PRIORS["medium2"]):
        share = (first == letter).float().mean().item()
        assert abs(share - p) < 4.5 * np.sqrt(p * (1 - p) / 6000) + 1e-9
    swapped = make_task("pcfg_counting", tasks=["count"], operand_prior="medium2", swap_operands=True)
    _, _, first = swapped.sample_documents(6000, torch.Generator().manual_seed(2), CPU)
    for letter, p in enumerate((0.2, 0.7, 0.1)):
        share = (first == letter).float().mean().item()
        assert abs(share - p) < 4.5 * np.sqrt(p * (1 - p) / 6000)


def test_correlation_makes_count_b_equal_count_a_plus_one():
    K = 40
    task = make_task("pcfg_counting", tasks=["count"], correlation=1.0)
    docs, _, _ = task.sample_documents(500, torch.Generator().manual_seed(3), CPU)
    tail = docs[:, 5 + task.cfg.window - K : 5 + task.cfg.window] - task.terminal_offset
    assert ((tail == 1).sum(1) == (tail == 0).sum(1) + 1).all()
    plain = make_task("pcfg_counting", tasks=["count"])
    docs, _, _ = plain.sample_documents(500, torch.Generator().manual_seed(3), CPU)
    tail = docs[:, 5 + plain.cfg.window - K : 5 + plain.cfg.window] - plain.terminal_offset
    assert ((tail == 1).sum(1) == (tail == 0).sum(1) + 1).float().mean() < 0.2
    half = make_task("pcfg_counting", tasks=["count"], correlation=0.5)
    docs, _, _ = half.sample_documents(2000, torch.Generator().manual_seed(4), CPU)
    tail = docs[:, 5 + half.cfg.window - K : 5 + half.cfg.window] - half.terminal_offset
    share = ((tail == 1).sum(1) == (tail == 0).sum(1) + 1).float().mean().item()
    assert 0.45 < share < 0.65  # CTr plus the rows where it holds by chance


def test_correlation_keeps_the_label_histogram():
    """Fig. 16 of the paper: the count(b) labels look alike at CTr = 0 and CTr = 1."""
    K, n = 40, 4000

    def label_histogram(correlation, seed):
        task = make_task("pcfg_counting", tasks=["count"], operand="b", correlation=correlation)
        docs, _, _ = task.sample_documents(n, torch.Generator().manual_seed(seed), CPU)
        tail = docs[:, 5 + task.cfg.window - K : 5 + task.cfg.window] - task.terminal_offset
        assert torch.equal(docs[:, task.answer_position] - task.number_offset, (tail == 1).sum(1))
        return torch.bincount((tail == 1).sum(1), minlength=K + 1).float() / n

    natural, coupled, again = label_histogram(0.0, 5), label_histogram(1.0, 6), label_histogram(0.0, 7)
    noise = 0.5 * (natural - again).abs().sum().item()  # two draws of the same distribution
    assert 0.5 * (natural - coupled).abs().sum().item() < max(0.06, 2 * noise)


class Oracle(nn.Module):
    """Puts all its mass on the right answer of the documents it was built from."""

    def __init__(self, task, docs):
        super().__init__()
        self.task = task
        self.answers = {tuple(d[: task.answer_position].tolist()): int(d[task.answer_position]) for d in docs}

    def forward(self, tokens):
        logits = torch.zeros(*tokens.shape, self.task.vocab_size)
        for i, row in enumerate(tokens):
            logits[i, -1, self.answers[tuple(row.tolist())]] = 1.0
        return logits


def test_evaluate_scores_answers_per_task_and_operand():
    task = make_task("pcfg_counting", eval_samples=16)
    constant = nn.Module()
    constant.forward = lambda tokens: torch.zeros(*tokens.shape, task.vocab_size)
    metrics = task.evaluate(constant, CPU)
    assert set(metrics) == {f"{t}_{x}" for t in TASK_NAMES if t != "token_at" for x in "abc"} | {"token_at"}
    docs = torch.cat(list(task._eval_cache[(str(CPU), 0.0)].values()))
    assert all(v == 1.0 for v in task.evaluate(Oracle(task, docs), CPU).values())
    assert metrics["count_a"] == (docs[:16, task.answer_position] == 0).float().mean().item()  # argmax of zeros is token 0


class CountRule(nn.Module):
    """Answers count(b) questions by a rule on the window's letter counts, read from the tokens themselves."""

    def __init__(self, task, rule):
        super().__init__()
        self.task, self.rule = task, rule

    def forward(self, tokens):
        t, K, W = self.task, self.task.cfg.count_window, self.task.cfg.window
        tail = tokens[:, 5 + W - K: 5 + W] - t.terminal_offset
        a, b, c = ((tail == i).sum(1) for i in range(3))
        answer = {"b": b, "a+1": (a + 1).clamp(max=K), "c": (K + 1 - c) // 2}[self.rule]
        logits = torch.zeros(*tokens.shape, t.vocab_size)
        logits[torch.arange(len(tokens)), -1, t.number_offset + answer] = 1.0
        return logits


def test_answer_rules_tell_the_count_a_wrapper_from_the_count_c_rule():
    # a + b + c = K in the window, so count(b) = count(a) + 1 and count(b) = (K + 1 - count(c)) / 2 are the
    # same shortcut; on the separating documents each rule model is recognised, and only by its own rule
    task = make_task("pcfg_counting", tasks=["count"], operand="b", eval_samples=256, window=32, count_window=8)
    docs = task._evaluation_documents(CPU, 0.0)["count_b"]
    tail = docs[:, 5 + 32 - 8: 5 + 32] - task.terminal_offset
    a, b, c = ((tail == i).sum(1) for i in range(3))
    expected_n = int(((b != a + 1) & ((9 - c) % 2 == 0)).sum())
    names = {"b": "count(b)", "a+1": "count(a)+1", "c": "(K+1-count(c))/2"}
    for rule, name in names.items():
        found = task.answer_rules(CountRule(task, rule), CPU)
        assert found["n_separating"] == expected_n > 20
        assert found[name] == 1.0 and all(found[other] == 0.0 for other in names.values() if other != name)
    # under the shortcut itself the a-rule and the c-rule agree on every document
    shortcut = task._evaluation_documents(CPU, 1.0)["count_b"]
    assert torch.equal(CountRule(task, "a+1")(shortcut[:, :-2]).argmax(-1)[:, -1],
                       CountRule(task, "c")(shortcut[:, :-2]).argmax(-1)[:, -1])
    with pytest.raises(ValueError, match="must include count"):
        make_task("pcfg_counting", tasks=["index"]).answer_rules(CountRule(task, "b"), CPU)


class SoftCountRule(nn.Module):
    """Answers count(b) questions with an expected answer equal to a rule on the window's letter counts (pad
    tokens count as no letter), or on their shares of the letters times K (`shares`): probability split
    between the two integers around a fractional value, and a large logit on a token that is not a number."""

    def __init__(self, task, rule, shares=False):
        super().__init__()
        self.task, self.rule, self.shares = task, rule, shares

    def forward(self, tokens):
        t, K, W = self.task, self.task.cfg.count_window, self.task.cfg.window
        tail = tokens[:, 5 + W - K: 5 + W] - t.terminal_offset
        counts = [(tail == i).sum(1).float() for i in range(3)]
        if self.shares:
            counts = [x * K / sum(counts) for x in counts]
        value = t.SHORTCUT_RULES[self.rule](*counts, K).clamp(0, K)  # checked by hand in the test below
        low, frac = value.floor().long(), value - value.floor()
        probs = torch.zeros(len(tokens), t.vocab_size)
        rows = torch.arange(len(tokens))
        probs[rows, t.number_offset + low] = 1 - frac
        probs[rows, t.number_offset + (low + 1).clamp(max=K)] += frac
        logits = torch.zeros(*tokens.shape, t.vocab_size)
        logits[:, -1] = probs.clamp_min(1e-12).log()
        logits[:, -1, t.terminal_offset] = 50.0  # not an answer: the expected answer is over numbers only
        return logits


class FirstHalfC(nn.Module):
    """Answers the number of c tokens in the first half of the counting window: it reads positions."""

    def __init__(self, task):
        super().__init__()
        self.task = task

    def forward(self, tokens):
        t, K, W = self.task, self.task.cfg.count_window, self.task.cfg.window
        answer = (tokens[:, 5 + W - K: 5 + W - K // 2] == t.terminal_offset + 2).sum(1)
        logits = torch.zeros(*tokens.shape, t.vocab_size)
        logits[torch.arange(len(tokens)), -1, t.number_offset + answer] = 30.0
        return logits


def test_letter_knockout_tells_which_counts_a_rule_reads():
    # the rules agree under the shortcut, but blanking one letter moves each one's answer differently
    task = make_task("pcfg_counting", tasks=["count"], operand="b", eval_samples=256, window=32, count_window=8)
    references = task.knockout_references(CPU)
    assert set(references) == set(task.SHORTCUT_RULES)
    by_hand = {"count(b)": (0, -1, 0), "count(a)+1": (-1, 0, 0), "(K+1-count(c))/2": (0, 0, 0.5),
               "(count(a)+count(b)+1)/2": (-0.5, -0.5, 0)}  # a token counter: one letter fewer
    docs = task._evaluation_documents(CPU, 0.0)["count_b"]
    a, b, c = (x.float() for x in task._window_counts(docs))
    for rule, shifts in by_hand.items():
        assert [references[rule]["tokens"][x] for x in "abc"] == pytest.approx(shifts, abs=1e-6)
        for regime in ("tokens", "shares"):
            assert references[rule][regime]["outside"] == 0.0  # the window's counts do not change
            found = task.letter_knockout(SoftCountRule(task, rule, regime == "shares"), CPU)
            assert all(found[f"n_{x}"] > 50 for x in ("a", "b", "c", "outside"))
            keys = ("a", "b", "c", "outside")
            assert [found[x] for x in keys] == pytest.approx([references[rule][regime][x] for x in keys], abs=0.02)
        assert found["answer"] == pytest.approx(task.SHORTCUT_RULES[rule](a, b, c, 8).clamp(0, 8).mean().item(), abs=1e-4)
    # share readers: the c rule and the (a + b) rule coincide again, count(a) + 1 does not
    shares = {rule: [references[rule]["shares"][x] for x in "abc"] for rule in task.SHORTCUT_RULES}
    assert shares["(K+1-count(c))/2"] == pytest.approx(shares["(count(a)+count(b)+1)/2"], abs=1e-6)
    assert abs(shares["count(a)+1"][0] - shares["(K+1-count(c))/2"][0]) > 0.3
    # a blank lands on a uniformly random occurrence: a reader of half the window loses a c in that share of cases
    tail = docs[:, 5 + 32 - 8: 5 + 32] == task.terminal_offset + 2
    held = tail.any(1)
    expected = -(tail[held, :4].sum(1) / tail[held].sum(1)).mean().item()
    assert task.letter_knockout(FirstHalfC(task), CPU)["c"] == pytest.approx(expected, abs=0.06)
    constant = nn.Module()
    constant.forward = lambda tokens: torch.zeros(*tokens.shape, task.vocab_size)
    assert [task.letter_knockout(constant, CPU)[x] for x in "abc"] == [0.0, 0.0, 0.0]  # reads nothing, moves not at all
    with pytest.raises(ValueError, match="must include count"):
        make_task("pcfg_counting", tasks=["index"]).letter_knockout(constant, CPU)


def test_answer_only_loss_mask():
    task = make_task("pcfg_counting", loss_on="answer")
    batch = task.sample(8, torch.Generator().manual_seed(5), CPU)
    assert (batch.loss_mask.sum(1) == 1).all()
    position = batch.loss_mask[0].nonzero().item()
    assert (batch.tokens[:, position] == ART).all()


def test_tasks_stay_uniform_where_some_questions_are_rare():
    # under the low prior a bigram index question is answerable in ~5% of strings; redrawing within the task
    # keeps it at a fifth of the documents (redrawing over all tasks would leave it near 1%)
    task = make_task("pcfg_counting", operand_prior="low", window=64, count_window=16, index_occurrence=2)
    _, tasks, _ = task.sample_documents(4000, torch.Generator().manual_seed(3), CPU)
    shares = torch.bincount(tasks, minlength=5) / 4000
    assert (shares - 0.2).abs().max() < 0.025  # 4 standard errors of a share of 0.2 among 4,000


def test_an_unanswerable_question_is_an_error_not_a_hang():
    from caplab.errors import ConfigError

    # the 16th occurrence of a bigram cannot lie within the last 16 tokens (they hold 15 bigrams)
    task = make_task("pcfg_counting", tasks=["index_bigram"], window=64, count_window=16, index_occurrence=16)
    with pytest.raises(ConfigError, match="index_bigram.*lower index_occurrence"):
        task.sample_documents(4, torch.Generator().manual_seed(0), CPU)


def test_bad_config():
    from caplab.errors import ConfigError

    with pytest.raises(ConfigError, match="index_occurrence"):
        make_task("pcfg_counting", count_window=16, index_occurrence=17)

    with pytest.raises(ConfigError, match="task.tasks"):
        make_task("pcfg_counting", tasks=["sum"])
    with pytest.raises(ConfigError, match="count_window"):
        make_task("pcfg_counting", window=30, count_window=40)


def test_fixed_operand_and_test_correlations():
    task = make_task("pcfg_counting", tasks=["count"], operand="b", eval_correlations=[0.0, 1.0], eval_samples=32)
    _, _, first = task.sample_documents(200, torch.Generator().manual_seed(6), CPU)
    assert (first == 1).all()
    constant = nn.Module()
    constant.forward = lambda tokens: torch.zeros(*tokens.shape, task.vocab_size)
    metrics = task.evaluate(constant, CPU)
    assert set(metrics) == {"count_a", "count_b", "count_c", "count_a_cte1", "count_b_cte1", "count_c_cte1"}
    docs = task._eval_cache[(str(CPU), 1.0)]["count_b"]
    tail = docs[:, 5 + task.cfg.window - 40 : 5 + task.cfg.window] - task.terminal_offset
    assert ((tail == 1).sum(1) == (tail == 0).sum(1) + 1).all()  # CTe = 1: count(b) = count(a) + 1 everywhere
    assert set(task.headline(metrics)) == {"count_a", "count_b", "count_a_cte1", "count_b_cte1"}


def test_probe_set_counts_match_the_answers():
    task = make_task("pcfg_counting", tasks=["count"], operand="b", count_window=16)
    tokens, positions, counts, ids = task.probe_set(64, torch.Generator().manual_seed(8), CPU)
    assert tokens.shape == (64, task.seq_len) and (positions == task.answer_position - 1).all()
    assert (tokens[:, 2] == ids["b"]).all()  # the question is about b
    # the answer the document carries is count(b), and it sits right after the readout position
    docs, _, _ = task.sample_documents(64, torch.Generator().manual_seed(8), CPU, 0, 1, 0.0)
    assert torch.equal(docs[:, :-1], tokens)
    assert torch.equal(docs[:, task.answer_position] - task.number_offset, counts["b"])
