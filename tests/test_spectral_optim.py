"""Muon's orthogonalisation and Spectra's spike suppression on matrices with known spectra; training with both."""

import math

import pytest
import torch

from caplab import load_config
from caplab.experiment import build
from caplab.train.spectral import orthogonalise, spectral_parameters, suppress_spike
from helpers import TINY


def matrix_with_spectrum(singular, m, n, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(singular), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(singular), generator=g, dtype=torch.float64))
    return (u * torch.tensor(singular, dtype=torch.float64)) @ v.T, u, v


@pytest.mark.parametrize("shape", [(32, 48), (48, 32)])
def test_orthogonalise_flattens_the_spectrum_and_keeps_the_singular_vectors(shape):
    singular = torch.logspace(0, -2, 24).tolist()  # condition number 100
    matrix, u, v = matrix_with_spectrum(singular, *shape)
    out = orthogonalise(matrix.float()).double()
    s = torch.linalg.svdvals(out)[:24]
    assert s.min() > 0.6 and s.max() < 1.25  # the quintic's band around 1, whatever the input spectrum
    # same singular subspaces: out = U f(S) V^T
    assert torch.allclose(u @ (u.T @ out @ v) @ v.T, out, atol=1e-4)
    assert torch.linalg.matrix_rank(out, atol=1e-3) == 24


def test_spike_suppression_sets_spike_values_to_the_tail_rms_and_keeps_the_tail():
    m, n, k = 40, 60, 2
    tail_values = torch.linspace(1.0, 0.5, 38).tolist()
    singular = [50.0, 20.0] + tail_values  # a two-direction spike
    matrix, u, v = matrix_with_spectrum(singular, m, n, seed=1)
    update, basis = suppress_spike(matrix.float(), None, k)
    s_update = torch.linalg.svdvals(update.double())
    sigma_tail = math.sqrt(sum(x * x for x in tail_values) / (min(m, n) - k))
    expected = sorted(tail_values + [sigma_tail, sigma_tail], reverse=True)
    assert s_update[:40].tolist() == pytest.approx(expected, rel=1e-3, abs=1e-4)  # spike at the tail's RMS, tail kept
    spike_block = u[:, :2].T @ update.double() @ v[:, :2]  # the update along the spike's singular pairs
    assert torch.allclose(spike_block, sigma_tail * torch.eye(2, dtype=torch.float64), atol=1e-3)
    # the cached basis is the spike's right singular subspace, and a warm-started step reproduces the update
    overlap = (v[:, :2].T @ basis.double()).norm() ** 2 / 2
    assert overlap > 0.999
    again, _ = suppress_spike(matrix.float(), basis, k)
    assert torch.allclose(again, update, atol=1e-4)


def test_spectral_parameters_are_the_attention_and_mlp_matrices():
    cfg = load_config("demo", TINY)
    _, model, _ = build(cfg)
    names = spectral_parameters(model)
    expected = [n for n, p in model.named_parameters() if p.dim() == 2 and (".attn." in n or ".mlp." in n)]
    assert names == expected and "embed.weight" not in names


@pytest.mark.parametrize("kind", ["vgg", "resnet", "mlp"])
def test_image_models_give_muon_their_hidden_layers_and_it_steps_flattened_filters(kind):
    from caplab.config import resolve

    model = {"kind": kind, "width": 8, "depth": {"vgg": 3, "resnet": 8, "mlp": 2}[kind]}
    cfg = resolve("muon-on-images", {"task": {"name": "shapes", "image_size": 16, "eval_samples": 16}, "model": model,
                                     "train": {"optimizer": "muon", "lr": 0.01, "weight_decay": 0, "grad_clip": 0,
                                               "warmup_steps": 0, "batch_size": 32}})  # full-rank gradients
    _, model, trainer = build(cfg)
    names = spectral_parameters(model)
    input_layer = model.input_layer
    assert names and not any(n.startswith(input_layer + ".") or n.startswith("classifier") for n in names)
    hidden = [n for n in names if dict(model.named_parameters())[n].dim() == (2 if kind == "mlp" else 4)]
    assert hidden == names  # every hidden weight, conv filters included
    param = dict(model.named_parameters())[names[-1]]
    start = param.detach().clone()
    trainer.train_step()
    step = param.detach() - start
    rms = step.norm().item() / math.sqrt(step.numel())
    assert 0.6 * 0.2 * 0.01 < rms < 1.25 * 0.2 * 0.01  # the orthogonalised step of the (out, in k k) matrix


