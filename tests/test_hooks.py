"""TransformerLens-style hooks: name filters, backward hooks, and the attention scores and per-head results."""

import torch

from caplab import GPT, GPTConfig


def _model():
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layers=2, n_heads=2, d_model=16, d_vocab=11, n_ctx=8, bias=True)).eval()


def test_a_name_filter_hooks_every_matching_point():
    model, tokens = _model(), torch.randint(11, (3, 8))
    seen = []
    with model.hooks([(lambda name: name.endswith("hook_z"), lambda x, hook: seen.append(hook.name))]):
        model(tokens)
    assert seen == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]
    with model.hooks([(["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"], lambda x, hook: seen.append(hook.name))]):
        model(tokens)
    assert seen[2:] == ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"]
    assert not any(p.is_hooked for p in model.hook_points.values())  # nothing outlives the block


def test_backward_hooks_see_the_activation_gradient_and_can_replace_it():
    model, tokens = _model(), torch.randint(11, (3, 8))
    name = "blocks.0.hook_resid_mid"
    logits, cache = model.run_with_cache(tokens, names=[name], detach=False)
    (expected,) = torch.autograd.grad(logits.square().sum(), cache[name])
    grads = []
    with model.hooks(bwd_hooks=[(name, lambda g, hook: grads.append(g.clone()))]):
        model(tokens).square().sum().backward()
    assert torch.allclose(grads[0], expected, atol=1e-5)
    model.zero_grad()
    with model.hooks(bwd_hooks=[(name, lambda g, hook: torch.zeros_like(g))]):  # block the gradient here
        model(tokens).square().sum().backward()
    assert model.embed.weight.grad is not None and model.blocks[0].attn.qkv.weight.grad.abs().sum() == 0


def test_attention_scores_and_per_head_results_agree_with_the_pattern_and_the_output():
    model, tokens = _model(), torch.randint(11, (3, 8))
    plain = model(tokens)
    names = ["blocks.1.attn.hook_attn_scores", "blocks.1.attn.hook_pattern", "blocks.1.attn.hook_result", "blocks.1.hook_attn_out"]
    logits, cache = model.run_with_cache(tokens, names=names)
    assert torch.allclose(logits, plain, atol=1e-5)  # hooking changes nothing
    scores = cache["blocks.1.attn.hook_attn_scores"]
    assert scores.shape == (3, 2, 8, 8) and torch.isinf(scores[0, 0, 0, 1])  # masked before the softmax
    assert torch.allclose(scores.softmax(-1), cache["blocks.1.attn.hook_pattern"], atol=1e-6)
    result = cache["blocks.1.attn.hook_result"]  # (batch, pos, head, d_model)
    assert result.shape == (3, 8, 2, 16)
    bias = model.blocks[1].attn.out.bias
    assert torch.allclose(result.sum(2) + bias, cache["blocks.1.hook_attn_out"], atol=1e-5)
