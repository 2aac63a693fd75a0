"""A small hooked GPT: decoder-only, pre-LayerNorm, learned positions, tied embeddings.

Four config fields describe compiled (Tracr-style) models instead: no
normalisation, bidirectional attention, ReLU MLPs and a separate unembedding
(`caplab.rasp_compiler` builds such models).

Readable top to bottom. Hook points carry TransformerLens-canonical names so
caches, probes and ablations line up with the tools of the field:

    hook_embed, hook_pos_embed
    blocks.{i}.hook_resid_pre / hook_resid_mid / hook_resid_post
    blocks.{i}.attn.hook_q / hook_k / hook_v   (batch, pos, head, d_head)
    blocks.{i}.attn.hook_attn_scores          (batch, head, query_pos, key_pos)  scaled, masked, before the softmax
    blocks.{i}.attn.hook_pattern              (batch, head, query_pos, key_pos)
    blocks.{i}.attn.hook_result               (batch, pos, head, d_model)  each head's write to the stream (no bias)
    blocks.{i}.attn.hook_z                    (batch, pos, head, d_head)
    blocks.{i}.hook_attn_out / hook_mlp_out   (batch, pos, d_model)
    blocks.{i}.mlp.hook_pre / hook_post       (batch, pos, d_mlp)
    ln_final.hook_normalized                  (batch, pos, d_model)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from caplab.models.hooks import HookedModule, HookPoint


@dataclass
class GPTConfig:
    """Shape of a GPT. Field names follow TransformerLens' HookedTransformerConfig."""

    n_layers: int = 2
    n_heads: int = 2
    d_model: int = 128
    d_mlp: Optional[int] = None  # None: 4 * d_model
    n_ctx: int = 64
    d_vocab: int = 64
    bias: bool = False  # biases in the linear layers (LayerNorms always have them)
    normalization_type: Literal["LN", "none"] = "LN"  # none: compiled programs (residual values are exact)
    attention_dir: Literal["causal", "bidirectional"] = "causal"
    act_fn: Literal["gelu", "relu"] = "gelu"
    tied_embeddings: bool = True  # False: a separate `unembed` matrix (compiled programs read outputs from their own space)

    def __post_init__(self) -> None:
        if self.d_mlp is None:
            self.d_mlp = 4 * self.d_model
        for name in ("n_layers", "n_heads", "d_model", "d_mlp", "n_ctx", "d_vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Preallocated keys and values of every layer, for incremental decoding."""

    def __init__(self, cfg: GPTConfig, batch_size: int, device, dtype) -> None:
        shape = (cfg.n_layers, batch_size, cfg.n_heads, cfg.n_ctx, cfg.d_head)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0  # positions already stored


class LayerNorm(nn.Module):
    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(F.layer_norm(x, x.shape[-1:], self.weight, self.bias, 1e-5))


class NoNorm(nn.Module):
    """The identity where a LayerNorm would be (normalization_type "none"); keeps the hook name."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_normalized = HookPoint()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(x)


def make_norm(cfg: GPTConfig) -> nn.Module:
    return LayerNorm(cfg.d_model) if cfg.normalization_type == "LN" else NoNorm()


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.cfg, self.layer = cfg, layer
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.out = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_z, self.hook_result = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, hs = self.cfg.n_heads, self.cfg.d_head
        q, k, v = self.qkv(x).view(B, T, 3, nh, hs).unbind(2)  # each (B, T, nh, hs)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)

        past = 0
        causal = self.cfg.attention_dir == "causal"
        if cache is not None:
            if not causal:
                raise ValueError("a KV cache needs causal attention (this model attends in both directions)")
            past = cache.length
            cache.keys[self.layer, :, :, past : past + T] = k
            cache.values[self.layer, :, :, past : past + T] = v
            k = cache.keys[self.layer, :, :, : past + T]  # (B, nh, past+T, hs)
            v = cache.values[self.layer, :, :, : past + T]

        if self.hook_pattern.is_hooked or self.hook_attn_scores.is_hooked:
            # explicit attention only when someone wants to see (or edit) the scores or the pattern
            scores = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, past+T)
            if causal:
                scores = scores.masked_fill(~_causal_mask(T, past, x.device), float("-inf"))
            pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(-1))
            z = pattern @ v  # (B, nh, T, hs)
        elif past == 0:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        elif T == 1:
            z = F.scaled_dot_product_attention(q, k, v)  # one new query sees everything
        else:
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=_causal_mask(T, past, x.device))

        z = self.hook_z(z.transpose(1, 2))  # (B, T, nh, hs)
        if self.hook_result.is_hooked:  # per-head outputs only when asked: (B, T, nh, d_model), summed below
            w_out = self.out.weight.view(-1, nh, hs)  # (d_model, nh, hs)
            result = self.hook_result(torch.einsum("btnh,dnh->btnd", z, w_out))
            out = result.sum(2)
            return out + self.out.bias if self.out.bias is not None else out
        return self.out(z.reshape(B, T, nh * hs))


def _causal_mask(T: int, past: int, device) -> torch.Tensor:
    """(T, past+T) boolean mask: query i (at position past+i) sees keys <= past+i."""
    query_pos = torch.arange(past, past + T, device=device)[:, None]
    key_pos = torch.arange(past + T, device=device)[None, :]
    return key_pos <= query_pos


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.fc_out = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()
        self.act = F.gelu if cfg.act_fn == "gelu" else F.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.hook_post(self.act(self.hook_pre(self.fc_in(x)))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln1, self.attn = make_norm(cfg), Attention(cfg, layer)
        self.ln2, self.mlp = make_norm(cfg), MLP(cfg)
        self.hook_resid_pre, self.hook_resid_mid, self.hook_resid_post = HookPoint(), HookPoint(), HookPoint()
        self.hook_attn_out, self.hook_mlp_out = HookPoint(), HookPoint()

    def forward(self, x: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(self.ln1(x), cache)))
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x))))


class GPT(HookedModule):
    """Decoder-only transformer. `model(tokens)` maps (batch, pos) ids to (batch, pos, d_vocab) logits."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)  # also the unembedding (tied)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.hook_embed, self.hook_pos_embed = HookPoint(), HookPoint()
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        if not cfg.tied_embeddings:
            self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab, bias=False)
        self.apply(self._init_weights)
        for name, param in self.named_parameters():
            if name.endswith(("attn.out.weight", "mlp.fc_out.weight")):
                # residual-stream writers shrink with depth (GPT-2 scheme)
                nn.init.normal_(param, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        self.setup_hooks()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not non_embedding:
            return n
        embeddings = self.pos_embed.weight.numel() + self.embed.weight.numel()
        return n - embeddings - (0 if self.cfg.tied_embeddings else self.unembed.weight.numel())

    def forward(self, tokens: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Arguments: tokens (batch, pos); cache for incremental decoding. Returns logits (batch, pos, d_vocab)."""
        B, T = tokens.shape
        past = cache.length if cache is not None else 0
        if past + T > self.cfg.n_ctx:
            raise ValueError(f"sequence of length {past + T} exceeds n_ctx={self.cfg.n_ctx}")
        positions = torch.arange(past, past + T, device=tokens.device)
        x = self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(positions))  # (B, T, d)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        unembed = self.embed.weight if self.cfg.tied_embeddings else self.unembed.weight
        return self.ln_final(x) @ unembed.T  # (B, T, d_vocab)

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor,
        max_new_tokens: int,
        prompt_lengths: Optional[torch.Tensor] = None,
        sample: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Greedy or sampled decoding with a KV cache.

        Arguments:
            prompt: (batch, width) token ids.
            max_new_tokens: how many tokens to append after `width`.
            prompt_lengths: (batch,) true prompt lengths when prompts of different
                lengths are right-padded to `width`; every position at or past a
                row's length is generated, so all rows end at the same width.
            sample: draw from the softmax instead of taking the argmax.
            generator: random source for sampling.
        Returns:
            (batch, width + max_new_tokens) token ids.
        """
        B, T = prompt.shape
        if T + max_new_tokens - 1 > self.cfg.n_ctx:  # the last new token is never fed back
            raise ValueError(f"prompt {T} + {max_new_tokens} new tokens exceeds n_ctx={self.cfg.n_ctx}")
        dtype = self.embed.weight.dtype
        if torch.is_autocast_enabled(prompt.device.type):  # keys/values come out in the autocast dtype
            dtype = torch.get_autocast_dtype(prompt.device.type)
        cache = KVCache(self.cfg, B, prompt.device, dtype)
        out = torch.empty(B, T + max_new_tokens, dtype=prompt.dtype, device=prompt.device)
        out[:, :T] = prompt
        start = T if prompt_lengths is None else int(prompt_lengths.min())
        logits = self(out[:, :start], cache)
        for t in range(start, T + max_new_tokens):
            if sample:
                probs = torch.softmax(logits[:, -1].float(), dim=-1)
                chosen = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            else:
                chosen = logits[:, -1].argmax(-1)
            if prompt_lengths is not None and t < T:  # rows still inside their prompt keep it
                chosen = torch.where(t < prompt_lengths, out[:, t], chosen)
            out[:, t] = chosen
            if t + 1 < T + max_new_tokens:
                logits = self(out[:, t : t + 1], cache)
        return out
