"""Load the augmented dataset that the merge stage writes, for downstream training.

    from pipeline.dataset import load_augmented
    dataset, manifest, sampler = load_augmented(transform=torchvision.transforms.ToTensor())
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, sampler=sampler)

`dataset[i]` is (image, label) for row i of `manifest`, like torchvision's ImageFolder: a PIL image
in the dataset's mode ("L" or "RGB"), or whatever `transform` makes of it. The images are read from
the ImageFolder form or, when merge published only shards (`merge.format`), from the tar shards by
seeking to each one: the same items in the same order either way. The sampler draws with the
manifest's `weight` column: every class equally often, with `merge.synthetic_share` of each rare
class's draws on its synthetic images.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from pipeline.balancing import class_weights
from pipeline.contracts import MANIFEST_COLUMNS
from pipeline.errors import InputError
from pipeline.io import read_json, read_manifest, read_span, tar_spans

GATE_NUMBERS = ["judge_confidence", "judge_prediction", "nn_distance"]


class ManifestDataset(Dataset):
    """The images of a manifest, read from `root` (its files, or its tar shards), with their labels."""

    def __init__(
        self,
        root: Path,
        manifest: pd.DataFrame,
        mode: str,
        transform: Callable | None = None,
        from_shards: bool = False,
    ):
        # where each image's bytes are: (file, offset, size); a whole file is (file, 0, -1)
        self.spans = shard_spans(root, manifest) if from_shards else [(root / path, 0, -1) for path in manifest["path"]]
        self.targets = manifest["label"].tolist()
        self.mode = mode
        self.transform = transform

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, index: int):
        with Image.open(io.BytesIO(read_span(*self.spans[index]))) as image:
            image = image.convert(self.mode)
        return (self.transform(image) if self.transform else image), self.targets[index]


def shard_spans(root: Path, manifest: pd.DataFrame) -> list[tuple[Path, int, int]]:
    """(shard file, offset, size) of each row's PNG, from the headers of the shards the manifest names."""
    in_shard = {shard: tar_spans(root / shard) for shard in manifest["shard"].unique()}
    spans = []
    for shard, key in zip(manifest["shard"], manifest["key"]):
        if f"{key}.png" not in in_shard[shard]:
            raise InputError(f"{root / shard}: has no {key}.png, which manifest.csv lists; the dataset is incomplete")
        spans.append((root / shard, *in_shard[shard][f"{key}.png"]))
    return spans


def load_augmented(
    root: Path | str = "data/augmented", origin: str | None = None, transform: Callable | None = None
) -> tuple[Dataset, pd.DataFrame, WeightedRandomSampler]:
    """(dataset, manifest, sampler) of the augmented dataset; `origin` "real" or "synthetic" keeps only those rows.

    With an origin, the sampler still draws every class equally often, over that origin's images.
    """
    if origin not in (None, "real", "synthetic"):
        raise ValueError(f"origin must be None, 'real' or 'synthetic', got {origin!r}")
    root = Path(root)
    card = read_json(root / "dataset.json")
    manifest = read_manifest(root / "manifest.csv", MANIFEST_COLUMNS + ["weight"])
    # the gate's values are empty on real rows: numbers with NaN there, so they can be filtered on
    manifest[GATE_NUMBERS] = manifest[GATE_NUMBERS].apply(pd.to_numeric, errors="coerce")
    manifest["judge_prediction"] = manifest["judge_prediction"].astype("Int64")
    if origin is None:
        weights = manifest["weight"].to_numpy()
    else:
        manifest = manifest[manifest["origin"] == origin].reset_index(drop=True)
        if manifest.empty:
            raise InputError(f"{root}/manifest.csv: no {origin} images")
        weights = class_weights(manifest["label"].to_numpy(), len(card["classes"]))
    from_shards = card.get("format") == "shards"  # cards made before merge.format have none: ImageFolder
    dataset = ManifestDataset(root, manifest, card["mode"], transform, from_shards)
    sampler = WeightedRandomSampler(torch.tensor(weights, dtype=torch.double), num_samples=len(manifest))
    return dataset, manifest, sampler
