"""The GAN's training images: the prepared train split as a LightningDataModule, drawn class-balanced,
decoded into memory or read from the PNG files as drawn when it would not fit a memory budget."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler

from pipeline.balancing import class_weights
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats, load_split
from pipeline.errors import InputError
from pipeline.io import read_manifest, read_png
from pipeline.nets import check_image_size


class PreparedImages(Dataset):
    """Images of the prepared data read from their PNG files when drawn: (uint8 CxHxW image, label)."""

    def __init__(self, prepared_dir: Path, paths: list[str], labels: torch.Tensor, channels: int):
        self.prepared_dir, self.paths, self.labels, self.channels = prepared_dir, paths, labels, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_png(self.prepared_dir / self.paths[index], self.channels)
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), self.labels[index]


class TrainImages(pl.LightningDataModule):
    """The prepared train split, drawn class-balanced: decoded once into a uint8 tensor (in `setup`),
    or, when that tensor would exceed `memory_budget_mb` (None: no limit), read from the PNG files
    as drawn (`streams`). Both give the same batches in the same order.

    The constructor reads only stats.json, so that input a conditional GAN cannot train on is
    rejected before the Trainer starts. A batch size larger than the train split is reduced to it.
    """

    def __init__(
        self, prepared_dir: Path, batch_size: int, balance: float, seed: int, memory_budget_mb: int | None = None
    ):
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
        self.decoded_bytes = sum(self.counts) * self.channels * self.image_size**2
        self.streams = memory_budget_mb is not None and self.decoded_bytes > memory_budget_mb * 2**20

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str) -> None:
        if self.streams:
            manifest = read_manifest(self.prepared_dir / "manifest.csv", MANIFEST_COLUMNS)
            rows = manifest[manifest["split"] == "train"]
            self.labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
            self.dataset = PreparedImages(self.prepared_dir, rows["path"].tolist(), self.labels, self.channels)
        else:
            images, self.labels = load_split(self.prepared_dir, self.stats, "train")
            self.dataset = TensorDataset(images, self.labels)

    def train_dataloader(self) -> DataLoader:
        weights = torch.from_numpy(class_weights(self.labels.numpy(), self.num_classes, self.balance))
        sampler = WeightedRandomSampler(
            weights, num_samples=len(self.labels), replacement=True, generator=torch.Generator().manual_seed(self.seed)
        )
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)
