"""Stage `merge`: prepared train + accepted synthetic images -> data/augmented (a versioned dataset).

data/augmented/
  train/<class>/real_NNNNN.png        the real train images (hard links to data/prepared, or copies)
  train/<class>/synthetic_NNNNN.png   the synthetic images that passed the gate
  shards/train-NNNNNN.tar             or/and the same images as WebDataset shards (merge.format)
  manifest.csv                        one row per image, in ImageFolder order, with a `weight` column
  dataset.json                        the dataset card; `version` is the sha256 of manifest.csv

`train/` loads with torchvision's ImageFolder with the same class indices as the prepared data. The
`weight` column is a per-image sampling weight (balancing.class_weights): every class gets the same
total mass and, within a class that has synthetic images, `merge.synthetic_share` of it goes to them.
Drawing this way keeps the synthetic images from swamping a rare class's few real ones. A class that
fell short at the gate (generate.on_short: fill) puts only passed/planned of that share on its
synthetic images, so each weighs what it would in a full class and its real images draw the rest;
with no synthetic images at all, every class is drawn from its real images equally often.

DVC stores and compares every file of an output, which gets slow at tens of thousands of images:
`merge.format: shards` publishes the images as tar files of `merge.shard_size` images each instead
(WebDataset's layout: a sample is `<key>.png` and `<key>.json`, its manifest row). The samples are
shuffled with the seed across the shards, so that a streaming reader sees every class in every
shard; manifest.csv, still in ImageFolder order, then names each image's `shard` and `key` (its
`path` stays the image's name in the ImageFolder form).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.balancing import class_weights
from pipeline.config import Params, params_to_dict
from pipeline.contracts import (
    MANIFEST_COLUMNS,
    PreparedStats,
    SyntheticSummary,
    check_made_for,
    read_accepted_synthetic,
    read_split_rows,
)
from pipeline.environment import environment
from pipeline.io import atomic_output, json_text, sha256_file, write_json, write_manifest, write_tar
from pipeline.paths import Paths

GATE_VALUE_COLUMNS = ["judge_confidence", "judge_prediction", "nn_distance", "nearest_real"]
ROW_COLUMNS = MANIFEST_COLUMNS + ["weight"] + GATE_VALUE_COLUMNS  # a row of the manifest, and a shard sample's .json
SHARD_COLUMNS = ["shard", "key"]  # added to the manifest when the images are in shards
LAYOUTS = {
    "imagefolder": "train/<folder>/{real,synthetic}_NNNNN.png: torchvision ImageFolder, class index = label",
    "shards": "shards/train-NNNNNN.tar: WebDataset samples <key>.png + <key>.json (the manifest row), "
    "shuffled across shards; manifest.csv names each image's shard and key",
}


def link_or_copy(source: Path | str, dest: Path) -> None:
    """A hard link where the file system allows one, a copy otherwise; either way `dest` stands alone."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def synthetic_shares(
    synthetic_share: float, class_names: list[str], short_classes: dict[str, dict[str, int]]
) -> np.ndarray:
    """Per class, the share of its sampling mass on its synthetic images: `synthetic_share`, times
    passed/planned for a short class."""
    return np.array(
        [
            synthetic_share * short_classes[name]["passed"] / short_classes[name]["planned"]
            if name in short_classes
            else synthetic_share
            for name in class_names
        ]
    )


def merged_weights(labels, synthetic, num_classes: int, synthetic_share: float | np.ndarray):
    """The manifest's `weight` column: class-balanced, `synthetic_share` (one, or one per class) of a
    mixed class on its synthetic images, averaging 1, rounded so that the CSV is stable."""
    weights = class_weights(labels, num_classes, balance=1.0, synthetic=synthetic, synthetic_share=synthetic_share)
    return (weights * len(weights) / weights.sum()).round(9)


