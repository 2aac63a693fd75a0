"""Small RGB images of one object, rendered by caplab from five concepts: shape, colour, size, position, background.

Each concept takes a configurable number of values (`n_shapes`, ...), drawn
independently and uniformly for each image; every batch carries all five
per-image concept labels, and the class is one of them (`target`). Rendering
is vectorised in torch: each shape is a signed distance function of the
pixel grid, anti-aliased over one pixel, so a batch of 4,096 images is one
set of tensor operations per shape.

    shape       circle, square, triangle, diamond, plus, ring, x, frame (up to 8)
    colour      hues evenly spaced round the colour wheel (saturation 0.85, value 0.95)
    size        radius from 0.16 to 0.30 of the image side, evenly spaced
    position    centres on a grid (as square as it gets) inside a margin that fits the largest object
    background  grey levels from 0 to 0.35, darker than any object colour

`jitter` moves each centre by up to that many pixels, and `noise` adds Gaussian
pixel noise, so that no two training images need be identical. Inputs are
scaled to [-1, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch

from caplab.tasks.base import Batch
from caplab.tasks.images import ImageTask

SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "x", "frame")
CONCEPTS = ("shape", "colour", "size", "position", "background")


@dataclass
class ShapesConfig:
    image_size: int = 28
    n_shapes: int = 4
    n_colours: int = 4
    n_sizes: int = 2
    n_positions: int = 4
    n_backgrounds: int = 2
    target: Literal["shape", "colour", "size", "position", "background"] = "shape"
    jitter: float = 1.0  # each centre moves by up to this many pixels (uniform)
    noise: float = 0.0  # standard deviation of Gaussian pixel noise (pixel values in [0, 1])
    eval_samples: int = 1024
    seed: int = 0  # the held-out images

    def __post_init__(self) -> None:
        if self.image_size < 12:
            raise ValueError(f"task.image_size must be at least 12, got {self.image_size}")
        if not 1 <= self.n_shapes <= len(SHAPES):
            raise ValueError(f"task.n_shapes must lie in 1..{len(SHAPES)}, got {self.n_shapes}")
        for name in ("n_colours", "n_sizes", "n_positions", "n_backgrounds", "eval_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"task.{name} must be at least 1, got {getattr(self, name)}")
        if self.jitter < 0 or self.noise < 0:
            raise ValueError("task.jitter and task.noise must be non-negative")

    def values(self, concept: str) -> int:
        return getattr(self, {"shape": "n_shapes", "colour": "n_colours", "size": "n_sizes",
                              "position": "n_positions", "background": "n_backgrounds"}[concept])


def hsv_to_rgb(hue: torch.Tensor, saturation: float, value: float) -> torch.Tensor:
    """(n,) hues in [0, 1) -> (n, 3) RGB in [0, 1]."""
    k = (torch.tensor([5.0, 3.0, 1.0], device=hue.device) + hue[:, None] * 6) % 6
    return value - value * saturation * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _box(dx: torch.Tensor, dy: torch.Tensor, half_w, half_h) -> torch.Tensor:
    return torch.maximum(dx.abs() - half_w, dy.abs() - half_h)


def signed_distance(shape: int, dx: torch.Tensor, dy: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside, in pixels, approximate away from the edge) of shape number `shape`
    centred at 0 with radius r; dx, dy, r broadcast to (n, H, W)."""
    name = SHAPES[shape]
    if name == "circle":
        return torch.sqrt(dx ** 2 + dy ** 2) - r
    if name == "square":
        return _box(dx, dy, 0.8 * r, 0.8 * r)
    if name == "triangle":  # apex up at -r, base at +0.6 r, half as wide as tall at the base
        return torch.maximum(dy - 0.6 * r, (1.6 * dx.abs() - dy - r) / math.sqrt(1.6 ** 2 + 1))
    if name == "diamond":
        return (dx.abs() + dy.abs() - r) / math.sqrt(2)
    if name in ("plus", "x"):
        if name == "x":
            dx, dy = (dx + dy) / math.sqrt(2), (dx - dy) / math.sqrt(2)
        return torch.minimum(_box(dx, dy, r, 0.3 * r), _box(dx, dy, 0.3 * r, r))
    if name == "ring":
        return (torch.sqrt(dx ** 2 + dy ** 2) - 0.7 * r).abs() - 0.3 * r
    return (torch.maximum(dx.abs(), dy.abs()) - 0.65 * r).abs() - 0.2 * r  # frame: a hollow square


