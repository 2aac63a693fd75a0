"""Modular adaptive training (MAT; Shi et al., NeurIPS 2023): train only the modules whose NTK is large.

Modules are the attention heads (a head owns its rows of W_Q, W_K, W_V and its
columns of W_O) and the MLP of each block; every other parameter (embeddings,
norms, biases of the output projection) always trains. Every `mat.every`
steps, from step 0, MAT computes each module's empirical-NTK lambda_max on a
fixed probe batch (`caplab.analysis.ntk`, exact route) and keeps active the
modules a rule selects (`mat.rule`, parameter `mat.alpha` = alpha).

The kernel (`mat.kernel`) is by default that of each probe sequence's
loss, the quantity training moves; `sum` is the kernel of the sum of the
logits, a direction the softmax ignores (the first version's). lambda_max is
divided by the module's parameter count (`mat.lambda_scale: per_parameter`,
the default), so an MLP of 8x a head's parameters is not kept for its size
alone; `raw` compares the eigenvalues as they are.

    mean           lambda_l >= alpha x mean_l lambda_l
    quantile       lambda_l >= the alpha-quantile of the lambdas
    temporal       the change of lambda_l has not settled: |D_l(t) - D_l(t - E)| >= alpha |D_l(E)|,
                   D_l(t) = |lambda_l(t) - lambda_l(0)| (all active until the second estimate)
    random         a random alpha share of the modules, redrawn at every refresh
    random_static  a random alpha share drawn once at step 0 and kept (the control matched in active
                   share to a MAT run; no kernels are estimated or charged)
                   (both random rules: a share of the modules' parameters, i.e. of the weight-gradient
                   FLOPs, with `mat.share=parameters`)
    fixed          every module but `mat.frozen`, from step 0 (the control "freeze what MAT
                   ended up freezing, from the start"; no kernels estimated or charged)

The probe batch is drawn from the training data (`mat.probe_source=train`, the default: a random
subset of a finite corpus), so MAT chooses with nothing the model does not train on; `fresh` draws new
documents (what the first version did, which hands MAT data a finite-corpus run never sees). Every
evaluation logs the active share of modules (`mat_active_fraction`) and of their parameters
(`mat_active_params`); the checkpoint keeps how many steps each module spent frozen (`frozen_steps`).

The paper's exact threshold formula was not retrieved (`shared/papers/training_methods.md`
marks the reconstruction unverified), so the rule is pluggable.

An inactive module gets no update and its optimizer state does not advance:
an MLP's weights stop requiring gradients (so backward skips their weight
gradients), and a head's slices of the shared qkv and out matrices have their
gradients zeroed and their values and optimizer-state slices restored after
the step. (Per-tensor step counters, used by AdamW's bias correction, still
advance.) The FLOP account (`trainer.flops_spent`, logged as `flops`) charges
each step with its frozen weight gradients skipped (a frozen head counts as
its share of qkv and out, as an implementation with per-head weights would
spend) and each estimate with its per-sample forward and backward passes and
the kernel contractions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import torch

from caplab.analysis.ntk import module_kernels, parameter_groups
from caplab.errors import ConfigError
from caplab.train.flops import training_step_flops


def mat_modules(model) -> dict[str, list]:
    """Module name -> parameter slices: every attention head, and each block's MLP (weights and biases)."""
    groups = parameter_groups(model, "head")
    modules = {k: v for k, v in groups.items() if ".head" in k}
    for i in range(model.cfg.n_layers):
        modules[f"blocks.{i}.mlp"] = [*groups.get(f"blocks.{i}.mlp.fc_in", []), *groups.get(f"blocks.{i}.mlp.fc_out", [])]
    return modules


def select_active(rule: str, alpha: float, lambdas: dict[str, float], history: list[dict[str, float]],
                  generator: torch.Generator, sizes: Optional[dict[str, int]] = None) -> list[str]:
    """The modules a rule keeps active, given this estimate and the earlier ones (oldest first).

    `sizes` (parameters per module), for the random rule only: alpha is then a share of the parameters, met
    as closely as a random order of modules allows, not a share of the modules.
    """
    names = list(lambdas)
    values = torch.tensor([lambdas[n] for n in names], dtype=torch.float64)
    if rule == "mean":
        keep = values >= alpha * values.mean()
    elif rule == "quantile":
        keep = values >= torch.quantile(values, alpha)
    elif rule == "random":
        order = torch.randperm(len(names), generator=generator)
        if sizes is None:
            count = max(1, round(alpha * len(names)))
        else:  # the prefix of the random order whose parameter share is nearest alpha
            shares = torch.cumsum(torch.tensor([sizes[names[i]] for i in order.tolist()], dtype=torch.float64), 0)
            shares = shares / shares[-1]
            count = int(torch.argmin((shares - alpha).abs())) + 1
        keep = torch.zeros(len(names), dtype=torch.bool)
        keep[order[:count]] = True
    elif rule == "temporal":
        if len(history) < 2:
            return names
        first, previous = history[0], history[-1]
        second = history[1]
        keep = torch.tensor([
            abs(abs(lambdas[n] - first[n]) - abs(previous[n] - first[n])) >= alpha * abs(second[n] - first[n])
            for n in names])
    else:
        raise ValueError(f"unknown MAT rule {rule!r}; valid: mean, quantile, temporal, random (random_static and fixed "
                         "need no lambdas)")
    return [n for n, k in zip(names, keep.tolist()) if k]


