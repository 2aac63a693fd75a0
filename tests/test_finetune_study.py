"""A fine-tuning study end to end on a tiny compiled counter, and its config errors."""

import json
import math

import pytest

from caplab.errors import ConfigError
from caplab.finetune_study import create_study, load_study, run_study
from caplab.runs.store import RunStore
from helpers import caplab

TINY_STUDY = [
    "pretrain.task.length=8", "pretrain.task.eval_samples=128", "pretrain.train.progress=never",
    "finetune.train.steps=30", "finetune.train.warmup_steps=5", "finetune.train.eval_every=10",
    "finetune.train.checkpoint_every=30",
    "reverse.train.steps=16", "reverse.train.eval_every=8", "reverse.train.checkpoint_every=16",
    "study.lr_names=[small]", "study.learning_rates=[0.001]", "study.focus_lr=small",
    "study.prune_max=2", "study.probe_samples=64", "study.probe_steps=20", "study.noise=0.0",
]


def test_tracr_study_runs_every_stage_and_resumes_without_retraining(tmp_path):
    path = create_study("finetune-tracr", TINY_STUDY, tmp_path)
    summary = run_study(path)
    study = json.loads((path / "study.json").read_text())
    stages = [s["stage"] for s in study["stages"]]
    assert stages == ["pretrain", "finetune-small-ctr0", "finetune-small-ctr1", "reverse", "scratch", "swapped", "swapped-ft"]
    for stage in study["stages"]:
        assert RunStore(tmp_path / stage["run_id"]).info()["status"] == "completed"
    # the compiled counter, without noise, counts a exactly and never b (at CTe = 1 it is always one short)
    assert summary["pretrained"]["count_a"] == 1.0 and summary["pretrained"]["count_b_cte1"] == 0.0
    fine_tuned = json.loads((tmp_path / study["stages"][1]["run_id"] / "config.json").read_text())
    assert fine_tuned["train"]["init_from"] == study["stages"][0]["run_id"]
    assert fine_tuned["train"]["optimizer"] == "sgd" and fine_tuned["task"]["operand"] == "b"
    assert [row["k"] for row in summary["pruning"]["curve"]] == [0, 1, 2]
    assert set(summary["probes"]["finetuned"]) == {"count(a)", "count(b)"}
    assert len(summary["probes"]["finetuned"]["count(a)"]) == 4  # embeddings + 3 compiled blocks
    # the compiled counting head (block 1) splits the readout's attention between BOS (1/(w+1)) and the
    # w a tokens, so its mass on them is E[w/(w+1)], w ~ Binomial(8, 1/9); nothing goes to b tokens
    head = next(h for h in summary["attention"]["pretrained"] if h["layer"] == 1)
    expected = sum(math.comb(8, w) * (1 / 9) ** w * (8 / 9) ** (8 - w) * w / (w + 1) for w in range(9))
    assert abs(head["onto_a"] - expected) < 0.05 and head["onto_b"] < 1e-3
    assert set(summary["revival"]) == {"reverse", "scratch", "swapped-ft"}
    assert {p.name for p in (path / "figures").iterdir()} >= {"wrapper.png", "pruning.png", "probes.png", "revival.png"}
    before = sorted(p.name for p in tmp_path.iterdir())
    again = run_study(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing retrained
    assert again["grid"] == summary["grid"]


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
