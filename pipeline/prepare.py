"""Stage `prepare`: source -> data/prepared/{train,val,test}/<class>/*.png, manifest.csv, stats.json.

Decodes every image once with PIL, converts it to the configured channels, fits it to a square of
`data.image_size`, splits stratified with the seed, optionally thins train to a long-tail profile,
and writes PNGs. Bad files are skipped with a reason (or, with `data.strict`, are an error).
"""

from __future__ import annotations

import io
import sys
import warnings

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.config import ConfigError, DataParams, Params, params_to_dict
from pipeline.io import (
    MANIFEST_COLUMNS,
    PREPARED_DIR,
    SPLITS,
    atomic_output,
    class_folder_names,
    encode_png,
    natural_sort,
    sha256_bytes,
    write_json,
    write_manifest,
)
from pipeline.sources import Source, SourceItem, open_source

PROGRESS_MIN_ITEMS = 1000


# --- pure functions: split and imbalance ---------------------------------------------------------


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator,
                     class_names: list[str]) -> np.ndarray:
    """A split name per item; every class keeps at least one train and one test item."""
    splits = np.empty(len(labels), dtype=object)
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < 2:
            raise ConfigError(f"class {name!r} has {n} usable image(s); it needs at least 2 (one train, one test)")
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        n_val = min(n - n_test - 1, round(n * val_fraction))
        order = rng.permutation(members)
        splits[order[:n_test]] = "test"
        splits[order[n_test:n_test + n_val]] = "val"
        splits[order[n_test + n_val:]] = "train"
    return splits


