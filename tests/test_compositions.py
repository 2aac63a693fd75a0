import numpy as np
import pytest
import torch
from torch import nn

from caplab import ConfigError, make_task
from caplab.tasks.compositions import Compositions, CompositionsConfig

SMALL = dict(n_tokens=6, input_len=5, n_depths=3, n_functions=2, n_train_compositions=6, eval_inputs=3)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_bijections_are_invertible_and_identity_is_identity():
    task = make_task("compositions", **SMALL, permutation_depths=[1])
    for g in range(task.token_maps.shape[0]):
        assert sorted(task.token_maps[g].tolist()) == list(range(6))
        assert sorted(task.position_perms[g].tolist()) == list(range(5))
        inverse = torch.argsort(task.token_maps[g])
        assert torch.equal(inverse[task.token_maps[g]], torch.arange(6))
    for d in range(3):
        g = task.function_id(d, 0)
        assert torch.equal(task.token_maps[g], torch.arange(6)) and torch.equal(task.position_perms[g], torch.arange(5))
    for d in range(3):  # non-identity functions differ from the identity and from each other
        rows = {tuple(task.token_maps[task.function_id(d, i)].tolist()) + tuple(task.position_perms[task.function_id(d, i)].tolist())
                for i in range(3)}
        assert len(rows) == 3
    # depth 1 permutes positions only; the others map tokens only
    for i in (1, 2):
        assert torch.equal(task.token_maps[task.function_id(1, i)], torch.arange(6))
        assert torch.equal(task.position_perms[task.function_id(0, i)], torch.arange(5))


def test_step_by_step_documents_have_correct_intermediate_steps():
    task = make_task("compositions", **SMALL, permutation_depths=[2])
    batch = task.sample(32, gen(), torch.device("cpu"))
    docs = torch.cat([batch.tokens, batch.targets[:, -1:]], 1).numpy()
    assert docs.shape == (32, task.doc_len) == (32, 1 + 3 + 1 + 5 + 3 * 6)
    tm, pp = task.token_maps.numpy(), task.position_perms.numpy()
    for doc in docs:
        assert doc[0] == task.start and doc[4] == task.sep
        funcs = doc[1:4] - task.function_offset
        state = doc[5:10]
        for s, g in enumerate(funcs):
            state = tm[g][state][pp[g]]  # a plain numpy re-derivation, one function at a time
            start = 10 + s * 6
            assert doc[start] == task.sep
            assert np.array_equal(doc[start + 1 : start + 6], state)


def test_direct_format_ends_with_the_same_answer():
    step = make_task("compositions", **SMALL)
    direct = make_task("compositions", **SMALL, format="direct")
    assert torch.equal(step.train_compositions, direct.train_compositions)  # same world, same split
    comps = step.train_compositions[:4]
    x = torch.randint(6, (4, 5), generator=gen())
    a, b = step.documents(comps, x), direct.documents(comps, x)
    assert b.shape[1] == direct.doc_len == 1 + 3 + 1 + 5 + 1 + 5
    assert torch.equal(a[:, -5:], b[:, -5:]) and torch.equal(a[:, :11], b[:, :11])


def test_targets_are_tokens_shifted_and_loss_mask():
    task = make_task("compositions", **SMALL, loss_on="outputs")
    batch = task.sample(8, gen(), torch.device("cpu"))
    assert torch.equal(batch.tokens[:, 1:], batch.targets[:, :-1])
    assert batch.loss_mask[:, : task.prompt_len - 1].sum() == 0
    assert torch.all(batch.loss_mask[:, task.prompt_len - 1 :] == 1)
    assert torch.all(make_task("compositions", **SMALL).sample(8, gen(), "cpu").loss_mask == 1)


def test_sampling_is_seeded_by_the_generator_only():
    task = make_task("compositions", **SMALL)
    a = task.sample(16, gen(3), "cpu")
    torch.manual_seed(123)  # global state must not matter
    b = task.sample(16, gen(3), "cpu")
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, task.sample(16, gen(4), "cpu").tokens)


