"""The published dataset as a LightningDataModule, for training your own network with Lightning.

    import pytorch_lightning as pl
    from torchvision import transforms as T
    from pipeline.datamodule import AugmentedDataModule

    data = AugmentedDataModule(train_transform=T.Compose([T.RandomAffine(10), T.ToTensor()]), num_workers=4)
    trainer = pl.Trainer(max_steps=3000)
    trainer.fit(model, datamodule=data)  # model: a LightningModule whose batches are (images, labels)
    trainer.test(model, datamodule=data)

Training batches come from data/augmented (its files or its tar shards), read by
`dataset.load_augmented` and drawn by its sampler: the manifest's `weight` column, every class
equally often, `merge.synthetic_share` of a rare class's draws on its synthetic images; an epoch
is as many draws as the dataset has images. Val and test batches are the real splits of
data/prepared, in order. Each split has its own transform of the PIL image (default: ToTensor, a
float tensor in [0, 1]). Under DDP, Lightning gives each process its share of the sampler's draws
(DistributedSamplerWrapper); seed with `pl.seed_everything` so that every process draws the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import ToTensor

from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats, check_made_for
from pipeline.dataset import ManifestDataset, load_augmented
from pipeline.io import read_json, read_manifest
from pipeline.paths import Paths


class AugmentedDataModule(pl.LightningDataModule):
    """data/augmented for training, data/prepared's val and test splits for validating and testing, below
    `root` (default: the current folder, the repository root)."""

    def __init__(
        self,
        root: Path | str = ".",
        train_transform: Callable | None = None,
        val_transform: Callable | None = None,
        test_transform: Callable | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
    ):
        super().__init__()
        self.paths = Paths(Path(root))
        self.transforms = {
            "train": train_transform or ToTensor(),
            "val": val_transform or ToTensor(),
            "test": test_transform or ToTensor(),
        }
        self.batch_size, self.num_workers = batch_size, num_workers
        self.stats = PreparedStats.read(self.paths.prepared)
        card = read_json(self.paths.augmented / "dataset.json")
        check_made_for(
            card["image_size"],
            card["channels"],
            [c["class_name"] for c in card["classes"]],
            self.stats,
            f"{self.paths.augmented}/dataset.json",
        )
        # what a network for this data needs to know
        self.class_names, self.num_classes = self.stats.class_names, self.stats.num_classes
        self.channels, self.image_size = self.stats.channels, self.stats.image_size

    def setup(self, stage: str | None = None) -> None:
        self.train_set, self.manifest, self.sampler = load_augmented(
            self.paths.augmented, transform=self.transforms["train"]
        )
        prepared = read_manifest(self.paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
        self.val_set, self.test_set = (
            ManifestDataset(
                self.paths.prepared,
                prepared[prepared["split"] == split].reset_index(drop=True),
                self.stats.mode,
                self.transforms[split],
            )
            for split in ("val", "test")
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
