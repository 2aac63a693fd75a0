"""Exports for other tools: every checkpoint as a HuggingFace folder (Pythia-style revisions) and a task's
samples as Parquet, each read back with the other tool."""

import json

import pytest
import torch

from caplab import RunStore, load_config, load_model, make_task, run_experiment
from caplab.tasks.export import write_parquet
from helpers import TINY, caplab


def test_every_checkpoint_becomes_a_huggingface_revision(tmp_path):
    pytest.importorskip("transformers")
    from transformers import GPT2LMHeadModel

    store = RunStore(run_experiment(load_config("demo", TINY), tmp_path / "runs"))
    result = caplab("export", store.run_id, "--checkpoints", "hf", str(tmp_path / "hf"), root=tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    steps = [c["step"] for c in store.manifest()["checkpoints"]]
    revisions = json.loads((tmp_path / "hf" / "revisions.json").read_text())["revisions"]
    assert [r["step"] for r in revisions] == steps and [r["revision"] for r in revisions] == [f"step{s}" for s in steps]
    tokens = torch.randint(load_config("demo", TINY).model.d_vocab, (2, 9), generator=torch.Generator().manual_seed(0))
    for step in (steps[0], steps[-1]):
        ours, _ = load_model(store.run_id, step, tmp_path / "runs")
        theirs = GPT2LMHeadModel.from_pretrained(tmp_path / "hf" / f"step{step}").eval()
        with torch.no_grad():
            assert (theirs(tokens).logits - ours(tokens)).abs().max().item() < 1e-4
    assert theirs.config.bos_token_id == load_config("demo", TINY).make_task().start


def test_a_tasks_samples_as_parquet_read_back_by_pyarrow_and_datasets(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    task = make_task("compositions", n_depths=3, n_functions=2, n_train_compositions=8)
    path = write_parquet(task, tmp_path / "samples.parquet", 50, seed=3, config={"name": "compositions"})
    table = pq.read_table(path)
    batch = task.sample(50, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert table.num_rows == 50 and table.column("inputs").to_pylist() == batch.inputs.tolist()
    assert table.column("targets").to_pylist() == batch.targets.tolist()
    assert json.loads(table.schema.metadata[b"caplab"])["seed"] == 3
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train")
    assert loaded[7]["inputs"] == batch.inputs[7].tolist()


def test_image_samples_keep_their_shape(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    task = make_task("shapes", image_size=12, n_shapes=4, n_colours=2, n_positions=4)
    table = pq.read_table(write_parquet(task, tmp_path / "images.parquet", 5, seed=1))
    batch = task.sample(5, torch.Generator().manual_seed(1), torch.device("cpu"))
    row = table.slice(2, 1).to_pylist()[0]
    image = torch.tensor(row["inputs"]).reshape(row["shape"])
    assert torch.allclose(image, batch.inputs[2]) and row["targets"] == int(batch.targets[2])


def test_export_without_a_target_is_one_line(tmp_path):
    store = RunStore(run_experiment(load_config("demo", TINY), tmp_path))
    result = caplab("export", store.run_id, root=tmp_path)
    assert result.returncode == 2 and "say what to export" in result.stderr
