"""CIFAR-10 (Krizhevsky, 2009) read from its binary distribution, without pickle.

`path` is the folder `cifar-10-batches-bin` of the official
`cifar-10-binary.tar.gz`: five training files `data_batch_{1..5}.bin` and
`test_batch.bin`, each a run of 3,073-byte records (one label byte, then the
32 x 32 red, green and blue planes, row-major). `download_cifar10(folder)`
fetches and unpacks the archive where a network is available; caplab never
downloads anything on its own.

Images are scaled to [0, 1] and standardised per channel with the training
set's mean and standard deviation. Training batches draw training images
uniformly with replacement (`train_images` > 0 keeps only that many, the
first of a fixed permutation) and augment them as is standard for CIFAR: a
random 32 x 32 crop of the image padded by 4 and a horizontal flip half the
time. Evaluation uses the test file (`eval_images` of them).
"""

from __future__ import annotations

import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from caplab.errors import ConfigError
from caplab.tasks.base import Batch
from caplab.tasks.images import ImageTask, random_crop_flip

RECORD = 1 + 3 * 32 * 32
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MEAN = (0.4914, 0.4822, 0.4465)  # of the 50,000 training images
STD = (0.2470, 0.2435, 0.2616)
URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


@dataclass
class Cifar10Config:
    path: str = ""  # the folder cifar-10-batches-bin
    train_images: int = 0  # 0: all 50,000
    eval_images: int = 10_000
    augment: bool = True
    subset_seed: int = 0

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("task cifar10 needs task.path: the folder cifar-10-batches-bin of the binary "
                             "distribution (caplab.tasks.cifar10.download_cifar10 fetches it)")
        if self.train_images < 0 or self.eval_images < 1:
            raise ValueError("task.train_images must be non-negative and task.eval_images at least 1")


def read_batch_file(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 3, 32, 32) uint8 images and (n,) labels of one CIFAR-10 binary file; one clear error if it is not one."""
    if not path.is_file():
        raise ConfigError(f"CIFAR-10 file {path} is missing")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % RECORD:
        raise ConfigError(f"CIFAR-10 file {path} is not in the binary format ({raw.size} bytes is not a "
                          f"multiple of {RECORD}-byte records)")
    records = raw.reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise ConfigError(f"CIFAR-10 file {path} is not in the binary format (a label byte of {labels.max()})")
    images = records[:, 1:].reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def download_cifar10(folder: str | Path) -> Path:
    """Fetch the binary archive into `folder` and unpack it; return the path of cifar-10-batches-bin."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "cifar-10-binary.tar.gz"
    if not archive.is_file():
        urllib.request.urlretrieve(URL, archive)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "cifar-10-batches-bin"


class Cifar10(ImageTask):
    name = "cifar10"
    Config = Cifar10Config

    def __init__(self, cfg: Optional[Cifar10Config] = None) -> None:
        self.cfg = cfg = cfg or Cifar10Config()
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"task.path {folder} is not a folder (expected cifar-10-batches-bin)")
        parts = [read_batch_file(folder / name) for name in TRAIN_FILES]
        train_images, train_labels = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        if cfg.train_images:
            keep = torch.randperm(len(train_labels), generator=torch.Generator().manual_seed(cfg.subset_seed))
            keep = keep[: cfg.train_images]
            train_images, train_labels = train_images[keep], train_labels[keep]
        test_images, test_labels = read_batch_file(folder / TEST_FILE)
        self.image_shape, self.n_classes = (3, 32, 32), 10
        self.data = {"train": (train_images, train_labels),
                     "test": (test_images[: cfg.eval_images], test_labels[: cfg.eval_images])}
        self._on: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def _split(self, split: str, device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (split, str(device))
        if key not in self._on:
            images, labels = self.data[split]
            mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
            std = torch.tensor(STD, device=device).view(1, 3, 1, 1)
            self._on[key] = ((images.to(device).float() / 255 - mean) / std, labels.to(device))
        return self._on[key]

    def sample(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        images, labels = self._split("train", device)
        rows = torch.randint(len(labels), (batch_size,), generator=generator, device=generator.device).to(device)
        x = images[rows]
        if self.cfg.augment:
            x = random_crop_flip(x, generator, padding=4, flip=True)
        return Batch(x, labels[rows], torch.ones(batch_size, device=device), {"index": rows})

    def held_out(self, batch_size: int, generator: torch.Generator, device) -> Batch:
        images, labels = self._split("test", device)
        return Batch(images[:batch_size], labels[:batch_size], torch.ones(min(batch_size, len(labels)), device=device))

    def training_batch(self, rows: torch.Tensor, device) -> Batch:
        """The training images of these row ids, as they are (no augmentation)."""
        images, labels = self._split("train", device)
        rows = rows.to(device)
        return Batch(images[rows], labels[rows], torch.ones(len(rows), device=device), {"index": rows})

    def training_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training images' row ids (what batches carry as `index`), in order, and their classes."""
        labels = self.data["train"][1]
        return torch.arange(len(labels)), labels

    def eval_set(self, device) -> Batch:
        images, labels = self._split("test", device)
        return Batch(images, labels, torch.ones(len(labels), device=device))

    def describe(self) -> dict:
        return {"classes": list(CLASSES), "train_images": len(self.data["train"][1]), "eval_images": len(self.data["test"][1])}
