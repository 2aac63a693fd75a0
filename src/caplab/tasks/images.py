"""What image-classification tasks share: the class objective, accuracy on a fixed held-out set, augmentations.

An image task's batch holds `inputs` (batch, C, H, W) floats, `targets` (batch,)
class ids, `mask` (batch,) ones, and in `labels` any per-image annotations
(concept values). The objective is cross-entropy over classes; the data is
counted in images.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from caplab.tasks.base import Batch, Task

EVAL_CHUNK = 1024  # images per forward pass when evaluating


class ImageTask(Task):
    """Base of image-classification tasks (see module docstring). Subclasses set `image_shape`, `n_classes`,
    and implement `sample` and `eval_set`."""

    input_kind: ClassVar[str] = "images"
    unit: ClassVar[str] = "images"
    primary_metric: ClassVar[str] = "accuracy"

    image_shape: tuple[int, int, int]  # (channels, height, width)
    n_classes: int

    @property
    def units_per_sample(self) -> int:
        return 1

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Cross-entropy of (batch, classes) logits against the class ids, averaged over masked-in images."""
        per_image = F.cross_entropy(outputs.float(), batch.targets, reduction="none")
        return (per_image * batch.mask).sum() / batch.mask.sum()

    def eval_set(self, device: torch.device) -> Batch:
        """The fixed held-out images `evaluate` scores (the same on every call)."""
        raise NotImplementedError

    def evaluation_sets(self, device: torch.device) -> dict[str, Batch]:
        """The named held-out sets instruments score a model on (a cue task has four; see caplab.tasks.cues)."""
        return {"held_out": self.eval_set(device)}

    @torch.no_grad()
    def predictions(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        """(n,) predicted classes, in chunks of EVAL_CHUNK images."""
        return torch.cat([model(inputs[i : i + EVAL_CHUNK]).argmax(-1) for i in range(0, len(inputs), EVAL_CHUNK)])

    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """`accuracy` on the held-out set."""
        data = self.eval_set(device)
        return {"accuracy": (self.predictions(model, data.inputs) == data.targets).float().mean().item()}

    def headline(self, metrics: dict[str, float]) -> dict[str, float]:
        return {k: metrics[k] for k in ("accuracy",) if k in metrics}


def random_shift_rotate(images: torch.Tensor, generator: torch.Generator, max_shift: int, max_degrees: float) -> torch.Tensor:
    """Each image translated by up to `max_shift` pixels and rotated by up to `max_degrees` (uniform, bilinear,
    zeros outside), one affine warp for the whole batch."""
    n, _, h, w = images.shape
    if max_shift == 0 and max_degrees == 0:
        return images
    device = images.device
    angle = (torch.rand(n, generator=generator, device=device) * 2 - 1) * math.radians(max_degrees)
    shift = (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * max_shift
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)  # (n, 2, 3), normalised coordinates
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int, flip: bool) -> torch.Tensor:
    """The CIFAR augmentation: a random crop of the zero-padded image and (if `flip`) a horizontal flip half the time."""
    n, c, h, w = images.shape
    device = images.device
    if padding:
        padded = F.pad(images, (padding,) * 4)
        dy = torch.randint(2 * padding + 1, (n,), generator=generator, device=device)
        dx = torch.randint(2 * padding + 1, (n,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None].expand(n, c, h, w + 2 * padding)
        images = padded.gather(2, rows)
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :].expand(n, c, h, w)
        images = images.gather(3, cols)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=device) < 0.5
        images = torch.where(mirrored[:, None, None, None], images.flip(3), images)
    return images