@pytest.mark.parametrize("method", ["muon", "spectra"])
def test_training_with_spectral_optimizers_lowers_loss_and_round_trips_state(method):
    cfg = load_config("demo", TINY + [f"train.optimizer={method}", "train.lr=0.01", "train.steps=30"])
    _, model, trainer = build(cfg)
    before = trainer.evaluate()["eval_loss"]
    spectral = dict(model.named_parameters())[spectral_parameters(model)[0]]
    start = spectral.detach().clone()
    trainer.fit()
    assert trainer.last_record["eval_loss"] < before - 0.3
    assert not torch.equal(spectral.detach(), start)
    tensors, extra, meta = trainer.state_tensors()
    _, _, other = build(cfg)
    other.restore(tensors, extra, meta)
    for a, b in zip(trainer.optimizer.state.values(), other.optimizer.state.values()):
        for key in a:
            torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]))


def test_muon_step_has_the_stated_rms():
    cfg = load_config("demo", TINY + ["train.optimizer=muon", "train.lr=0.01", "train.weight_decay=0", "train.grad_clip=0",
                                      "train.warmup_steps=0"])
    _, model, trainer = build(cfg)
    name = spectral_parameters(model)[0]
    param = dict(model.named_parameters())[name]
    start = param.detach().clone()
    trainer.train_step()
    step = param.detach() - start
    rms = step.norm().item() / math.sqrt(step.numel())
    # orthogonalised update (singular values in ~[0.7, 1.2]) scaled to RMS 0.2 x lr
    assert 0.6 * 0.2 * 0.01 < rms < 1.25 * 0.2 * 0.01


def test_spectra_without_a_spike_steps_along_the_rescaled_momentum():
    cfg = load_config("demo", TINY + ["train.optimizer=spectra", "train.spectral_rank_fraction=0", "train.lr=0.01",
                                      "train.weight_decay=0", "train.grad_clip=0", "train.warmup_steps=0"])
    _, model, trainer = build(cfg)
    name = spectral_parameters(model)[0]
    param = dict(model.named_parameters())[name]
    start = param.detach().clone()
    trainer.train_step()
    grad = param.grad.detach().clone()  # the first momentum is the gradient itself
    step = start - param.detach()
    expected = grad * (0.2 * 0.01 / (grad.norm().item() / math.sqrt(grad.numel())))
    torch.testing.assert_close(step, expected, rtol=1e-4, atol=1e-7)
    assert "basis" not in trainer.optimizer.state[param]


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_steps_on_the_look_ahead_or_on_the_momentum_itself(nesterov):
    """Two steps by hand: M1 = g1, M2 = mu g1 + g2; the second update is NS(g2 + mu M2) with Nesterov, NS(M2) without."""
    from caplab.train.spectral import SpectralOptimizer

    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(16, 24))
    opt = SpectralOptimizer([{"params": [param], "spectral": True}], "muon", lr=0.01, momentum=0.9, nesterov=nesterov)
    g1, g2 = torch.randn(16, 24), torch.randn(16, 24)
    param.grad = g1.clone()
    opt.step()
    before = param.detach().clone()
    param.grad = g2.clone()
    opt.step()
    momentum = 0.9 * g1 + g2
    direction = g2 + 0.9 * momentum if nesterov else momentum
    expected = orthogonalise(direction, 5) * (0.01 * 0.2 * math.sqrt(24))
    torch.testing.assert_close(before - param.detach(), expected, rtol=1e-4, atol=1e-6)


def test_the_adamw_side_rate_can_be_set_apart_from_the_spectral_rate():
    cfg = load_config("demo", TINY + ["train.optimizer=muon", "train.lr=0.01", "train.adamw_side_lr=0.001",
                                      "train.warmup_steps=4"])
    _, _, trainer = build(cfg)
    trainer.train_step()
    rates = {bool(g.get("spectral")): g["lr"] for g in trainer.optimizer.param_groups}
    assert rates[True] == pytest.approx(trainer.lr_at(0)) and rates[False] == pytest.approx(trainer.lr_at(0) / 10)
    default = build(load_config("demo", TINY + ["train.optimizer=muon", "train.lr=0.01"]))[2]
    default.train_step()
    assert {g["lr"] for g in default.optimizer.param_groups} == {default.lr_at(0)}


def test_spectrum_summary_and_overlap_closed_forms():
    from caplab.analysis.spectral import spectrum_summary, subspace_overlap

    matrix, u, _ = matrix_with_spectrum([4.0, 2.0, 1.0, 1.0], 10, 8, seed=3)
    summary, basis = spectrum_summary(matrix, 1)
    assert summary["energy_share"] == pytest.approx(16 / 22) and summary["gap"] == pytest.approx(2.0)
    assert subspace_overlap(basis, u[:, :1]) == pytest.approx(1.0)
    assert subspace_overlap(u[:, :1], u[:, 1:2]) == pytest.approx(0.0, abs=1e-12)


