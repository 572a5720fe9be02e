"""Stage `evaluate`: are the synthetic images worth using? Computes; the report stage presents.

Reads data/prepared (real train, val and test), data/holdout (the oracle's images), models/judge
(the feature extractor), data/synthetic (the accepted images) and data/augmented (the merged
dataset); writes reports/metrics.json (the headline: a dozen numbers for `dvc metrics` and `dvc exp show`),
reports/detail.json (the tail and short classes, quality means over classes) and reports/tables/*.csv
(per arm, per seed, per class and per synthetic image; DVC plots).

1. Quality of each class's synthetic images against its real test images, in the judge's feature
   space (pipeline/quality.py): Fréchet distance and KID beside their real-vs-real floors, precision,
   recall, density, coverage, label agreement, and the share of copies by the copy rule.
2. Downstream utility (pipeline/arms.py): every arm over `evaluate.seeds` paired seeds; the gain of
   augmented over the best classical arm (chosen on val) with its paired 95 % interval.
3. A verdict per class, and one summary line. The test split is read here and nowhere else.

Every image is decoded once into a scratch file and read back a batch at a time
(pipeline/image_rows.py), the judge's features go to scratch files read back a class at a time
(pipeline/judge_features.py), the manifests are read a chunk of rows at a time and the nearest-real
table is written as soon as it is known, so the stage's memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import nets
from pipeline.allocator import fix_mmap_threshold
from pipeline.arms import best_classical, gain, read_arm_inputs, run_arms, summarise
from pipeline.config import Params
from pipeline.contracts import (
    GATE_COLUMNS,
    MANIFEST_COLUMNS,
    NO_SYNTHETIC,
    SPLITS,
    VERDICTS,
    PreparedStats,
    SyntheticSummary,
    check_made_for,
    check_manifest_classes,
    table_columns,
)
from pipeline.dataset import encoded
from pipeline.errors import InputError
from pipeline.hardware import classifier_settings
from pipeline.image_rows import ImageRows, decode_rows, decode_split, split_chunks
from pipeline.io import (
    CHUNK_ROWS,
    atomic_output,
    json_text,
    manifest_chunks,
    packed_hashes,
    read_json,
    same_hashes,
    write_atomically,
)
from pipeline.judge_features import judge_features
from pipeline.manifests import kept_chunks, passed_gate
from pipeline.metrics import class_copy_thresholds, tail_classes
from pipeline.paths import Paths
from pipeline.quality import ClassFeatures, add_verdicts, class_nearest_real, class_quality, nearest_real_order


def read_inputs(paths: Paths, stats: PreparedStats) -> tuple[pd.DataFrame, SyntheticSummary]:
    """(the accepted synthetic images' paths and labels, possibly none; generate's summary), checked against
    data/augmented and data/prepared. The manifests are read a chunk at a time, a few columns of them, and
    their hashes held as 32-byte digests: generate's lists every candidate judged (1.65 million rows at a
    million source images), merge's every published image."""
    path = paths.synthetic / "manifest.csv"
    accepted, hashes = [], []
    for chunk in kept_chunks(
        path, [*ACCEPTED_COLUMNS, "accepted"], passed_gate, stats, MANIFEST_COLUMNS + GATE_COLUMNS
    ):
        hashes.append(packed_hashes(chunk["sha256"]))
        accepted.append(chunk[["path", "label"]])
    summary = SyntheticSummary.read(paths.synthetic)
    check_made_for(summary.image_size, summary.channels, summary.class_names, stats, f"{paths.synthetic}/summary.json")
    path = paths.augmented / "manifest.csv"
    classes, merged_hashes = [], []
    for chunk in manifest_chunks(path, ACCEPTED_COLUMNS[1:] + ["origin"], MANIFEST_COLUMNS + ["weight"]):
        classes.append(chunk[["label", "class_name"]].drop_duplicates())
        merged_hashes.append(packed_hashes(chunk.loc[chunk["origin"] == "synthetic", "sha256"]))
    check_manifest_classes(pd.concat(classes), stats, str(path))
    if not same_hashes(merged_hashes, hashes):
        raise InputError(f"{path}: its synthetic images are not those of {paths.synthetic}; rerun merge")
    card = read_json(paths.augmented / "dataset.json")
    if [c["class_name"] for c in card["classes"]] != stats.class_names:
        raise InputError(f"{paths.augmented}/dataset.json: its classes are not those of data/prepared; rerun merge")
    return pd.concat(accepted, ignore_index=True), summary


ACCEPTED_COLUMNS = ["path", "label", "class_name", "sha256"]  # what read_inputs reads of the accepted rows


