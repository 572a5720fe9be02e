"""Stage `prepare`: source -> data/prepared/{train,val,test}/<class>/*.png + manifest.csv, stats.json,
skipped.csv; and data/holdout/ (the real train images that thinning removed, for the oracle arm only).

Streams the source twice, so that memory does not grow with the number of images. The first pass
decodes every image to skip bad files (with a reason, or with `data.strict` an error), fingerprint
the source and see whether any image has colour, and keeps no pixels. Caps (`data.max_per_class`),
the stratified split and the thinning of train to a long-tail profile (by default only the built-in
demo sources) need only the labels. The second pass decodes each image again, converts it to the
chosen channels, fits it to a square of `data.image_size` and writes its PNG. The first decode is the
cheap part (no resizing, no encoding); holding the fitted images instead would need memory, or
scratch space, in proportion to the source.

Both passes decode in `data.workers` processes (auto: one per CPU core, from POOL_MIN_ITEMS images
on), a window of images at a time, and take the results in source order, so the outputs are the same
bytes whatever the number of processes.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps
from tqdm import tqdm

from pipeline.config import DataParams, Params, params_to_dict
from pipeline.contracts import MANIFEST_COLUMNS, SPLITS, ClassInfo, PreparedStats
from pipeline.errors import InputError
from pipeline.io import atomic_output, class_folder_names, encode_png, natural_sort, sha256_bytes, write_manifest
from pipeline.paths import Paths
from pipeline.progress import in_order
from pipeline.sources import Source, SourceItem, open_source

PROGRESS_MIN_ITEMS = 1000
# with data.workers auto, a smaller source is prepared in this process: starting the worker processes
# (each imports the package, torch included: about 2 s) cost more than they save (6,000 images: 3.9 s
# in this process, 5.5 s on two; 30,000: 14.9 s and 9.1 s; benchmarks/prepare_workers.py)
POOL_MIN_ITEMS = 20_000
HOLDOUT = "holdout"  # the split name of the thinned-away train images in data/holdout


# --- pure functions: caps, splits and imbalance --------------------------------------------------


def cap_per_class(labels: np.ndarray, groups: np.ndarray, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """A keep-mask that leaves at most `cap` random items of each (label, group) pair."""
    keep = np.ones(len(labels), dtype=bool)
    if cap is None:
        return keep
    # sorted: a set of strings iterates in an order salted per process, and the draws must not follow it
    for label, group in sorted({(y, g) for y, g in zip(labels.tolist(), groups.tolist())}):
        members = np.flatnonzero((labels == label) & (groups == group))
        keep[rng.permutation(members)[cap:]] = False
    return keep


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, rng: np.random.Generator, class_names: list[str]
) -> np.ndarray:
    """A split name per item; every class keeps at least one train and one test item."""
    splits = np.empty(len(labels), dtype=object)
    for label, name in enumerate(class_names):
        members = np.flatnonzero(labels == label)
        n = len(members)
        if n < 2:
            raise InputError(f"class {name!r} has {n} usable image(s); it needs at least 2 (one train, one test)")
        n_test = min(n - 1, max(1, round(n * test_fraction)))
        n_val = min(n - n_test - 1, round(n * val_fraction))
        order = rng.permutation(members)
        splits[order[:n_test]] = "test"
        splits[order[n_test : n_test + n_val]] = "val"
        splits[order[n_test + n_val :]] = "train"
    return splits


def carve_val(splits: np.ndarray, labels: np.ndarray, val_fraction: float, rng: np.random.Generator) -> np.ndarray:
    """For a pre-split source without val: `val_fraction` of each class's train items become val
    (every class keeps at least one train item)."""
    splits = splits.copy()
    for label in np.unique(labels):
        members = np.flatnonzero((labels == label) & (splits == "train"))
        n_val = min(len(members) - 1, round(len(members) * val_fraction))
        splits[rng.permutation(members)[: max(0, n_val)]] = "val"
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


def thinning_profile(cfg: DataParams, source: Source) -> str:
    """`auto` thins only the built-in demo sources: a user's data is kept as it is."""
    if cfg.imbalance.profile != "auto":
        return cfg.imbalance.profile
    return "exponential" if source.builtin else "none"


