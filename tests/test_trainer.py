import math

import pytest
import torch

from caplab import GPT, ConfigError, TrainingDiverged, load_config, make_task
from caplab.experiment import build
from caplab.train.optim import param_groups, warmup_cosine
from caplab.train.trainer import schedule
from helpers import TINY


def test_schedule_is_log_spaced_then_uniform():
    assert schedule(1000, 250) == [0, 1, 2, 4, 8, 16, 32, 64, 128, 250, 500, 750, 1000]
    assert schedule(10, 4, log_spaced=False) == [0, 4, 8, 10]
    assert schedule(3, 100) == [0, 1, 2, 3]


def test_warmup_cosine_closed_form():
    lr, lo, warm, total = 1e-3, 1e-4, 10, 110
    assert warmup_cosine(0, total, lr, lo, warm) == pytest.approx(lr / 10)
    assert warmup_cosine(9, total, lr, lo, warm) == pytest.approx(lr)
    assert warmup_cosine(60, total, lr, lo, warm) == pytest.approx(lo + 0.5 * (1 + math.cos(math.pi * 0.5)) * (lr - lo))
    assert warmup_cosine(110, total, lr, lo, warm) == pytest.approx(lo)


def test_weight_decay_only_on_matrices():
    model = GPT(load_config("demo").model)
    decay, no_decay = param_groups(model, 0.1)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_training_lowers_loss_and_is_deterministic():
    cfg = load_config("demo", TINY)
    records = []
    for _ in range(2):
        _, _, trainer = build(cfg)
        records.append(trainer.fit())
    first, second = records
    assert first == {**second, "elapsed_s": first["elapsed_s"], "eval_s": first["eval_s"]}
    _, _, fresh = build(cfg)
    assert first["eval_loss"] < fresh.evaluate()["eval_loss"] - 0.3


def test_training_stops_at_a_held_out_loss_target_or_a_flop_cap():
    cfg = load_config("demo", TINY)
    _, _, trainer = build(cfg)
    evaluations = []
    trainer.add_callback("on_eval", lambda t, record: evaluations.append(record))
    trainer.fit()
    target = evaluations[-2]["eval_loss"]  # reached first at the evaluation before the last (training lowers the loss)
    assert all(r["eval_loss"] > target for r in evaluations[1:-2])
    _, _, stopping = build(load_config("demo", TINY + [f"train.stop_at={target!r}"]))
    last = stopping.fit()
    assert stopping.step == evaluations[-2]["step"] < cfg.train.steps and last["eval_loss"] == target
    _, _, capped = build(load_config("demo", TINY + [f"train.max_flops={2.5 * trainer.flops_per_step}"]))
    last = capped.fit()
    assert capped.step == 3 and last["step"] == 3 and last["flops"] == 3 * capped.flops_per_step  # evaluated where it stopped
    _, _, any_metric = build(load_config("demo", TINY + ["train.stop_metric=seen_exact", "train.stop_at=0.0"]))
    assert any_metric.fit()["step"] == 1  # an accuracy stops at or above its value: at the first evaluation after step 0
    _, _, unknown = build(load_config("demo", TINY + ["train.stop_metric=seen_exactness", "train.stop_at=0.5"]))
    with pytest.raises(ConfigError, match="stop_metric 'seen_exactness' is not logged"):
        unknown.fit()
    assert unknown.step == 0


def test_callbacks_fire_by_name():
    cfg = load_config("demo", TINY + ["train.steps=5"])
    _, _, trainer = build(cfg)
    seen = []
    trainer.add_callback("on_step_end", lambda t, loss: seen.append(("step", t.step)))
    trainer.add_callback("on_eval", lambda t, record: seen.append(("eval", record["step"])))
    trainer.fit()
    assert [s for kind, s in seen if kind == "step"] == [1, 2, 3, 4, 5]
    assert [s for kind, s in seen if kind == "eval"] == [0, 1, 2, 4, 5]
    with pytest.raises(ValueError, match="unknown event"):
        trainer.add_callback("on_lunch", print)


def test_nan_loss_stops_with_a_clear_error():
    cfg = load_config("demo", TINY)
    _, model, trainer = build(cfg)

    def poison(t, loss):
        if t.step == 3:
            with torch.no_grad():
                model.ln_final.weight.fill_(float("nan"))

    trainer.add_callback("on_step_end", poison)
    with pytest.raises(TrainingDiverged, match="loss became nan at step 3"):
        trainer.fit()


