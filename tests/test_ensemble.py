import pytest
import torch

from caplab import ConfigError, RunStore, TrainingDiverged, load_config, run_ensemble, run_experiment
from caplab.experiment import build
from caplab.studies.sweep import create_sweep, run_sweep
from caplab.models.ensemble import EnsembleGPT, FunctionalEnsemble, ensemble_model
from caplab.train.ensemble import EnsembleTrainer
from helpers import TINY, without_timing


def close_records(a: list[dict], b: list[dict], tol: float = 1e-4) -> bool:
    a, b = without_timing(a), without_timing(b)
    return len(a) == len(b) and all(
        ra.keys() == rb.keys() and all(abs(ra[k] - rb[k]) <= tol * max(1.0, abs(rb[k])) if isinstance(rb[k], float) else ra[k] == rb[k]
                                       for k in ra) for ra, rb in zip(a, b))


def test_the_stacked_forward_is_each_members_forward():
    cfg = load_config("demo", TINY + ["model.bias=true", "model.n_layers=2"]).model
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(__import__("caplab").GPT(cfg))
    tokens = torch.randint(cfg.d_vocab, (3, 5, 9))
    stacked = EnsembleGPT(models)(tokens)
    for i, model in enumerate(models):
        assert torch.allclose(stacked[i], model(tokens[i]), atol=1e-5)


def test_an_ensemble_of_three_matches_three_separate_runs(tmp_path):
    cfg = load_config("demo", TINY + ["train.ensemble=3", "train.seed=4"])
    paths = run_ensemble(cfg, tmp_path / "ensemble")
    assert len(paths) == 3
    for i, path in enumerate(paths):
        store = RunStore(path)
        assert store.info()["status"] == "completed"
        member_cfg = store.config_dict()["train"]
        assert member_cfg["seed"] == 4 + i and member_cfg["ensemble"] == 1  # an ordinary run of its own seed
        alone = RunStore(run_experiment(load_config("demo", TINY + [f"train.seed={4 + i}"]), tmp_path / "alone"))
        assert close_records(store.metrics(), alone.metrics())
        ours, theirs = store.load_weights()[0], alone.load_weights()[0]
        assert all(torch.allclose(ours[k], theirs[k], atol=1e-5) for k in theirs)


IMAGE_TINY = ["task.image_size=12", "task.eval_samples=64", "train.steps=6", "train.batch_size=8", "train.eval_every=3",
              "train.checkpoint_every=3", "train.warmup_steps=2", "train.eval_batch_size=16", "train.progress=never"]
IMAGE_MODELS = {"mlp": "{kind: mlp, width: 32, depth: 2, norm: batch}",
                "vgg": "{kind: vgg, width: 4, depth: 3, stages: 2, norm: batch}",
                "resnet": "{kind: resnet, width: 4, depth: 8, stages: 3, norm: group, norm_groups: 2}",
                # 0-d parameters (SkipInit's alpha, FRN's eps) in the stacked weights and the per-member clipping
                "resnet-skipinit-frn": "{kind: resnet, width: 4, depth: 8, stages: 3, norm: frn, skipinit: true}"}


def image_recipe(tmp_path, kind: str) -> str:
    """A tiny shapes recipe with a model of `kind` (a path load_config reads)."""
    path = tmp_path / f"tiny-{kind}.yaml"
    path.write_text(f"task: {{name: shapes, n_shapes: 4, n_colours: 2, n_sizes: 2, n_positions: 4}}\nmodel: {IMAGE_MODELS[kind]}\n")
    return str(path)


@pytest.mark.parametrize("kind", sorted(IMAGE_MODELS))
def test_image_model_ensembles_match_separate_runs(tmp_path, kind):
    """Every model kind ensembles (vmap over the members, BatchNorm statistics each member's own) and each
    member's curve, weights and buffers are those of the same seed trained alone."""
    recipe = image_recipe(tmp_path, kind)
    paths = run_ensemble(load_config(recipe, IMAGE_TINY + ["train.ensemble=2", "train.seed=3"]), tmp_path / "ensemble")
    for i, path in enumerate(paths):
        store = RunStore(path)
        alone = RunStore(run_experiment(load_config(recipe, IMAGE_TINY + [f"train.seed={3 + i}"]), tmp_path / "alone"))
        assert close_records(store.metrics(), alone.metrics())
        ours, theirs = store.load_weights()[0], alone.load_weights()[0]
        assert ours.keys() == theirs.keys()
        assert all(torch.allclose(ours[k].float(), theirs[k].float(), atol=1e-5) for k in theirs)


def test_a_functional_ensemble_forward_is_each_members_forward(tmp_path):
    cfg = load_config(image_recipe(tmp_path, "vgg"), IMAGE_TINY)
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(cfg.make_model())
    stacked = ensemble_model(models)
    assert isinstance(stacked, FunctionalEnsemble)
    images = torch.randn(3, 5, 3, 12, 12)
    outputs = stacked(images)  # training mode: batch statistics, running statistics updated per member
    for i, model in enumerate(models):
        assert torch.allclose(outputs[i], model(images[i]), atol=1e-5)
        state = stacked.member_state(i)
        assert all(torch.allclose(state[k].float(), v.float()) for k, v in model.state_dict().items())