def run(params: Params, paths: Paths = Paths()) -> None:
    cfg = params.evaluate
    fix_mmap_threshold()  # a peak that does not vary with the allocator's history (pipeline/allocator.py)
    classifier_settings(cfg.classifier, torch.cuda.device_count(), "evaluate.classifier")  # a GPU asked for and none
    stats = PreparedStats.read(paths.prepared)
    judge, judge_meta = nets.load_judge(paths.judge)
    check_made_for(
        judge_meta.image_size, judge_meta.channels, judge_meta.class_names, stats, f"{paths.judge}/judge.json"
    )
    synthetic_rows, summary = read_inputs(paths, stats)
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:  # every image decoded once, read by row
        scratch = Path(scratch)
        train, val, test = (decode_split(paths.prepared, stats, split, scratch) for split in SPLITS)
        train_paths = np.concatenate([encoded(chunk["path"]) for chunk in split_chunks(paths.prepared, "train")])
        synthetic = decode_rows(paths.synthetic, synthetic_rows, stats, scratch / "synthetic.u8")
        synthetic_paths = encoded(synthetic_rows["path"])
        del synthetic_rows  # a path per image, held as bytes from here

        # 1. quality, per class, in judge features; the nearest-real table written to the scratch folder
        image_paths = (train_paths, synthetic_paths)
        quality = quality_tables(judge, (train, val, test, synthetic), image_paths, summary, stats, params, scratch)
        del train_paths, synthetic_paths, image_paths  # not held through the arms

        # 2. downstream utility over paired seeds
        tail = tail_classes(stats.split_counts("train"))
        runs = run_arms(read_arm_inputs(paths, stats, scratch), val, test, tail, cfg, params.seed)
        arms, recalls = summarise(runs, stats.class_names)
        baseline = best_classical(runs)
        augmented_gain = gain(runs, baseline)

        # 3. verdicts
        recall_change = (recalls["augmented_mean"] - recalls[f"{baseline}_mean"]).to_numpy()
        quality = add_verdicts(quality, recall_change, cfg.verdict)
        classifier = nets.classifier_name(cfg.classifier.arch, cfg.classifier.width)
        headline = headline_document(arms, augmented_gain, quality, classifier)
        with atomic_output(paths.tables) as tables:
            for name, table in (
                ("utility.csv", arms),
                ("utility_runs.csv", runs),
                ("recall.csv", recalls),
                ("quality.csv", quality),
            ):
                table[table_columns(name, arms["arm"])].to_csv(tables / name, **TABLE_FORMAT)
            shutil.move(scratch / NEAREST_TABLE, tables / NEAREST_TABLE)
    write_atomically(paths.reports / "detail.json", json_text(detail_document(quality, tail, stats.class_names)))
    # the headline in its reading order (json_text sorts keys), which `dvc exp show` keeps: the gain first
    write_atomically(paths.metrics, json.dumps(headline, indent=2, ensure_ascii=False) + "\n")
    print(summary_line(headline))


TABLE_FORMAT = {"index": False, "lineterminator": "\n", "float_format": "%.6f"}  # every table's CSV
NEAREST_TABLE = "nearest_real.csv"


def quality_tables(
    judge: torch.nn.Module,
    images: tuple[tuple[ImageRows, torch.Tensor], ...],
    image_paths: tuple[np.ndarray, np.ndarray],
    summary: SyntheticSummary,
    stats: PreparedStats,
    params: Params,
    scratch: Path,
) -> pd.DataFrame:
    """The quality of each class's synthetic images in the judge's feature space, from the (images, labels)
    of the train, val, test and synthetic sets and the paths of the train and synthetic images (UTF-8 bytes);
    every synthetic image's nearest real train image is written to <scratch>/nearest_real.csv. The features
    go to scratch files (judge_features) and are read back a class at a time."""
    train, val, test, synthetic = (
        judge_features(judge, rows, labels, scratch / f"{name}.f32")
        for name, (rows, labels) in zip((*SPLITS, "synthetic"), images)
    )
    copy_bars = class_copy_thresholds((train.of_class(y), val.of_class(y)) for y in range(stats.num_classes))
    quality, nearest = [], {name: [np.empty(0, dtype)] for name, dtype in NEAREST_NUMBERS.items()}
    for y, name in enumerate(stats.class_names):
        features = ClassFeatures(
            y,
            train.of_class(y),
            test.of_class(y),
            synthetic.of_class(y),
            test.predictions[test.labels == y],
            synthetic.predictions[synthetic.labels == y],
            copy_bars[y],
        )
        planned = {"class_name": name, "planned": summary.planned[name]}
        quality.append(planned | class_quality(features, params.evaluate, params.seed))
        if len(features.synthetic):
            distances, nearest_train, relative = class_nearest_real(features)
            for key, values in (
                ("label", np.full(len(distances), y)),
                ("synthetic_row", torch.nonzero(synthetic.labels == y).squeeze(1).numpy()),
                ("train_row", torch.nonzero(train.labels == y).squeeze(1)[nearest_train].numpy()),
                ("distance", distances.numpy()),
                ("relative_distance", relative.numpy()),
            ):
                nearest[key].append(values.astype(NEAREST_NUMBERS[key]))
    nearest = {key: np.concatenate(parts) for key, parts in nearest.items()}
    write_nearest_table(scratch / NEAREST_TABLE, nearest, *image_paths)
    return pd.DataFrame(quality)


