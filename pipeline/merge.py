"""Stage `merge`: prepared train + accepted synthetic images -> data/augmented (a versioned dataset).

data/augmented/
  train/<class>/real_NNNNN.png        the real train images (hard links to data/prepared, or copies)
  train/<class>/synthetic_NNNNN.png   the synthetic images that passed the gate
  manifest.csv                        one row per image, in ImageFolder order, with a `weight` column
  dataset.json                        the dataset card; `version` is the sha256 of manifest.csv

`train/` loads with torchvision's ImageFolder with the same class indices as the prepared data. The
`weight` column is a per-image sampling weight: every class gets the same total mass and, within a
class that has synthetic images, `merge.synthetic_share` of it goes to them. Drawing this way keeps
the synthetic images from swamping a rare class's few real ones (see the README for the numbers).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import ConfigError, Params, params_to_dict
from pipeline.generate import SYNTHETIC_DIR
from pipeline.io import MANIFEST_COLUMNS, PREPARED_DIR, atomic_output, read_json, read_manifest, sha256_file, write_json, write_manifest

AUGMENTED_DIR = Path("data/augmented")
GATE_VALUE_COLUMNS = ["judge_confidence", "judge_prediction", "nn_distance", "nearest_real"]


def sampling_weights(labels: np.ndarray, synthetic: np.ndarray, synthetic_share: float) -> np.ndarray:
    """Per-image weights: every class the same total mass; within a class that has both real and
    synthetic images, `synthetic_share` of its mass on the synthetic ones. The weights average 1."""
    weights = np.zeros(len(labels))
    classes = np.unique(labels)
    for label in classes:
        in_class = labels == label
        mixed = synthetic[in_class].any() and not synthetic[in_class].all()
        for is_synthetic, share in ((False, 1.0 - synthetic_share), (True, synthetic_share)):
            members = in_class & (synthetic == is_synthetic)
            if members.any():
                weights[members] = (share if mixed else 1.0) / members.sum()
    return weights * len(labels) / len(classes)


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link where the file system allows one, a copy otherwise; either way `dest` stands alone."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)


def check_same_data(stats: dict, summary: dict, synthetic: pd.DataFrame) -> None:
    """The synthetic images must have been made for the prepared data merge reads."""
    if (summary["image_size"], summary["channels"]) != (stats["image_size"], stats["channels"]):
        raise ConfigError(f"{SYNTHETIC_DIR}: made for other image size or channels than data/prepared; rerun generate")
    name_of = {c["label"]: c["class_name"] for c in stats["classes"]}
    wrong = synthetic[[name_of.get(label) != name for label, name in zip(synthetic["label"], synthetic["class_name"])]]
    if not wrong.empty:
        row = wrong.iloc[0]
        raise ConfigError(f"{SYNTHETIC_DIR}/manifest.csv: {row.path} has label {row.label} ({row.class_name!r}), "
                          "which data/prepared does not have; rerun generate")


def run(params: Params) -> None:
    stats = read_json(PREPARED_DIR / "stats.json")
    summary = read_json(SYNTHETIC_DIR / "summary.json")
    prepared = read_manifest(PREPARED_DIR / "manifest.csv")
    synthetic = read_manifest(SYNTHETIC_DIR / "manifest.csv")
    synthetic = synthetic[synthetic["accepted"].astype(bool)]
    check_same_data(stats, summary, synthetic)
    folder_of = {c["label"]: c["folder"] for c in stats["classes"]}

    real = prepared[prepared["split"] == "train"].assign(origin_path=lambda f: str(PREPARED_DIR) + "/" + f["path"])
    synthetic = synthetic.assign(origin_path=lambda f: str(SYNTHETIC_DIR) + "/" + f["path"])
    rows = pd.concat([real, synthetic], ignore_index=True)
    # ImageFolder order: classes by label (class_folder_names keeps folder order = label order), files by name
    rows["path"] = [f"train/{folder_of[label]}/{origin}_{Path(path).name}"
                    for label, origin, path in zip(rows["label"], rows["origin"], rows["path"])]
    rows = rows.sort_values(["label", "path"], ignore_index=True)
    rows["weight"] = sampling_weights(rows["label"].to_numpy(), (rows["origin"] == "synthetic").to_numpy(),
                                      params.merge.synthetic_share).round(9)
    rows["judge_prediction"] = rows["judge_prediction"].astype("Int64")

    with atomic_output(AUGMENTED_DIR) as out:
        for folder in folder_of.values():
            (out / "train" / folder).mkdir(parents=True)
        for origin_path, path in zip(rows["origin_path"], rows["path"]):
            link_or_copy(Path(origin_path), out / path)
        manifest = rows[MANIFEST_COLUMNS + ["weight"] + GATE_VALUE_COLUMNS]
        write_manifest(manifest, out / "manifest.csv")
        card = dataset_card(manifest, stats, summary, params, sha256_file(out / "manifest.csv"))
        write_json(out / "dataset.json", card)
    print(f"merge: data/augmented version {card['version'][:12]}: {card['counts']['real']} real + "
          f"{card['counts']['synthetic']} synthetic images in {len(folder_of)} classes")


def dataset_card(manifest: pd.DataFrame, stats: dict, summary: dict, params: Params, version: str) -> dict:
    """What the augmented dataset is and what made it; no timestamps, so equal inputs give equal bytes."""
    per_class = manifest.groupby(["label", "origin"]).size().unstack(fill_value=0)
    mass = manifest.groupby("label")["weight"].sum()
    return {
        "version": version,
        "image_size": stats["image_size"],
        "channels": stats["channels"],
        "mode": stats["mode"],
        "layout": "train/<folder>/{real,synthetic}_NNNNN.png: torchvision ImageFolder, class index = label",
        "classes": [
            {
                "label": c["label"],
                "class_name": c["class_name"],
                "folder": c["folder"],
                "real": int(per_class.get("real", {}).get(c["label"], 0)),
                "synthetic": int(per_class.get("synthetic", {}).get(c["label"], 0)),
                "sampling_mass": round(float(mass[c["label"]] / mass.sum()), 6),
            }
            for c in stats["classes"]
        ],
        "counts": {origin: int((manifest["origin"] == origin).sum()) for origin in ("real", "synthetic")},
        "source": stats["source"],
        "source_fingerprint": stats["source_fingerprint"],
        "generator_hash": summary["generator_hash"],
        "judge_hash": summary["judge_hash"],
        "params": {
            "seed": params.seed,
            "data": stats["params"]["data"],
            "generate": summary["params"]["generate"],
            "merge": params_to_dict(params.merge),
        },
    }
