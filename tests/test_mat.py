"""Modular adaptive training: rules, frozen modules never move, FLOP account, exact resume."""

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from caplab import load_config
from caplab.experiment import build
from caplab.train.flops import linear_flops, training_step_flops
from caplab.train.mat import mat_modules, select_active
from helpers import TINY

MAT = TINY + ["mat.every=4", "mat.probe=4", "train.steps=12", "train.weight_decay=0.1"]


def test_rules_closed_forms():
    lambdas = {"a": 1.0, "b": 2.0, "c": 3.0, "d": 6.0}
    g = torch.Generator().manual_seed(0)
    assert select_active("mean", 1.0, lambdas, [], g) == ["c", "d"]  # mean 3
    assert select_active("mean", 0.0, lambdas, [], g) == ["a", "b", "c", "d"]
    assert select_active("quantile", 0.75, lambdas, [], g) == ["d"]
    assert len(select_active("random", 0.5, lambdas, [], g)) == 2
    # a share of parameters: with d holding 97% of them, 0.97 is met only with d in the active set
    sizes = {"a": 1, "b": 1, "c": 1, "d": 97}
    for seed in range(5):
        active = select_active("random", 0.97, lambdas, [], torch.Generator().manual_seed(seed), sizes)
        assert "d" in active and 0.97 <= sum(sizes[m] for m in active) / 100 <= 0.99
    history = [{"a": 1.0, "b": 1.0}, {"a": 2.0, "b": 3.0}]  # D(E): a 1, b 2
    # now a moved by 1 more (D 2 -> |2 - 1| = 1 >= 0.5 x 1: active); b did not move (|2 - 2| = 0 < 0.5 x 2: frozen)
    assert select_active("temporal", 0.5, {"a": 3.0, "b": 3.0}, history, g) == ["a"]
    assert select_active("temporal", 0.5, {"a": 3.0, "b": 3.0}, history[:1], g) == ["a", "b"]


def test_inactive_modules_never_move_and_their_optimizer_state_stands_still():
    cfg = load_config("demo", MAT + ["mat.rule=quantile", "mat.alpha=0.6"])
    _, model, trainer = build(cfg)
    mat = trainer.mat
    params = dict(model.named_parameters())
    checked = {"frozen": 0, "moved": 0}

    def snapshot(t):
        t._before = {m: [(p, a, s, e, params[p].detach().narrow(a, s, e - s).clone() if a is not None else params[p].detach().clone(),
                          {k: v.clone() for k, v in t.optimizer.state.get(params[p], {}).items() if torch.is_tensor(v) and v.dim()})
                         for p, a, s, e in pieces] for m, pieces in mat.modules.items()}
        t._active = list(mat.active)

    def compare(t, loss):
        for module, items in t._before.items():
            for name, axis, start, stop, value, state in items:
                now = params[name].detach()
                now = now.narrow(axis, start, stop - start) if axis is not None else now
                if module in t._active:
                    checked["moved"] += not torch.equal(now, value)
                else:
                    assert torch.equal(now, value), (t.step, module, name)
                    for key, old in state.items():
                        new = t.optimizer.state[params[name]][key]
                        new = new.narrow(axis, start, stop - start) if axis is not None else new
                        old = old.narrow(axis, start, stop - start) if axis is not None else old
                        assert torch.equal(new, old), (module, key)
                    checked["frozen"] += 1

    trainer.add_callback("on_backward_end", lambda t: snapshot(t))
    trainer.add_callback("on_step_end", compare)
    trainer.fit()
    assert checked["frozen"] > 0 and checked["moved"] > 0
    assert 0 < trainer.last_record["mat_active_fraction"] < 1


def test_flop_account_matches_the_flop_counter_when_mlps_freeze():
    cfg = load_config("demo", MAT)
    task, model, trainer = build(cfg)
    mat = trainer.mat
    mat.active = [m for m in mat.modules if not m.endswith(".mlp")]  # freeze every MLP
    mat._apply_requires_grad()
    with FlopCounterMode(display=False) as counter:
        trainer.train_step()
    frozen = {n: 1.0 for n in model.state_dict() if ".mlp.fc_" in n and n.endswith("weight")}
    assert counter.get_total_flops() == linear_flops(model.cfg, cfg.train.batch_size, task.seq_len, True, frozen)
    assert mat.step_flops() == training_step_flops(model.cfg, cfg.train.batch_size, task.seq_len, frozen)


def test_all_active_costs_plain_training_plus_the_estimates():
    cfg = load_config("demo", MAT + ["mat.alpha=0.0"])
    task, model, trainer = build(cfg)
    record = trainer.fit()
    assert record["mat_active_fraction"] == 1.0
    full = training_step_flops(model.cfg, cfg.train.batch_size, task.seq_len)
    estimates = len(trainer.mat.history)
    assert estimates == 4  # steps 0, 4, 8, 12
    assert record["flops"] == 12 * full + estimates * trainer.mat.estimate_flops
    assert len(mat_modules(model)) == model.cfg.n_layers * (model.cfg.n_heads + 1)


