"""Floating-point operations of a caplab GPT's forward pass and training step, counted from its shape.

Conventions (those of `torch.utils.flop_counter`): a matrix product of
(N x k) by (k x m) costs 2 N k m; its backward costs the same again for the
input gradient and again for the weight gradient, and the weight gradient is
skipped for a weight that does not require a gradient (a frozen module).
Counted: every linear layer (attention qkv and out, MLP in and out, the
unembedding) and attention itself (q k^T and pattern x v: 4 B T^2 d forward,
twice that backward, the full square as `flop_counter` counts it even under
a causal mask). Not counted: embeddings (lookups), norms, softmax,
activations and the optimizer, all O(B T d) and small beside the products.

`torch.utils.flop_counter.FlopCounterMode` counts the linear layers too, and
agrees with `linear_flops` exactly (tested); on CPU it has no formula for the
fused attention kernel, so the attention term is this module's alone.
"""

from __future__ import annotations

from typing import Mapping

from caplab.models.gpt import GPTConfig


def linear_shapes(cfg: GPTConfig) -> dict[str, tuple[int, int]]:
    """Weight name -> (in, out) of every linear map of the forward pass (the unembedding included)."""
    d, dm = cfg.d_model, cfg.d_mlp
    shapes = {}
    for i in range(cfg.n_layers):
        shapes[f"blocks.{i}.attn.qkv.weight"] = (d, 3 * d)
        shapes[f"blocks.{i}.attn.out.weight"] = (d, d)
        shapes[f"blocks.{i}.mlp.fc_in.weight"] = (d, dm)
        shapes[f"blocks.{i}.mlp.fc_out.weight"] = (dm, d)
    shapes["embed.weight" if cfg.tied_embeddings else "unembed.weight"] = (d, cfg.d_vocab)
    return shapes


def linear_flops(cfg: GPTConfig, batch: int, seq_len: int, backward: bool = False,
                 frozen: Mapping[str, float] = {}) -> int:
    """FLOPs of the linear layers: forward, or forward + backward with `frozen` weights (name -> frozen
    fraction of the weight, 1.0 for a whole frozen tensor, a head's share for a frozen head) skipping
    that part of their weight gradient."""
    tokens = batch * seq_len
    total = 0
    for name, (fan_in, fan_out) in linear_shapes(cfg).items():
        product = 2 * tokens * fan_in * fan_out
        total += product
        if backward:
            total += product  # gradient of the input
            total += round(product * (1.0 - frozen.get(name, 0.0)))  # gradient of the weight
    return total


def attention_flops(cfg: GPTConfig, batch: int, seq_len: int, backward: bool = False) -> int:
    forward = cfg.n_layers * 4 * batch * seq_len * seq_len * cfg.d_model
    return forward * (3 if backward else 1)


def training_step_flops(cfg: GPTConfig, batch: int, seq_len: int, frozen: Mapping[str, float] = {}) -> int:
    """Forward + backward FLOPs of one training step on (batch, seq_len) tokens."""
    return linear_flops(cfg, batch, seq_len, True, frozen) + attention_flops(cfg, batch, seq_len, True)


def model_step_flops(model, batch: int, task, frozen: Mapping[str, float] = {}) -> "int | None":
    """Training FLOPs of one step of `model` on `batch` samples of `task`, or None for a model that cannot count them.

    A model with a `training_step_flops(batch, frozen)` method (the image models) counts its own; a caplab
    GPT is counted from its shape here.
    """
    if hasattr(model, "training_step_flops"):
        return model.training_step_flops(batch, frozen)
    shape = getattr(model, "cfg", None)
    if isinstance(shape, GPTConfig):
        return training_step_flops(shape, batch, task.seq_len, frozen)
    return None
