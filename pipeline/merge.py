"""Stage `merge`: prepared train + accepted synthetic images -> data/augmented (a versioned dataset).

data/augmented/
  train/<class>/real_NNNNN.png        the real train images (hard links to data/prepared, or copies)
  train/<class>/synthetic_NNNNN.png   the synthetic images that passed the gate
  manifest.csv                        one row per image, in ImageFolder order, with a `weight` column
  dataset.json                        the dataset card; `version` is the sha256 of manifest.csv

`train/` loads with torchvision's ImageFolder with the same class indices as the prepared data. The
`weight` column is a per-image sampling weight (sampling.class_weights): every class gets the same
total mass and, within a class that has synthetic images, `merge.synthetic_share` of it goes to them.
Drawing this way keeps the synthetic images from swamping a rare class's few real ones.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline.config import Params, params_to_dict
from pipeline.contracts import (MANIFEST_COLUMNS, PreparedStats, SyntheticSummary, check_made_for,
                                read_accepted_synthetic)
from pipeline.io import atomic_output, read_manifest, sha256_file, write_json, write_manifest
from pipeline.paths import Paths
from pipeline.sampling import class_weights

GATE_VALUE_COLUMNS = ["judge_confidence", "judge_prediction", "nn_distance", "nearest_real"]


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the file system allows one, a copy otherwise; either way `dest` stands alone."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def merged_weights(labels, synthetic, num_classes: int, synthetic_share: float):
    """The manifest's `weight` column: class-balanced, `synthetic_share` of a mixed class on its
    synthetic images, averaging 1, rounded so that the CSV is stable."""
    weights = class_weights(labels, num_classes, balance=1.0, synthetic=synthetic, synthetic_share=synthetic_share)
    return (weights * len(weights) / weights.sum()).round(9)


def run(params: Params, paths: Paths = Paths()) -> None:
    stats = PreparedStats.read(paths.prepared)
    summary = SyntheticSummary.read(paths.synthetic)
    check_made_for(summary.image_size, summary.channels, summary.class_names, stats, f"{paths.synthetic}/summary.json")
    prepared = read_manifest(paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
    synthetic = read_accepted_synthetic(paths.synthetic, stats)
    folder_of = {c.label: c.folder for c in stats.classes}

    real = prepared[prepared["split"] == "train"].assign(origin_path=lambda f: [paths.prepared / p for p in f["path"]])
    synthetic = synthetic.assign(origin_path=lambda f: [paths.synthetic / p for p in f["path"]])
    rows = pd.concat([real, synthetic], ignore_index=True)
    # ImageFolder order: classes by label (class_folder_names keeps folder order = label order), files by name
    rows["path"] = [f"train/{folder_of[label]}/{origin}_{Path(path).name}"
                    for label, origin, path in zip(rows["label"], rows["origin"], rows["path"])]
    rows = rows.sort_values(["label", "path"], ignore_index=True)
    rows["weight"] = merged_weights(rows["label"].to_numpy(), (rows["origin"] == "synthetic").to_numpy(),
                                    stats.num_classes, params.merge.synthetic_share)
    rows["judge_prediction"] = rows["judge_prediction"].astype("Int64")

    with atomic_output(paths.augmented) as out:
        for folder in folder_of.values():
            (out / "train" / folder).mkdir(parents=True)
        for origin_path, path in zip(rows["origin_path"], rows["path"]):
            link_or_copy(origin_path, out / path)
        manifest = rows[MANIFEST_COLUMNS + ["weight"] + GATE_VALUE_COLUMNS]
        write_manifest(manifest, out / "manifest.csv")
        card = dataset_card(manifest, stats, summary, params, sha256_file(out / "manifest.csv"))
        write_json(out / "dataset.json", card)
    print(f"merge: data/augmented version {card['version'][:12]}: {card['counts']['real']} real + "
          f"{card['counts']['synthetic']} synthetic images in {len(folder_of)} classes")


def dataset_card(manifest: pd.DataFrame, stats: PreparedStats, summary: SyntheticSummary, params: Params,
                 version: str) -> dict:
    """What the augmented dataset is and what made it; no timestamps, so equal inputs give equal bytes."""
    per_class = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    mass = manifest.groupby("label")["weight"].sum()
    return {
        "version": version,
        "image_size": stats.image_size,
        "channels": stats.channels,
        "mode": stats.mode,
        "layout": "train/<folder>/{real,synthetic}_NNNNN.png: torchvision ImageFolder, class index = label",
        "classes": [
            {
                "label": c.label,
                "class_name": c.class_name,
                "folder": c.folder,
                "real": int(per_class.get("real", {}).get(c.label, 0)),
                "synthetic": int(per_class.get("synthetic", {}).get(c.label, 0)),
                "sampling_mass": round(float(mass[c.label] / mass.sum()), 6),
            }
            for c in stats.classes
        ],
        "counts": {origin: int((manifest["origin"] == origin).sum()) for origin in ("real", "synthetic")},
        "source": stats.source,
        "source_fingerprint": stats.source_fingerprint,
        "generator_hash": summary.generator_hash,
        "judge_hash": summary.judge_hash,
        "params": {
            "seed": params.seed,
            "data": stats.params["data"],
            "generate": summary.params["generate"],
            "merge": params_to_dict(params.merge),
        },
    }
