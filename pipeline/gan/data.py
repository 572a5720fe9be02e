"""The GAN's training images: the prepared train split as a LightningDataModule, drawn class-balanced,
decoded once into a scratch file and read from it by row as drawn (pipeline/image_rows.py), so that
its memory does not grow with the split."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pipeline.balancing import class_weights
from pipeline.contracts import PreparedStats
from pipeline.errors import InputError
from pipeline.image_rows import ImageRows, decode_split
from pipeline.nets import check_image_size


class DecodedImages(Dataset):
    """Labelled images read from their scratch file when drawn: (uint8 C x H x W image, label)."""

    def __init__(self, images: ImageRows, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.images[index][0]).permute(2, 0, 1), self.labels[index]


class TrainImages(pl.LightningDataModule):
    """The prepared train split, drawn class-balanced: decoded once (in `setup`, by each training process)
    into a scratch file that `teardown` deletes.

    The constructor reads only stats.json, so that input a conditional GAN cannot train on is
    rejected before the Trainer starts. A batch size larger than the train split is reduced to it.
    """

    def __init__(self, prepared_dir: Path, batch_size: int, balance: float, seed: int):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.stats = PreparedStats.read(self.prepared_dir)
        self.class_names = self.stats.class_names
        self.image_size, self.channels = self.stats.image_size, self.stats.channels
        if len(self.class_names) < 2:
            raise InputError(
                f"{self.prepared_dir}: {len(self.class_names)} class(es); a conditional GAN needs at least 2"
            )
        check_image_size(self.image_size)
        self.counts = self.stats.split_counts("train")
        for name, count in zip(self.class_names, self.counts):
            if count == 0:
                raise InputError(f"{self.prepared_dir}: class {name!r} has no training image")
        self.batch_size = min(batch_size, sum(self.counts))
        self.balance, self.seed = balance, seed
        self.scratch = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str) -> None:
        self.scratch = tempfile.TemporaryDirectory(prefix="train-")
        images, self.labels = decode_split(self.prepared_dir, self.stats, "train", Path(self.scratch.name))
        self.dataset = DecodedImages(images, self.labels)

    def teardown(self, stage: str) -> None:
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None

    def train_dataloader(self) -> DataLoader:
        weights = torch.from_numpy(class_weights(self.labels.numpy(), self.num_classes, self.balance))
        sampler = WeightedRandomSampler(
            weights, num_samples=len(self.labels), replacement=True, generator=torch.Generator().manual_seed(self.seed)
        )
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)
