"""Reading the stages' manifests (manifest.csv) as the contracts define them: a split's rows and images, the rows
a gate passed, and a few columns, a chunk or a class at a time, so that a million rows are never all held.

prepare's and generate's rows are grouped by class in label order (within a split): `class_rows` relies on it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, PreparedStats, check_manifest_classes
from pipeline.errors import InputError
from pipeline.io import load_images, manifest_chunks, read_manifest


def load_rows(root: Path, rows: pd.DataFrame, stats: PreparedStats) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of some manifest rows (paths relative to `root`) as (uint8 NxCxHxW images, int64
    labels); empty tensors of the prepared data's shape for no rows (an empty split, no synthetic images)."""
    if rows.empty:
        size = stats.image_size
        return torch.empty((0, stats.channels, size, size), dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
    return load_images(root, rows, stats.channels)


def read_split_rows(prepared: Path, split: str) -> pd.DataFrame:
    """The rows of data/prepared/manifest.csv in one split (the other splits' rows are never all held)."""
    return read_manifest(Path(prepared) / "manifest.csv", MANIFEST_COLUMNS, keep=lambda rows: rows["split"] == split)


def load_split(prepared: Path, stats: PreparedStats, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split of the prepared data as (uint8 NxCxHxW images, int64 labels); empty tensors for an empty split."""
    return load_rows(prepared, read_split_rows(prepared, split), stats)


def passed_gate(rows: pd.DataFrame) -> pd.Series:
    """Which rows of data/synthetic/manifest.csv passed the gate (a `keep` for read_manifest and class_rows)."""
    return rows["accepted"].astype(bool)


def in_train_split(rows: pd.DataFrame) -> pd.Series:
    """Which rows of data/prepared/manifest.csv are train images (a `keep`, as passed_gate)."""
    return rows["split"] == "train"


def read_accepted_synthetic(folder: Path, stats: PreparedStats) -> pd.DataFrame:
    """The rows of data/synthetic/manifest.csv that passed the gate (may be empty), checked against stats."""
    path = Path(folder) / "manifest.csv"
    accepted = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS, keep=passed_gate)
    check_manifest_classes(accepted, stats, str(path))
    return accepted


def class_counts(path: Path, keep_column: str, keep: Callable[[pd.DataFrame], pd.Series], stats: PreparedStats):
    """The number of rows of each class (by label) that `keep` keeps in a manifest, which is checked against
    stats; read a few columns a chunk at a time."""
    counts = np.zeros(stats.num_classes, dtype=np.int64)
    for kept in kept_chunks(path, ["label", "class_name", keep_column], keep, stats):
        counts += np.bincount(kept["label"].to_numpy(), minlength=stats.num_classes)
    return counts


def first_of_each_class(
    path: Path, keep_column: str, keep: Callable[[pd.DataFrame], pd.Series], stats: PreparedStats, count: int
) -> pd.DataFrame:
    """The path and label of the first `count` rows of each class that `keep` keeps in a manifest, in the file's
    order, which is checked against stats; read a few columns a chunk at a time."""
    first = None
    for kept in kept_chunks(path, ["path", "label", "class_name", keep_column], keep, stats):
        rows = kept[["path", "label"]] if first is None else pd.concat([first, kept[["path", "label"]]])
        first = rows.groupby("label").head(count)
    return first.reset_index(drop=True)


def kept_chunks(
    path: Path,
    columns: list[str],
    keep: Callable[[pd.DataFrame], pd.Series],
    stats: PreparedStats,
    required: list[str] = (),
) -> Iterator[pd.DataFrame]:
    """`columns` (with label and class_name) of the rows that `keep` keeps in a manifest that holds `required`,
    a chunk at a time (io.manifest_chunks), each chunk's classes checked against stats."""
    for chunk in manifest_chunks(path, columns, required):
        kept = chunk[keep(chunk)]
        check_manifest_classes(kept, stats, str(path))
        yield kept


def class_rows(
    path: Path, columns: list[str], keep: Callable[[pd.DataFrame], pd.Series], num_classes: int
) -> Iterator[pd.DataFrame]:
    """The rows of each class that `keep` keeps, label 0 to num_classes - 1 (an empty frame for a class without
    any), read a chunk at a time so that one class's rows are held at a time. prepare and generate write their
    manifests' rows grouped by class in label order (within a split); a manifest in another order is an
    InputError. The caller checks the labels (class_counts)."""
    label, parts, empty = 0, [], None  # the label being read, its rows so far, and a frame of no rows
    for chunk in manifest_chunks(path, columns):
        chunk, empty = chunk[keep(chunk)], chunk.iloc[:0]
        labels = chunk["label"].to_numpy()
        if not len(labels):
            continue
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])  # where each run of one label starts
        for start, stop in zip(starts, [*starts[1:], len(labels)]):
            if labels[start] < label:
                raise InputError(
                    f"{path}: rows of label {labels[start]} come after rows of label {label}, not grouped by class "
                    "in label order as prepare and generate write them; rerun the stage that makes it"
                )
            while label < labels[start]:  # every row of `label` has been read
                yield pd.concat(parts, ignore_index=True) if parts else empty
                label, parts = label + 1, []
            parts.append(chunk.iloc[start:stop])
    while label < num_classes:
        yield pd.concat(parts, ignore_index=True) if parts else empty
        label, parts = label + 1, []