@dataclass
class MATConfig:
    """The `mat:` section of a recipe (old recipes' `train.mat_*` keys are read as these)."""

    every: int = 0  # re-estimate module NTKs every N steps (0: off)
    rule: Literal["mean", "quantile", "temporal", "random", "random_static", "fixed"] = "mean"  # which modules stay active
    alpha: float = 1.0  # mean: tau = alpha x mean lambda; quantile: q; temporal: beta; random(_static): active fraction
    probe: int = 16  # probe batch of the kernel estimates
    kernel: Literal["loss", "sum"] = "loss"  # the NTK of each sample's loss, or of the sum of its logits
    lambda_scale: Literal["per_parameter", "raw"] = "per_parameter"  # lambda_max per parameter of the module, or as is
    frozen: Optional[list[str]] = None  # rule fixed: the modules frozen from step 0 (e.g. those a MAT run ended up freezing)
    share: Literal["modules", "parameters"] = "modules"  # random rules: alpha is a share of modules, or of their parameters
    probe_source: Literal["train", "fresh"] = "train"  # the probe batch: training documents, or fresh ones

    def __post_init__(self) -> None:
        if self.every < 0 or self.probe < 2:
            raise ValueError("mat.every must be non-negative and mat.probe at least 2")


class ModularAdaptiveTraining:
    """A trainer plug-in (`attach`), used when `mat.every > 0` (see module docstring)."""

    name = "mat"  # its state in checkpoints is meta["mat"]

    def __init__(self, trainer, cfg: MATConfig) -> None:
        self.trainer, self.cfg, self.seed = trainer, cfg, trainer.cfg.seed
        model = trainer.model
        self.modules = mat_modules(model)
        generator = torch.Generator(device=trainer.device).manual_seed(self.seed + 20_000)
        # training documents by default: MAT may choose with what it trains on, never with held-out data
        draw = trainer.task.training_probe if self.cfg.probe_source == "train" else trainer.task.held_out
        self.probe = draw(self.cfg.probe, generator, trainer.device)  # never moves a corpus along
        self.active = list(self.modules)
        unknown = [m for m in self.cfg.frozen or [] if m not in self.modules]
        if unknown:
            raise ConfigError(f"mat.frozen names {unknown[0]!r}, not a module; modules: {', '.join(self.modules)}")
        if self.cfg.rule == "fixed" and self.cfg.frozen is None:  # [] is allowed: a matched MAT run froze nothing
            raise ConfigError("mat.rule=fixed needs mat.frozen, the modules to freeze from step 0")
        self.history: list[dict[str, float]] = []  # one {module: lambda_max} per estimate
        self.frozen_steps = dict.fromkeys(self.modules, 0)  # training steps each module spent frozen
        self.steps_counted = 0
        self._saved: list = []
        self.params = dict(model.named_parameters())
        n, seq = self.probe.tokens.shape
        self.sizes = {m: sum(self._slice_size(piece) for piece in pieces) for m, pieces in self.modules.items()}
        module_params = sum(self.sizes.values())
        # per-sample forward + backward of the probe batch, then one n x n contraction per parameter coordinate
        self.estimate_flops = training_step_flops(model.cfg, n, seq) + 2 * n * n * module_params
        for event, fn in (("on_train_start", self._on_start), ("on_step_end", self._on_step_end),
                          ("on_backward_end", self._freeze_head_gradients), ("on_optimizer_step_end", self._restore_heads)):
            trainer.add_callback(event, fn)
        trainer.flops_this_step = self.step_flops
        trainer.add_plugin(self)

    # ------------------------------------------------------------ estimates and selection

    def _on_start(self, trainer) -> None:
        if trainer.step == 0 and not self.history:
            self.refresh()

    def _on_step_end(self, trainer, loss: float) -> None:
        for module in self.modules:  # the step just taken ran with the current active set
            self.frozen_steps[module] += module not in self.active
        self.steps_counted += 1
        if trainer.step % self.cfg.every == 0:
            self.refresh()

    def refresh(self) -> None:
        """Estimate every module's lambda_max, choose the active modules, charge the estimate's FLOPs."""
        rule = self.cfg.rule
        if rule in ("random_static", "fixed"):  # controls: chosen once, without kernels
            if self.history:
                return
            generator = torch.Generator().manual_seed(self.seed * 1_000_003)
            sizes = self.sizes if self.cfg.share == "parameters" else None
            self.active = (select_active("random", self.cfg.alpha, dict.fromkeys(self.modules, 0.0), [], generator, sizes)
                           if rule == "random_static" else [m for m in self.modules if m not in self.cfg.frozen])
            self.history.append({})
            self._apply_requires_grad()
            return
        self.history.append(self.lambdas())
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.trainer.step)
        self.active = select_active(rule, self.cfg.alpha, self.history[-1], self.history[:-1], generator,
                                    self.sizes if self.cfg.share == "parameters" else None)
        self.trainer.flops_spent += self.estimate_flops
        self._apply_requires_grad()

    def lambdas(self) -> dict[str, float]:
        """Each module's lambda_max on the probe batch (per parameter unless `mat.lambda_scale=raw`)."""
        model = self.trainer.model
        was_training = model.training
        model.eval()
        kernels = module_kernels(model, self.probe.tokens, self.modules, output=self.cfg.kernel,
                                 targets=self.probe.targets, loss_mask=self.probe.loss_mask)
        model.train(was_training)
        scale = {m: self.sizes[m] if self.cfg.lambda_scale == "per_parameter" else 1 for m in self.modules}
        return {m: torch.linalg.eigvalsh(k)[-1].item() / scale[m] for m, k in kernels.items()}

    def _apply_requires_grad(self) -> None:
        for module, pieces in self.modules.items():
            if module.endswith(".mlp"):
                for name, *_ in pieces:
                    self.params[name].requires_grad_(module in self.active)

    # ------------------------------------------------------------ frozen heads

    def _inactive_head_pieces(self):
        return [piece for module, pieces in self.modules.items() if ".head" in module and module not in self.active
                for piece in pieces]

    def _freeze_head_gradients(self, trainer) -> None:
        """Zero inactive heads' gradient slices and remember their values and optimizer state."""
        self._saved = []
        state = trainer.optimizer.state
        for name, axis, start, stop in self._inactive_head_pieces():
            param = self.params[name]
            if param.grad is None:
                continue
            view = lambda t: t.narrow(axis, start, stop - start)  # noqa: E731
            view(param.grad).zero_()
            buffers = {k: view(v).clone() for k, v in state.get(param, {}).items() if torch.is_tensor(v) and v.shape == param.shape}
            self._saved.append((param, axis, start, stop, view(param.data).clone(), buffers))

    def _restore_heads(self, trainer) -> None:
        state = trainer.optimizer.state
        for param, axis, start, stop, value, buffers in self._saved:
            param.data.narrow(axis, start, stop - start).copy_(value)
            for key, saved in buffers.items():
                state[param][key].narrow(axis, start, stop - start).copy_(saved)
        self._saved = []

    # ------------------------------------------------------------ accounting, records, state

    def _slice_size(self, piece) -> int:
        name, axis, start, stop = piece
        param = self.params[name]
        return param.numel() if axis is None else param.numel() // param.shape[axis] * (stop - start)

    def step_flops(self) -> int:
        frozen: dict[str, float] = {}
        for module, pieces in self.modules.items():
            if module in self.active:
                continue
            for piece in pieces:
                name = piece[0]
                if self.params[name].dim() == 2:
                    frozen[name] = frozen.get(name, 0.0) + self._slice_size(piece) / self.params[name].numel()
        t = self.trainer
        return training_step_flops(t.model.cfg, t.cfg.batch_size, t.task.seq_len, frozen)

    def record(self) -> dict:
        """What each evaluation logs: the active share and the latest mean lambda_max."""
        out = {"mat_active_fraction": len(self.active) / len(self.modules),
               "mat_active_params": sum(self.sizes[m] for m in self.active) / sum(self.sizes.values())}
        if self.history and self.history[-1]:
            out["mat_lambda_mean"] = sum(self.history[-1].values()) / len(self.history[-1])
        return out

    def state_dict(self) -> dict:
        return {"active": list(self.active), "history": self.history, "frozen_steps": self.frozen_steps,
                "steps_counted": self.steps_counted}

    def load_state_dict(self, state: dict) -> None:
        self.active, self.history = list(state["active"]), [dict(h) for h in state["history"]]
        # checkpoints written before the count existed start it afresh
        self.frozen_steps = {m: int(state.get("frozen_steps", {}).get(m, 0)) for m in self.modules}
        self.steps_counted = int(state.get("steps_counted", 0))
        self._apply_requires_grad()
