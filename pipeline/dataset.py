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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, WeightedRandomSampler

from pipeline.balancing import class_weights
from pipeline.contracts import MANIFEST_COLUMNS
from pipeline.errors import InputError
from pipeline.image_rows import ImageRows, in_chunks, place_image_rows, write_image_rows
from pipeline.io import manifest_chunks, read_json, read_manifest, read_span, tar_spans

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
        self.root = root
        self.targets = manifest["label"].tolist()
        self.mode = mode
        self.transform = transform
        # where each image's bytes are, as arrays (an object per image weighs at a million images): a span of
        # its shard, or its file
        self.shards: list[str] | None = None
        if from_shards:
            shard_of_row, shards = pd.factorize(manifest["shard"])
            self.shards, self.shard_of_row = list(shards), shard_of_row
            self.offsets, self.sizes = shard_spans(root, self.shards, shard_of_row, encoded(manifest["key"]))
        else:
            self.paths = encoded(manifest["path"])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        if self.shards is not None:
            shard = self.root / self.shards[self.shard_of_row[index]]
            data = read_span(shard, int(self.offsets[index]), int(self.sizes[index]))
        else:
            data = read_span(self.root / self.paths[index].decode())
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert(self.mode)
        return (self.transform(image) if self.transform else image), self.targets[index]


def encoded(texts: Iterable[str]) -> np.ndarray:
    """Strings as one numpy array of their UTF-8 bytes ('S', as wide as the longest): a tenth of the memory of
    as many Python strings; `.decode()` gives each back."""
    return np.array([text.encode() for text in texts], dtype=bytes)


def shard_spans(
    root: Path, shards: list[str], shard_of_row: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(offset, size) of each row's PNG `<key>.png` in its shard `shards[shard_of_row[row]]`, from the headers
    of the shards, read one at a time in the order given (only one shard's index is held)."""
    offsets, sizes = np.full(len(keys), -1, dtype=np.int64), np.zeros(len(keys), dtype=np.int64)
    order = np.argsort(shard_of_row, kind="stable")
    bounds = np.searchsorted(shard_of_row[order], np.arange(len(shards) + 1))
    for number, shard in enumerate(shards):
        in_shard = tar_spans(root / shard)
        for row in order[bounds[number] : bounds[number + 1]].tolist():
            offsets[row], sizes[row] = in_shard.get(f"{keys[row].decode()}.png", (-1, 0))
    missing = np.flatnonzero(offsets < 0)
    if len(missing):  # the first in manifest order, once every shard is known to be readable
        row = missing[0]
        raise InputError(
            f"{root / shards[shard_of_row[row]]}: has no {keys[row].decode()}.png, which manifest.csv lists; "
            "the dataset is incomplete"
        )
    return offsets, sizes


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


ARM_COLUMNS = ["label", "origin", "weight"]  # the manifest's columns that decode_augmented gives


def decode_augmented(root: Path | str, path: Path, image_shape: tuple[int, int, int]) -> tuple[ImageRows, pd.DataFrame]:
    """Every image of the augmented dataset as `load_augmented` gives it (np.array of its PIL image, H x W x C)
    decoded into the scratch file `path` in manifest order, and the manifest's label, origin and weight
    columns. The manifest is read a chunk of rows at a time; the images are decoded a chunk of rows at a time
    (files) or a shard at a time, front to back, each written at its row (shards): neither the manifest's
    other columns nor an object per image is ever held."""
    root = Path(root)
    card = read_json(root / "dataset.json")
    from_shards = card.get("format") == "shards"  # cards made before merge.format have none: ImageFolder
    where = ["shard", "key"] if from_shards else ["path"]
    chunks = manifest_chunks(root / "manifest.csv", [*ARM_COLUMNS, *where], MANIFEST_COLUMNS + ["weight"])
    columns = []
    if not from_shards:

        def files(chunks):  # each chunk's columns kept as its images are read
            for chunk in chunks:
                columns.append(chunk[ARM_COLUMNS])
                yield from (read_span(root / relative) for relative in chunk["path"])

        pngs = (decoded(data, card["mode"]) for data in files(chunks))
        return write_image_rows(path, image_shape, in_chunks(pngs)), pd.concat(columns, ignore_index=True)
    shards, shard_of_row, keys = {}, [], []
    for chunk in chunks:
        columns.append(chunk[ARM_COLUMNS])
        shard_of_row.append(np.array([shards.setdefault(name, len(shards)) for name in chunk["shard"]], dtype=np.int64))
        keys.append(encoded(chunk["key"]))
    shard_of_row, keys = np.concatenate(shard_of_row), np.concatenate(keys)  # a chunk at least, if empty
    offsets, sizes = shard_spans(root, list(shards), shard_of_row, keys)
    pngs = _shard_pngs(root, list(shards), shard_of_row, offsets, sizes, card["mode"])
    return place_image_rows(path, image_shape, len(keys), pngs), pd.concat(columns, ignore_index=True)


def decoded(png: bytes, mode: str) -> np.ndarray:
    """H x W x C uint8 array of a PNG's bytes in `mode`, the image a ManifestDataset gives."""
    with Image.open(io.BytesIO(png)) as image:
        return np.atleast_3d(np.array(image.convert(mode)))


def _shard_pngs(
    root: Path, shards: list[str], shard_of_row: np.ndarray, offsets: np.ndarray, sizes: np.ndarray, mode: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(row, decoded image) of every row, a shard at a time, each shard read front to back."""
    order = np.lexsort((offsets, shard_of_row))
    bounds = np.searchsorted(shard_of_row[order], np.arange(len(shards) + 1))
    for number, shard in enumerate(shards):
        with open(root / shard, "rb") as handle:
            for row in order[bounds[number] : bounds[number + 1]].tolist():
                handle.seek(offsets[row])
                yield row, decoded(handle.read(sizes[row]), mode)
