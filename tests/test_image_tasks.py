"""Image tasks: the shapes renderer, scikit-learn's digits and the CIFAR-10 binary parser."""

import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from caplab.errors import ConfigError
from caplab.tasks import make_task
from caplab.tasks.cifar10 import RECORD, read_batch_file
from caplab.tasks.shapes import CONCEPTS, hsv_to_rgb

CPU = torch.device("cpu")


def test_shapes_batches_are_deterministic_and_shaped():
    task = make_task("shapes", image_size=32, n_shapes=8, n_colours=6, n_positions=9, target="colour")
    a = task.sample(64, torch.Generator().manual_seed(3), CPU)
    b = task.sample(64, torch.Generator().manual_seed(3), CPU)
    assert a.inputs.shape == (64, 3, 32, 32) and torch.equal(a.inputs, b.inputs)
    assert a.inputs.min() >= -1 and a.inputs.max() <= 1
    assert torch.equal(a.targets, a.labels["colour"]) and set(a.labels) == set(CONCEPTS)
    assert task.n_classes == 6 and task.image_shape == (3, 32, 32)


def test_shapes_render_is_fast():
    task = make_task("shapes", n_shapes=8, n_colours=8, n_sizes=3, n_positions=9, n_backgrounds=3)
    g = torch.Generator().manual_seed(0)
    task.sample(16, g, CPU)
    start = time.perf_counter()
    task.sample(4096, g, CPU)
    assert time.perf_counter() - start < 1.0


def test_shapes_pixels_follow_the_concepts():
    task = make_task("shapes", n_colours=3, n_backgrounds=2, n_sizes=2, jitter=0.0)
    concepts = {"shape": torch.tensor([0, 1]), "colour": torch.tensor([2, 2]), "size": torch.tensor([1, 1]),
                "position": torch.tensor([0, 0]), "background": torch.tensor([1, 1])}
    images = task.render(concepts)
    cx, cy = (int(v) for v in task.centres[0])
    torch.testing.assert_close(images[0, :, cy, cx], hsv_to_rgb(torch.tensor([2 / 3]), 0.85, 0.95)[0])
    torch.testing.assert_close(images[0, :, 0, 0], torch.full((3,), 0.35))  # the lighter background, in a corner
    radius = float(task.radii[1])
    area_circle = (images[0, 0] != images[0, 0, 0, 0]).float().sum().item()  # pixels touched by the object
    assert abs(area_circle - math.pi * radius ** 2) < 2 * math.pi * radius + 4  # within the anti-aliased rim
    area_square = (images[1, 0] != images[1, 0, 0, 0]).float().sum().item()
    assert abs(area_square - (1.6 * radius) ** 2) < 4 * 1.6 * radius + 4


def _probe_accuracy(task, concept, steps=400):
    """A tiny conv probe trained briefly on rendered images; held-out accuracy on one concept."""
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(32 * 4 * 4, task.cfg.values(concept)))  # 24 x 24 -> 10 x 10 -> 4 x 4
    optimizer = torch.optim.Adam(probe.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        batch = task.sample(128, g, CPU)
        loss = nn.functional.cross_entropy(probe(batch.inputs), batch.labels[concept])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = task.sample(512, torch.Generator().manual_seed(2), CPU)
    with torch.no_grad():
        return (probe(test.inputs).argmax(-1) == test.labels[concept]).float().mean().item()


@pytest.mark.slow
def test_every_shapes_concept_is_recoverable_by_a_tiny_probe():
    task = make_task("shapes", image_size=24, n_shapes=4, n_colours=4, n_sizes=2, n_positions=4, n_backgrounds=2)
    for concept in CONCEPTS:
        assert _probe_accuracy(task, concept) > 0.95, concept


def test_digits_split_and_augmentation():
    pytest.importorskip("sklearn")
    task = make_task("digits", image_size=16)
    train, held = task.split["train"], task.split["held_out"]
    assert len(train) + len(held) == 1797 and len(held) == round(1797 * 0.25)
    assert not set(train.tolist()) & set(held.tolist())
    a = task.sample(32, torch.Generator().manual_seed(0), CPU)
    b = task.sample(32, torch.Generator().manual_seed(0), CPU)
    assert a.inputs.shape == (32, 1, 16, 16) and torch.equal(a.inputs, b.inputs)
    assert set(a.labels["index"].tolist()) <= set(train.tolist())
    plain = make_task("digits", image_size=16, augment=False).sample(32, torch.Generator().manual_seed(0), CPU)
    assert torch.equal(plain.labels["index"], a.labels["index"]) and not torch.allclose(plain.inputs, a.inputs)
    evaluation = task.eval_set(CPU)
    assert len(evaluation.targets) == len(held) and torch.equal(evaluation.labels["index"], held)


def _write_cifar_fixture(folder, n_per_file=20, seed=0):
    """Files in the exact CIFAR-10 binary layout: label byte, then 1,024 red, green and blue bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, n_per_file, dtype=np.uint8)
        planes = rng.integers(0, 256, (n_per_file, 3, 32, 32), dtype=np.uint8)
        records = np.concatenate([labels[:, None], planes.reshape(n_per_file, -1)], 1)
        (folder / name).write_bytes(records.tobytes())
        written[name] = (labels, planes)
    return written


def test_cifar10_parser_reads_the_binary_layout(tmp_path):
    written = _write_cifar_fixture(tmp_path / "cifar-10-batches-bin")
    images, labels = read_batch_file(tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin")
    expected_labels, expected_planes = written["data_batch_3.bin"]
    assert torch.equal(labels, torch.from_numpy(expected_labels.astype(np.int64)))
    assert torch.equal(images, torch.from_numpy(expected_planes))  # channel planes, row-major
    task = make_task("cifar10", path=str(tmp_path / "cifar-10-batches-bin"), augment=False)
    assert task.describe()["train_images"] == 100 and task.describe()["eval_images"] == 20
    batch = task.eval_set(CPU)
    red = (expected_planes_test := written["test_batch.bin"][1])[:, 0].astype(np.float32) / 255
    torch.testing.assert_close(batch.inputs[:, 0], (torch.from_numpy(red) - 0.4914) / 0.2470)
    assert expected_planes_test.shape == (20, 3, 32, 32)
    augmented = make_task("cifar10", path=str(tmp_path / "cifar-10-batches-bin")).sample(8, torch.Generator().manual_seed(0), CPU)
    assert augmented.inputs.shape == (8, 3, 32, 32)


def test_cifar10_bad_paths_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        make_task("cifar10", path=str(tmp_path / "nowhere"))
    folder = tmp_path / "cifar-10-batches-bin"
    _write_cifar_fixture(folder)
    (folder / "data_batch_2.bin").write_bytes(b"\x00" * (RECORD * 3 + 5))
    with pytest.raises(ConfigError, match="data_batch_2.bin is not in the binary format"):
        make_task("cifar10", path=str(folder))
    (folder / "data_batch_2.bin").unlink()
    with pytest.raises(ConfigError, match="data_batch_2.bin is missing"):
        make_task("cifar10", path=str(folder))
    with pytest.raises(ConfigError, match="needs task.path"):
        make_task("cifar10")
