"""Are one class's synthetic images faithful, diverse and new? Per-class quality in judge features,
and the verdict that combines it with the downstream recall (used by the evaluate stage).

Everything here takes feature tensors and numbers; nothing reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import torch

from pipeline.config import EvaluateParams, VerdictParams
from pipeline.contracts import NO_SYNTHETIC, QUALITY_COLUMNS
from pipeline.metrics import (
    frechet_distance,
    kernel_distance,
    memorised_share,
    nearest_neighbours,
    precision_recall_density_coverage,
)


def subsample(features: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    """At most `limit` random rows (all of them when there are fewer), the same rows for the same seed."""
    if len(features) <= limit:
        return features
    return features[torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))[:limit]]


@dataclass(frozen=True)
class ClassFeatures:
    """One class's images in the judge's feature space, what its synthetic images are measured against."""

    label: int
    train: torch.Tensor  # the features of its real train images
    test: torch.Tensor  # of its real test images (val where a setting is chosen)
    synthetic: torch.Tensor  # of its synthetic images
    test_predictions: torch.Tensor  # the judge's labels for the test images
    synthetic_predictions: torch.Tensor  # the judge's labels for the synthetic images
    copy_threshold: float  # the class's copy rule (metrics.copy_thresholds)

    @cached_property
    def synthetic_to_train(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(distance, index among the train images) of each synthetic image's nearest train image: computed
        once for both the quality row and the nearest-real table."""
        return nearest_neighbours(self.synthetic, self.train)


def class_quality(features: ClassFeatures, cfg: EvaluateParams, seed: int) -> dict:
    """Fidelity, diversity and memorisation of one class's synthetic features: every QUALITY_COLUMNS
    key, NaN where there is no value (no synthetic images, too few images for a distribution metric).
    Distribution metrics run on at most `cfg.max_images_per_class` images of each set;
    nearest-neighbour distances use them all.
    """
    label, train, test, synthetic = features.label, features.train, features.test, features.synthetic
    row = dict.fromkeys(QUALITY_COLUMNS, float("nan")) | {
        "real_train": len(train),
        "real_test": len(test),
        "synthetic": len(synthetic),
        "judge_real_recall": float((features.test_predictions == label).double().mean()) if len(test) else float("nan"),
        "copy_threshold": features.copy_threshold,
    }
    if len(synthetic) == 0:
        return row
    row["label_agreement"] = float((features.synthetic_predictions == label).double().mean())
    synthetic_to_train, _ = features.synthetic_to_train
    row["synthetic_to_train_median"] = float(synthetic_to_train.median())
    if len(test):
        row["test_to_train_median"] = float(nearest_neighbours(test, train)[0].median())
    row["memorised_share"] = memorised_share(synthetic_to_train, features.copy_threshold)
    limit = cfg.max_images_per_class
    train, test, synthetic = (subsample(f, limit, seed) for f in (train, test, synthetic))
    if len(synthetic) >= 2 and len(test) >= 2:
        row["frechet"] = frechet_distance(synthetic, test)
        row["kid"] = kernel_distance(synthetic, test, cfg.kid_subset_size, cfg.kid_subsets, seed)[0]
        row |= precision_recall_density_coverage(test, synthetic, cfg.k)
    if len(train) >= 2 and len(test) >= 2:
        row["frechet_floor"] = frechet_distance(train, test)
        row["kid_floor"] = kernel_distance(train, test, cfg.kid_subset_size, cfg.kid_subsets, seed)[0]
    return row


def class_nearest_real(features: ClassFeatures) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per synthetic image of one class: (the distance to its nearest real train image of the class, that
    image's index among the class's train images, the distance relative to the class's copy threshold: below 1
    a copy by the copy rule)."""
    distances, nearest = features.synthetic_to_train
    return distances, nearest, distances / features.copy_threshold


def nearest_real_order(relative_distance: np.ndarray, synthetic_paths: np.ndarray) -> np.ndarray:
    """The order of the nearest-real table's rows: closest first (relative distance, NaN last), then by the
    synthetic image's path (`synthetic_paths`: str, or their UTF-8 bytes, which sort alike); stable."""
    return np.lexsort((synthetic_paths, relative_distance))


def class_verdict(
    label_agreement: float, judge_real_recall: float, memorised: float, recall_change: float, rules: VerdictParams
) -> tuple[str, str]:
    """(verdict, reason) for one class's synthetic images; see VerdictParams for the rules."""
    failures = []
    if label_agreement < rules.min_relative_label_agreement * judge_real_recall:
        failures.append(
            f"the judge recognises {label_agreement:.0%} of them, against {judge_real_recall:.0%} "
            f"of the real test images (< {rules.min_relative_label_agreement:.0%} of that)"
        )
    if memorised > rules.max_memorised_share:
        failures.append(f"{memorised:.1%} are copies (> {rules.max_memorised_share:.1%})")
    if recall_change < -rules.max_recall_drop:
        failures.append(
            f"they cost {-recall_change:.3f} recall against the best classical arm (> {rules.max_recall_drop:.3f})"
        )
    if failures:
        return "do not use", "; ".join(failures)
    if recall_change < 0:
        return "use with care", f"faithful, but recall {recall_change:+.3f} against the best classical arm"
    return "use", f"faithful, and recall {recall_change:+.3f} against the best classical arm"


def add_verdicts(quality: pd.DataFrame, recall_change: np.ndarray, rules: VerdictParams) -> pd.DataFrame:
    """`quality` (with `planned`, the synthetic images generate planned per class) with the columns
    recall_change, verdict and reason; a short class's reason says how short it fell."""
    quality = quality.assign(recall_change=recall_change)
    verdicts = []
    for row in quality.itertuples():
        if row.synthetic == 0:
            verdicts.append(
                (
                    NO_SYNTHETIC,
                    f"none of {row.planned} planned images passed the gate; its real images fill the class"
                    if row.planned
                    else "the class is at or above the target",
                )
            )
            continue
        verdict, reason = class_verdict(
            row.label_agreement, row.judge_real_recall, row.memorised_share, row.recall_change, rules
        )
        if row.synthetic < row.planned:
            reason += f"; short: {row.synthetic} of {row.planned} passed the gate, its real images fill the rest"
        verdicts.append((verdict, reason))
    quality["verdict"], quality["reason"] = zip(*verdicts)
    return quality
