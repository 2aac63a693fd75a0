"""A fine-tuning study end to end on a tiny compiled counter, and its config errors."""

import json
import math

import pytest

from caplab.errors import ConfigError
from caplab.studies.finetune import create_study, load_study, run_study
from caplab.runs.store import RunStore
from helpers import caplab

TINY_STUDY = [
    "pretrain.task.length=8", "pretrain.task.eval_samples=128", "pretrain.train.progress=never",
    "finetune.train.steps=30", "finetune.train.warmup_steps=5", "finetune.train.eval_every=10",
    "finetune.train.checkpoint_every=30",
    "reverse.train.steps=16", "reverse.train.eval_every=8", "reverse.train.checkpoint_every=16",
    "study.lr_names=[small]", "study.learning_rates=[0.001]", "study.focus_lr=small",
    "study.prune_max=2", "study.probe_samples=64", "study.probe_steps=20", "study.noise=0.0", "study.seeds=1",
]


def _shortcut_rate(length: int, letters: int = 9) -> float:
    """P(count(b) = count(a) + 1) for `length` letters drawn uniformly from `letters` (a multinomial)."""
    p, rest = 1 / letters, 1 - 2 / letters
    return sum(math.factorial(length) / (math.factorial(a) * math.factorial(a + 1) * math.factorial(length - 2 * a - 1))
               * p ** (2 * a + 1) * rest ** (length - 2 * a - 1) for a in range((length - 1) // 2 + 1))


def test_tracr_study_runs_every_stage_and_resumes_without_retraining(tmp_path):
    path = create_study("finetune-tracr", TINY_STUDY, tmp_path)
    summary = run_study(path)
    study = json.loads((path / "study.json").read_text())
    stages = [s["stage"] for s in study["stages"]]
    assert stages == ["pretrain", "finetune-small-ctr0", "finetune-small-ctr1", "reverse", "scratch", "swapped", "swapped-ft"]
    for stage in study["stages"]:
        assert RunStore(tmp_path / stage["run_id"]).info()["status"] == "completed"
    (chain,) = summary["chains"]
    # the compiled counter, without noise, counts a exactly and never b (at CTe = 1 it is always one short)
    assert chain["pretrained"]["count_a"] == 1.0 and chain["pretrained"]["count_b_cte1"] == 0.0
    # a pure count(a) + 1 wrapper scores the multinomial rate of b = a + 1 at CTe = 0 (0.127 at the recipe's 40 letters)
    assert abs(chain["natural_shortcut_rate"] - _shortcut_rate(8)) < 0.01
    assert abs(_shortcut_rate(40) - 0.127) < 5e-4
    fine_tuned = json.loads((tmp_path / study["stages"][1]["run_id"] / "config.json").read_text())
    assert fine_tuned["train"]["init_from"] == study["stages"][0]["run_id"]
    assert fine_tuned["train"]["optimizer"] == "sgd" and fine_tuned["task"]["operand"] == "b"
    for cell in chain["cells"]:  # every cell is pruned and probed, with its controls
        pruning = cell["pruning"]
        assert [row["k"] for row in pruning["curve"]] == [0, 1, 2]
        assert [row["k"] for row in pruning["random"]] == [row["k"] for row in pruning["pretrained_same_units"]] == [0, 1, 2]
        # K = 0 of every control is the unpruned model: the fine-tuned one, and the pretrained one
        assert pruning["random"][0]["count_a"] == pruning["curve"][0]["count_a"] == cell["count_a"]
        assert pruning["pretrained_same_units"][0]["count_a"] == chain["pretrained"]["count_a"]
        assert set(cell["probes"]["accuracy"]) == {"count(a)", "count(b)", "count(c)"}
        assert len(cell["probes"]["accuracy"]["count(a)"]) == 4  # embeddings + 3 compiled blocks
    # pruning nothing changes nothing: K = 0 of the pretrained model's own curve is its unpruned accuracy
    assert chain["pretrained_pruning"][0]["count_a"] == chain["pretrained"]["count_a"]
    # the compiled counter computes count(a) exactly: a probe after its last block reads it far above the
    # majority class; an untrained model of the same shape does not
    probes = chain["probes"]
    assert probes["pretrained"]["accuracy"]["count(a)"][-1] > probes["pretrained"]["majority"]["count(a)"] + 0.3
    assert probes["untrained"]["accuracy"]["count(a)"][-1] < probes["pretrained"]["accuracy"]["count(a)"][-1] - 0.2
    # the compiled counting head (block 1) splits the readout's attention between BOS (1/(w+1)) and the
    # w a tokens, so its mass on them is E[w/(w+1)], w ~ Binomial(8, 1/9); nothing goes to b tokens
    head = next(h for h in chain["attention"]["pretrained"] if h["layer"] == 1)
    expected = sum(math.comb(8, w) * (1 / 9) ** w * (8 / 9) ** (8 - w) * w / (w + 1) for w in range(9))
    assert abs(head["onto_a"] - expected) < 0.05 and head["onto_b"] < 1e-3
    assert set(chain["revival"]) == {"reverse", "scratch", "swapped-ft"}
    (row,) = [r for r in summary["table"] if r["correlation"] == 1.0]
    assert row["count_b"]["n"] == 1 and row["count_b"]["interval"] is None  # one seed: no interval
    assert {p.name for p in (path / "figures").iterdir()} >= {"wrapper.png", "pruning.png", "pruning_gain.png",
                                                              "probes.png", "revival.png"}
    before = sorted(p.name for p in tmp_path.iterdir())
    again = run_study(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing retrained
    assert again["table"] == summary["table"]


def test_a_diverging_cell_is_a_result_and_the_study_goes_on(tmp_path):
    overrides = [o for o in TINY_STUDY if not o.startswith(("study.lr_names", "study.learning_rates"))]
    overrides += ["study.lr_names=[huge,small]", "study.learning_rates=[1.0e+6,0.001]", "study.correlations=[1.0]",
                  "study.seeds=2"]  # two chains: the table, figures and report over seeds
    path = create_study("finetune-tracr", overrides, tmp_path)
    summary = run_study(path)
    for chain in summary["chains"]:
        huge, small = chain["cells"]
        assert huge["diverged"] and huge["count_b"] is None and "pruning" not in huge
        assert not small["diverged"] and "pruning" in small
    assert [row["diverged"] for row in summary["table"]] == [2, 0]
    assert summary["table"][0]["count_b"]["n"] == 0 and summary["table"][1]["count_b"]["n"] == 2
    assert summary["table"][1]["pruning_gain"]["interval"] is not None
    assert (path / "report.html").is_file() and (path / "figures" / "pruning.png").is_file()
    assert run_study(path)["table"] == summary["table"]  # the diverged run is kept, not retrained


def test_chains_in_parallel_processes_give_the_same_study(tmp_path):
    overrides = TINY_STUDY + ["study.seeds=2", "study.correlations=[1.0]", "finetune.train.steps=10",
                              "finetune.train.checkpoint_every=10"]
    one = run_study(create_study("finetune-tracr", overrides, tmp_path / "one"))
    two = run_study(create_study("finetune-tracr", overrides + ["study.workers=2"], tmp_path / "two"))
    assert two["table"] == one["table"] and two["baselines"] == one["baselines"]
    strip = lambda chain: {k: v for k, v in chain.items() if k != "runs"}  # noqa: E731  (run ids differ)
    assert [strip(c) for c in two["chains"]] == [strip(c) for c in one["chains"]]


def test_seeded_study_plans_one_chain_per_seed(tmp_path):
    from caplab.studies.finetune import plan

    name, _, sections, cfg = load_study("finetune-tracr", TINY_STUDY + ["study.seeds=2"])
    stages = plan(name, sections, cfg)
    assert [s["stage"] for s in stages if s["base"] == "pretrain"] == ["pretrain-s0", "pretrain-s1"]
    reverse = next(s for s in stages if s["stage"] == "reverse-s1")
    assert reverse["init_from"] == "finetune-small-ctr1-s1" and reverse["recipe"]["train"]["seed"] == 1
    assert all(s["recipe"]["train"]["seed"] == s["seed"] for s in stages)
    with pytest.raises(ConfigError, match="priors"):
        plan(name, sections, load_study("finetune-tracr", TINY_STUDY + ["study.priors=[low]"])[3])


def test_table_means_and_intervals_over_seeds():
    from caplab.studies.finetune import FinetuneStudyConfig, _table

    cfg = FinetuneStudyConfig(lr_names=["m"], learning_rates=[1e-3], correlations=[1.0], focus_lr="m")
    chains = [{"prior": "low", "cells": [{"lr_name": "m", "lr": 1e-3, "correlation": 1.0, "count_b": v,
                                          "count_b_cte1": 1.0, "count_a": 0.5}]} for v in (0.1, 0.2, 0.3)]
    (row,) = _table(chains, cfg)
    assert row["count_b"]["mean"] == pytest.approx(0.2) and row["count_b"]["n"] == 3
    # Student's t with 2 degrees of freedom: 0.2 +- 4.303 x 0.1 / sqrt(3)
    assert row["count_b"]["interval"] == pytest.approx([0.2 - 0.24843, 0.2 + 0.24843], abs=1e-4)
    assert row["count_b_cte1"]["interval"] == [1.0, 1.0] and row["count_b"]["values"] == [0.1, 0.2, 0.3]


@pytest.mark.parametrize("override, message", [
    ("study.focus_lr=huge", "focus"),
    ("study.nope=1", "unknown key 'study.nope'"),
    ("model.d_model=3", "SECTION.KEY=VALUE"),
    ("finetune.train.stepz=3", "unknown key 'train.stepz'"),
])
def test_bad_study_overrides_fail_before_anything_runs(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        create_study("finetune-pcfg", [override], tmp_path)
    assert not (tmp_path / "studies").exists() or not any((tmp_path / "studies").iterdir())


def test_study_recipes_load():
    for name in ("finetune-pcfg", "finetune-tracr"):
        _, description, sections, cfg = load_study(name)
        assert description and sections["pretrain"]["task"]["name"] in ("pcfg_counting", "rasp_counting")


def test_cli_bad_study_key_is_one_line(tmp_path):
    result = caplab("run", "finetune-tracr", "--set", "study.focus_correlation=0.5", root=tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "focus" in result.stderr


def test_pcfg_study_reads_how_the_answers_follow_the_shortcut(tmp_path):
    # a tiny PCFG chain: every cell and the pretrained model get the answer-rule instrument (the shortcut
    # read from count(a) or from count(c)); its three rates are disjoint fractions of the separating documents
    overrides = [
        "pretrain.task.window=16", "pretrain.task.count_window=8", "pretrain.task.index_occurrence=1",
        "pretrain.task.eval_samples=64", "pretrain.model.d_model=32", "pretrain.train.steps=20",
        "pretrain.train.warmup_steps=2", "pretrain.train.eval_every=20", "pretrain.train.checkpoint_every=20",
        "pretrain.train.progress=never", "finetune.train.steps=10", "finetune.train.warmup_steps=2",
        "finetune.train.eval_every=10", "finetune.train.checkpoint_every=10", "reverse.train.steps=8",
        "reverse.train.eval_every=8", "reverse.train.checkpoint_every=8", "study.priors=[low]", "study.seeds=1",
        "study.lr_names=[small]", "study.learning_rates=[0.001]", "study.focus_lr=small", "study.correlations=[1.0]",
        "study.prune_max=2", "study.probe_samples=64", "study.probe_steps=10", "study.shortcut_samples=500",
    ]
    summary = run_study(create_study("finetune-pcfg", overrides, tmp_path))
    (chain,) = summary["chains"]
    for rules in [chain["answer_rules"]] + [cell["answer_rules"] for cell in chain["cells"]]:
        assert rules["n_separating"] > 0
        shares = [rules[k] for k in ("count(b)", "count(a)+1", "(K+1-count(c))/2")]
        assert all(0 <= s <= 1 for s in shares) and sum(shares) <= 1 + 1e-9
    (row,) = summary["table"]
    assert row["answer_rules"]["count(a)+1"]["mean"] == chain["cells"][0]["answer_rules"]["count(a)+1"]
    assert "answer_rules" in summary["baselines"]["low"]
    for knockout in [chain["letter_knockout"]] + [cell["letter_knockout"] for cell in chain["cells"]]:
        assert all(knockout[f"n_{x}"] > 0 and -8 <= knockout[x] <= 8 for x in ("a", "b", "c", "outside"))  # answers in 0..8
    assert row["letter_knockout"]["c"]["mean"] == chain["cells"][0]["letter_knockout"]["c"]
    assert "letter_knockout" in summary["baselines"]["low"]
    references = summary["baselines"]["low"]["knockout_references"]
    assert references["count(b)"]["tokens"] == pytest.approx({"a": 0, "b": -1, "c": 0, "outside": 0})
