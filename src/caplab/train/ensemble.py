"""Seed ensembles: N same-shape models trained at once, in the same kernels, each an ordinary run.

Each member keeps everything a separate run has: its own seed (so its own
initial weights and data stream), its own task (a different world or corpus
if asked), its own optimizer state, metrics, checkpoints and report. Only
the arithmetic is shared: the members' weights (and buffers, e.g. BatchNorm
statistics) are stacked along a leading ensemble axis and computed in one
forward (`caplab.models.ensemble`: batched matrix products for the standard
GPT, `vmap` over any other model kind: MLP, VGG, ResNet), each member's
loss is its own task's objective, and one fused AdamW steps all members
(AdamW is elementwise, so this is N AdamWs). Gradient clipping is per
member. The result matches N separate runs up to floating-point rounding
(tested for every model kind).

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
from torch import nn

from caplab.errors import ConfigError, TrainingDiverged
from caplab.models.ensemble import ensemble_model
from caplab.train.trainer import Schedule, Trainer


def check_ensemble(experiment) -> None:
    """Raise ConfigError for settings ensembles do not support (`experiment`: an ExperimentConfig)."""
    if experiment.mat.every or experiment.diagnostics.spectral_every or experiment.diagnostics.signal_every:
        raise ConfigError("train.ensemble does not combine with mat.every or diagnostics")
    _check_shape(experiment.train)


def _check_shape(train_cfg) -> None:
    if train_cfg.optimizer not in ("adamw", "sgd"):
        raise ConfigError(f"train.ensemble supports train.optimizer=adamw or sgd, not {train_cfg.optimizer!r}")
    if train_cfg.data_streams > 1:
        raise ConfigError("train.ensemble does not combine with train.data_streams > 1")
    if train_cfg.compile:
        raise ConfigError("train.ensemble does not combine with train.compile")
    if train_cfg.stop_at is not None or train_cfg.max_flops is not None:  # members would stop at different steps
        raise ConfigError("train.ensemble does not combine with train.stop_at or train.max_flops")


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
        _check_shape(first.cfg)
        if len({m.step for m in members}) != 1:
            raise ValueError("ensemble members must be at the same step")
        self.model = ensemble_model([m.model for m in members]).to(self.device)
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
        inputs = torch.stack([b.inputs for b in batches])  # (N, batch, ...)
        with self.members[0].autocast():
            outputs = self.model(inputs)
        losses = torch.stack([m.task.loss(outputs[i], batches[i]) for i, m in enumerate(self.members)])  # (N,)
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
        norms = torch.stack([g.reshape(len(g), -1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()  # (N,); 0-d params too
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