def test_samples_only_use_training_compositions():
    task = make_task("compositions", **SMALL)
    batch = task.sample(512, gen(), "cpu")
    seen = {tuple(c) for c in (batch.tokens[:, 1:4] - task.function_offset).tolist()}
    assert seen == {tuple(c) for c in task.train_compositions.tolist()}  # all used, nothing else


def test_random_split_and_eval_sets_are_disjoint_and_complete():
    task = make_task("compositions", **SMALL)
    sets = task.eval_sets()
    seen = {tuple(c) for c in sets["seen"].tolist()}
    unseen = {tuple(c) for c in sets["unseen"].tolist()}
    assert len(seen) == 6 and not seen & unseen
    assert seen | unseen == {tuple(c) for c in task.inorder.tolist()}
    assert len(task.inorder) == 3**3


def test_base_split_holds_identity_and_every_single_function():
    task = make_task("compositions", **{**SMALL, "n_train_compositions": 4}, split="base")
    comps = task.train_compositions
    k = task.n_non_identity(comps)
    assert (k == 0).sum() == 1 and (k == 1).sum() == 3 * 2
    assert len(comps) == 1 + 6 + 4
    singles = {tuple(c) for c in comps[k == 1].tolist()}
    assert len(singles) == 6


def test_out_of_order_split_uses_every_function_and_never_a_misplaced_identity():
    task = make_task("compositions", **{**SMALL, "n_train_compositions": 200}, split="random_combo")
    comps = task.train_compositions
    used = set(comps.flatten().tolist())
    non_identity = {task.function_id(d, i) for d in range(3) for i in (1, 2)}
    assert non_identity <= used  # the official off-by-one never used the last function
    slot = torch.arange(3).expand_as(comps)
    identities = task.is_identity(comps)
    assert torch.all(comps[identities] // task.functions_per_depth == slot[identities])  # identity written canonically
    assert (comps[~identities] // task.functions_per_depth != slot[~identities]).any()  # some displaced
    displaced = task.eval_sets()["displaced"]
    assert not {tuple(c) for c in displaced.tolist()} & {tuple(c) for c in comps.tolist()}


def test_randombase_combo_counts():
    task = make_task("compositions", **SMALL, split="randombase_combo", n_train_inorder=3)
    assert len(task.train_compositions) == 1 + 6 + 3 + 6


class Oracle(nn.Module):
    """Answers correctly for the compositions it knows, wrongly (every token) otherwise."""

    def __init__(self, task: Compositions, known: set) -> None:
        super().__init__()
        self.task, self.known = task, known

    def generate(self, prompt, n):
        t = self.task
        D, L = t.cfg.n_depths, t.cfg.input_len
        comps, x = prompt[:, 1 : 1 + D] - t.function_offset, prompt[:, D + 2 : D + 2 + L]
        docs = t.documents(comps, x)
        unknown = torch.tensor([tuple(c) not in self.known for c in comps.tolist()])
        docs[unknown, -L:] = (docs[unknown, -L:] + 1) % t.cfg.n_tokens
        return docs


def test_metrics_bookkeeping_with_an_oracle():
    task = make_task("compositions", **SMALL)
    seen = {tuple(c) for c in task.train_compositions.tolist()}
    metrics = task.evaluate(Oracle(task, seen), "cpu")
    assert metrics["seen_exact"] == metrics["seen_token"] == 1.0
    assert metrics["unseen_exact"] == metrics["unseen_token"] == 0.0
    everything = {tuple(c) for c in task.inorder.tolist()}
    perfect = task.evaluate(Oracle(task, everything), "cpu")
    assert all(v == 1.0 for v in perfect.values())
    # by number of non-identity functions: the fraction of seen compositions with k functions
    k_all = task.n_non_identity(task.inorder)
    k_seen = task.n_non_identity(task.train_compositions)
    for k in range(4):
        assert metrics[f"exact_k{k}"] == pytest.approx((k_seen == k).sum().item() / (k_all == k).sum().item())


def test_bad_task_config_is_a_config_error():
    with pytest.raises(ConfigError, match="task.nope"):
        make_task("compositions", nope=1)
    with pytest.raises(ConfigError, match="only 27"):
        make_task("compositions", **{**SMALL, "n_train_compositions": 100})
    with pytest.raises(ValueError, match="permutation_depths"):
        CompositionsConfig(permutation_depths=[7])


def test_decode_names_tokens():
    task = make_task("compositions", **SMALL)
    doc = task.documents(task.train_compositions[:1], torch.zeros(1, 5, dtype=torch.long))[0]
    text = task.decode(doc)
    assert text.startswith("S T0_") and " | X" in text


def test_displaced_metrics_and_eval_sampling_with_an_oracle():
    task = make_task("compositions", **SMALL, split="base_combo", eval_displaced=21, eval_compositions=5)
    sets = task.eval_sets()
    assert len(sets["unseen"]) == 5 and len(sets["displaced"]) == 21  # 7 per displaced-slot count
    seen = {tuple(c) for c in task.train_compositions.tolist()}
    only_seen = task.evaluate(Oracle(task, seen), "cpu")
    assert only_seen["seen_exact"] == 1.0 and only_seen["displaced_exact"] == 0.0 and only_seen["unseen_exact"] == 0.0
    everything = seen | {tuple(c) for c in sets["unseen"].tolist()} | {tuple(c) for c in sets["displaced"].tolist()}
    assert task.evaluate(Oracle(task, everything), "cpu")["displaced_exact"] == 1.0


def test_displaced_evaluation_is_stratified_by_displaced_slots_for_any_split():
    assert "displaced" not in make_task("compositions", **SMALL).eval_sets()  # automatic: none under an in-order split
    task = make_task("compositions", **SMALL, eval_displaced=30)
    displaced = task.eval_sets()["displaced"]
    keys = [tuple(c) for c in displaced.tolist()]
    moved = [task.n_displaced(c) for c in keys]
    assert len(set(keys)) == 30 and sorted(moved) == [1] * 10 + [2] * 10 + [3] * 10
    assert not set(keys) & {tuple(c) for c in task.train_compositions.tolist()}
    Fp1 = task.functions_per_depth
    for c in keys:  # a slot not displaced holds the identity or its own depth's function
        assert all(g // Fp1 == s or g % Fp1 != 0 for s, g in enumerate(c))
    one_moved = {c for c, m in zip(keys, moved) if m == 1}
    metrics = task.evaluate(Oracle(task, one_moved), "cpu")
    assert (metrics["displaced_exact_m1"], metrics["displaced_exact_m2"], metrics["displaced_exact_m3"]) == (1.0, 0.0, 0.0)
    assert metrics["displaced_exact"] == pytest.approx(1 / 3)
    for n_funcs in range(1, 4):  # by non-identity functions: the share of those with one displaced slot
        pick = [c for c in keys if int(task.n_non_identity(torch.tensor([c]))) == n_funcs]
        if pick:
            share = sum(c in one_moved for c in pick) / len(pick)
            assert metrics[f"displaced_exact_k{n_funcs}"] == pytest.approx(share)
    # the family with exactly m displaced slots: C(3, m) x (2 x 2)^m x 3^(3 - m) = 108, 144, 64; all 64 when asked for more
    crowded = make_task("compositions", **SMALL, eval_displaced=3 * 100).eval_sets()["displaced"]
    assert sorted(task.n_displaced(c) for c in crowded.tolist()).count(3) == 64


def test_two_splits_of_one_world_are_evaluated_on_the_same_displaced_compositions():
    sets = {split: make_task("compositions", **{**SMALL, "n_train_compositions": 20}, split=split, eval_displaced=60)
            for split in ("random", "random_combo")}
    displaced = {split: {tuple(c) for c in task.eval_sets()["displaced"].tolist()} for split, task in sets.items()}
    trained = {tuple(c) for c in sets["random_combo"].train_compositions.tolist()}
    assert displaced["random"] - displaced["random_combo"] <= trained  # differ only by what random_combo trains on
    assert len(displaced["random"] & displaced["random_combo"]) >= 60 - len(trained)
