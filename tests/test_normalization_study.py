"""The normalization study at toy scale: its arms, its controls, and resume without retraining."""

import json

import pytest

from caplab.studies import locate, resume
from caplab.studies.normalization import create_normalization, run_normalization

TOY = ["study.init_seeds=2", "study.seeds=2", "study.images=64", "study.batch_sizes=[4,32]",
       "study.train_norms=[batch,none]", "study.resnet_depth=14", "study.resnet_width=8", "study.uniform_depth=6",
       "study.uniform_width=8", "study.group_sizes=[1,8]", "study.depth_norms=[none,batch]", "study.probe_batch=16",
       "task.image_size=16", "task.eval_samples=32", "model.width=8", "model.depth=3", "model.stages=2"]


@pytest.mark.slow
def test_normalization_study_runs_its_three_arms_and_resumes_without_retraining(tmp_path):
    path = create_normalization("normalization", TOY, tmp_path)
    summary = run_normalization(path)
    growth = summary["activation_growth"]
    assert set(growth) == {"none", "none+skipinit", "batch", "batch+skipinit"}
    # without normalization each block roughly doubles the stream's variance; SkipInit blocks pass it through
    assert growth["none"]["last_over_first"]["mean"] > 10 * growth["none+skipinit"]["last_over_first"]["mean"]
    groups = summary["group_size"]
    # one channel per group (InstanceNorm) keeps samples apart; all channels in one group (LayerNorm) does not
    assert groups["group size 1"]["cosine_last"]["mean"] < groups["group size 8"]["cosine_last"]["mean"]
    accuracy = summary["small_batch_accuracy"]
    assert set(accuracy) == {"batch", "none"} and set(accuracy["batch"]) == {"4", "32"}
    assert accuracy["batch"]["4"]["accuracy"]["n"] == 2 and accuracy["batch"]["32"]["change_from_largest"] is None
    assert not summary["failed_runs"] and (path / "report.html").is_file()
    assert len(list((path / "figures").glob("*.png"))) == 4

    runs = json.loads((path / "study.json").read_text())["runs"]
    before = sorted(p.name for p in tmp_path.iterdir() if (p / "run.json").is_file())
    assert len(before) == len(runs) == 8
    assert locate(path.name, tmp_path) == ("normalization", path)
    lines = resume(path.name, tmp_path)  # everything done: nothing retrained, the same summary
    assert lines[-1] == str(path) and sorted(p.name for p in tmp_path.iterdir() if (p / "run.json").is_file()) == before
    assert json.loads((path / "summary.json").read_text())["small_batch_accuracy"] == summary["small_batch_accuracy"]


def test_bad_normalization_recipes_fail_before_anything_runs(tmp_path):
    from caplab.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown norm 'bn' in study"):
        create_normalization("normalization", ["study.train_norms=[bn]"], tmp_path)
    with pytest.raises(ConfigError, match="a normalization recipe takes SECTION.KEY=VALUE"):
        create_normalization("normalization", ["steps=3"], tmp_path)
    with pytest.raises(ConfigError, match="group_sizes must divide"):
        create_normalization("normalization", ["study.group_sizes=[3]"], tmp_path)
    assert not (tmp_path / "studies").exists()
