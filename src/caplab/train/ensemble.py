"""Seed ensembles: N same-shape GPTs trained at once, in the same kernels, each an ordinary run.

Each member keeps everything a separate run has: its own seed (so its own
initial weights and data stream), its own task (a different world or corpus
if asked), its own optimizer state, metrics, checkpoints and report. Only
the arithmetic is shared: the members' weights are stacked along a leading
ensemble axis, linear layers are batched matrix products (`bmm`), attention
and the norms fold the ensemble into the batch, and one fused AdamW steps
all members (AdamW is elementwise, so this is N AdamWs). Gradient clipping
is per member. The result matches N separate runs up to floating-point
rounding (tested).

Plain `torch.func.vmap` over the GPT is slower than this on CPU at the
widths used here: `scaled_dot_product_attention` has no batching rule there
and falls back to a Python loop.

For evaluation and checkpoints the stacked weights and optimizer state are
copied back into each member's own `Trainer`, which then evaluates, logs and
saves exactly as a single run does; a member checkpoint is an ordinary
checkpoint, so `caplab resume RUN` continues any member alone.

A member whose loss or weights stop being finite drops out alone (its run
fails, its last good checkpoint is kept; `failed` says why) while the others
train on: a divergent learning rate in one member is a result, not a reason
to lose the rest. Members are independent in every kernel, so a dropped
member's numbers cannot reach the others; its gradients are zeroed.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from caplab.errors import ConfigError, TrainingDiverged
from caplab.models.gpt import GPT, GPTConfig
from caplab.train.trainer import Schedule, Trainer


def check_ensemble(experiment) -> None:
    """Raise ConfigError for settings ensembles do not support (`experiment`: an ExperimentConfig)."""
    if experiment.mat.every or experiment.diagnostics.spectral_every or experiment.diagnostics.signal_every:
        raise ConfigError("train.ensemble does not combine with mat.every or diagnostics")
    _check_shape(experiment.model, experiment.train)


def _check_shape(cfg: GPTConfig, train_cfg) -> None:
    if cfg.normalization_type != "LN" or cfg.attention_dir != "causal" or not cfg.tied_embeddings:
        raise ConfigError("train.ensemble needs the standard GPT (LayerNorm, causal attention, tied embeddings)")
    if train_cfg.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"train.ensemble supports train.optimizer=adamw or sgd, not {train_cfg.optimizer!r}")
    if train_cfg.compile:
        raise ConfigError("train.ensemble does not combine with train.compile")
    if train_cfg.stop_at is not None or train_cfg.max_flops is not None:  # members would stop at different steps
        raise ConfigError("train.ensemble does not combine with train.stop_at or train.max_flops")


class EnsembleGPT(nn.Module):
    """N GPTs of one shape with stacked weights: (N, batch, pos) tokens -> (N, batch, pos, vocab) logits."""

    def __init__(self, models: list[GPT]) -> None:
        super().__init__()
        self.cfg, self.n = models[0].cfg, len(models)
        self.names = [name for name, _ in models[0].named_parameters()]
        self.weights = nn.ParameterDict({
            _key(name): nn.Parameter(torch.stack([dict(m.named_parameters())[name].detach() for m in models]))
            for name in self.names})
        self.act = F.gelu if self.cfg.act_fn == "gelu" else F.relu

    def parameter(self, name: str) -> nn.Parameter:
        return self.weights[_key(name)]

    def member_state(self, index: int) -> dict[str, torch.Tensor]:
        """Member `index`'s weights, named as in a GPT's state dict."""
        return {name: self.parameter(name)[index].detach().clone() for name in self.names}

    def load_members(self, states: list[dict[str, torch.Tensor]]) -> None:
        with torch.no_grad():
            for name in self.names:
                self.parameter(name).copy_(torch.stack([s[name] for s in states]))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (N, rows, in) through each member's Linear `name` -> (N, rows, out)."""
        out = torch.bmm(x, self.parameter(f"{name}.weight").transpose(1, 2))
        return out + self.parameter(f"{name}.bias")[:, None, :] if self.cfg.bias else out

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.parameter(f"{name}.weight")[:, None, :] + self.parameter(f"{name}.bias")[:, None, :]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        N, B, T = tokens.shape
        cfg = self.cfg
        nh, hs, d = cfg.n_heads, cfg.d_head, cfg.d_model
        embed = self.parameter("embed.weight")  # (N, V, d)
        rows = tokens + (torch.arange(N, device=tokens.device) * cfg.d_vocab)[:, None, None]
        x = F.embedding(rows, embed.reshape(N * cfg.d_vocab, d)) + self.parameter("pos_embed.weight")[:, None, :T]  # (N, B, T, d)
        x = x.reshape(N, B * T, d)
        for i in range(cfg.n_layers):
            block = f"blocks.{i}"
            qkv = self._linear(self._norm(x, f"{block}.ln1"), f"{block}.attn.qkv")  # (N, B*T, 3d)
            q, k, v = qkv.view(N * B, T, 3, nh, hs).permute(2, 0, 3, 1, 4)  # each (N*B, nh, T, hs)
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2)  # (N*B, T, nh, hs)
            x = x + self._linear(z.reshape(N, B * T, d), f"{block}.attn.out")
            hidden = self.act(self._linear(self._norm(x, f"{block}.ln2"), f"{block}.mlp.fc_in"))
            x = x + self._linear(hidden, f"{block}.mlp.fc_out")
        logits = torch.bmm(self._norm(x, "ln_final"), embed.transpose(1, 2))  # (N, B*T, V)
        return logits.view(N, B, T, cfg.d_vocab)


