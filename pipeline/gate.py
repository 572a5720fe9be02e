"""The generate stage's quality gate, the candidates of a class that pass it, and the selection among
them, in the judge's feature space.

The gate has two checks per candidate of a class:
(1) label: the judge gives the intended class at least the probability that `label_pass_rate` of the
    class's real val images reach (calibrated per class, so a class the judge finds hard on real
    images is not held to a bar no real image meets);
(2) memorisation: the candidate is not closer to a real train image of its class than the class's
    closest pair of distinct real images (metrics.copy_thresholds: the evaluate stage's copy rule).
A class's candidates are drawn batch by batch (`ClassDraws`) until enough pass. The images of those
that pass go to a scratch file as they pass (image_rows.py), and so do their judge features where the
selection needs them (`diverse`); what stays in memory is the gate's row of each candidate judged, the
manifest-to-be. The selection keeps `first` the first candidates that pass; `diverse` a spread-out
subset of them (farthest-point sampling, away from the class's real images and from each other);
`informative` those the judge labels correctly but is least sure of.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from pipeline.config import GenerateParams
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats
from pipeline.image_rows import ImageRows, append_image_rows, as_rows, decode_split
from pipeline.io import read_manifest
from pipeline.metrics import copy_thresholds
from pipeline.nets import predict
from pipeline.paths import Paths

MIN_CALIBRATION_IMAGES = 5  # a class with fewer real val images is calibrated on all val images pooled


# --- pure functions ------------------------------------------------------------------------------


def label_thresholds(
    true_class_probability: np.ndarray, labels: np.ndarray, num_classes: int, pass_rate: float
) -> list[float]:
    """Per class, the judge probability of the true class that `pass_rate` of its real images reach.

    `true_class_probability[i]` is the judge's probability of image i's own class. A class with fewer
    than MIN_CALIBRATION_IMAGES images takes the threshold of all images pooled.
    """
    pooled = float(np.quantile(true_class_probability, 1.0 - pass_rate))
    thresholds = []
    for label in range(num_classes):
        own = true_class_probability[labels == label]
        thresholds.append(float(np.quantile(own, 1.0 - pass_rate)) if len(own) >= MIN_CALIBRATION_IMAGES else pooled)
    return thresholds


def gate_verdicts(
    confidence: np.ndarray, nn_distance: np.ndarray, cfg: GenerateParams, label_threshold: float, copy_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, reject_reason) per candidate of one class; a disabled check never rejects."""
    low_confidence = cfg.check_label & (confidence < label_threshold)
    too_close = cfg.check_memorisation & (nn_distance < copy_threshold)
    reasons = np.select(
        [low_confidence & too_close, low_confidence, too_close],
        ["low_confidence;too_close", "low_confidence", "too_close"],
        "",
    )
    return ~(low_confidence | too_close), reasons


def farthest_point_selection(candidates: np.ndarray, distance_to_anchors: np.ndarray, count: int) -> np.ndarray:
    """Indices of `count` candidates (rows of features), chosen one at a time as the candidate farthest
    from the anchors (`distance_to_anchors`: each candidate's distance to its nearest anchor) and from
    the candidates chosen before it (k-center greedy; ties: the lowest index)."""
    if count >= len(candidates):
        return np.arange(len(candidates))
    nearest = distance_to_anchors.astype(np.float64)
    chosen = []
    for _ in range(count):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, np.linalg.norm(candidates - candidates[pick], axis=1))
        nearest[pick] = -1.0
    return np.sort(np.array(chosen))


