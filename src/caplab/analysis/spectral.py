"""Spectra of gradient (or momentum) matrices during training: the spike-tail picture of Spectra.

For a matrix G with singular values s_1 >= s_2 >= ... and k top directions:

    energy_share   sum_{i<=k} s_i^2 / sum_i s_i^2   (how much the spike dominates)
    gap            s_k / s_{k+1}
    overlap        ||U_t^T U_{t-1}||_F^2 / k between the top-k left singular subspaces of
                   consecutive measurements (1: the spike stays put, which justifies warm starts;
                   about k / m for unrelated subspaces)
    energy_share_random   the energy share of the top k of an i.i.d. Gaussian matrix of the same
                   shape (mean over draws): what "a spike" is measured against, since even a
                   matrix of pure noise has (sqrt(m) + sqrt(n))^2 / (m n) of its energy in its
                   top direction
    cache_overlap  (Spectra runs) the overlap of the optimizer's cached right singular basis
                   with the exact top-k right singular vectors of the momentum it was computed
                   from: whether one warm-started power iteration per step tracks the spike

`SpectralDiagnostics` is a trainer callback that measures every `every` steps
the gradients of chosen parameters (by default the matrices Muon and Spectra
act on) and keeps the records in `records`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import torch
from torch import nn


def spectral_parameters(model: nn.Module) -> list[str]:
    """Names of the hidden layers' weight matrices: a GPT's attention and MLP weights, an image model's conv
    filters (flattened to out x in k k) and hidden linear weights. The layer fed the data (`input_layer`), the
    embeddings and the classifier stay with AdamW, as in Muon's recipe."""
    first = getattr(model, "input_layer", None)
    return [n for n, p in model.named_parameters()
            if n.startswith("blocks.") and p.dim() >= 2 and (first is None or not n.startswith(first + "."))]


def spectrum_summary(matrix: torch.Tensor, k: int) -> tuple[dict, torch.Tensor]:
    """({"energy_share", "gap", "top_singular"}, top-k left singular vectors (m, k)) of `matrix`."""
    u, s, _ = torch.linalg.svd(matrix.detach().double(), full_matrices=False)
    k = max(1, min(k, len(s) - 1))
    energy = s.pow(2)
    return {"energy_share": (energy[:k].sum() / energy.sum().clamp(min=1e-300)).item(),
            "gap": (s[k - 1] / s[k].clamp(min=1e-300)).item(),
            "top_singular": s[0].item()}, u[:, :k]


def subspace_overlap(first: torch.Tensor, second: torch.Tensor) -> float:
    """||first^T second||_F^2 / k for two (m, k) orthonormal bases: 1 when they span the same subspace."""
    return ((first.T @ second).norm() ** 2 / first.shape[1]).item()


@lru_cache(maxsize=64)
def random_energy_share(m: int, n: int, k: int, trials: int = 16, seed: int = 0) -> float:
    """Mean top-k energy share of i.i.d. Gaussian m x n matrices: the baseline a gradient's spike is read against."""
    k = max(1, min(k, min(m, n) - 1))  # as spectrum_summary counts it
    generator = torch.Generator().manual_seed(seed)
    shares = []
    for _ in range(trials):
        energy = torch.linalg.svdvals(torch.randn(m, n, generator=generator, dtype=torch.float64)).pow(2)
        shares.append((energy[:k].sum() / energy.sum()).item())
    return sum(shares) / len(shares)


def _right_basis_overlap(cached: torch.Tensor, momentum: torch.Tensor) -> float:
    """Overlap of a cached (n, k) basis (orthonormalised) with the exact top-k right singular vectors of `momentum`."""
    k = cached.shape[1]
    exact = torch.linalg.svd(momentum.detach().double(), full_matrices=False)[2][:k].T
    return subspace_overlap(torch.linalg.qr(cached.detach().double())[0], exact)


class SpectralDiagnostics:
    """Trainer callback (`trainer.add_callback("on_step_end", diagnostics)`): gradient spectra every `every` steps.

    Arguments:
        names: parameters to watch (default: `caplab.train.spectral.spectral_parameters(model)`).
        fraction: k = max(1, round(fraction * min(m, n))) top directions (Spectra's 1.5% by default).
    """

    name = "spectral"  # as a trainer plug-in: `record()` adds its latest reading to each evaluation

    def __init__(self, every: int = 50, fraction: float = 0.015, names: Optional[list[str]] = None) -> None:
        self.every, self.fraction, self.names = every, fraction, names
        self.records: list[dict] = []
        self._previous: dict[str, torch.Tensor] = {}

    def __call__(self, trainer, loss: float) -> None:
        if trainer.step % self.every:
            return

        names = self.names or spectral_parameters(trainer.model)
        params = dict(trainer.model.named_parameters())
        for name in names:
            grad = params[name].grad
            if grad is None or grad.dim() != 2:
                continue
            k = max(1, round(self.fraction * min(grad.shape)))
            summary, basis = spectrum_summary(grad, k)
            record = {"step": trainer.step, "parameter": name, "k": k, **summary,
                      "energy_share_random": random_energy_share(*grad.shape, k)}
            state = trainer.optimizer.state.get(params[name], {})
            if "basis" in state:  # Spectra: does its warm-started basis track the momentum's spike?
                record["cache_overlap"] = _right_basis_overlap(state["basis"], state["momentum_buffer"])
            if name in self._previous:
                record["overlap"] = subspace_overlap(basis, self._previous[name])
            self._previous[name] = basis
            self.records.append(record)

    def record(self) -> dict:
        return self.latest()

    def latest(self) -> dict:
        """Means over the watched matrices at the latest measured step: `grad_energy_share`, its random-matrix
        baseline `grad_energy_share_random`, `grad_subspace_overlap` and (Spectra) `spectra_cache_overlap`."""
        if not self.records:
            return {}
        step = self.records[-1]["step"]
        rows = [r for r in self.records if r["step"] == step]
        out = {}
        for key, name in (("energy_share", "grad_energy_share"), ("energy_share_random", "grad_energy_share_random"),
                          ("overlap", "grad_subspace_overlap"), ("cache_overlap", "spectra_cache_overlap")):
            values = [r[key] for r in rows if key in r]
            if values:
                out[name] = sum(values) / len(values)
        return out