def test_the_device_side_guard_stops_within_its_window_and_keeps_the_last_good_checkpoint(tmp_path):
    """With the loss read every 4 steps (as on CUDA), a NaN at step 5 stops training by the check at step 8,
    before any evaluation or checkpoint of a bad state."""
    from caplab.experiment import _StoreSink
    from caplab.runs.catalog import Catalog
    from caplab.runs.store import RunStore
    from caplab.experiment import create_run

    cfg = load_config("demo", TINY + ["train.finite_check_every=4", "train.checkpoint_every=2", "train.eval_every=2",
                                      "train.log_spaced=false"])
    store = create_run(cfg, tmp_path)
    _, model, trainer = build(cfg, _StoreSink(store, Catalog(tmp_path)))
    assert trainer.check_every == 4
    reads = []
    trainer.add_callback("on_step_end", lambda t, loss: reads.append(loss))

    def poison(t, loss):
        if t.step == 5:
            with torch.no_grad():
                model.ln_final.weight.fill_(float("nan"))

    trainer.add_callback("on_step_end", poison)
    with pytest.raises(TrainingDiverged, match="between step 4 and step 6"):
        trainer.fit()  # the evaluation due at step 6 checks first
    assert all(torch.is_tensor(r) for r in reads)  # the loss stayed on the device between checks
    saved = RunStore(store.path)
    assert [c["step"] for c in saved.manifest()["checkpoints"]] == [0, 2, 4]
    weights, _ = saved.load_weights()
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_without_a_terminal_progress_is_plain_log_lines(caplog):
    """stderr is not a terminal under pytest: no bar, one line per progress_every_s with step, rate, loss and ETA."""
    cfg = load_config("demo", TINY + ["train.progress=auto", "train.progress_every_s=1e-9"])
    _, _, trainer = build(cfg)
    with caplog.at_level("INFO", logger="caplab"):
        trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("caplab: step")]
    assert len(lines) == cfg.train.steps
    assert lines[-1].startswith("caplab: step 24/24 (100%)") and "tokens/s" in lines[-1] and lines[-1].endswith("ETA 0s")
    assert "unseen_exact" in lines[-1] and "loss " in lines[-1]
    caplog.clear()
    _, _, quiet = build(load_config("demo", TINY))  # train.progress=never: nothing at all
    with caplog.at_level("INFO", logger="caplab"):
        quiet.fit()
    assert not caplog.records


def test_make_task_overrides():
    task = make_task("compositions", n_depths=2, n_functions=1, n_train_compositions=2)
    assert len(task.inorder) == 4


def test_sgd_first_step_is_plain_gradient_descent_and_state_round_trips():
    cfg = load_config("demo", TINY + ["train.optimizer=sgd", "train.lr=0.1", "train.warmup_steps=0", "train.weight_decay=0",
                                      "train.grad_clip=0", "train.momentum=0.5"])
    _, model, trainer = build(cfg)
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    before = {k: v.clone() for k, v in model.named_parameters()}
    generator = torch.Generator().manual_seed(cfg.train.seed)
    batch = trainer.task.sample(cfg.train.batch_size, generator, trainer.device)
    model.zero_grad()
    trainer.loss(batch).backward()
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    trainer.train_step()  # draws the same batch: the trainer's generator has the same seed
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.detach(), before[name] - 0.1 * grads[name], rtol=1e-5, atol=1e-6)
    tensors, extra, meta = trainer.state_tensors()
    _, _, other = build(cfg)
    other.restore(tensors, extra, meta)
    key = next(iter(trainer.optimizer.state))
    index = list(trainer.model.parameters()).index(key)
    theirs = other.optimizer.state[list(other.model.parameters())[index]]["momentum_buffer"]
    torch.testing.assert_close(theirs, trainer.optimizer.state[key]["momentum_buffer"])


def test_run_experiment_takes_lightning_style_callbacks(tmp_path):
    from caplab import ConfigError, RunStore, run_experiment

    class Recorder:
        def __init__(self):
            self.evaluations, self.steps = [], 0

        def on_eval(self, trainer, record):
            self.evaluations.append(record["step"])

        def on_step_end(self, trainer, loss):
            self.steps += 1

    recorder, ends = Recorder(), []
    path = run_experiment(load_config("demo", TINY), tmp_path, callbacks=[recorder, ("on_train_end", lambda t, record: ends.append(record))])
    assert recorder.evaluations == [r["step"] for r in RunStore(path).metrics()] and recorder.steps == 24
    assert ends[0]["step"] == 24
    before = sorted(tmp_path.iterdir())
    with pytest.raises(ConfigError, match="no method named after a trainer event"):
        run_experiment(load_config("demo", TINY), tmp_path, callbacks=[object()])
    assert sorted(tmp_path.iterdir()) == before  # nothing was created