# per synthetic image: its class, its row, its nearest real train image's row, their distance and its ratio to
# the class's copy threshold
NEAREST_NUMBERS = {
    "label": np.int64,
    "synthetic_row": np.int64,
    "train_row": np.int64,
    "distance": np.float64,
    "relative_distance": np.float64,
}


def write_nearest_table(
    path: Path, nearest: dict[str, np.ndarray], train_paths: np.ndarray, synthetic_paths: np.ndarray
) -> None:
    """nearest_real.csv: a row per synthetic image (`nearest`'s NEAREST_NUMBERS, paths as UTF-8 bytes), closest
    first, written CHUNK_ROWS rows at a time, so only a chunk's paths are ever Python strings."""
    synthetic_row, train_row = nearest["synthetic_row"], nearest["train_row"]
    order = nearest_real_order(nearest["relative_distance"], synthetic_paths[synthetic_row])
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for start in range(0, max(1, len(order)), CHUNK_ROWS):  # a table of no rows still has its header
            rows = order[start : start + CHUNK_ROWS]
            table = pd.DataFrame(
                {
                    "label": nearest["label"][rows],
                    "synthetic_path": np.char.decode(synthetic_paths[synthetic_row[rows]], "utf-8"),
                    "train_path": np.char.decode(train_paths[train_row[rows]], "utf-8"),
                    "distance": nearest["distance"][rows],
                    "relative_distance": nearest["relative_distance"][rows],
                }
            )
            table[table_columns(NEAREST_TABLE)].to_csv(handle, header=start == 0, **TABLE_FORMAT)


def headline_document(arms: pd.DataFrame, augmented_gain: dict, quality: pd.DataFrame, classifier: str) -> dict:
    """reports/metrics.json: the answer in a few flat keys, short enough for one line of `dvc exp show`
    (`gap_closed` only when there is an oracle arm): the augmented arm's gain in test balanced accuracy
    over the classical arm chosen on val (`baseline`) with its 95 % interval, the tail recall gain, both arms'
    scores, `classifier` (the network every arm trained: the verdict holds for that network), and `classes`: how
    many classes got each verdict, and how many are short."""
    baseline = augmented_gain["baseline"]
    score = arms.set_index("arm")["balanced_accuracy_mean"]
    document = {
        "gain": _number(augmented_gain["balanced_accuracy"]),
        "gain_low": _number(augmented_gain["ci95_low"]),
        "gain_high": _number(augmented_gain["ci95_high"]),
        "tail_gain": _number(augmented_gain["tail_recall"]),
        "baseline": baseline,
        "baseline_score": _number(score[baseline]),
        "augmented_score": _number(score["augmented"]),
    }
    if "gap_closed" in augmented_gain:
        document["gap_closed"] = _number(augmented_gain["gap_closed"])
    document["classifier"] = classifier
    document["classes"] = {
        verdict.replace(" ", "_"): int((quality["verdict"] == verdict).sum()) for verdict in (*VERDICTS, NO_SYNTHETIC)
    } | {"short": int((quality["synthetic"] < quality["planned"]).sum())}
    return document


def detail_document(quality: pd.DataFrame, tail: list[int], class_names: list[str]) -> dict:
    """reports/detail.json: the lists and means behind the headline (per arm and per class: reports/tables)."""
    return {
        "tail_classes": [class_names[label] for label in tail],
        # the classes that fewer synthetic images passed the gate than planned (their real images fill the rest)
        "short_classes": {
            row.class_name: {"passed": int(row.synthetic), "planned": int(row.planned)}
            for row in quality.itertuples()
            if row.synthetic < row.planned
        },
        "quality_mean_over_classes": {
            key: _number(value)
            for key, value in quality[quality["synthetic"] > 0]
            .drop(columns=["class_name", "planned", "verdict", "reason", "real_train", "real_test", "synthetic"])
            .mean()
            .items()
            if pd.notna(value)
        },
    }


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else round(float(value), 6)


def summary_line(headline: dict) -> str:
    line = (
        f"evaluate: balanced accuracy of augmented {headline['augmented_score']:.3f} "
        f"vs {headline['baseline']} {headline['baseline_score']:.3f}: gain {headline['gain']:+.3f} "
        f"(95 % interval {_bound(headline['gain_low'])} to {_bound(headline['gain_high'])}), "
        f"tail recall {headline['tail_gain']:+.3f}"
    )
    if headline.get("gap_closed") is not None:
        line += f", gap to the oracle closed {headline['gap_closed']:.0%}"
    counts = [
        f"{name.replace('_', ' ')} {count}"
        for name, count in headline["classes"].items()
        if name != "short" and (count or name != "no_synthetic_images")
    ]
    return line + "; classes: " + ", ".join(counts)


def _bound(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:+.3f}"
