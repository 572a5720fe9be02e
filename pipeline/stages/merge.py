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

merge holds one class's rows at a time (prepare and generate write their manifests grouped by class), and
a few numbers per image: the shard samples wait in a scratch file until the shards are written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd

from pipeline.balancing import class_weights
from pipeline.config import Params, params_to_dict
from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, PreparedStats, SyntheticSummary, check_made_for
from pipeline.environment import environment
from pipeline.io import atomic_output, json_text, sha256_file, write_json, write_manifest, write_tar
from pipeline.manifests import class_counts, class_rows, in_train_split, passed_gate
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


def shard_names(places: Iterable[int], shard_size: int) -> tuple[list[str], list[str]]:
    """(shard, key) of the images at these places of the shards' random order: the shards cut that order into
    `shard_size` images each; a key is the place (zero-padded: names sort in that order up to 10^8 images)."""
    return [f"shards/train-{p // shard_size:06d}.tar" for p in places], [f"sample-{p:08d}" for p in places]


def manifest_records(frame: pd.DataFrame) -> Iterator[dict]:
    """Each row of a manifest as a dict of plain values (JSON null for an empty value)."""
    for row in frame.itertuples(index=False):
        yield {
            column: None if pd.isna(value) else value.item() if isinstance(value, np.generic) else value
            for column, value in zip(frame.columns, row)
        }


def published_classes(paths: Paths, stats: PreparedStats) -> Iterator[pd.DataFrame]:
    """Each class's rows of the published dataset, in ImageFolder order (its real train images, then its synthetic
    ones, each by file name), with the file each image comes from (`origin_path`); one class held at a time."""
    real = class_rows(paths.prepared / "manifest.csv", MANIFEST_COLUMNS, in_train_split, stats.num_classes)
    synthetic = class_rows(
        paths.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS, passed_gate, stats.num_classes
    )
    for c, real_rows, synthetic_rows in zip(stats.classes, real, synthetic):
        # each image's file, as a string: a Path object per row costs hundreds of bytes at a million rows
        real_rows = real_rows.assign(origin_path=f"{paths.prepared}{os.sep}" + real_rows["path"])
        synthetic_rows = synthetic_rows.assign(origin_path=f"{paths.synthetic}{os.sep}" + synthetic_rows["path"])
        rows = pd.concat([part for part in (real_rows, synthetic_rows) if len(part)], ignore_index=True)
        if rows.empty:
            continue
        rows["path"] = [
            f"train/{c.folder}/{origin}_{Path(path).name}" for origin, path in zip(rows["origin"], rows["path"])
        ]
        yield rows.sort_values("path", ignore_index=True).reindex(columns=ROW_COLUMNS + ["origin_path"])


def run(params: Params, paths: Paths = Paths()) -> None:
    stats = PreparedStats.read(paths.prepared)
    summary = SyntheticSummary.read(paths.synthetic)
    check_made_for(summary.image_size, summary.channels, summary.class_names, stats, f"{paths.synthetic}/summary.json")
    # the published rows of each class, real then synthetic: counted first, since every row's weight depends on all
    counts = np.stack(
        [
            class_counts(paths.prepared / "manifest.csv", "split", in_train_split, stats),
            class_counts(paths.synthetic / "manifest.csv", "accepted", passed_gate, stats),
        ],
        axis=1,
    )
    labels = np.repeat(np.arange(stats.num_classes), counts.sum(axis=1))
    synthetic = np.concatenate([np.repeat([False, True], class_count) for class_count in counts])
    weights = merged_weights(
        labels,
        synthetic,
        stats.num_classes,
        synthetic_shares(params.merge.synthetic_share, stats.class_names, summary.short_classes),
    )
    image_folder, shards = params.merge.format != "shards", params.merge.format != "imagefolder"
    places = np.random.default_rng(params.seed).permutation(len(labels))  # the shards' random order of the images
    columns = ROW_COLUMNS + (SHARD_COLUMNS if shards else [])

    with atomic_output(paths.augmented) as out, tempfile.TemporaryFile() as scratch:
        samples = ShardSamples(scratch, len(labels))
        if image_folder:
            for c in stats.classes:
                (out / "train" / c.folder).mkdir(parents=True)
        with open(out / "manifest.csv", "w", encoding="utf-8", newline="") as manifest:
            first = 0  # the manifest row of each class's first image
            for rows in published_classes(paths, stats):
                rows["weight"] = weights[first : first + len(rows)]
                rows["judge_prediction"] = rows["judge_prediction"].astype("Int64")
                if shards:
                    rows["shard"], rows["key"] = shard_names(places[first : first + len(rows)], params.merge.shard_size)
                    samples.add(rows)
                if image_folder:
                    for origin_path, path in zip(rows["origin_path"], rows["path"]):
                        link_or_copy(origin_path, out / path)
                write_manifest(rows[columns], manifest, header=first == 0)
                first += len(rows)
        if shards:
            write_shards(out, samples, places, params.merge.shard_size)
        origins = pd.Categorical.from_codes(synthetic.astype(np.int8), ["real", "synthetic"])
        images = pd.DataFrame({"label": labels, "origin": origins, "weight": weights})
        card = dataset_card(images, stats, summary, params, sha256_file(out / "manifest.csv"))
        write_json(out / "dataset.json", card)
    short = ", ".join(f"{name!r} ({s['passed']} of {s['planned']})" for name, s in summary.short_classes.items())
    print(
        f"merge: data/augmented version {card['version'][:12]}: {card['counts']['real']} real + "
        f"{card['counts']['synthetic']} synthetic images in {stats.num_classes} classes"
        + (f"; {-(-len(labels) // params.merge.shard_size)} shards in {paths.augmented}/shards" if shards else "")
        + (f"; short classes, their real images drawn for the shortfall: {short}" if short else "")
    )


