"""scikit-learn's bundled handwritten digits (1,797 images of 8 x 8, ten classes), upsampled, with a held-out split.

The data ships inside scikit-learn (the `vision` extra), so nothing is
downloaded. Images are upsampled bilinearly to `image_size`, scaled to
[-1, 1], and split once into training and held-out images by a fixed
permutation (`split_seed`). Training batches draw training images uniformly
with replacement and augment them in torch (a random shift of up to
`max_shift` pixels and rotation of up to `max_degrees`); evaluation uses the
held-out images as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from caplab.errors import ConfigError
from caplab.tasks.base import Batch
from caplab.tasks.images import ImageTask, random_shift_rotate


@dataclass
class DigitsConfig:
    image_size: int = 16
    held_out_fraction: float = 0.25
    split_seed: int = 0
    augment: bool = True
    max_shift: int = 1  # pixels, at image_size
    max_degrees: float = 10.0

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"task.image_size must be at least 8 (the images are 8 x 8), got {self.image_size}")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"task.held_out_fraction must lie in (0, 1), got {self.held_out_fraction}")


def load_digits_tensor() -> tuple[torch.Tensor, torch.Tensor]:
    """(1797, 1, 8, 8) pixel values in [0, 1] and (1797,) labels from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ConfigError("task digits needs scikit-learn: pip install 'caplab[vision]'") from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    return images, torch.tensor(data.target, dtype=torch.long)


class Digits(ImageTask):
    name = "digits"
    Config = DigitsConfig

    def __init__(self, cfg: Optional[DigitsConfig] = None) -> None:
        self.cfg = cfg = cfg or DigitsConfig()
        self.image_shape = (1, cfg.image_size, cfg.image_size)
        self.n_classes = 10
        images, labels = load_digits_tensor()
        if cfg.image_size != 8:
            images = F.interpolate(images, size=cfg.image_size, mode="bilinear", align_corners=False)
        images = images * 2 - 1
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(cfg.split_seed))
        n_held = round(len(labels) * cfg.held_out_fraction)
        self.split = {"train": order[n_held:], "held_out": order[:n_held]}
        self.images, self.labels = images, labels
        self._on: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _data(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            self._on[key] = (self.images.to(device), self.labels.to(device))
        return self._on[key]

    def _batch(self, rows: torch.Tensor, device, generator: Optional[torch.Generator]) -> Batch:
        images, labels = self._data(device)
        x = images[rows.to(device)]
        if generator is not None and self.cfg.augment:
            x = random_shift_rotate(x, generator, self.cfg.max_shift, self.cfg.max_degrees)
        y = labels[rows.to(device)]
        return Batch(x, y, torch.ones(len(y), device=device), {"index": rows.to(device)})

    def sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        train = self.split["train"].to(generator.device)
        rows = train[torch.randint(len(train), (batch_size,), generator=generator, device=generator.device)]
        return self._batch(rows, device, generator)

    def held_out(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        rows = self.split["held_out"]
        return self._batch(rows[:batch_size], device, None)

    def eval_set(self, device) -> Batch:
        return self._batch(self.split["held_out"], device, None)

    def training_batch(self, rows: torch.Tensor, device) -> Batch:
        """The training images of these row ids, as they are (no augmentation)."""
        return self._batch(rows, device, None)

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images' row ids (what batches carry as `index`), in the split's order, and their classes."""
        rows = self.split["train"]
        return rows, self.labels[rows]

    def describe(self) -> dict:
        return {"classes": 10, "train_images": len(self.split["train"]), "held_out_images": len(self.split["held_out"])}