def test_resume_mid_run_is_exact():
    cfg = load_config("demo", MAT + ["mat.rule=random", "mat.alpha=0.5"])
    _, _, reference = build(cfg)
    captured = {}

    def capture(t, loss):  # what a checkpoint at step 6 would hold (copies: on CPU the tensors alias the live ones)
        if t.step == 6:
            model, extra, meta = t.state_tensors()
            captured["state"] = ({k: v.clone() for k, v in model.items()}, {k: v.clone() for k, v in extra.items()},
                                 json.loads(json.dumps(meta)))

    reference.add_callback("on_step_end", capture)
    final = reference.fit()
    _, model, resumed = build(cfg)
    resumed.restore(*captured["state"])
    again = resumed.fit()
    timing = ("elapsed_s", "eval_s")
    assert {k: v for k, v in again.items() if k not in timing} == {k: v for k, v in final.items() if k not in timing}
    for (name, a), b in zip(reference.model.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_lambdas_are_the_loss_kernels_top_eigenvalue_per_parameter():
    from caplab.analysis.ntk import module_kernels

    cfg = load_config("demo", MAT)
    _, model, trainer = build(cfg)
    mat, probe = trainer.mat, trainer.mat.probe
    kernels = module_kernels(model, probe.tokens, mat.modules, output="loss", targets=probe.targets, loss_mask=probe.loss_mask)
    expected = {m: torch.linalg.eigvalsh(k)[-1].item() / mat.sizes[m] for m, k in kernels.items()}
    ours = mat.lambdas()
    assert ours.keys() == expected.keys() and all(abs(ours[m] - expected[m]) <= 1e-9 * max(1.0, expected[m]) for m in ours)
    mlp, head = "blocks.0.mlp", "blocks.0.attn.head0"
    assert mat.sizes[mlp] > mat.sizes[head]  # the sizes the normalisation divides by differ
    _, _, raw = build(load_config("demo", MAT + ["mat.lambda_scale=raw", "mat.kernel=sum"]))
    sums = module_kernels(raw.model, raw.mat.probe.tokens, raw.mat.modules, output="sum")
    assert raw.mat.lambdas()[mlp] == torch.linalg.eigvalsh(sums[mlp])[-1].item()


def test_the_static_controls_choose_once_and_charge_no_estimates():
    cfg = load_config("demo", MAT + ["mat.rule=random_static", "mat.alpha=0.5"])
    task, model, trainer = build(cfg)
    chosen = []
    trainer.add_callback("on_step_end", lambda t, loss: chosen.append(tuple(t.mat.active)))
    record = trainer.fit()
    assert len(set(chosen)) == 1 and len(chosen[0]) == round(0.5 * len(trainer.mat.modules))
    assert record["flops"] == sum(1 for _ in range(12)) * trainer.mat.step_flops()  # no kernel estimates

    frozen = ["blocks.0.mlp", "blocks.0.attn.head1"]
    cfg = load_config("demo", MAT + ["mat.rule=fixed", f"mat.frozen=[{', '.join(frozen)}]"])
    _, model, trainer = build(cfg)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer.fit()
    after = model.state_dict()
    assert torch.equal(after["blocks.0.mlp.fc_in.weight"], start["blocks.0.mlp.fc_in.weight"])
    assert not torch.equal(after["blocks.0.attn.qkv.weight"], start["blocks.0.attn.qkv.weight"])  # head 0 trains
    assert trainer.mat.active == [m for m in trainer.mat.modules if m not in frozen]
    # every step is counted against the modules frozen during it; the active parameter share is logged
    assert trainer.mat.steps_counted == 12
    assert trainer.mat.frozen_steps == {m: 12 if m in frozen else 0 for m in trainer.mat.modules}
    sizes = trainer.mat.sizes
    assert trainer.mat.record()["mat_active_params"] == sum(sizes[m] for m in trainer.mat.active) / sum(sizes.values())


def test_the_probe_batch_comes_from_the_training_corpus_without_moving_it():
    cfg = load_config("demo", MAT + ["task.corpus_size=32"])
    task, _, trainer = build(cfg)
    corpus = task.documents(torch.device("cpu")).tokens
    probe = trainer.mat.probe.tokens
    assert all((corpus == row).all(1).any() for row in probe)  # every probe document is a training document
    assert task.position == 32  # the training stream has not moved
    fresh = build(load_config("demo", MAT + ["task.corpus_size=32", "mat.probe_source=fresh"]))[2].mat.probe.tokens
    assert not all((corpus == row).all(1).any() for row in fresh)


def test_bad_frozen_modules_are_config_errors():
    import pytest

    from caplab import ConfigError

    with pytest.raises(ConfigError, match="not a module"):
        build(load_config("demo", MAT + ["mat.rule=fixed", "mat.frozen=[blocks.9.mlp]"]))
    with pytest.raises(ConfigError, match="needs mat.frozen"):
        build(load_config("demo", MAT + ["mat.rule=fixed"]))
