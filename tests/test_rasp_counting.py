"""The counting task of the compiled counter: vocabulary, correlation, label histograms."""

import torch

from caplab import rasp
from caplab.rasp_compiler import compile_program
from caplab.tasks import make_task


def _counts(text, letter):
    return (text == letter).sum(1)


def test_compiled_counter_solves_the_task_exactly():
    task = make_task("rasp_counting", length=24, eval_correlations=[0.0, 1.0], eval_samples=256)
    compiled = compile_program(rasp.counter("a"), list(task.cfg.letters), task.cfg.length)
    assert [str(v) for v in compiled.vocabulary] == [str(v) for v in task.vocabulary]
    metrics = task.evaluate(compiled.model, torch.device("cpu"))
    assert metrics["count_a"] == 1.0 and metrics["count_a_cte1"] == 1.0
    assert metrics["count_b"] < 0.3  # it counts a, not b
    assert metrics["count_b_cte1"] == 0.0  # count(b) = count(a) + 1 exactly: always off by one


def test_batch_layout_and_loss_position():
    task = make_task("rasp_counting", length=10, operand="b")
    batch = task.sample(32, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert batch.tokens.shape == (32, 11) and (batch.tokens[:, 0] == 0).all()
    assert batch.loss_mask.sum(1).eq(1).all() and batch.loss_mask[:, 2].eq(1).all()
    text = batch.tokens[:, 1:] - task.letter_offset
    assert torch.equal(batch.targets[:, 2], task.count_offset + _counts(text, task.letter("b")))


def test_correlation_is_exact_and_keeps_the_label_histogram():
    n, g = 20000, torch.Generator().manual_seed(1)
    task = make_task("rasp_counting", length=40, operand="b")
    a, b = task.letter("a"), task.letter("b")
    full = task.draw(n, g, torch.device("cpu"), 1.0)
    assert torch.equal(_counts(full, b), _counts(full, a) + 1)
    natural = task.draw(n, g, torch.device("cpu"), 0.0)
    half = task.draw(n, g, torch.device("cpu"), 0.5)
    coupled = (_counts(half, b) == _counts(half, a) + 1).float().mean().item()
    base = (_counts(natural, b) == _counts(natural, a) + 1).float().mean().item()
    assert abs(coupled - (0.5 + 0.5 * base)) < 0.02
    hist = lambda t: torch.bincount(_counts(t, b), minlength=41).float() / n  # noqa: E731
    assert 0.5 * (hist(full) - hist(natural)).abs().sum() < 0.03  # total variation of the label histograms
    # the rewriting never touches b and never creates b
    assert abs(_counts(full, b).float().mean() - _counts(natural, b).float().mean()) < 0.1
