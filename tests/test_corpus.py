import numpy as np
import pytest
import torch

from caplab import ConfigError, load_config, make_task
from caplab.experiment import build
from caplab.tasks.corpus import Corpus
from helpers import TINY

CPU = torch.device("cpu")


def rows_of(batch, corpus):
    """Index in the corpus of every row of `batch` (rows are unique documents here)."""
    docs = corpus.documents(CPU).tokens
    match = (batch.tokens[:, None, :] == docs[None, :, :]).all(-1)
    assert (match.sum(1) >= 1).all()
    return match.float().argmax(1)


def test_a_corpus_serves_its_documents_in_epochs_ordered_by_the_run():
    corpus = make_task("compositions", n_train_compositions=20, corpus_size=50, corpus_seed=3)
    assert isinstance(corpus, Corpus)
    docs = corpus.documents(CPU).tokens
    assert len(torch.unique(docs, dim=0)) == 50
    generator = torch.Generator().manual_seed(0)
    first = torch.cat([rows_of(corpus.sample(16, generator, CPU), corpus) for _ in range(3)])
    assert len(set(first.tolist())) == 48 and corpus.epoch == 1
    epoch_one = torch.cat([first, rows_of(corpus.sample(4, generator, CPU), corpus)])[:50]
    assert sorted(epoch_one.tolist()) == list(range(50)) and corpus.epoch == 2  # one epoch shows every document once
    # the corpus depends on corpus_seed only; the order on the run's generator
    again = make_task("compositions", n_train_compositions=20, corpus_size=50, corpus_seed=3)
    assert torch.equal(again.documents(CPU).tokens, docs)
    other_order = rows_of(again.sample(16, torch.Generator().manual_seed(1), CPU), again)
    assert not torch.equal(other_order, first[:16])
    other = make_task("compositions", n_train_compositions=20, corpus_size=50, corpus_seed=4)
    assert not torch.equal(other.documents(CPU).tokens, docs)


def test_held_out_documents_are_fresh_samples_of_the_same_world():
    corpus = make_task("compositions", n_train_compositions=20, corpus_size=30)
    held_out = corpus.held_out(64, torch.Generator().manual_seed(9), CPU)
    docs = corpus.documents(CPU).tokens
    in_corpus = (held_out.tokens[:, None, :] == docs[None]).all(-1).any(1)
    assert in_corpus.float().mean() < 0.5
    assert (corpus.position, corpus.epoch) == (30, 0)  # drawing held-out data does not move the corpus along


def test_a_restored_trainer_continues_mid_epoch_exactly():
    cfg = load_config("demo", TINY + ["task.corpus_size=40", "train.batch_size=12", "train.steps=12"])
    _, _, straight = build(cfg)
    for _ in range(12):
        straight.train_step()
    _, _, first = build(cfg)
    for _ in range(5):  # 60 documents: one epoch and a half
        first.train_step()
    state = first.state_tensors()
    _, _, second = build(cfg)
    second.restore(*state)
    assert (second.task.epoch, second.task.position) == (2, 20)
    for _ in range(7):
        second.train_step()
    a, b = straight.model.state_dict(), second.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_corpus_keys_are_checked_like_any_other():
    cfg = load_config("demo", ["task.corpus_size=64"])
    assert cfg.task["corpus_size"] == 64 and cfg.task["corpus_seed"] == 0
    with pytest.raises(ConfigError, match="corpus_size"):
        load_config("demo", ["task.corpus_size=-1"])
    with pytest.raises(ConfigError, match="task.corpus_size"):
        load_config("demo", ["task.corpus_size=many"])


def test_a_concept_corpus_holds_exactly_the_requested_pairs():
    corpus = make_task("concept_language", pairs_per_class=40, corpus_size=600)
    world = corpus.task
    batch = corpus.documents(CPU)
    _, entity, value = world.described_pairs(batch.tokens, batch.labels["symbols"])
    pairs = np.unique(torch.stack([entity, value], 1).numpy(), axis=0)
    assert len(pairs) == 4 * 40  # 600 documents are too few to show 160 pairs by chance; the corpus is repaired
    assert world.tables["shown"][pairs[:, 0], pairs[:, 1]].all()
    assert corpus.describe()["shown_graph"]["edges"] == [40] * 4
    # the order parameter is measured on pairs the corpus never shows
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        corpus.observe(corpus.sample(200, generator, CPU))
    assert corpus.data_metrics()["observed_pairs"] == 40.0
    with pytest.raises(ConfigError, match="corpus_size"):
        load_config("emergence", ["task.pairs_per_class=150", "task.corpus_size=20"]).make_task().describe()
