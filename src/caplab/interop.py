"""caplab models in the field's tools: HuggingFace GPT-2, and through it TransformerLens.

A caplab GPT is a GPT-2 block stack with exact GELU, LayerNorm eps 1e-5,
tied embeddings and (by default) no biases in its linear layers, so it maps
one to one onto `transformers.GPT2LMHeadModel` with `activation_function =
"gelu"` and zero biases. TransformerLens 4 loads HuggingFace models through
`TransformerBridge` (its `HookedTransformer` was removed in 4.0):
`to_transformer_lens` hands it the GPT-2 twin itself (only the twin's small
config.json is written to a temporary folder, where TransformerLens reads
the architecture; the weights are never saved and reloaded), and
TransformerLens, SAELens and circuitsvis then work on it.

Special tokens: give `to_huggingface` the task's ids
(`task.special_tokens()`: bos, eos, pad; None where the vocabulary has
none) so the twin's config names real tokens of the caplab vocabulary
instead of GPT-2's 50256, which lies outside it.

Needs the `interop` extra (`pip install -e ".[interop]"`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import torch

from caplab.models.gpt import GPT


def to_huggingface(model: GPT, special_tokens: Optional[dict] = None):
    """A `transformers.GPT2LMHeadModel` computing the same logits as `model` (float32, eval mode).

    `special_tokens`: {"bos", "eos", "pad"} token ids of the model's vocabulary (a task's `special_tokens()`);
    unset ones are None in the twin's config.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = model.cfg
    if (cfg.normalization_type, cfg.attention_dir, cfg.act_fn, cfg.tied_embeddings) != ("LN", "causal", "gelu", True):
        raise ValueError("only GPT-2-shaped caplab models (LayerNorm, causal attention, GELU, tied embeddings) "
                         "have a GPT-2 twin; compiled programs do not")
    config = GPT2Config(
        vocab_size=cfg.d_vocab, n_positions=cfg.n_ctx, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
        n_inner=cfg.d_mlp, activation_function="gelu", layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, tie_word_embeddings=True, **_token_ids(special_tokens or {}, cfg.d_vocab),
    )
    hf = GPT2LMHeadModel(config)
    source = {k: v.detach().float() for k, v in model.state_dict().items()}
    target = hf.state_dict()

    def put(name: str, value: torch.Tensor) -> None:
        if target[name].shape != value.shape:
            raise AssertionError(f"{name}: {tuple(value.shape)} does not fit {tuple(target[name].shape)}")
        target[name] = value.clone()

    def linear(prefix: str, hf_prefix: str, width: int) -> None:
        # GPT-2's Conv1D stores (in, out): the transpose of nn.Linear's weight
        put(f"{hf_prefix}.weight", source[f"{prefix}.weight"].T)
        put(f"{hf_prefix}.bias", source.get(f"{prefix}.bias", torch.zeros(width)))

    put("transformer.wte.weight", source["embed.weight"])
    put("transformer.wpe.weight", source["pos_embed.weight"])
    for i in range(cfg.n_layers):
        b, h = f"blocks.{i}", f"transformer.h.{i}"
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            put(f"{h}.{theirs}.weight", source[f"{b}.{ours}.weight"])
            put(f"{h}.{theirs}.bias", source[f"{b}.{ours}.bias"])
        linear(f"{b}.attn.qkv", f"{h}.attn.c_attn", 3 * cfg.d_model)  # rows: q, k, v, each heads x d_head, as in GPT-2
        linear(f"{b}.attn.out", f"{h}.attn.c_proj", cfg.d_model)
        linear(f"{b}.mlp.fc_in", f"{h}.mlp.c_fc", cfg.d_mlp)
        linear(f"{b}.mlp.fc_out", f"{h}.mlp.c_proj", cfg.d_model)
    put("transformer.ln_f.weight", source["ln_final.weight"])
    put("transformer.ln_f.bias", source["ln_final.bias"])
    put("lm_head.weight", source["embed.weight"])
    hf.load_state_dict(target)
    return hf.eval()


def _token_ids(special: dict, vocab: int) -> dict:
    ids = {f"{k}_token_id": special.get(k) for k in ("bos", "eos", "pad")}
    outside = {k: v for k, v in ids.items() if v is not None and not 0 <= v < vocab}
    if outside:
        raise ValueError(f"special token ids outside the vocabulary of {vocab}: {outside}")
    return ids


def to_transformer_lens(model: GPT, compatibility_mode: bool = False, special_tokens: Optional[dict] = None):
    """A TransformerLens `TransformerBridge` of `model` (via its GPT-2 twin).

    With `compatibility_mode=True` the bridge applies TransformerLens' HookedTransformer
    weight processing (folded LayerNorms, centred weights): the log-probabilities stay
    the same, the raw logits shift by a constant per position.
    """
    from transformer_lens.model_bridge import TransformerBridge

    twin = to_huggingface(model, special_tokens)
    with tempfile.TemporaryDirectory() as folder:  # TransformerLens reads the architecture from a config file
        twin.config.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(folder, hf_model=twin)
    if compatibility_mode:
        bridge.enable_compatibility_mode()
    return bridge.eval()


def export_checkpoints(name: str, folder: Path, root: Optional[Path] = None) -> list[Path]:
    """Every checkpoint of run `name` as a HuggingFace model folder, one per step, named as Pythia names its
    revisions: `<folder>/step<N>/` (config.json + model.safetensors, loadable with `from_pretrained`), plus
    `<folder>/revisions.json` listing them with their steps and token counts. Returns the step folders."""
    from caplab.runs.store import RunStore

    store = RunStore.open(name, root)
    cfg = store.experiment_config()
    special = cfg.make_task().special_tokens()
    folder = Path(folder)
    written, revisions = [], []
    for entry in store.manifest()["checkpoints"]:
        model = cfg.make_model()
        tensors, _ = store.load_weights(entry["step"])
        model.load_state_dict(tensors)
        target = folder / f"step{entry['step']}"
        to_huggingface(model.eval(), special).save_pretrained(target)
        written.append(target)
        revisions.append({"revision": target.name, "step": entry["step"], "tokens": entry.get("tokens")})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "revisions.json").write_text(json.dumps({"run": store.run_id, "revisions": revisions}, indent=1))
    return written