def test_random_energy_share_follows_the_marchenko_pastur_edge():
    from caplab.analysis.spectral import random_energy_share

    # the top singular value of an m x n Gaussian matrix is close to sqrt(m) + sqrt(n); the total energy is m n
    for m, n in ((400, 400), (200, 800)):
        edge = (math.sqrt(m) + math.sqrt(n)) ** 2 / (m * n)
        assert random_energy_share(m, n, 1, trials=8) == pytest.approx(edge, rel=0.08)
    assert random_energy_share(64, 64, 4, trials=8) < random_energy_share(64, 64, 8, trials=8)


def test_cache_overlap_compares_a_basis_with_the_exact_right_singular_vectors():
    from caplab.analysis.spectral import _right_basis_overlap

    matrix, _, v = matrix_with_spectrum([50.0, 20.0, 1.0, 0.9, 0.8, 0.7], 12, 6, seed=1)
    assert _right_basis_overlap(v[:, :2] * torch.tensor([3.0, -0.5]), matrix) == pytest.approx(1.0)  # any scaling
    assert _right_basis_overlap(v[:, 2:4], matrix) == pytest.approx(0.0, abs=1e-12)


def test_spectral_diagnostics_callback_records_every_n_steps():
    from caplab.analysis.spectral import SpectralDiagnostics

    cfg = load_config("demo", TINY + ["train.steps=12"])
    _, model, trainer = build(cfg)
    diagnostics = SpectralDiagnostics(every=4)
    trainer.add_callback("on_step_end", diagnostics)
    trainer.fit()
    steps = sorted({r["step"] for r in diagnostics.records})
    assert steps == [4, 8, 12]
    assert {r["parameter"] for r in diagnostics.records} == set(spectral_parameters(model))
    later = [r for r in diagnostics.records if r["step"] > 4]
    assert all(0 <= r["overlap"] <= 1 + 1e-9 and 0 < r["energy_share"] <= 1 for r in later)


def test_spectral_diagnostics_from_the_config_reach_the_logged_records():
    cfg = load_config("demo", TINY + ["train.steps=16", "diagnostics.spectral_every=4", "train.eval_every=8"])
    _, _, trainer = build(cfg)
    record = trainer.fit()
    rows = [r for r in trainer.plugins["spectral"].records if r["step"] == 16]
    assert record["grad_energy_share"] == pytest.approx(sum(r["energy_share"] for r in rows) / len(rows))
    assert 0 <= record["grad_subspace_overlap"] <= 1 + 1e-9
    assert 0 < record["grad_energy_share_random"] < 1 and "spectra_cache_overlap" not in record  # AdamW caches no basis


def test_a_spectra_run_logs_how_well_its_cached_basis_tracks_the_spike():
    cfg = load_config("demo", TINY + ["train.steps=8", "diagnostics.spectral_every=4", "train.eval_every=8",
                                      "train.optimizer=spectra"])
    _, _, trainer = build(cfg)
    record = trainer.fit()
    assert 0 <= record["spectra_cache_overlap"] <= 1 + 1e-9
    assert all("cache_overlap" in r for r in trainer.plugins["spectral"].records)


def test_caplab_muon_equals_torch_optim_muon_on_matrices():
    """PyTorch's own Muon (its RMS-matching learning-rate rule) is the reference for caplab's on 2-D weights.

    PyTorch runs the Newton-Schulz iteration in bfloat16 and caplab in float32, so the steps agree to bf16's
    precision (about 0.6% after five steps), not bit for bit; everything else (Nesterov momentum, decoupled decay, scale) is equal."""
    from caplab.train.spectral import SpectralOptimizer

    torch.manual_seed(0)
    ours_w = torch.nn.Parameter(torch.randn(24, 40))
    ref_w = torch.nn.Parameter(ours_w.detach().clone())
    ours = SpectralOptimizer([{"params": [ours_w], "spectral": True, "weight_decay": 0.1}], "muon", lr=0.02, momentum=0.95,
                             betas=(0.9, 0.95))
    reference = torch.optim.Muon([ref_w], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
                                 adjust_lr_fn="match_rms_adamw")
    start = ours_w.detach().clone()
    for step in range(5):
        grad = torch.randn(24, 40, generator=torch.Generator().manual_seed(step))
        ours_w.grad, ref_w.grad = grad.clone(), grad.clone()
        ours.step()
        reference.step()
        moved_ours, moved_ref = ours_w.detach() - start, ref_w.detach() - start
        assert (moved_ours - moved_ref).norm() / moved_ref.norm() < 0.02  # 0.006 here; no Nesterov would be 0.15
