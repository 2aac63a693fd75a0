"""Optimizer learning-rate sweeps: reach steps, best-tuned choice, stability edge and ratios, on known curves and a real sweep."""

import json

import pytest

from caplab import ConfigError
from caplab.studies.optimizer_tuning import aggregate, summary_lines
from caplab.runs.store import RunStore, atomic_write_json
from caplab.studies.sweep import create_sweep, run_sweep
from helpers import TINY


def _synthetic(tmp_path, curves):
    """A finished sweep: curves[(optimizer, lr)] = list over seeds of (status, [(step, eval_loss), ...])."""
    sweep = {"recipe": "synthetic", "grid": {}, "seeds": 0, "overrides": [], "metric": "acc", "runs": []}
    for (optimizer, lr), seeds in curves.items():
        for seed, (status, points) in enumerate(seeds):
            name, _, rank = optimizer.partition("@")  # "spectra@0": spectral_rank_fraction 0
            train = {"optimizer": name, "lr": lr, "seed": seed, **({"spectral_rank_fraction": float(rank)} if rank else {})}
            store = RunStore.create("synthetic", tmp_path, files={"config.json": {"train": train}})
            for step, loss, *extra in points:  # extra: a dict of more logged values
                store.log_metrics({"step": step, "eval_loss": loss, "elapsed_s": 2.0 * step + 1.0, "eval_s": 1.0, **(extra or [{}])[0]})
            store.set_status(status, "loss became nan at step 9" if status == "failed" else None)
            sweep["runs"].append({"setting": {"train.optimizer": optimizer, "train.lr": lr}, "seed": seed, "run_id": store.path.name})
    path = tmp_path / "sweeps" / "synthetic"
    path.mkdir(parents=True)
    atomic_write_json(path / "sweep.json", sweep)
    return path


def test_best_tuned_reach_steps_stability_edge_and_ratios_on_known_curves(tmp_path):
    line = lambda slope: [(s, 4.0 - slope * s) for s in (0, 10, 20, 30)]  # noqa: E731  reaches 2.0 at step 2 / slope
    path = _synthetic(tmp_path, {
        ("adamw", 1e-3): [("completed", line(0.05)), ("completed", line(0.05))],   # reach 2.0 at step 40: never
        ("adamw", 1e-2): [("completed", line(0.1)), ("completed", line(0.1))],     # step 20
        ("adamw", 1e-1): [("completed", line(0.1)), ("failed", line(0.1)[:2])],    # one seed diverged
        ("muon", 1e-2): [("completed", line(0.2)), ("completed", line(0.2))],      # step 10
        ("muon", 1e-1): [("completed", [(0, 4.0), (10, 5.0), (20, 6.0), (30, 7.0)])] * 2,  # ends above its start
    })
    summary = aggregate(path, target_loss=2.0)
    adamw, muon = summary["optimizers"]["adamw"], summary["optimizers"]["muon"]
    assert adamw["settings"]["0.001"]["reach_step"] == [None, None] and not adamw["settings"]["0.001"]["all_reach"]
    assert adamw["settings"]["0.01"]["reach_step"] == pytest.approx([20, 20])
    assert adamw["settings"]["0.01"]["reach_train_s"] == pytest.approx([40, 40])  # elapsed 2 s/step + 1, minus 1 s evaluating
    assert adamw["settings"]["0.1"]["diverged"] == 1 and adamw["smallest_unstable_lr"] == 0.1
    assert adamw["best_lr"] == 0.01 and adamw["best_reach_step"] == pytest.approx(20)
    assert muon["best_lr"] == 0.01 and muon["settings"]["0.1"]["unstable"] == 2 and muon["largest_stable_lr"] == 0.01
    ratio = summary["ratios"]["muon"]["reach_step"]
    assert ratio["ratio"] == pytest.approx(0.5) and ratio["interval"] == pytest.approx([0.5, 0.5])
    assert json.loads((path / "optimizer_tuning.json").read_text())["target_loss"] == 2.0
    lines = summary_lines(summary)
    assert lines[1].startswith("adamw") and "best lr 0.01" in lines[1] and "step 20 [20, 20]" in lines[1]
    assert "unstable from lr 0.1" in lines[1] and "reach_step x0.50 [0.50, 0.50]" in lines[3]


def test_a_second_sweep_extends_the_grid(tmp_path):
    first = _synthetic(tmp_path / "one", {("adamw", 1e-2): [("completed", [(0, 4.0), (10, 3.0)])] * 2})
    second = _synthetic(tmp_path / "two", {("adamw", 1e-3): [("completed", [(0, 4.0), (10, 1.0)])] * 2})
    adamw = aggregate(first, target_loss=2.0, more=(second,))["optimizers"]["adamw"]
    assert sorted(adamw["settings"]) == ["0.001", "0.01"] and adamw["best_lr"] == 0.001
    assert adamw["best_at_edge"]  # the lowest rate tried
    with pytest.raises(ConfigError, match="more than one of the sweeps"):
        aggregate(first, target_loss=2.0, more=(first,))


