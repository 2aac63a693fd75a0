import torch

from caplab import GPT, GPTConfig
from caplab.analysis.probes import attention_patterns, probe_accuracy_by_layer, residual_stream

CFG = GPTConfig(n_layers=2, n_heads=2, d_model=32, n_ctx=8, d_vocab=8)


def data(n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(8, (n, 8), generator=g)
    positions = torch.randint(8, (n,), generator=g)
    return tokens, positions


def test_residual_stream_matches_the_cache():
    torch.manual_seed(0)
    model = GPT(CFG)
    tokens, positions = data(16)
    stream = residual_stream(model, tokens, positions)
    assert stream.shape == (3, 16, 32)
    _, cache = model.run_with_cache(tokens)  # every hook, so attention takes the explicit path: equal up to rounding
    rows = torch.arange(16)
    assert torch.equal(stream[0], cache["blocks.0.hook_resid_pre"][rows, positions])
    torch.testing.assert_close(stream[2], cache["blocks.1.hook_resid_post"][rows, positions])
    embedded = model.embed.weight[tokens[rows, positions]] + model.pos_embed.weight[positions]
    torch.testing.assert_close(stream[0], embedded)


def test_probe_decodes_a_planted_variable_and_not_noise():
    torch.manual_seed(0)
    model = GPT(CFG)
    tokens, positions = data()
    token_here = tokens[torch.arange(len(tokens)), positions]  # linearly present in the embeddings by construction
    parity = token_here % 2
    accuracy = probe_accuracy_by_layer(model, tokens, positions, parity, n_classes=2)
    assert len(accuracy) == 3 and accuracy[0] > 0.95
    noise = torch.randint(2, (len(tokens),), generator=torch.Generator().manual_seed(9))
    chance = probe_accuracy_by_layer(model, tokens, positions, noise, n_classes=2)
    assert max(chance) < 0.65  # a label independent of the input is not decodable on held-out rows


def test_attention_patterns_are_causal_distributions():
    torch.manual_seed(0)
    model = GPT(CFG)
    tokens, _ = data(4)
    patterns = attention_patterns(model, tokens, [(0, 1), (1, 0)])
    assert patterns.shape == (2, 4, 8, 8)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 4, 8))
    assert (patterns.triu(1) == 0).all()
    _, cache = model.run_with_cache(tokens, names=["blocks.1.attn.hook_pattern"])
    # equal up to float rounding: hooking layer 0's pattern computes its attention explicitly rather than by SDPA
    torch.testing.assert_close(patterns[1], cache["blocks.1.attn.hook_pattern"][:, 0], rtol=1e-5, atol=1e-6)


def test_attention_figure_is_written(tmp_path):
    from caplab.studies.finetune_report import attention_figure

    torch.manual_seed(0)
    model = GPT(CFG)
    tokens, _ = data(1)
    patterns = attention_patterns(model, tokens, [(0, 0), (1, 1)])[:, 0]
    path = attention_figure(patterns, [(0, 0), (1, 1)], [str(t) for t in tokens[0].tolist()], tmp_path / "attention.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
