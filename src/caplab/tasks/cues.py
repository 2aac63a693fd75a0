"""Spurious cues on any image task, and the counterfactual sets that show whether a model relies on them.

After Lubana et al. (ICML 2023, "Mechanistic Mode Connectivity"): a simple
attribute tied to the label is added to a fraction of the training images, so
a model can classify either by the image's own content or by the cue.

    task.cue=box         a `cue_box_size`-pixel square on a 3 x 3 grid (corners, edge midpoints, centre),
                         flush with the edges; class k sits at location k mod 9 and, where the classes
                         outnumber the locations, takes colour k div 9; the last class has no box (as on the
                         paper's CIFAR-10). Box pixels replace the image's.
    task.cue=dominoes    an image of the same class from another image task (`cue_task`, resized and with
                         the channels matched) stacked above the image; zeros where a sample has no cue

Which training samples carry the cue is fixed, as in the paper's code: of each
class, the first floor(p n_c) samples of the training set in its order
(`cue_fraction` = p). So the task needs a fixed training set: digits, cifar10,
or any image task with `task.corpus_size`. Training images are augmented (if
the task augments) before the cue is added, so the cue never moves.

Evaluation scores four versions of the held-out images (`evaluation_sets`):

    nc   no cue (the clean images)          accuracy from the image's own content
    c    the cue of the label, always       what a cue-trained model scores at best
    rc   the cue of a random label          a cue-reliant model drops here
    ri   a random other image carrying the cue of the label (targets stay the label)
         a cue-reliant model scores high; a model blind to the cue scores `ri_chance`, the share of images
         whose random partner has the same class

`accuracy` is the clean (nc) accuracy; `ri_image_accuracy` scores the ri answers against
the partner image's own class (how often the model follows the image, not the cue).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from caplab.errors import ConfigError
from caplab.tasks.base import Batch
from caplab.tasks.images import EVAL_CHUNK, ImageTask
from caplab.tasks.shapes import hsv_to_rgb

SETS = ("nc", "c", "rc", "ri")
CUE_KEYS = ("cue", "cue_fraction", "cue_box_size", "cue_task", "cue_seed")
GRID = 3  # box locations per side


@dataclass
class CueConfig:
    cue: Literal["none", "box", "dominoes"] = "none"
    cue_fraction: float = 1.0  # p: share of each class's training samples that carry the cue
    cue_box_size: int = 3  # pixels
    cue_task: dict = field(default_factory=dict)  # dominoes: {name: ..., options}; {}: shapes coloured by class
    cue_seed: int = 0  # the random labels and partner images of the rc and ri sets, and the dominoes images

    def __post_init__(self) -> None:
        if self.cue not in ("none", "box", "dominoes"):
            raise ValueError(f"bad value {self.cue!r} for 'task.cue'; valid: none, box, dominoes")
        if not 0 <= self.cue_fraction <= 1:
            raise ValueError(f"task.cue_fraction must lie in [0, 1], got {self.cue_fraction}")
        if self.cue_box_size < 1:
            raise ValueError(f"task.cue_box_size must be at least 1, got {self.cue_box_size}")
        if not isinstance(self.cue_task, dict):
            raise ValueError(f"task.cue_task must be a mapping such as {{name: shapes, target: colour}}, got {self.cue_task!r}")


def box_locations(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """(top, left) of the 3 x 3 grid's boxes, row by row: corners and edges flush with the image's border."""
    spots = lambda extent: (0, (extent - size) // 2, extent - size)  # noqa: E731
    return [(top, left) for top in spots(height) for left in spots(width)]


def box_colours(n_colours: int, channels: int) -> torch.Tensor:
    """(n_colours, channels) box values, written into the model's input space as the paper's code writes its
    RGB values in [0, 1] into normalised space: (0, 1, 0) first (its CIFAR-10 box), then hues round the wheel;
    one channel: grey levels from 1 down."""
    if channels == 1:
        return torch.linspace(1.0, -0.5, n_colours)[:, None] if n_colours > 1 else torch.ones(1, 1)
    rgb = hsv_to_rgb((1 / 3 + torch.arange(n_colours) / n_colours) % 1, 1.0, 1.0)
    return rgb if channels == 3 else rgb.mean(1, keepdim=True).expand(n_colours, channels)


def cue_rows(labels: torch.Tensor, n_classes: int, fraction: float) -> torch.Tensor:
    """(n,) bool: of each class, the first floor(fraction x its count) samples in order."""
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    for k in range(n_classes):
        rows = (labels == k).nonzero().squeeze(1)
        chosen[rows[: math.floor(fraction * len(rows))]] = True
    return chosen


def match_images(images: torch.Tensor, channels: int, height: int, width: int) -> torch.Tensor:
    """`images` resized (bilinear) to height x width with `channels` channels (grey <-> RGB by mean / repeat)."""
    if images.shape[1] != channels:
        images = images.mean(1, keepdim=True)
        images = images.expand(-1, channels, -1, -1)
    if images.shape[2:] != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return images.contiguous()


class CueTask(ImageTask):
    """`task` with a spurious cue on a fixed share of its training samples (see module docstring)."""

    def __init__(self, task: ImageTask, cfg: CueConfig) -> None:
        if not isinstance(task, ImageTask) and getattr(task, "input_kind", None) != "images":
            raise ConfigError(f"task.cue needs an image task; {task.name} reads {task.input_kind}")
        if not hasattr(task, "training_rows"):
            raise ConfigError(f"task.cue needs a fixed training set; task {task.name} draws fresh images: "
                              "set task.corpus_size too")
        self.task, self.cfg = task, cfg
        self.name, self.Config = task.name, task.Config
        self.n_classes = task.n_classes
        channels, height, width = task.image_shape
        self.base_shape = (channels, height, width)
        self.image_shape = (channels, 2 * height, width) if cfg.cue == "dominoes" else task.image_shape
        rows, labels = task.training_rows()
        carried = cue_rows(labels.cpu(), self.n_classes, cfg.cue_fraction)
        self.carries = torch.zeros(int(rows.max()) + 1, dtype=torch.bool)  # by the row id batches carry as `index`
        self.carries[rows.cpu()] = carried
        self.cue_share = float(carried.float().mean())
        if cfg.cue == "box":
            self.locations = box_locations(height, width, cfg.cue_box_size)
            if cfg.cue_box_size * GRID > min(height, width):
                raise ConfigError(f"task.cue_box_size={cfg.cue_box_size} does not fit a 3 x 3 grid on {height} x {width} images")
            self.colours = box_colours(math.ceil((self.n_classes - 1) / len(self.locations)), channels)
        if cfg.cue == "dominoes":
            self.pool = self._dominoes_pool()
        self._sets: dict[str, dict[str, Batch]] = {}

    # ------------------------------------------------------------ the cue

    def _dominoes_pool(self) -> list[torch.Tensor]:
        """Per class, a fixed list of the cue task's images of that class (matched to the base images)."""
        from caplab.tasks import make_task  # the registry imports this module

        options = dict(self.cfg.cue_task) or {"name": "shapes", "target": "colour", "n_colours": self.n_classes}
        name = options.pop("name", None)
        if not name:
            raise ConfigError("task.cue_task needs a name (an image task), e.g. {name: shapes, target: colour}")
        cue_task = make_task(name, **options)
        if getattr(cue_task, "input_kind", None) != "images":
            raise ConfigError(f"task.cue_task {name!r} is not an image task")
        if cue_task.n_classes < self.n_classes:
            raise ConfigError(f"task.cue_task {name!r} has {cue_task.n_classes} classes; the cue needs at least {self.n_classes}")
        generator = torch.Generator().manual_seed(self.cfg.cue_seed + 101)
        images, labels = [], []
        for _ in range(64):  # draw until every class has images (a handful of draws for balanced tasks)
            batch = cue_task.sample(512, generator, torch.device("cpu"))
            images.append(batch.inputs), labels.append(batch.targets)
            counts = torch.bincount(torch.cat(labels), minlength=self.n_classes)[: self.n_classes]
            if counts.min() >= 32:
                break
        images, labels = torch.cat(images), torch.cat(labels)
        if counts.min() == 0:
            raise ConfigError(f"task.cue_task {name!r} never drew an image of class {int(counts.argmin())}")
        channels, height, width = self.base_shape
        return [match_images(images[labels == k], channels, height, width) for k in range(self.n_classes)]

    def add_cue(self, images: torch.Tensor, cue_labels: torch.Tensor, carries: torch.Tensor,
                pick: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`images` with the cue of `cue_labels` where `carries` (dominoes: stacked, zeros above the rest;
        `pick` chooses each sample's cue image within its class's pool)."""
        if self.cfg.cue == "none":
            return images
        if self.cfg.cue == "dominoes":
            top = torch.zeros_like(images)
            if pick is None:
                pick = torch.arange(len(images), device=images.device)
            for k in range(self.n_classes):
                rows = ((cue_labels == k) & carries).nonzero().squeeze(1)
                if len(rows):
                    pool = self.pool[k].to(images.device)
                    top[rows] = pool[pick[rows] % len(pool)]
            return torch.cat([top, images], dim=2)
        out, s = images.clone(), self.cfg.cue_box_size
        last = self.n_classes - 1
        for k in range(last):  # the last class has no box
            rows = ((cue_labels == k) & carries).nonzero().squeeze(1)
            if len(rows):
                top, left = self.locations[k % len(self.locations)]
                colour = self.colours[k // len(self.locations)].to(images.device)
                out[rows, :, top : top + s, left : left + s] = colour[:, None, None]
        return out

    # ------------------------------------------------------------ training data

    def sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        batch = self.task.sample(batch_size, generator, device)
        index = batch.labels["index"]
        carries = self.carries.to(index.device)[index]
        inputs = self.add_cue(batch.inputs, batch.targets, carries, pick=index)
        return Batch(inputs, batch.targets, batch.mask, {**batch.labels, "cue": carries.to(torch.long)})

    def clean_sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        """Training images without any cue (dominoes: with the empty top half), e.g. to refresh normalization statistics."""
        batch = self.task.sample(batch_size, generator, device)
        none = torch.zeros(len(batch.targets), dtype=torch.bool, device=batch.targets.device)
        return Batch(self.add_cue(batch.inputs, batch.targets, none), batch.targets, batch.mask, batch.labels)

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.task.training_rows()

    def training_batch(self, rows: torch.Tensor, device, cue: "bool | str" = True) -> Batch:
        """The training images of these row ids (no augmentation), with the cue where the rule puts it
        (`cue=True`), on every image (`cue="all"`) or on none (False)."""
        batch = self.task.training_batch(rows, device)
        carries = self.carries.to(rows.device)[rows].to(batch.targets.device)
        carries = torch.ones_like(carries) if cue == "all" else carries & bool(cue)
        inputs = self.add_cue(batch.inputs, batch.targets, carries, pick=batch.labels["index"])
        return Batch(inputs, batch.targets, batch.mask, {**batch.labels, "cue": carries.to(torch.long)})

    def finetuning_sets(self, clean_share: float, seed: int, device) -> tuple[Batch, Batch]:
        """The paper's D_NC and D_C: floor(clean_share n) clean training samples and the other n - that many,
        every one with its label's cue (the paper's code builds D_C at its default cue share of 1, whatever the
        cue model was trained on), each drawn with replacement from the n training samples."""
        rows, _ = self.training_rows()
        n_clean = max(1, math.floor(clean_share * len(rows)))
        generator = torch.Generator().manual_seed(seed)
        clean = rows[torch.randint(len(rows), (n_clean,), generator=generator)]
        cued = rows[torch.randint(len(rows), (len(rows) - n_clean,), generator=generator)]
        return self.training_batch(clean, device, cue=False), self.training_batch(cued, device, cue="all")

    @property
    def units_per_sample(self) -> int:
        return 1

    def held_out(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        data = self.evaluation_sets(device)["nc"]
        return Batch(data.inputs[:batch_size], data.targets[:batch_size], data.mask[:batch_size])

    # ------------------------------------------------------------ the counterfactual sets

    def evaluation_sets(self, device) -> dict[str, Batch]:
        """The held-out images as nc, c, rc and ri (see module docstring); fixed for a given cue_seed."""
        key = str(device)
        if key not in self._sets:
            base = self.task.eval_set(device)
            x, y, n = base.inputs, base.targets, len(base.targets)
            generator = torch.Generator().manual_seed(self.cfg.cue_seed + 7)
            random_labels = torch.randint(self.n_classes, (n,), generator=generator).to(y.device)
            partners = torch.randperm(n, generator=generator).to(y.device)
            pick = torch.randint(1 << 30, (n,), generator=generator).to(y.device)
            everyone, nobody = torch.ones(n, dtype=torch.bool, device=y.device), torch.zeros(n, dtype=torch.bool, device=y.device)
            ones = torch.ones(n, device=x.device)
            self._sets[key] = {
                "nc": Batch(self.add_cue(x, y, nobody), y, ones),
                "c": Batch(self.add_cue(x, y, everyone, pick), y, ones),
                "rc": Batch(self.add_cue(x, random_labels, everyone, pick), y, ones),
                "ri": Batch(self.add_cue(x[partners], y, everyone, pick), y, ones, {"partner_targets": y[partners]}),
            }
        return self._sets[key]

    def eval_set(self, device) -> Batch:
        return self.evaluation_sets(device)["nc"]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device) -> dict[str, float]:
        """Accuracy and mean cross-entropy on each counterfactual set; `accuracy` is the clean one."""
        record = {}
        for name, data in self.evaluation_sets(device).items():
            logits = torch.cat([model(data.inputs[i : i + EVAL_CHUNK]) for i in range(0, len(data.targets), EVAL_CHUNK)]).float()
            record[f"{name}_accuracy"] = (logits.argmax(-1) == data.targets).float().mean().item()
            record[f"{name}_loss"] = F.cross_entropy(logits, data.targets).item()
            if "partner_targets" in data.labels:  # ri: how often the answer is the image's own class (image reliance)
                record[f"{name}_image_accuracy"] = (logits.argmax(-1) == data.labels["partner_targets"]).float().mean().item()
        record["accuracy"] = record["nc_accuracy"]
        return record

    def ri_chance(self, device=torch.device("cpu")) -> float:
        """The ri accuracy of a model that ignores the cue and classifies every image right."""
        ri = self.evaluation_sets(device)["ri"]
        return (ri.labels["partner_targets"] == ri.targets).float().mean().item()

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k: metrics[k] for k in ("nc_accuracy", "c_accuracy", "rc_accuracy", "ri_accuracy") if k in metrics}

    def describe(self) -> dict:
        return {**self.task.describe(), "cue": {**dataclasses.asdict(self.cfg), "share_of_training_samples": round(self.cue_share, 4),
                                               "ri_chance": round(self.ri_chance(), 4)}}