def select_passing(
    selection: str,
    count: int,
    features: np.ndarray | None,
    nn_distance: np.ndarray,
    confidence: np.ndarray,
    judged_correct: np.ndarray,
) -> np.ndarray:
    """Ascending indices of the passing candidates of a class to keep (at most `count`), given their
    judge features (read by `diverse` only), distances to the nearest real image, judge confidences in
    the class and whether the judge's prediction is the class, in the order drawn.

    `informative` takes the candidates the judge labels correctly, least sure first; only when there
    are too few of them, the others, most sure first. (On a class the judge confuses with another,
    a calibrated label bar is low, and the least sure of all passing candidates would be images of
    the other class.)
    """
    if selection == "diverse":
        return farthest_point_selection(features, nn_distance, count)
    if selection == "informative":
        correct, other = np.flatnonzero(judged_correct), np.flatnonzero(~judged_correct)
        order = np.concatenate(
            [
                correct[np.argsort(confidence[correct], kind="stable")],
                other[np.argsort(-confidence[other], kind="stable")],
            ]
        )
        return np.sort(order[:count])
    return np.arange(min(count, len(confidence)))


def keep_until_target(accepted: np.ndarray, still_needed: int) -> int:
    """How many candidates of a batch, in order, it takes to accept `still_needed` (all if it never does)."""
    positions = np.flatnonzero(accepted)
    return len(accepted) if len(positions) <= still_needed else int(positions[still_needed - 1]) + 1


# --- the gate ------------------------------------------------------------------------------------


@dataclass
class ClassGate:
    """The quality gate of one class: the judge, and the class's real train images in its feature space."""

    judge: torch.nn.Module  # the judge, a network of judge.arch
    label: int
    real_index: NearestNeighbors
    real_paths: np.ndarray
    label_threshold: float
    copy_threshold: float
    cfg: GenerateParams

    def __call__(self, images: torch.Tensor) -> tuple[pd.DataFrame, np.ndarray]:
        """The gate's columns (GATE_COLUMNS) for a batch of uint8 candidates of this class, and their features."""
        probabilities, features = predict(self.judge, images, batch_size=len(images))
        distances, nearest = self.real_index.kneighbors(features.numpy())
        confidence = probabilities[:, self.label].numpy()
        accepted, reasons = gate_verdicts(
            confidence, distances[:, 0], self.cfg, self.label_threshold, self.copy_threshold
        )
        return pd.DataFrame(
            {
                "accepted": accepted,
                "reject_reason": reasons,
                "judge_confidence": confidence.astype(np.float64).round(6),
                "judge_prediction": probabilities.argmax(dim=1).numpy(),
                "nn_distance": distances[:, 0].round(6),
                "nearest_real": self.real_paths[nearest[:, 0]],
            }
        ), features.numpy()