def shard_places(n_images: int, shard_size: int, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """(shard, key) of each of n images: the images in a random order, cut into shards of `shard_size`;
    a key is the image's place in that order (zero-padded: names sort in that order up to 10^8 images)."""
    places = rng.permutation(n_images)
    return [f"shards/train-{p // shard_size:06d}.tar" for p in places], [f"sample-{p:08d}" for p in places]


def manifest_records(frame: pd.DataFrame) -> Iterator[dict]:
    """Each row of a manifest as a dict of plain values (JSON null for an empty value)."""
    for row in frame.itertuples(index=False):
        yield {
            column: None if pd.isna(value) else value.item() if isinstance(value, np.generic) else value
            for column, value in zip(frame.columns, row)
        }


def run(params: Params, paths: Paths = Paths()) -> None:
    stats = PreparedStats.read(paths.prepared)
    summary = SyntheticSummary.read(paths.synthetic)
    check_made_for(summary.image_size, summary.channels, summary.class_names, stats, f"{paths.synthetic}/summary.json")
    real = read_split_rows(paths.prepared, "train")
    synthetic = read_accepted_synthetic(paths.synthetic, stats)
    folder_of = {c.label: c.folder for c in stats.classes}

    # each image's file, as a string: a Path object per row costs hundreds of bytes at a million rows
    real["origin_path"] = f"{paths.prepared}{os.sep}" + real["path"]
    synthetic["origin_path"] = f"{paths.synthetic}{os.sep}" + synthetic["path"]
    rows = pd.concat([real, synthetic], ignore_index=True)
    # ImageFolder order: classes by label (class_folder_names keeps folder order = label order), files by name
    rows["path"] = [
        f"train/{folder_of[label]}/{origin}_{Path(path).name}"
        for label, origin, path in zip(rows["label"], rows["origin"], rows["path"])
    ]
    rows = rows.sort_values(["label", "path"], ignore_index=True)
    rows["weight"] = merged_weights(
        rows["label"].to_numpy(),
        (rows["origin"] == "synthetic").to_numpy(),
        stats.num_classes,
        synthetic_shares(params.merge.synthetic_share, stats.class_names, summary.short_classes),
    )
    rows["judge_prediction"] = rows["judge_prediction"].astype("Int64")
    image_folder, shards = params.merge.format != "shards", params.merge.format != "imagefolder"
    if shards:
        rows["shard"], rows["key"] = shard_places(
            len(rows), params.merge.shard_size, np.random.default_rng(params.seed)
        )

    with atomic_output(paths.augmented) as out:
        if image_folder:
            for folder in folder_of.values():
                (out / "train" / folder).mkdir(parents=True)
            for origin_path, path in zip(rows["origin_path"], rows["path"]):
                link_or_copy(origin_path, out / path)
        if shards:
            write_shards(out, rows)
        manifest = rows[ROW_COLUMNS + (SHARD_COLUMNS if shards else [])]
        write_manifest(manifest, out / "manifest.csv")
        card = dataset_card(manifest, stats, summary, params, sha256_file(out / "manifest.csv"))
        write_json(out / "dataset.json", card)
    short = ", ".join(f"{name!r} ({s['passed']} of {s['planned']})" for name, s in summary.short_classes.items())
    print(
        f"merge: data/augmented version {card['version'][:12]}: {card['counts']['real']} real + "
        f"{card['counts']['synthetic']} synthetic images in {len(folder_of)} classes"
        + (f"; {rows['shard'].nunique()} shards in {paths.augmented}/shards" if shards else "")
        + (f"; short classes, their real images drawn for the shortfall: {short}" if short else "")
    )


def write_shards(out: Path, rows: pd.DataFrame) -> None:
    """The images of `rows` (with `origin_path`, `shard` and `key`) as tars under out/shards/, in key order."""
    (out / "shards").mkdir()
    for shard, samples in rows.sort_values("key").groupby("shard", sort=True):
        write_tar(out / shard, _shard_members(samples))


def _shard_members(samples: pd.DataFrame) -> Iterator[tuple[str, bytes]]:
    for record, key, origin_path in zip(manifest_records(samples[ROW_COLUMNS]), samples["key"], samples["origin_path"]):
        yield f"{key}.json", json_text(record).encode()
        yield f"{key}.png", Path(origin_path).read_bytes()


def dataset_card(
    manifest: pd.DataFrame, stats: PreparedStats, summary: SyntheticSummary, params: Params, version: str
) -> dict:
    """What the augmented dataset is and what made it; no timestamps, so equal inputs give equal bytes."""
    per_class = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    mass = manifest.groupby("label")["weight"].sum()
    synthetic_mass = manifest[manifest["origin"] == "synthetic"].groupby("label")["weight"].sum()
    return {
        "version": version,
        "image_size": stats.image_size,
        "channels": stats.channels,
        "mode": stats.mode,
        "format": params.merge.format,
        "layout": "; ".join(text for form, text in LAYOUTS.items() if params.merge.format in (form, "both")),
        "classes": [
            {
                "label": c.label,
                "class_name": c.class_name,
                "folder": c.folder,
                "real": int(per_class.get("real", {}).get(c.label, 0)),
                "synthetic": int(per_class.get("synthetic", {}).get(c.label, 0)),
                "planned": summary.planned[c.class_name],
                "sampling_mass": round(float(mass[c.label] / mass.sum()), 6),
                "synthetic_share": round(float(synthetic_mass.get(c.label, 0.0) / mass[c.label]), 6),
            }
            for c in stats.classes
        ],
        "counts": {origin: int((manifest["origin"] == origin).sum()) for origin in ("real", "synthetic")},
        "short_classes": summary.short_classes,
        "source": stats.source,
        "source_fingerprint": stats.source_fingerprint,
        "generator_hash": summary.generator_hash,
        "judge_hash": summary.judge_hash,
        # merge runs before evaluate and does not read its params: the card points to the verdict
        "downstream_verdict": "measured by the evaluate stage for one downstream classifier, which "
        "reports/metrics.json names (`classifier`, from evaluate.classifier.arch); "
        "it holds for that classifier",
        "environment": {**summary.environment, "merge": environment("cpu")},  # what each stage computed with
        "params": {
            "seed": params.seed,
            "data": stats.params["data"],
            "generate": summary.params["generate"],
            "merge": params_to_dict(params.merge),
        },
    }