def _key(name: str) -> str:
    return name.replace(".", "__")


class EnsembleTrainer:
    """Train the members' models together; each member's `Trainer` evaluates, logs and checkpoints its own run.

    Arguments:
        members: one Trainer per run, all with the same TrainConfig except the
            seed and the same model shape, all at the same step.
    """

    def __init__(self, members: list[Trainer]) -> None:
        self.members = members
        first = members[0]
        self.cfg, self.device = first.cfg, first.device
        if any(m.plugins for m in members):
            raise ConfigError("train.ensemble does not combine with mat.every or diagnostics")
        _check_shape(first.model.cfg, first.cfg)
        if len({m.step for m in members}) != 1:
            raise ValueError("ensemble members must be at the same step")
        self.model = EnsembleGPT([m.model for m in members]).to(self.device)
        # the stacked optimizer lists parameters in the members' own order, so state index i is the same tensor
        self.order = _optimizer_order(first)
        groups = [{"params": [self.model.parameter(n) for n in names], "weight_decay": wd} for names, wd in self.order]
        c = self.cfg
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=c.lr, momentum=0.9 if c.momentum is None else c.momentum)
        else:
            fused = {"fused": True} if first.optimizer.defaults.get("fused") else {}  # as the members' own AdamW
            self.optimizer = torch.optim.AdamW(groups, lr=c.lr, betas=(c.beta1, c.beta2), **fused)
        if any(m.optimizer.state for m in members):  # restored members: stack their optimizer state
            self._load_optimizer_state()
        self.failed: dict[int, str] = {}  # member index -> why it dropped out

    def _alive(self) -> list[int]:
        return [i for i in range(len(self.members)) if i not in self.failed]

    def _drop(self, index: int, message: str) -> None:
        self.failed[index] = message
        if len(self.failed) == len(self.members):
            raise TrainingDiverged(f"every ensemble member diverged; member 0: {self.failed[0]}")

    @property
    def step(self) -> int:
        return self.members[0].step

    # ------------------------------------------------------------ members <-> stacked state

    def _stacked_params(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _load_optimizer_state(self) -> None:
        member_states = [m.optimizer.state_dict()["state"] for m in self.members]
        for i, param in enumerate(self._stacked_params()):
            state = {}
            for key, value in member_states[0][i].items():
                if torch.is_tensor(value) and value.dim() > 0:
                    state[key] = torch.stack([s[i][key] for s in member_states]).to(self.device)
                else:
                    state[key] = value.clone() if torch.is_tensor(value) else value
            self.optimizer.state[param] = state

    def sync_members(self, with_optimizer: bool) -> None:
        """Copy each live member's weights (and optimizer state) out of the stacked ones."""
        for index in self._alive():
            member = self.members[index]
            member.model.load_state_dict(self.model.member_state(index))
            if not with_optimizer:
                continue
            state = {}
            for i, param in enumerate(self._stacked_params()):
                stacked = self.optimizer.state.get(param, {})
                state[i] = {k: (v[index].clone() if torch.is_tensor(v) and v.dim() > 0 else (v.clone() if torch.is_tensor(v) else v))
                            for k, v in stacked.items()}
            groups = member.optimizer.state_dict()["param_groups"]
            for group, ours in zip(groups, self.optimizer.param_groups):
                group["lr"] = ours["lr"]
            member.optimizer.load_state_dict({"state": state, "param_groups": groups})

    # ------------------------------------------------------------ steps

    def train_step(self) -> list[float]:
        lr = self.members[0].lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        batches = []
        for member in self.members:
            batch = member.task.sample(self.cfg.batch_size, member.generator, self.device)
            if hasattr(member.task, "observe"):
                member.task.observe(batch)
            batches.append(batch)
        tokens = torch.stack([b.tokens for b in batches])  # (N, B, T)
        targets = torch.stack([b.targets for b in batches])
        mask = torch.stack([b.loss_mask for b in batches])
        with self.members[0].autocast():
            logits = self.model(tokens)
        per_token = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), reduction="none").view_as(mask)
        losses = (per_token * mask).flatten(1).sum(1) / mask.flatten(1).sum(1)  # (N,) each member's mean loss
        values = losses.tolist()
        for index, value in enumerate(values):
            if index not in self.failed and (value != value or value in (float("inf"), float("-inf"))):
                self._drop(index, f"loss became {value} at step {self.step}; training stopped, the last good checkpoint is kept")
        alive = torch.zeros(len(values), dtype=torch.bool, device=losses.device)
        alive[self._alive()] = True
        self.optimizer.zero_grad(set_to_none=True)
        torch.where(alive, losses, 0.0).sum().backward()  # members are independent: each gets its own loss's gradient
        if self.failed:  # 0 x inf in a dropped member's backward is nan: its gradients are set to zero
            for p in self.model.parameters():
                if p.grad is not None:
                    p.grad[~alive] = 0
        if self.cfg.grad_clip > 0:
            self._clip_per_member(self.cfg.grad_clip)
        self.optimizer.step()
        for member in self.members:
            if member.flops_per_step is not None:
                member.flops_spent += member.flops_this_step()
            member.step += 1
        return values

    def _clip_per_member(self, max_norm: float) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        norms = torch.stack([g.flatten(1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (N,)
        scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))

    def fit(self) -> list[Optional[dict]]:
        """Train every member to `cfg.steps`; return each member's final metrics record (None: it dropped out)."""
        c = self.cfg
        evals = Schedule(c.steps, c.eval_every, c.log_spaced)
        checkpoints = Schedule(c.steps, c.checkpoint_every, c.log_spaced)
        resumed_at = self.step
        restored = self.members[0].restored
        self.model.train()
        bar = self.members[0]._progress()
        start, last = time.perf_counter(), [None] * len(self.members)
        try:
            while True:
                first_of_restored = restored and self.step == resumed_at
                if not first_of_restored and (self.step in evals or self.step in checkpoints):
                    self.sync_members(with_optimizer=self.step in checkpoints)
                if self.step in evals and not first_of_restored:
                    for index in self._alive():
                        self.members[index]._eval_and_log(last[index], start)
                if self.step in checkpoints and not first_of_restored:
                    for index in self._alive():
                        try:
                            self.members[index]._checkpoint()
                        except TrainingDiverged as exc:  # weights no longer finite: nothing saved, the member drops out
                            self._drop(index, str(exc))
                if self.step >= c.steps:
                    break
                last = self.train_step()
                bar.update(1)
        finally:
            bar.close()
        return [None if i in self.failed else m.last_record for i, m in enumerate(self.members)]


def _optimizer_order(trainer: Trainer) -> list[tuple[list[str], float]]:
    """The member optimizer's groups as (parameter names, weight decay), in its own order."""
    name_of = {id(p): n for n, p in trainer.model.named_parameters()}
    return [([name_of[id(p)] for p in group["params"]], group["weight_decay"]) for group in trainer.optimizer.param_groups]


def ensemble_fit(members: list[Trainer], max_size: Optional[int] = None) -> list[dict]:
    """Train `members` in ensembles of at most `max_size` (all at once by default)."""
    size = max_size or len(members)
    records = []
    for start in range(0, len(members), size):
        records += EnsembleTrainer(members[start : start + size]).fit()
    return records