def build_gates(judge: torch.nn.Module, stats: PreparedStats, paths: Paths, cfg: GenerateParams) -> list[ClassGate]:
    """One gate per class, calibrated on the real train and val images (decoded into scratch files and run
    through the judge in batches: what stays in memory is their features)."""
    manifest = read_manifest(paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
    train_paths = manifest.loc[manifest["split"] == "train", "path"].to_numpy()
    with tempfile.TemporaryDirectory(prefix="generate-") as scratch:
        scratch = Path(scratch)
        (train_images, train_labels), (val_images, val_labels) = (
            decode_split(paths.prepared, stats, split, scratch, manifest) for split in ("train", "val")
        )
        del manifest
        train_probabilities, train_features = predict(judge, train_images)
        val_probabilities, val_features = predict(judge, val_images)
    if len(val_labels):
        calibration_probability, calibration_labels = (
            val_probabilities[torch.arange(len(val_labels)), val_labels],
            val_labels,
        )
    else:  # no val split: the train images are all there is (the judge knows them, so the bar is high)
        calibration_probability = train_probabilities[torch.arange(len(train_labels)), train_labels]
        calibration_labels = train_labels
    label_bars = label_thresholds(
        calibration_probability.numpy(), calibration_labels.numpy(), stats.num_classes, cfg.label_pass_rate
    )
    copy_bars = copy_thresholds(train_features, train_labels, val_features, val_labels, stats.num_classes)
    gates = []
    for label in range(stats.num_classes):
        in_class = (train_labels == label).numpy()
        gates.append(
            ClassGate(
                judge,
                label,
                NearestNeighbors(n_neighbors=1).fit(train_features[in_class].numpy()),
                train_paths[in_class],
                label_bars[label],
                copy_bars[label],
                cfg,
            )
        )
    return gates


# --- one class's candidates ----------------------------------------------------------------------


@dataclass
class ClassDraws:
    """The candidates of one class, drawn batch by batch until `wanted` of them pass the gate (the
    planned count, times `pool` unless the selection is `first`) or its seeds run out.

    The images of the candidates that pass are appended to the scratch file of `passing` as they pass
    (its rows in the order they passed), and with `selection: diverse` their judge features to a file
    beside it. What stays in memory is `verdicts`: the gate's row of each candidate judged, up to the
    one that met the target, accepted or not, with its seed (the manifest-to-be)."""

    label: int
    seeds: np.ndarray  # every candidate it may draw, in order: planned count x max_attempts
    wanted: int
    cfg: GenerateParams
    passing: ImageRows  # the passing candidates' images; ImageRows(path, 0, (H, W, C)) before the first
    drawn: int = 0
    verdicts: list[pd.DataFrame] = field(default_factory=list)

    @property
    def passed(self) -> int:
        return self.passing.count

    @property
    def features_path(self) -> Path:
        return self.passing.path.with_suffix(".features")

    def next_seeds(self) -> np.ndarray:
        """The seeds of the next batch; none once the class is done."""
        if self.passed >= self.wanted or self.drawn >= len(self.seeds):
            return self.seeds[:0]
        # Batches follow the pass rate so far, so that a class draws little more than it needs.
        rate = max(self.passed / self.drawn if self.drawn else 1.0, 1.0 / self.cfg.max_attempts)
        size = min(self.cfg.batch_size, len(self.seeds) - self.drawn, math.ceil((self.wanted - self.passed) / rate))
        return self.seeds[self.drawn : self.drawn + size]

    def take(self, seeds: np.ndarray, batch: torch.Tensor, gate: ClassGate) -> None:
        """Gate the batch of `next_seeds` (uint8 N x C x H x W) and keep its candidates up to the one that
        meets the target: their gate rows in memory, the passing ones' images (and features) in files."""
        self.drawn += len(seeds)
        verdicts, features = gate(batch)
        kept = keep_until_target(verdicts["accepted"].to_numpy(), self.wanted - self.passed)
        verdicts = verdicts.iloc[:kept].assign(seed=seeds[:kept])
        passing = verdicts["accepted"].to_numpy(dtype=bool)
        self.verdicts.append(verdicts)
        self.passing = append_image_rows(self.passing, as_rows(batch)[:kept][passing])
        if self.cfg.selection == "diverse":
            with open(self.features_path, "ab") as handle:
                features[:kept][passing].astype(np.float32, copy=False).tofile(handle)  # the judge's: float32

    def select(self, count: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
        """The gate's rows of every candidate kept, in the order drawn; the row numbers of those that
        passed; and the positions among these of the (at most) `count` selected (select_passing), ascending.
        `diverse` reads the class's features from their file: one class's are in memory at a time."""
        rows = pd.concat(self.verdicts, ignore_index=True)
        passing_rows = np.flatnonzero(rows["accepted"].to_numpy())
        features = None
        if self.cfg.selection == "diverse":
            features = np.fromfile(self.features_path, dtype=np.float32)
            features = features.reshape(len(passing_rows), -1) if len(passing_rows) else features.reshape(0, 0)
        chosen = select_passing(
            self.cfg.selection,
            count,
            features,
            rows.loc[passing_rows, "nn_distance"].to_numpy(),
            rows.loc[passing_rows, "judge_confidence"].to_numpy(),
            rows.loc[passing_rows, "judge_prediction"].to_numpy() == self.label,
        )
        return rows, passing_rows, chosen

    def discard(self) -> None:
        """Forget the gate rows and delete the scratch files (once the class is written)."""
        self.verdicts = []
        self.passing.path.unlink(missing_ok=True)
        self.features_path.unlink(missing_ok=True)
