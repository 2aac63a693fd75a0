import pytest
import torch

from caplab import GPT, GPTConfig

CFG = GPTConfig(n_layers=2, n_heads=2, d_model=32, n_ctx=12, d_vocab=20)


def model(bias=False):
    torch.manual_seed(0)
    m = GPT(GPTConfig(**{**CFG.to_dict(), "bias": bias})).eval()
    with torch.no_grad():  # random LayerNorm parameters and biases, so every weight is exercised
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
    return m


@pytest.mark.parametrize("bias", [False, True])
def test_huggingface_twin_computes_the_same_logits(bias):
    pytest.importorskip("transformers")
    from caplab.interop import to_huggingface

    ours = model(bias)
    tokens = torch.randint(20, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = (to_huggingface(ours)(tokens).logits - ours(tokens)).abs().max().item()
    assert difference < 1e-4


def test_transformer_lens_bridge_matches_and_caches():
    pytest.importorskip("transformer_lens")
    from caplab.interop import to_transformer_lens

    ours = model()
    tokens = torch.randint(20, (3, 12), generator=torch.Generator().manual_seed(2))
    bridge = to_transformer_lens(ours)
    with torch.no_grad():
        assert (bridge(tokens) - ours(tokens)).abs().max().item() < 1e-4
        logits, cache = bridge.run_with_cache(tokens)
        _, our_cache = ours.run_with_cache(tokens, names=["blocks.1.hook_resid_post"])
    assert (cache["blocks.1.hook_resid_post"] - our_cache["blocks.1.hook_resid_post"]).abs().max().item() < 1e-4
    compatible = to_transformer_lens(ours, compatibility_mode=True)
    with torch.no_grad():
        ours_logp, theirs_logp = ours(tokens).log_softmax(-1), compatible(tokens).log_softmax(-1)
    assert (ours_logp - theirs_logp).abs().max().item() < 1e-4


def test_the_twin_names_the_tasks_real_special_tokens_and_transformers_stays_quiet():
    pytest.importorskip("transformers")
    import warnings

    from caplab import load_config
    from caplab.interop import to_huggingface

    cfg = load_config("demo")
    task = cfg.make_task()
    torch.manual_seed(0)
    ours = cfg.make_model().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about token ids outside the vocabulary
        twin = to_huggingface(ours, task.special_tokens())
        tokens = task.sample(2, torch.Generator().manual_seed(0), torch.device("cpu")).inputs
        twin.generate(tokens[:, :4], max_new_tokens=2, do_sample=False, pad_token_id=task.special_tokens()["bos"])
    assert twin.config.bos_token_id == task.start and twin.config.eos_token_id is None
    assert to_huggingface(ours).config.bos_token_id is None  # none given: none claimed (not GPT-2's 50256)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        to_huggingface(ours, {"eos": 10_000})


def test_every_language_task_names_special_tokens_inside_its_vocabulary():
    from caplab import make_task

    for name, params in (("compositions", {}), ("pcfg_counting", {}), ("rasp_counting", {}),
                         ("concept_language", {})):
        task = make_task(name, **params)
        ids = task.special_tokens()
        assert set(ids) == {"bos", "eos", "pad"} and any(v is not None for v in ids.values())
        assert all(v is None or 0 <= v < task.vocab_size for v in ids.values())