def _trained_alone(seeds):
    """The configs of `seeds` and each one's final weights trained as an ordinary run."""
    cfgs = [load_config("demo", TINY + [f"train.seed={s}"]) for s in seeds]
    straight = []
    for cfg in cfgs:
        _, _, trainer = build(cfg)
        trainer.fit()
        straight.append(trainer.model.state_dict())
    return cfgs, straight


def test_a_member_checkpoint_resumes_alone_and_the_ensemble_resumes_together():
    cfgs, straight = _trained_alone(range(2))
    members = [build(cfg)[2] for cfg in cfgs]
    ensemble = EnsembleTrainer(members)
    for _ in range(10):
        ensemble.train_step()
    ensemble.sync_members(with_optimizer=True)
    states = [m.state_tensors() for m in members]
    fresh = lambda state: ({k: v.clone() for k, v in state[0].items()}, {k: v.clone() for k, v in state[1].items()}, state[2])  # noqa: E731
    # (a restored optimizer may train on the very tensors it was given: each restore gets its own copy, as from a file)
    # member 1 alone, from its own checkpoint
    _, _, alone = build(cfgs[1])
    alone.restore(*fresh(states[1]))
    alone.fit()
    assert all(torch.allclose(alone.model.state_dict()[k], straight[1][k], atol=1e-5) for k in straight[1])
    # both again as an ensemble
    restored = [build(cfg)[2] for cfg in cfgs]
    for trainer, state in zip(restored, states):
        trainer.restore(*fresh(state))
    EnsembleTrainer(restored).fit()
    for trainer, reference in zip(restored, straight):
        assert all(torch.allclose(trainer.model.state_dict()[k], reference[k], atol=1e-5) for k in reference)


def test_a_sweep_trains_runs_of_one_shape_as_ensembles(tmp_path):
    grid = {"task.n_train_compositions": [6, 8]}
    together = run_sweep(create_sweep("demo", grid, 2, TINY, root=tmp_path / "a", ensemble=4))
    apart = run_sweep(create_sweep("demo", grid, 2, TINY, root=tmp_path / "b"))
    assert together["runs_completed"] == apart["runs_completed"] == 4
    for s, t in zip(together["settings"], apart["settings"]):
        assert s["final_mean"] == pytest.approx(t["final_mean"], abs=1e-4)


def test_ensembles_refuse_what_they_cannot_do(tmp_path):
    with pytest.raises(ConfigError, match="ensemble"):
        run_ensemble(load_config("demo", TINY + ["train.ensemble=2", "train.optimizer=muon"]), tmp_path)
    with pytest.raises(ConfigError, match="ensemble"):
        run_experiment(load_config("demo", TINY + ["train.ensemble=2"]), tmp_path)
    with pytest.raises(ConfigError, match="--ensemble"):
        create_sweep("demo", {}, 2, TINY + ["train.ensemble=2"], root=tmp_path)
    assert not list(tmp_path.glob("demo-*"))  # nothing was created


def test_a_member_that_diverges_drops_out_alone(tmp_path):
    cfgs, straight = _trained_alone(range(3))
    members = [build(cfg)[2] for cfg in cfgs]
    ensemble = EnsembleTrainer(members)
    for _ in range(3):
        ensemble.train_step()
    with torch.no_grad():
        ensemble.model.parameter("ln_final.weight")[1] = float("nan")  # member 1 breaks at step 3
    records = ensemble.fit()
    assert set(ensemble.failed) == {1} and "loss became nan at step 3" in ensemble.failed[1] and records[1] is None
    for i in (0, 2):  # the others train on exactly as if alone
        assert all(torch.allclose(members[i].model.state_dict()[k], straight[i][k], atol=1e-5) for k in straight[i])
    with torch.no_grad():
        ensemble.model.parameter("ln_final.weight")[:] = float("nan")
    with pytest.raises(TrainingDiverged, match="every ensemble member diverged"):
        ensemble.train_step()


def test_a_diverged_ensemble_run_fails_alone_and_the_sweep_goes_on(tmp_path):
    # lr 1e38 overflows within a few steps; the other setting is an ordinary one
    grid = {"train.lr": [1e-3, 1e38]}
    path = create_sweep("demo", grid, 2, TINY + ["train.warmup_steps=0", "train.grad_clip=0", "train.weight_decay=0"],
                        root=tmp_path, ensemble=4)
    summary = run_sweep(path)
    assert summary["runs_completed"] == 2 and len(summary["failed_runs"]) == 2
    assert {f["setting"]["train.lr"] for f in summary["failed_runs"]} == {1e38}
    assert all("loss became" in f["error"] or "not finite" in f["error"] for f in summary["failed_runs"])
    for failed in summary["failed_runs"]:  # the last good checkpoint is kept, and finite
        tensors, _ = RunStore(tmp_path / failed["run_id"]).load_weights()
        assert all(torch.isfinite(t).all() for t in tensors.values())
    again = run_sweep(path)  # resuming keeps the failed runs as they are
    assert again["failed_runs"] == summary["failed_runs"]
