import pytest
import torch
import torch.nn.functional as F

from caplab import GPT, GPTConfig
from caplab.analysis.pruning import eligible_parameters, prune, pruning_curve, unit_scores

CFG = GPTConfig(n_layers=2, n_heads=2, d_model=16, n_ctx=8, d_vocab=12)


def batch(seed=0, n=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(12, (n, 8), generator=g)


def loss_on(tokens):
    return lambda model: F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())


def directional_change(model, loss_fn, name, select, eps=1e-4):
    """(L(theta) - L(theta with the unit scaled by 1 - eps)) / eps: the first-order score, by finite difference."""
    model = model.double()
    with torch.no_grad():
        base = loss_fn(model).item()
        param = dict(model.named_parameters())[name]
        saved = param.clone()
        select(param).mul_(1 - eps)
        shifted = loss_fn(model).item()
        param.copy_(saved)
    return (base - shifted) / eps


def test_scores_are_theta_dot_grad_per_unit():
    torch.manual_seed(0)
    model = GPT(CFG).double()
    tokens = batch()
    fn = loss_on(tokens)
    rows = unit_scores(model, fn, "row")
    assert set(name for name, _ in rows.units) == set(eligible_parameters(model))
    assert all(".attn." in n or ".mlp." in n for n in eligible_parameters(model))
    for name, index in [("blocks.0.mlp.fc_in.weight", 3), ("blocks.1.attn.qkv.weight", 20), ("blocks.1.mlp.fc_out.weight", 7)]:
        score = rows.scores[rows.units.index((name, index))].item()
        assert score == pytest.approx(directional_change(model, fn, name, lambda p: p[index]), rel=1e-3, abs=1e-7)
    heads = unit_scores(model, fn, "head")
    assert len(heads.units) == 2 * 2 * 2  # (qkv, out) x layers x heads
    d_head = CFG.d_model // CFG.n_heads
    score = heads.scores[heads.units.index(("blocks.0.attn.qkv.weight", 1))].item()
    expected = directional_change(model, fn, "blocks.0.attn.qkv.weight", lambda p: p.view(3, 2, d_head, -1)[:, 1])
    assert score == pytest.approx(expected, rel=1e-3, abs=1e-7)
    weights = unit_scores(model, fn, "weight", params=["blocks.0.mlp.fc_in.weight"])
    assert len(weights.units) == CFG.d_model * CFG.d_mlp
    assert weights.scores.view(CFG.d_mlp, CFG.d_model).sum(1).allclose(
        rows.scores[[rows.units.index(("blocks.0.mlp.fc_in.weight", i)) for i in range(CFG.d_mlp)]], atol=1e-9)


def test_prune_zeroes_exactly_the_chosen_units_of_a_copy():
    torch.manual_seed(0)
    model = GPT(CFG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = prune(model, [("blocks.1.attn.qkv.weight", 0), ("blocks.1.attn.out.weight", 0)], "head")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    qkv = pruned.blocks[1].attn.qkv.weight.view(3, 2, 8, 16)
    assert (qkv[:, 0] == 0).all() and (qkv[:, 1] != 0).all()
    out = pruned.blocks[1].attn.out.weight.view(16, 2, 8)
    assert (out[:, 0] == 0).all() and (out[:, 1] != 0).all()
    with pytest.raises(ValueError, match="not an attention"):
        prune(model, [("blocks.0.mlp.fc_in.weight", 0)], "head")
    rows = prune(model, [("blocks.0.mlp.fc_in.weight", 5)], "row")
    changed = [k for k, v in rows.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["blocks.0.mlp.fc_in.weight"] and (rows.blocks[0].mlp.fc_in.weight[5] == 0).all()
    assert torch.equal(rows.blocks[0].mlp.fc_in.weight[4], before["blocks.0.mlp.fc_in.weight"][4])


def test_pruning_finds_a_planted_unit_that_hurts_the_loss():
    # one MLP neuron is wired to push every prediction towards token 0, which never is a target:
    # removing that neuron's output row is what lowers the loss most
    torch.manual_seed(1)
    cfg = GPTConfig(n_layers=1, n_heads=2, d_model=16, n_ctx=8, d_vocab=12, bias=True)
    model = GPT(cfg)
    tokens = 1 + torch.randint(11, (64, 8), generator=torch.Generator().manual_seed(0))  # targets are never 0
    r, j = 3, 7
    with torch.no_grad():
        model.blocks[0].mlp.fc_in.bias[j] = 2.0  # neuron j always on
        model.blocks[0].mlp.fc_out.weight[r, j] = 1.5  # it writes residual coordinate r
        model.embed.weight[0, r] = 1.0  # which the (tied) unembedding reads as token 0
    fn = loss_on(tokens)
    scores = unit_scores(model, fn, "row")
    assert scores.top(1) == [("blocks.0.mlp.fc_out.weight", r)]
    curve = pruning_curve(model, scores, [0, 1], lambda m: {"loss": fn(m).item()})
    assert curve[1]["loss"] < curve[0]["loss"] - 0.3


def test_bad_granularity():
    with pytest.raises(ValueError, match="granularity"):
        unit_scores(GPT(CFG), loss_on(batch()), "layer")