def imbalance_counts(train_counts: list[int], profile: str, ratio: float) -> list[int]:
    """How many train images each class keeps (classes in label order; the first stays largest).

    The profile is measured from the smallest class's train count, so the largest-to-smallest ratio
    is `ratio` (up to rounding and the floor of one image per class).
    """
    if profile == "none":
        return list(train_counts)
    base = min(train_counts)
    n_classes = len(train_counts)
    if profile == "exponential":
        wanted = [base * ratio ** (-k / (n_classes - 1)) for k in range(n_classes)]
    else:  # step: the second half of the classes is rare
        wanted = [base if k < (n_classes + 1) // 2 else base / ratio for k in range(n_classes)]
    return [max(1, min(count, round(w))) for count, w in zip(train_counts, wanted)]


# --- decoding ------------------------------------------------------------------------------------


class SkipImage(Exception):
    """An item that is not a usable image: skipped with this reason (or an error when strict)."""


def decode(item: SourceItem, size: int, max_pixels: int) -> tuple[np.ndarray, bool, bytes]:
    """(size x size x 3 uint8 array, whether the original has colour, raw bytes for the fingerprint)."""
    if item.pixels is not None:
        raw = item.pixels.tobytes()
        image = Image.fromarray(item.pixels)
    else:
        raw = item.file.read_bytes()
        image = _open_checked(raw, item.origin, max_pixels)
    has_colour = _is_colour(image)
    fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return np.asarray(fitted, dtype=np.uint8), has_colour, raw


def _open_checked(raw: bytes, origin: str, max_pixels: int) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > max_pixels:
                raise Image.DecompressionBombError
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(
            f"{origin}: image is over data.max_image_pixels ({max_pixels}): refusing a possible decompression bomb"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for corrupt or unknown files
        raise SkipImage(f"cannot decode: {' '.join(str(err).split()) or type(err).__name__}") from None
    return image


def _is_colour(image: Image.Image) -> bool:
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


# --- the stage -----------------------------------------------------------------------------------


def run(params: Params) -> None:
    cfg = params.data
    source = open_source(cfg.source)
    images, kept, fingerprint, skipped = _decode_all(source, cfg)
    class_names = natural_sort({item.class_name for item in kept})
    if len(class_names) < 2:
        raise ConfigError(f"data.source {cfg.source}: found {len(class_names)} class(es); need at least 2")
    label_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([label_of[item.class_name] for item in kept])

    rng = np.random.default_rng(params.seed)
    if source.presplit:
        splits = np.array([item.split for item in kept], dtype=object)
        for split in ("train", "test"):
            missing = [n for n, y in label_of.items() if not ((labels == y) & (splits == split)).any()]
            if missing:
                raise ConfigError(f"class {missing[0]!r} has no usable image in {split}/ of {cfg.source}")
    else:
        splits = stratified_split(labels, cfg.val_fraction, cfg.test_fraction, rng, class_names)
    splits = _thin_train(splits, labels, cfg, rng)

    channels = 3 if cfg.channels == "rgb" or (cfg.channels == "auto" and any(c for _, c in images)) else 1
    folders = class_folder_names(class_names)
    with atomic_output(PREPARED_DIR) as out:
        rows = _write_images(out, images, kept, labels, splits, class_names, folders, channels)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
        write_manifest(manifest, out / "manifest.csv")
        pd.DataFrame(skipped, columns=["path", "reason"]).to_csv(out / "skipped.csv", index=False, lineterminator="\n")
        stats = {
            "image_size": cfg.image_size,
            "channels": channels,
            "mode": "L" if channels == 1 else "RGB",
            "classes": [{"label": i, "class_name": n, "folder": f} for i, (n, f) in enumerate(zip(class_names, folders))],
            "counts": {s: manifest[manifest.split == s].groupby("class_name").size().reindex(class_names, fill_value=0)
                       .astype(int).to_dict() for s in SPLITS},
            "presplit": source.presplit,
            "skipped": len(skipped),
            "source": cfg.source,
            "source_fingerprint": fingerprint,
            "params": {"seed": params.seed, "data": params_to_dict(cfg)},
        }
        write_json(out / "stats.json", stats)
    counts = stats["counts"]
    print(f"prepare: {len(manifest)} images of {len(class_names)} classes, {channels} channel(s), "
          f"{cfg.image_size}x{cfg.image_size}; train {sum(counts['train'].values())}, "
          f"val {sum(counts['val'].values())}, test {sum(counts['test'].values())}; skipped {len(skipped)}")


def _decode_all(source: Source, cfg: DataParams):
    images, kept = [], []
    skipped = list(source.skipped)
    fingerprint_lines = [f"{origin}\tskipped" for origin, _ in source.skipped]
    items = tqdm(source.items, desc="prepare", unit="img", disable=len(source.items) < PROGRESS_MIN_ITEMS,
                 file=sys.stderr)
    for item in items:
        try:
            array, colour, raw = decode(item, cfg.image_size, cfg.max_image_pixels)
        except SkipImage as reason:
            skipped.append((item.origin, str(reason)))
            fingerprint_lines.append(f"{item.origin}\t{sha256_bytes(item.file.read_bytes())}")
            continue
        images.append((array, colour))
        kept.append(item)
        fingerprint_lines.append(f"{item.class_name}\t{item.origin}\t{sha256_bytes(raw)}")
    if skipped and cfg.strict:
        origin, reason = skipped[0]
        raise ConfigError(f"{origin}: {reason} (data.strict is true; {len(skipped)} bad file(s) in all)")
    for origin, reason in skipped:
        print(f"prepare: warning: skipped {origin}: {reason}", file=sys.stderr)
    if not kept:
        raise ConfigError(f"data.source {cfg.source}: no readable images")
    return images, kept, sha256_bytes("\n".join(sorted(fingerprint_lines)).encode()), skipped


def _thin_train(splits: np.ndarray, labels: np.ndarray, cfg: DataParams, rng: np.random.Generator) -> np.ndarray:
    """Drop train items to follow the imbalance profile; val and test are untouched."""
    n_classes = labels.max() + 1
    train_members = [np.flatnonzero((labels == y) & (splits == "train")) for y in range(n_classes)]
    keep = imbalance_counts([len(m) for m in train_members], cfg.imbalance.profile, cfg.imbalance.ratio)
    splits = splits.copy()
    for members, n_keep in zip(train_members, keep):
        dropped = rng.permutation(members)[n_keep:]
        splits[dropped] = None
    return splits


def _write_images(out, images, kept, labels, splits, class_names, folders, channels) -> list[list]:
    rows = []
    for split in SPLITS:
        for label, (name, folder) in enumerate(zip(class_names, folders)):
            members = np.flatnonzero((labels == label) & (splits == split))
            if len(members) == 0:
                continue
            (out / split / folder).mkdir(parents=True)
            for k, index in enumerate(members):
                rgb = images[index][0]
                array = rgb if channels == 3 else np.asarray(Image.fromarray(rgb).convert("L"))
                png = encode_png(array)
                rel = f"{split}/{folder}/{k:05d}.png"
                (out / rel).write_bytes(png)
                rows.append([rel, label, name, split, "real", kept[index].origin, "", sha256_bytes(png)])
    return rows