# --- decoding ------------------------------------------------------------------------------------


class SkipImage(Exception):
    """An item that is not a usable image: skipped with this reason (or an error when strict)."""


def raw_bytes(item: SourceItem) -> bytes:
    """What an item's fingerprint is taken of: its file's bytes, or its in-memory pixels."""
    return item.pixels.tobytes() if item.pixels is not None else item.file.read_bytes()


def open_image(item: SourceItem, raw: bytes, max_pixels: int) -> Image.Image:
    """The item decoded (its `raw_bytes` checked as an image file, or its pixels)."""
    return Image.fromarray(item.pixels) if item.pixels is not None else _open_checked(raw, item.origin, max_pixels)


def fit_to_square(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A size x size (x 3 for RGB) uint8 array: the image fitted to the square, in `channels`."""
    fitted = ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
    return np.asarray(fitted if channels == 3 else fitted.convert("L"))


def _open_checked(raw: bytes, origin: str, max_pixels: int) -> Image.Image:
    # PIL's own decompression-bomb check at our limit, for this image only: the limit is global to PIL
    pil_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.width * image.height > max_pixels:
                raise Image.DecompressionBombError
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(
            f"{origin}: image is over data.max_image_pixels ({max_pixels}): refusing a possible decompression bomb"
        ) from None
    except (OSError, SyntaxError, ValueError) as err:  # PIL's errors for corrupt or unknown files
        # PIL names the in-memory file with its address, which would make skipped.csv differ run to run
        reason = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", " ".join(str(err).split()))
        raise SkipImage(f"cannot decode: {reason or type(err).__name__}") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pil_limit
    return image


def _is_colour(image: Image.Image) -> bool:
    rgb = np.asarray(image.convert("RGB"))
    return bool((rgb[..., 0] != rgb[..., 1]).any() or (rgb[..., 1] != rgb[..., 2]).any())


def decode_workers(setting: str | int, items: int, cores: int) -> int:
    """The processes that decode: `data.workers` as given, or with auto one per core (from POOL_MIN_ITEMS
    images on; fewer are decoded here)."""
    if setting != "auto":
        return setting
    return cores if items >= POOL_MIN_ITEMS else 1


def _check_item(item: SourceItem, max_pixels: int) -> tuple[str, str | None, bool]:
    """The first pass over one item: (sha256 of its raw bytes, why it is skipped or None, whether it has colour)."""
    raw = raw_bytes(item)
    try:
        image = open_image(item, raw, max_pixels)
    except SkipImage as reason:
        return sha256_bytes(raw), str(reason), False
    return sha256_bytes(raw), None, _is_colour(image)


def _write_png(job: tuple[SourceItem, str, str], out: Path, max_pixels: int, size: int, channels: int) -> str:
    """The second pass over one item (item, sha256 of its raw bytes in the first pass, the PNG's path under
    `out`): decoded again, fitted and written; the sha256 of its PNG."""
    item, digest, relative = job
    try:
        raw = raw_bytes(item)
        changed = sha256_bytes(raw) != digest
    except OSError:
        changed = True
    if changed:
        raise InputError(f"{item.origin}: changed while prepare was reading the source; run prepare again")
    png = encode_png(fit_to_square(open_image(item, raw, max_pixels), size, channels))
    (out / relative).write_bytes(png)
    return sha256_bytes(png)


# --- the stage -----------------------------------------------------------------------------------


def run(params: Params, paths: Paths = Paths()) -> None:
    source = open_source(paths.source(params.data.source), params.data.source)
    workers = decode_workers(params.data.workers, len(source.items), len(os.sched_getaffinity(0)))
    spawn = multiprocessing.get_context("spawn")  # the processes start clean (no copy of this one's threads)
    with ProcessPoolExecutor(workers, mp_context=spawn) if workers > 1 else nullcontext() as pool:
        _prepare(params, paths, source, pool)


def _prepare(params: Params, paths: Paths, source: Source, pool: Executor | None) -> None:
    """The stage on an opened source, decoding on the pool's processes (None: in this process)."""
    cfg = params.data
    checked = _check_all(source, cfg, pool)
    kept = checked.usable
    found = {item.class_name for item in kept}
    class_names = [n for n in source.class_order if n in found] if source.class_order else natural_sort(found)
    if len(class_names) < 2:
        raise InputError(f"data.source {cfg.source}: found {len(class_names)} class(es); need at least 2")
    label_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([label_of[item.class_name] for item in kept])

    rng = np.random.default_rng(params.seed)
    given_splits = np.array([item.split or "" for item in kept], dtype=object)
    capped = cap_per_class(labels, given_splits, cfg.max_per_class, rng)
    splits = np.full(len(kept), None, dtype=object)
    if source.presplit:
        splits[capped] = given_splits[capped]
        for split in ("train", "test"):
            missing = [n for n, y in label_of.items() if not ((labels == y) & (splits == split)).any()]
            if missing:
                raise InputError(f"class {missing[0]!r} has no usable image in the {split} split of {cfg.source}")
        if not (splits == "val").any():
            splits = carve_val(splits, labels, cfg.val_fraction, rng)
    else:
        splits[capped] = stratified_split(labels[capped], cfg.val_fraction, cfg.test_fraction, rng, class_names)
    profile = thinning_profile(cfg, source)
    splits = _thin_train(splits, labels, profile, cfg.imbalance.ratio, rng)

    channels = 3 if cfg.channels == "rgb" or (cfg.channels == "auto" and checked.has_colour) else 1
    folders = class_folder_names(class_names)
    counts = {
        split: {name: int(((labels == y) & (splits == split)).sum()) for y, name in enumerate(class_names)}
        for split in (*SPLITS, HOLDOUT)
    }
    stats = PreparedStats(
        image_size=cfg.image_size,
        channels=channels,
        mode="L" if channels == 1 else "RGB",
        classes=[ClassInfo(i, n, f) for i, (n, f) in enumerate(zip(class_names, folders))],
        counts={split: counts[split] for split in SPLITS},
        holdout=counts[HOLDOUT],
        presplit=source.presplit,
        skipped=len(checked.skipped),
        source=cfg.source,
        source_fingerprint=checked.fingerprint,
        # data.workers changes how fast, not what: left out, so that the outputs do not depend on it
        params={"seed": params.seed, "data": {k: v for k, v in params_to_dict(cfg).items() if k != "workers"}},
    )
    with _progress("prepare: write", int(np.isin(splits, [*SPLITS, HOLDOUT]).sum())) as bar:
        write_pngs = _png_writer(checked, cfg, channels, pool, bar)
        assigned = AssignedItems(kept, labels, splits)
        with atomic_output(paths.prepared) as out:
            _write_images(out, write_pngs, assigned, SPLITS, stats.classes)
            pd.DataFrame(checked.skipped, columns=["path", "reason"]).to_csv(
                out / "skipped.csv", index=False, lineterminator="\n"
            )
            stats.write(out)
        with atomic_output(paths.holdout) as out:
            _write_images(out, write_pngs, assigned, (HOLDOUT,), stats.classes)
    _say(stats, profile, cfg.imbalance.ratio)


def _say(stats: PreparedStats, profile: str, ratio: float) -> None:
    train, val, test = (sum(stats.split_counts(s)) for s in SPLITS)
    print(
        f"prepare: {train + val + test} images of {stats.num_classes} classes, {stats.channels} channel(s), "
        f"{stats.image_size}x{stats.image_size}; train {train}, val {val}, test {test}; skipped {stats.skipped}"
    )
    if stats.thinned:
        print(
            f"prepare: thinned the train split ({profile}, ratio {ratio:g}); kept per class "
            "(the rest is in data/holdout, for the oracle arm only):"
        )
        for name, kept in zip(stats.class_names, stats.split_counts("train")):
            print(f"  {name}: {kept} of {kept + stats.holdout[name]}")


@dataclass(frozen=True)
class CheckedSource:
    """What the first pass learns of a source; it keeps no pixels."""

    usable: list[SourceItem]  # the items that decode, in source order
    digests: list[str]  # sha256 of each usable item's raw bytes, for the second pass to read the same
    has_colour: bool
    fingerprint: str
    skipped: list[tuple[str, str]]  # (origin, reason)


def _check_all(source: Source, cfg: DataParams, pool: Executor | None) -> CheckedSource:
    usable, digests, has_colour = [], [], False
    skipped = list(source.skipped)
    fingerprint_lines = [f"{origin}\tskipped" for origin, _ in source.skipped]
    checks = in_order(partial(_check_item, max_pixels=cfg.max_image_pixels), source.items, pool)
    for item, (digest, reason, colour) in _progress("prepare: read", len(source.items), zip(source.items, checks)):
        if reason is not None:
            skipped.append((item.origin, reason))
            fingerprint_lines.append(f"{item.origin}\t{digest}")
            continue
        has_colour = has_colour or colour
        usable.append(item)
        digests.append(digest)
        fingerprint_lines.append(f"{item.class_name}\t{item.origin}\t{digest}")
    if skipped and cfg.strict:
        origin, reason = skipped[0]
        raise InputError(f"{origin}: {reason} (data.strict is true; {len(skipped)} bad file(s) in all)")
    for origin, reason in skipped:
        print(f"prepare: warning: skipped {origin}: {reason}", file=sys.stderr)
    if not usable:
        raise InputError(f"data.source {cfg.source}: no readable images")
    fingerprint = sha256_bytes("\n".join(sorted(fingerprint_lines)).encode())
    return CheckedSource(usable, digests, has_colour, fingerprint, skipped)


def _png_writer(
    checked: CheckedSource, cfg: DataParams, channels: int, pool: Executor | None, bar: tqdm
) -> Callable[[Path, list[tuple[int, str]]], Iterator[str]]:
    """write_pngs(out, jobs): for each (usable item i, path under out) the PNG of item i, decoded again from
    the source (the first pass kept no pixels), written there; yields the PNGs' sha256 in order."""

    def write_pngs(out: Path, jobs: list[tuple[int, str]]) -> Iterator[str]:
        write = partial(_write_png, out=out, max_pixels=cfg.max_image_pixels, size=cfg.image_size, channels=channels)
        items = [(checked.usable[index], checked.digests[index], relative) for index, relative in jobs]
        for png_hash in in_order(write, items, pool):
            bar.update()
            yield png_hash

    return write_pngs


def _progress(desc: str, total: int, items=None) -> tqdm:
    """A progress bar on stderr (over `items`, or updated by hand), shown from PROGRESS_MIN_ITEMS images on."""
    return tqdm(items, total=total, desc=desc, unit="img", disable=total < PROGRESS_MIN_ITEMS, file=sys.stderr)


def _thin_train(
    splits: np.ndarray, labels: np.ndarray, profile: str, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Move train items to the holdout to follow the imbalance profile; val and test are untouched."""
    n_classes = labels.max() + 1
    train_members = [np.flatnonzero((labels == y) & (splits == "train")) for y in range(n_classes)]
    keep = imbalance_counts([len(m) for m in train_members], profile, ratio)
    splits = splits.copy()
    for members, n_keep in zip(train_members, keep):
        splits[rng.permutation(members)[n_keep:]] = HOLDOUT
    return splits


@dataclass(frozen=True)
class AssignedItems:
    """The usable items of the source, each with its label and split (train, val, test, holdout; None:
    left out by the cap)."""

    items: list[SourceItem]
    labels: np.ndarray
    splits: np.ndarray


def _write_images(
    out: Path,
    write_pngs: Callable[[Path, list[tuple[int, str]]], Iterator[str]],
    assigned: AssignedItems,
    which_splits,
    classes: list[ClassInfo],
) -> None:
    """PNGs of the items of `which_splits` under out/<split>/<folder>/, and out/manifest.csv."""
    jobs, rows = [], []
    for split in which_splits:
        for c in classes:
            members = np.flatnonzero((assigned.labels == c.label) & (assigned.splits == split))
            if len(members) == 0:
                continue
            (out / split / c.folder).mkdir(parents=True)
            for k, index in enumerate(members):
                rel = f"{split}/{c.folder}/{k:05d}.png"
                jobs.append((index, rel))
                rows.append([rel, c.label, c.class_name, split, "real", assigned.items[index].origin, ""])
    for row, png_hash in zip(rows, write_pngs(out, jobs), strict=True):
        row.append(png_hash)
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS), out / "manifest.csv")