class ShardSamples:
    """Every published image's shard sample, its manifest row as JSON and the file of its image, kept in a scratch
    file in manifest order: the shards take the images in another order (shuffled), and a row per image held in
    memory weighs a kilobyte."""

    def __init__(self, scratch: IO[bytes], count: int):
        self.scratch = scratch
        self.ends = np.zeros(count + 1, dtype=np.int64)  # sample i is scratch[ends[i]:ends[i + 1]]
        self.path_sizes = np.zeros(count, dtype=np.int64)  # the first bytes of a sample: its image's file
        self.count = 0

    def add(self, rows: pd.DataFrame) -> None:
        """The samples of `rows` (with `origin_path`), the next rows of the manifest."""
        for record, origin_path in zip(manifest_records(rows[ROW_COLUMNS]), rows["origin_path"]):
            path, text = origin_path.encode(), json_text(record).encode()
            self.scratch.write(path + text)
            self.path_sizes[self.count] = len(path)
            self.ends[self.count + 1] = self.ends[self.count] + len(path) + len(text)
            self.count += 1

    def read(self, row: int) -> tuple[str, bytes]:
        """(the image's file, the row as JSON) of manifest row `row`."""
        start, size = self.ends[row], self.ends[row + 1] - self.ends[row]
        sample = os.pread(self.scratch.fileno(), size, start)
        return sample[: self.path_sizes[row]].decode(), sample[self.path_sizes[row] :]


def write_shards(out: Path, samples: ShardSamples, places: np.ndarray, shard_size: int) -> None:
    """The samples as tars of `shard_size` under out/shards/, each in key order (the place of its image)."""
    samples.scratch.flush()
    (out / "shards").mkdir()
    row_at = np.argsort(places)  # the manifest row of the image at each place
    firsts = range(0, len(row_at), shard_size)
    for first, shard in zip(firsts, shard_names(firsts, shard_size)[0]):
        write_tar(out / shard, _shard_members(samples, row_at, range(first, min(first + shard_size, len(row_at)))))


def _shard_members(samples: ShardSamples, row_at: np.ndarray, places: range) -> Iterator[tuple[str, bytes]]:
    for place, key in zip(places, shard_names(places, 1)[1]):
        origin_path, record = samples.read(int(row_at[place]))
        yield f"{key}.json", record
        yield f"{key}.png", Path(origin_path).read_bytes()


def dataset_card(
    images: pd.DataFrame, stats: PreparedStats, summary: SyntheticSummary, params: Params, version: str
) -> dict:
    """What the augmented dataset is and what made it, from the label, origin and weight of each of its `images`;
    no timestamps, so equal inputs give equal bytes."""
    per_class = images.groupby(["label", "origin"]).size().unstack(fill_value=0)
    mass = images.groupby("label")["weight"].sum()
    synthetic_mass = images[images["origin"] == "synthetic"].groupby("label")["weight"].sum()
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
        "counts": {origin: int((images["origin"] == origin).sum()) for origin in ("real", "synthetic")},
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
