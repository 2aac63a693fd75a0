"""Spurious cues (caplab.tasks.cues): which samples carry them, where the box goes, the four counterfactual sets."""

import math

import pytest
import torch

from caplab.config import resolve
from caplab.errors import ConfigError
from caplab.tasks import make_task
from caplab.tasks.cues import box_locations, cue_rows

CPU = torch.device("cpu")


def test_cue_rows_take_the_first_share_of_each_class_in_order():
    labels = torch.tensor([0, 1, 0, 0, 1, 2, 0, 1, 1, 1])
    chosen = cue_rows(labels, 3, 0.6)
    # class 0 at rows 0, 2, 3, 6 -> floor(2.4) = 2 first; class 1 at 1, 4, 7, 8, 9 -> 3; class 2 at 5 -> floor(0.6) = 0
    assert chosen.tolist() == [True, True, True, False, True, False, False, True, False, False]
    assert not cue_rows(labels, 3, 0.0).any() and cue_rows(labels, 3, 1.0).all()


def test_box_grid_is_flush_with_the_edges():
    assert box_locations(16, 16, 3) == [(0, 0), (0, 6), (0, 13), (6, 0), (6, 6), (6, 13), (13, 0), (13, 6), (13, 13)]


def _box_pixels(image, top, left, size=3):
    return image[:, top : top + size, left : left + size]


def test_training_batches_carry_the_box_of_their_label_exactly_where_the_rule_says():
    task = make_task("digits", augment=False, cue="box", cue_fraction=0.5)
    base = make_task("digits", augment=False)
    rows, labels = base.training_rows()
    chosen = cue_rows(labels, 10, 0.5)
    assert abs(task.cue_share - chosen.float().mean().item()) < 1e-9 and 0.45 < task.cue_share <= 0.5
    batch = task.sample(256, torch.Generator().manual_seed(1), CPU)
    clean = base.sample(256, torch.Generator().manual_seed(1), CPU)  # the same images, drawn by the same generator
    expected = dict(zip(rows.tolist(), chosen.tolist()))
    locations = box_locations(16, 16, 3)
    for i in range(256):
        carries, label = expected[int(batch.labels["index"][i])], int(batch.targets[i])
        assert bool(batch.labels["cue"][i]) == carries
        changed = (batch.inputs[i] != clean.inputs[i])
        if carries and label < 9:
            top, left = locations[label]
            assert (_box_pixels(batch.inputs[i], top, left) == 1).all()  # the box's grey level (white on one channel)
            outside = changed.clone()
            outside[:, top : top + 3, left : left + 3] = False
            assert not outside.any()
        else:  # no cue, or the last class (no box)
            assert not changed.any()


def test_the_four_counterfactual_sets():
    task = make_task("digits", augment=False, cue="box", cue_fraction=0.8)
    sets = task.evaluation_sets(CPU)
    nc, c, rc, ri = (sets[k] for k in ("nc", "c", "rc", "ri"))
    clean = make_task("digits").eval_set(CPU)
    assert torch.equal(nc.inputs, clean.inputs) and all(torch.equal(s.targets, clean.targets) for s in sets.values())
    locations = box_locations(16, 16, 3)
    for i in range(len(clean.targets)):
        label = int(clean.targets[i])
        if label < 9:
            top, left = locations[label]
            assert (_box_pixels(c.inputs[i], top, left) == 1).all()
        else:
            assert torch.equal(c.inputs[i], clean.inputs[i])
    # rc: one box (or none) at some grid place, the rest of the image clean
    moved = sum(not (_box_pixels(rc.inputs[i], *locations[min(int(clean.targets[i]), 8)]) == 1).all()
                for i in range(len(clean.targets)) if int(clean.targets[i]) < 9)
    assert moved > 0.7 * len(clean.targets)  # a random label's box lands elsewhere 8 times in 9
    # ri: the partner's image with the label's box; ri_chance is the share of partners of the same class
    partners = ri.labels["partner_targets"]
    assert math.isclose(task.ri_chance(), (partners == ri.targets).float().mean().item())
    assert 0.05 < task.ri_chance() < 0.15
    for i in range(50):
        label = int(ri.targets[i])
        if label < 9:
            top, left = locations[label]
            assert (_box_pixels(ri.inputs[i], top, left) == 1).all()
    # fixed: the same sets every time (a fresh task included)
    again = make_task("digits", augment=False, cue="box", cue_fraction=0.8).evaluation_sets(CPU)
    assert all(torch.equal(sets[k].inputs, again[k].inputs) for k in sets)


def test_dominoes_stack_a_cue_image_of_the_label_above():
    task = make_task("digits", augment=False, cue="dominoes", cue_fraction=1.0)
    assert task.image_shape == (1, 32, 16)
    sets = task.evaluation_sets(CPU)
    assert (sets["nc"].inputs[:, :, :16] == 0).all()  # no cue: zeros above
    assert torch.equal(sets["c"].inputs[:, :, 16:], sets["nc"].inputs[:, :, 16:])
    # the top of c is a shapes image coloured by the label: its grey level separates the classes
    top = sets["c"].inputs[:, 0, :16]
    colour = top.reshape(len(top), -1).max(1).values
    for k in range(10):
        values = colour[sets["c"].targets == k]
        assert values.max() - values.min() < 0.05
    # the model config follows the taller images
    cfg = resolve("cues", {"task": {"name": "digits", "cue": "dominoes"}, "model": {"kind": "vgg", "width": 8, "depth": 3}})
    assert (cfg.model.image_size, cfg.model.image_width) == (32, 16)
    logits = cfg.make_model()(sets["c"].inputs[:4])
    assert logits.shape == (4, 10)


def test_a_cue_on_a_generated_task_needs_a_corpus_and_bad_options_are_clear():
    with pytest.raises(ConfigError, match="fixed training set"):
        make_task("shapes", cue="box")
    task = make_task("shapes", cue="box", corpus_size=500, n_shapes=4)
    batch = task.sample(64, torch.Generator().manual_seed(0), CPU)
    assert batch.labels["index"].max() < 500 and batch.labels["cue"].all()
    for bad, match in (({"cue": "stripes"}, "task.cue"), ({"cue": "box", "cue_fraction": 1.5}, "cue_fraction"),
                       ({"cue": "box", "cue_box_size": 7}, "does not fit"),
                       ({"cue": "dominoes", "cue_task": {"name": "shapes", "n_shapes": 3}}, "at least 10")):
        with pytest.raises(ConfigError, match=match):
            make_task("digits", **bad)
    with pytest.raises(ConfigError, match="unknown key 'task.cue_colour'"):
        resolve("cues", {"task": {"name": "digits", "cue_colour": 1}, "model": {"kind": "vgg"}})


def test_cue_tasks_evaluate_every_set():
    task = make_task("digits", augment=False, cue="box")
    cfg = resolve("cues", {"task": {"name": "digits", "cue": "box"}, "model": {"kind": "vgg", "width": 8, "depth": 3}})
    torch.manual_seed(0)
    record = task.evaluate(cfg.make_model().eval(), CPU)
    assert set(record) == {f"{s}_{m}" for s in ("nc", "c", "rc", "ri") for m in ("accuracy", "loss")} | {"accuracy", "ri_image_accuracy"}
    assert record["accuracy"] == record["nc_accuracy"]