def test_spectra_with_another_spike_share_is_its_own_optimizer(tmp_path):
    curve = [("completed", [(0, 4.0), (10, 1.0)])]
    path = _synthetic(tmp_path, {("spectra", 1e-2): curve, ("spectra@0", 1e-2): curve})
    assert sorted(aggregate(path, target_loss=2.0)["optimizers"]) == ["spectra", "spectra@0"]


def test_a_blow_up_the_schedule_recovered_from_counts_as_unstable(tmp_path):
    path = _synthetic(tmp_path, {("muon", 0.1): [("completed", [(0, 4.0), (10, 2.0), (20, 2.5), (30, 1.0)])],   # +0.5 >= 0.4
                                 ("muon", 0.01): [("completed", [(0, 4.0), (10, 2.0), (20, 2.3), (30, 1.5)])]})  # +0.3: noise
    muon = aggregate(path, target_loss=1.5)["optimizers"]["muon"]
    assert muon["settings"]["0.1"]["spiked"] == 1 and muon["settings"]["0.1"]["unstable"] == 1
    assert muon["settings"]["0.01"]["spiked"] == 0 and muon["smallest_unstable_lr"] == 0.1
    assert muon["best_lr"] == 0.1 and muon["best_at_edge"]


def test_an_optimizer_that_never_reaches_the_target_is_ranked_by_final_loss(tmp_path):
    path = _synthetic(tmp_path, {("adamw", 1e-3): [("completed", [(0, 4.0), (10, 3.0)])] * 2,
                                 ("adamw", 1e-2): [("completed", [(0, 4.0), (10, 2.5)])] * 2})
    adamw = aggregate(path, target_loss=1.0)["optimizers"]["adamw"]
    assert adamw["best_lr"] == 0.01 and not adamw["best_reaches_target"] and adamw["best_reach_step"] is None


def test_spectral_diagnostics_are_averaged_per_seed_over_steps_after_the_first(tmp_path):
    logged = lambda share, overlaps: [(0, 4.0, {"grad_energy_share": 9.0, "spectra_cache_overlap": 0.0})] + [  # noqa: E731
        (10 * (i + 1), 3.0, {"grad_energy_share": share, "grad_energy_share_random": 0.1, "spectra_cache_overlap": o})
        for i, o in enumerate(overlaps)]
    path = _synthetic(tmp_path, {("spectra", 1e-2): [("completed", logged(0.5, [1.0, 0.8])), ("completed", logged(0.7, [0.6, 0.6])),
                                                      ("failed", logged(0.0, [0.0]))]})
    spectral = aggregate(path, target_loss=1.0)["optimizers"]["spectra"]["settings"]["0.01"]["spectral"]
    assert spectral["grad_energy_share"] == pytest.approx(0.6)  # step 0 and the diverged seed left out
    assert spectral["grad_energy_share_random"] == pytest.approx(0.1)
    assert spectral["spectra_cache_overlap"] == pytest.approx(0.75) and spectral["spectra_cache_overlap_min"] == pytest.approx(0.6)
    assert "grad_subspace_overlap" not in spectral


def test_a_real_learning_rate_sweep_records_the_divergent_rate_and_goes_on(tmp_path):
    recipe = tmp_path / "tiny-optimizers.yaml"
    recipe.write_text(
        "sweep:\n  grid:\n    train.optimizer: [adamw, muon]\n    train.lr: [0.003, 1.0e+38]\n  seeds: 2\n"
        "  analysis: optimizer_tuning\n  target_loss: 100.0\n"
        "task: {name: compositions}\nmodel: {n_layers: 1}\n")
    path = create_sweep(str(recipe), {}, None, TINY + ["train.warmup_steps=0", "train.grad_clip=0", "train.weight_decay=0"],
                        root=tmp_path)
    summary = run_sweep(path)["optimizer_tuning"]
    for name in ("adamw", "muon"):
        opt = summary["optimizers"][name]
        assert opt["settings"]["1e+38"]["diverged"] == 2 and opt["smallest_unstable_lr"] == 1e38
        assert opt["best_lr"] == 0.003 and opt["best_reach_step"] == 0  # a loss of 100 is reached before training
    assert summary["ratios"]["muon"]["reach_step"] is None  # no ratio to a reference that needs no steps
    assert (path / "figures" / "optimizer_tuning.png").is_file()


def test_optimizer_tuning_needs_a_target_loss(tmp_path):
    recipe = tmp_path / "no-target.yaml"
    recipe.write_text("sweep:\n  grid:\n    train.lr: [0.003]\n  analysis: optimizer_tuning\ntask: {name: compositions}\n")
    with pytest.raises(ConfigError, match="target_loss"):
        create_sweep(str(recipe), {}, None, TINY, root=tmp_path)
