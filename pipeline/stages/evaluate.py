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
(pipeline/image_rows.py), so the stage's memory does not grow with the dataset.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import nets
from pipeline.arms import best_classical, gain, read_arm_inputs, run_arms, summarise
from pipeline.config import Params
from pipeline.contracts import (
    MANIFEST_COLUMNS,
    NO_SYNTHETIC,
    SPLITS,
    VERDICTS,
    PreparedStats,
    SyntheticSummary,
    check_made_for,
    check_manifest_classes,
    read_accepted_synthetic,
    table_columns,
)
from pipeline.errors import InputError
from pipeline.hardware import classifier_settings
from pipeline.image_rows import ImageRows, decode_rows, decode_split
from pipeline.io import atomic_output, json_text, read_json, read_manifest, write_atomically
from pipeline.metrics import copy_thresholds, tail_classes
from pipeline.paths import Paths
from pipeline.quality import ClassFeatures, add_verdicts, class_quality, nearest_real_table


def read_inputs(paths: Paths, stats: PreparedStats) -> tuple[pd.DataFrame, SyntheticSummary]:
    """(the accepted synthetic images' paths and labels, possibly none; generate's summary), checked against
    data/augmented and data/prepared."""
    synthetic = read_accepted_synthetic(paths.synthetic, stats)
    summary = SyntheticSummary.read(paths.synthetic)
    check_made_for(summary.image_size, summary.channels, summary.class_names, stats, f"{paths.synthetic}/summary.json")
    path = paths.augmented / "manifest.csv"
    merged = read_manifest(path, MANIFEST_COLUMNS + ["weight"])
    check_manifest_classes(merged, stats, str(path))
    if sorted(merged.loc[merged["origin"] == "synthetic", "sha256"]) != sorted(synthetic["sha256"]):
        raise InputError(f"{path}: its synthetic images are not those of {paths.synthetic}; rerun merge")
    card = read_json(paths.augmented / "dataset.json")
    if [c["class_name"] for c in card["classes"]] != stats.class_names:
        raise InputError(f"{paths.augmented}/dataset.json: its classes are not those of data/prepared; rerun merge")
    return synthetic[["path", "label"]], summary  # what the stage reads on: a million rows' other columns weigh


def run(params: Params, paths: Paths = Paths()) -> None:
    cfg = params.evaluate
    classifier_settings(cfg.classifier, torch.cuda.device_count(), "evaluate.classifier")  # a GPU asked for and none
    stats = PreparedStats.read(paths.prepared)
    judge, judge_meta = nets.load_judge(paths.judge)
    check_made_for(
        judge_meta.image_size, judge_meta.channels, judge_meta.class_names, stats, f"{paths.judge}/judge.json"
    )
    synthetic_rows, summary = read_inputs(paths, stats)
    prepared_rows = read_manifest(paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
    train_paths = prepared_rows.loc[prepared_rows["split"] == "train", "path"].to_numpy()
    with tempfile.TemporaryDirectory(prefix="evaluate-") as scratch:  # every image decoded once, read by row
        scratch = Path(scratch)
        train, val, test = (decode_split(paths.prepared, stats, split, scratch, prepared_rows) for split in SPLITS)
        del prepared_rows
        synthetic = decode_rows(paths.synthetic, synthetic_rows, stats, scratch / "synthetic.u8")

        # 1. quality, per class, in judge features
        image_paths = (train_paths, synthetic_rows["path"].to_numpy())
        quality, nearest = quality_tables(judge, (train, val, test, synthetic), image_paths, summary, stats, params)
        del synthetic_rows, train_paths, image_paths  # a row or path per image: not held through the arms

        # 2. downstream utility over paired seeds
        tail = tail_classes(stats.split_counts("train"))
        runs = run_arms(read_arm_inputs(paths, stats, scratch), val, test, tail, cfg, params.seed)
    arms, recalls = summarise(runs, stats.class_names)
    baseline = best_classical(runs)
    augmented_gain = gain(runs, baseline)

    # 3. verdicts
    quality = add_verdicts(quality, (recalls["augmented_mean"] - recalls[f"{baseline}_mean"]).to_numpy(), cfg.verdict)
    classifier = nets.classifier_name(cfg.classifier.arch, cfg.classifier.width)
    headline = headline_document(arms, augmented_gain, quality, classifier)
    with atomic_output(paths.tables) as tables:
        for name, table in (
            ("utility.csv", arms),
            ("utility_runs.csv", runs),
            ("recall.csv", recalls),
            ("quality.csv", quality),
            ("nearest_real.csv", nearest),
        ):
            table[table_columns(name, arms["arm"])].to_csv(
                tables / name, index=False, lineterminator="\n", float_format="%.6f"
            )
    write_atomically(paths.reports / "detail.json", json_text(detail_document(quality, tail, stats.class_names)))
    # the headline in its reading order (json_text sorts keys), which `dvc exp show` keeps: the gain first
    write_atomically(paths.metrics, json.dumps(headline, indent=2, ensure_ascii=False) + "\n")
    print(summary_line(headline))


def quality_tables(
    judge: torch.nn.Module,
    images: tuple[tuple[ImageRows, torch.Tensor], ...],
    image_paths: tuple[np.ndarray, np.ndarray],
    summary: SyntheticSummary,
    stats: PreparedStats,
    params: Params,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the quality of each class's synthetic images, every synthetic image's nearest real train image) in the
    judge's feature space, from the (images, labels) of the train, val, test and synthetic sets and the paths
    of the train and synthetic images."""
    (train, train_labels), (val, val_labels), (test, test_labels), (synthetic, synthetic_labels) = images
    train_features, val_features = nets.predict(judge, train)[1], nets.predict(judge, val)[1]
    test_probabilities, test_features = nets.predict(judge, test)
    synthetic_probabilities, synthetic_features = nets.predict(judge, synthetic)
    copy_bars = copy_thresholds(train_features, train_labels, val_features, val_labels, stats.num_classes)
    test_predictions, synthetic_predictions = test_probabilities.argmax(dim=1), synthetic_probabilities.argmax(dim=1)
    classes = (  # made one at a time as the quality table asks: a class's rows of each set are copies
        ClassFeatures(
            y,
            train_features[train_labels == y],
            test_features[test_labels == y],
            synthetic_features[synthetic_labels == y],
            test_predictions[test_labels == y],
            synthetic_predictions[synthetic_labels == y],
            copy_bars[y],
        )
        for y in range(stats.num_classes)
    )
    quality = pd.DataFrame(
        [
            {"class_name": name, "planned": summary.planned[name]}
            | class_quality(features, params.evaluate, params.seed)
            for name, features in zip(stats.class_names, classes)
        ]
    )
    train_paths, synthetic_paths = image_paths
    nearest = nearest_real_table(
        synthetic_features, synthetic_labels, synthetic_paths, train_features, train_labels, train_paths, copy_bars
    )
    return quality, nearest


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
