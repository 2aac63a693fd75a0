import math

import pytest
import torch
import torch.nn.functional as F

from caplab import GPT, GPTConfig

CFG = GPTConfig(n_layers=2, n_heads=2, d_model=32, n_ctx=16, d_vocab=11)


def tokens(batch=3, length=10, seed=0):
    return torch.randint(CFG.d_vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_forward(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """An independent GPT forward written with explicit attention from the state dict."""
    sd, c = model.state_dict(), model.cfg
    B, T = x.shape
    h = sd["embed.weight"][x] + sd["pos_embed.weight"][:T]

    def ln(v, name):
        mu, var = v.mean(-1, keepdim=True), v.var(-1, keepdim=True, unbiased=False)
        return (v - mu) / torch.sqrt(var + 1e-5) * sd[f"{name}.weight"] + sd[f"{name}.bias"]

    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(c.n_layers):
        p = f"blocks.{i}."
        qkv = ln(h, p + "ln1") @ sd[p + "attn.qkv.weight"].T
        q, k, v = qkv.split(c.d_model, -1)
        heads = []
        for hd in range(c.n_heads):
            sl = slice(hd * c.d_head, (hd + 1) * c.d_head)
            att = (q[..., sl] @ k[..., sl].transpose(-1, -2)) / math.sqrt(c.d_head)
            att = att.masked_fill(~mask, float("-inf")).softmax(-1)
            heads.append(att @ v[..., sl])
        h = h + torch.cat(heads, -1) @ sd[p + "attn.out.weight"].T
        m = ln(h, p + "ln2") @ sd[p + "mlp.fc_in.weight"].T
        h = h + F.gelu(m) @ sd[p + "mlp.fc_out.weight"].T
    return ln(h, "ln_final") @ sd["embed.weight"].T


def test_logits_shape_and_reference():
    model = GPT(CFG)
    x = tokens()
    logits = model(x)
    assert logits.shape == (3, 10, CFG.d_vocab)
    torch.testing.assert_close(logits, reference_forward(model, x), rtol=1e-4, atol=1e-5)


def test_causal_later_tokens_never_change_earlier_logits():
    model = GPT(CFG)
    x = tokens()
    y = x.clone()
    y[:, 6:] = (y[:, 6:] + 1) % CFG.d_vocab
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_tied_embeddings_and_d_mlp_default():
    model = GPT(CFG)
    assert CFG.d_mlp == 4 * CFG.d_model
    assert model.blocks[0].mlp.fc_in.out_features == 128
    names = [n for n, _ in model.named_parameters()]
    assert not any("unembed" in n or "lm_head" in n for n in names)


def test_hook_names_are_transformer_lens_canonical():
    model = GPT(CFG)
    expected = {"hook_embed", "hook_pos_embed", "ln_final.hook_normalized"}
    for i in range(CFG.n_layers):
        p = f"blocks.{i}."
        expected |= {p + n for n in ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                                     "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern",
                                     "attn.hook_attn_scores", "attn.hook_result",
                                     "mlp.hook_pre", "mlp.hook_post", "ln1.hook_normalized", "ln2.hook_normalized")}
    assert set(model.hook_points) == expected


def test_cache_contents_and_shapes():
    model = GPT(CFG)
    x = tokens()
    logits, cache = model.run_with_cache(x)
    torch.testing.assert_close(logits, model(x))
    B, T, nh, dh = 3, 10, CFG.n_heads, CFG.d_head
    assert cache["blocks.0.attn.hook_q"].shape == (B, T, nh, dh)
    assert cache["blocks.1.attn.hook_z"].shape == (B, T, nh, dh)
    assert cache["blocks.0.mlp.hook_post"].shape == (B, T, CFG.d_mlp)
    pattern = cache["blocks.1.attn.hook_pattern"]
    assert pattern.shape == (B, nh, T, T)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(B, nh, T))
    assert torch.all(pattern.triu(1) == 0)  # causal
    # the residual stream adds up: resid_post = resid_mid + mlp_out = resid_pre + attn_out + mlp_out
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_mid"] + cache["blocks.0.hook_mlp_out"])
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"])
    torch.testing.assert_close(cache["hook_embed"] + cache["hook_pos_embed"], cache["blocks.0.hook_resid_pre"])


def test_cache_subset_by_name_and_predicate():
    model = GPT(CFG)
    _, cache = model.run_with_cache(tokens(), names=["blocks.0.hook_resid_post"])
    assert list(cache) == ["blocks.0.hook_resid_post"]
    _, cache = model.run_with_cache(tokens(), names=lambda n: n.endswith("hook_pattern"))
    assert sorted(cache) == ["blocks.0.attn.hook_pattern", "blocks.1.attn.hook_pattern"]
    with pytest.raises(KeyError, match="unknown hook point"):
        model.run_with_cache(tokens(), names=["blocks.9.hook_resid_post"])


def test_hooks_are_scoped_and_can_ablate():
    model = GPT(CFG)
    x = tokens()
    clean = model(x)
    zero = lambda act, hook: torch.zeros_like(act)  # noqa: E731
    with model.hooks([("blocks.0.hook_attn_out", zero)]):
        ablated = model(x)
    assert not torch.allclose(clean, ablated)
    assert all(not p.is_hooked for p in model.hook_points.values())
    torch.testing.assert_close(model(x), clean)
    with pytest.raises(RuntimeError):
        with model.hooks([("blocks.0.hook_attn_out", zero)]):
            raise RuntimeError("boom")
    assert all(not p.is_hooked for p in model.hook_points.values())


def test_pattern_hook_path_matches_fused_attention():
    model = GPT(CFG)
    x = tokens()
    with model.hooks([("blocks.0.attn.hook_pattern", lambda a, h: None)]):
        explicit = model(x)
    torch.testing.assert_close(explicit, model(x), rtol=1e-5, atol=1e-5)


def test_kv_cache_generation_equals_naive_greedy():
    model = GPT(CFG)
    prompt = tokens(batch=4, length=5)
    fast = model.generate(prompt, 8)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(fast, seq)


def test_context_overflow_is_refused():
    with pytest.raises(ValueError, match="n_ctx"):
        GPT(CFG)(tokens(length=17))


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(d_model=30, n_heads=4)


def test_ragged_prompts_generate_like_each_row_alone():
    model = GPT(CFG)
    prompts = tokens(batch=3, length=6)
    lengths = torch.tensor([6, 3, 4])
    together = model.generate(prompts, 5, prompt_lengths=lengths)
    for row in range(3):
        n = int(lengths[row])
        alone = model.generate(prompts[row : row + 1, :n], 6 + 5 - n)
        assert torch.equal(together[row], alone[0])


def test_sampled_generation_follows_its_generator():
    model = GPT(CFG)
    prompt = tokens(batch=8, length=4)
    draw = lambda seed: model.generate(prompt, 6, sample=True, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(1), draw(1)) and not torch.equal(draw(1), draw(2))
    assert torch.equal(draw(1)[:, :4], prompt)