class Shapes(ImageTask):
    """The shapes renderer as a classification task (see module docstring)."""

    name = "shapes"
    Config = ShapesConfig

    def __init__(self, cfg: Optional[ShapesConfig] = None) -> None:
        self.cfg = cfg = cfg or ShapesConfig()
        size = cfg.image_size
        self.image_shape = (3, size, size)
        self.n_classes = cfg.values(cfg.target)
        self.radii = torch.linspace(0.16, 0.30, cfg.n_sizes) * size if cfg.n_sizes > 1 else torch.tensor([0.23 * size])
        margin = float(self.radii.max()) + cfg.jitter + 1
        columns = math.ceil(math.sqrt(cfg.n_positions))
        rows = math.ceil(cfg.n_positions / columns)
        spot = lambda i, count: margin + (size - 2 * margin) * (i + 0.5) / count  # noqa: E731
        self.centres = torch.tensor([[spot(p % columns, columns), spot(p // columns, rows)] for p in range(cfg.n_positions)])
        self.colours = hsv_to_rgb(torch.arange(cfg.n_colours) / cfg.n_colours, 0.85, 0.95)
        self.greys = torch.linspace(0, 0.35, cfg.n_backgrounds) if cfg.n_backgrounds > 1 else torch.zeros(1)
        self._eval: dict[str, Batch] = {}

    def render(self, concepts: dict[str, torch.Tensor], generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(n, 3, S, S) images in [0, 1] of the given (n,) concept values (jitter and noise drawn from `generator`)."""
        device = concepts["shape"].device
        n, size = len(concepts["shape"]), self.cfg.image_size
        centre = self.centres.to(device)[concepts["position"]]  # (n, 2)
        if self.cfg.jitter and generator is not None:
            centre = centre + (torch.rand(n, 2, generator=generator, device=device) * 2 - 1) * self.cfg.jitter
        pixels = torch.arange(size, device=device, dtype=torch.float32) + 0.5
        dx = pixels[None, None, :] - centre[:, 0, None, None]  # (n, 1, S)
        dy = pixels[None, :, None] - centre[:, 1, None, None]  # (n, S, 1)
        radius = self.radii.to(device)[concepts["size"]][:, None, None]
        distance = torch.empty(n, size, size, device=device)
        for shape in range(self.cfg.n_shapes):
            rows = (concepts["shape"] == shape).nonzero().squeeze(1)
            if len(rows):
                distance[rows] = signed_distance(shape, dx[rows], dy[rows], radius[rows]).expand(len(rows), size, size)
        cover = (0.5 - distance).clamp(0, 1)[:, None]  # (n, 1, S, S): one pixel of anti-aliasing
        colour = self.colours.to(device)[concepts["colour"]][:, :, None, None]  # (n, 3, 1, 1)
        grey = self.greys.to(device)[concepts["background"]][:, None, None, None]
        images = grey * (1 - cover) + colour * cover
        if self.cfg.noise and generator is not None:
            images = images + self.cfg.noise * torch.randn(images.shape, generator=generator, device=device)
        return images

    def draw_concepts(self, n: int, generator: torch.Generator, device) -> dict[str, torch.Tensor]:
        return {c: torch.randint(self.cfg.values(c), (n,), generator=generator, device=device) for c in CONCEPTS}

    def batch_of(self, concepts: dict[str, torch.Tensor], generator: Optional[torch.Generator]) -> Batch:
        images = self.render(concepts, generator) * 2 - 1  # inputs in [-1, 1]
        targets = concepts[self.cfg.target]
        return Batch(images, targets, torch.ones(len(targets), device=images.device), dict(concepts))

    def sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        return self.batch_of(self.draw_concepts(batch_size, generator, device), generator)

    def eval_set(self, device) -> Batch:
        key = str(device)
        if key not in self._eval:
            generator = torch.Generator(device=device).manual_seed(self.cfg.seed + 17)
            self._eval[key] = self.sample(self.cfg.eval_samples, generator, device)
        return self._eval[key]

    def describe(self) -> dict:
        return {"classes": self.n_classes, "target": self.cfg.target,
                "concepts": {c: self.cfg.values(c) for c in CONCEPTS}, "shapes": list(SHAPES[: self.cfg.n_shapes])}
