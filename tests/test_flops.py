"""FLOP accounting against torch.utils.flop_counter on real forward and backward passes."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from caplab import GPT, GPTConfig
from caplab.train.flops import attention_flops, linear_flops, training_step_flops


def measured(model, tokens, backward):
    with FlopCounterMode(display=False) as counter:
        logits = model(tokens)
        if backward:
            logits.logsumexp(-1).mean().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("tied", [True, False])
def test_linear_flops_match_the_flop_counter(tied):
    cfg = GPTConfig(n_layers=2, n_heads=2, d_model=32, d_mlp=96, d_vocab=20, n_ctx=16, tied_embeddings=tied)
    model = GPT(cfg)
    tokens = torch.randint(20, (3, 16))
    assert measured(model, tokens, False) == linear_flops(cfg, 3, 16)
    assert measured(model, tokens, True) == linear_flops(cfg, 3, 16, backward=True)
    # a frozen weight skips its weight gradient, and only that
    frozen = {"blocks.0.mlp.fc_in.weight": 1.0, "blocks.1.attn.qkv.weight": 1.0}
    for name in frozen:
        model.get_parameter(name).requires_grad_(False)
    assert measured(model, tokens, True) == linear_flops(cfg, 3, 16, backward=True, frozen=frozen)


def test_closed_forms():
    cfg = GPTConfig(n_layers=1, n_heads=1, d_model=4, d_mlp=8, d_vocab=5, n_ctx=3)
    # qkv 4x12, out 4x4, fc_in 4x8, fc_out 8x4, unembed 4x5: 48 + 16 + 32 + 32 + 20 = 148 multiply-adds per token
    assert linear_flops(cfg, 2, 3) == 2 * 6 * 148
    assert attention_flops(cfg, 2, 3) == 4 * 2 * 9 * 4
    assert training_step_flops(cfg, 2, 3) == 3 * 2 * 6 * 148 + 3 * 4 * 2 * 9 * 4
    half = training_step_flops(cfg, 2, 3, {"blocks.0.attn.qkv.weight": 0.5})
    assert training_step_flops(cfg, 2, 3) - half == 2 * 6 * 48 // 2
