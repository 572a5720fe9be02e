"""Stage `generate`: EMA generator + judge + class counts -> data/synthetic/<class>/*.png, manifest.csv.

1. Plan: how many synthetic images each class needs to reach `generate.target` (printed, and saved
   as plan.csv together with what the gate let through).
2. Sample candidates from the EMA generator in batches. Every candidate has its own latent seed,
   drawn from a stream that belongs to its class, so changing one class's count never changes the
   images of another class.
3. Gate every candidate, in the judge's feature space:
   (1) label: the judge gives the intended class at least the probability that `label_pass_rate` of
       the class's real val images reach (calibrated per class, so a class the judge finds hard on real
       images is not held to a bar no real image meets);
   (2) memorisation: the candidate is not closer to a real train image of its class than the class's
       closest pair of distinct real images (metrics.copy_thresholds: the evaluate stage's copy rule).
   Candidates are drawn until the class's target is met, or until it has drawn `max_attempts`
   candidates per image it needs; then the stage fails naming the class, or with `allow_short`
   keeps what it has.
4. Select: `selection: first` keeps the first candidates that pass; `diverse` lets `pool` times as
   many pass and keeps a spread-out subset of them (farthest-point sampling in judge features, away
   from the class's real images and from each other), so that the synthetic images add what the
   few real ones do not show; `informative` keeps the passing candidates the judge is least sure
   of (the hard cases near the class boundary rather than the easy ones oversampling already gives).

The manifest holds one row per candidate judged, accepted or not, with the gate's verdict; rejected
rows have no file (`path` is empty) but keep their seed, so they can be regenerated and inspected.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from pipeline import nets
from pipeline.classifier import predict
from pipeline.config import GenerateParams, Params, params_to_dict
from pipeline.contracts import (GATE_COLUMNS, MANIFEST_COLUMNS, PreparedStats, SyntheticSummary, check_made_for,
                                load_split)
from pipeline.errors import GateError
from pipeline.io import atomic_output, encode_png_tensor, read_manifest, sha256_bytes, write_manifest
from pipeline.metrics import copy_thresholds
from pipeline.paths import Paths

MIN_CALIBRATION_IMAGES = 5  # a class with fewer real val images is calibrated on all val images pooled


# --- pure functions: plan, latents, gate ---------------------------------------------------------


def plan_counts(real_counts: list[int], target: str | int | float, max_synthetic_per_real: float | None) -> list[int]:
    """How many synthetic images each class needs (classes at or above the target get none).

    target: "max" (the largest class's count), an integer count, or a fraction of the largest class.
    """
    largest = max(real_counts)
    if target == "max":
        goal = largest
    elif isinstance(target, float):
        goal = round(target * largest)
    else:
        goal = target
    wanted = [max(0, goal - n) for n in real_counts]
    if max_synthetic_per_real is not None:
        wanted = [min(w, math.floor(max_synthetic_per_real * n)) for w, n in zip(wanted, real_counts)]
    return wanted


def candidate_seeds(seed: int, label: int, count: int) -> np.ndarray:
    """Latent seeds of a class's candidates, in the order they are tried: a stream per class."""
    return np.random.default_rng([seed, label]).integers(2**63, size=count)


def latents(seeds: np.ndarray, z_dim: int, truncation: float | None) -> torch.Tensor:
    """One latent vector per seed: standard normal, or normal truncated to [-truncation, truncation]."""
    generator = torch.Generator()
    rows = []
    for seed in seeds.tolist():
        generator.manual_seed(seed)
        if truncation is None:
            rows.append(torch.randn(z_dim, generator=generator))
        else:
            rows.append(torch.nn.init.trunc_normal_(torch.empty(z_dim), a=-truncation, b=truncation, generator=generator))
    return torch.stack(rows)


def label_thresholds(true_class_probability: np.ndarray, labels: np.ndarray, num_classes: int,
                     pass_rate: float) -> list[float]:
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


def gate_verdicts(confidence: np.ndarray, nn_distance: np.ndarray, cfg: GenerateParams, label_threshold: float,
                  copy_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, reject_reason) per candidate of one class; a disabled check never rejects."""
    low_confidence = cfg.check_label & (confidence < label_threshold)
    too_close = cfg.check_memorisation & (nn_distance < copy_threshold)
    reasons = np.select(
        [low_confidence & too_close, low_confidence, too_close], ["low_confidence;too_close", "low_confidence", "too_close"], ""
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


def keep_until_target(accepted: np.ndarray, still_needed: int) -> int:
    """How many candidates of a batch, in order, it takes to accept `still_needed` (all if it never does)."""
    positions = np.flatnonzero(accepted)
    return len(accepted) if len(positions) <= still_needed else int(positions[still_needed - 1]) + 1


# --- the gate ------------------------------------------------------------------------------------


@dataclass
class ClassGate:
    """The quality gate of one class: the judge, and the class's real train images in its feature space."""

    judge: nets.Classifier
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
        accepted, reasons = gate_verdicts(confidence, distances[:, 0], self.cfg, self.label_threshold,
                                          self.copy_threshold)
        return pd.DataFrame({
            "accepted": accepted,
            "reject_reason": reasons,
            "judge_confidence": confidence.astype(np.float64).round(6),
            "judge_prediction": probabilities.argmax(dim=1).numpy(),
            "nn_distance": distances[:, 0].round(6),
            "nearest_real": self.real_paths[nearest[:, 0]],
        }), features.numpy()


def build_gates(judge: nets.Classifier, stats: PreparedStats, paths: Paths, cfg: GenerateParams) -> list[ClassGate]:
    """One gate per class, calibrated on the real train and val images."""
    manifest = read_manifest(paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
    train_paths = manifest.loc[manifest["split"] == "train", "path"].to_numpy()
    train_images, train_labels = load_split(paths.prepared, stats, "train")
    val_images, val_labels = load_split(paths.prepared, stats, "val")
    _, train_features = predict(judge, train_images)
    val_probabilities, val_features = predict(judge, val_images)
    if len(val_labels):
        calibration_probability, calibration_labels = val_probabilities[torch.arange(len(val_labels)), val_labels], val_labels
    else:  # no val split: the train images are all there is (the judge knows them, so the bar is high)
        train_probabilities, _ = predict(judge, train_images)
        calibration_probability = train_probabilities[torch.arange(len(train_labels)), train_labels]
        calibration_labels = train_labels
    label_bars = label_thresholds(calibration_probability.numpy(), calibration_labels.numpy(), stats.num_classes,
                                  cfg.label_pass_rate)
    copy_bars = copy_thresholds(train_features, train_labels, val_features, val_labels, stats.num_classes)
    gates = []
    for label in range(stats.num_classes):
        in_class = (train_labels == label).numpy()
        gates.append(ClassGate(judge, label, NearestNeighbors(n_neighbors=1).fit(train_features[in_class].numpy()),
                               train_paths[in_class], label_bars[label], copy_bars[label], cfg))
    return gates


# --- the stage -----------------------------------------------------------------------------------


def run(params: Params, paths: Paths = Paths()) -> None:
    cfg = params.generate
    stats = PreparedStats.read(paths.prepared)
    generator, generator_meta = nets.load_generator(paths.gan)
    check_made_for(generator_meta.image_size, generator_meta.channels, generator_meta.class_names, stats,
                   f"{paths.gan}/generator_ema.json")
    judge, judge_meta = nets.load_judge(paths.judge)
    check_made_for(judge_meta.image_size, judge_meta.channels, judge_meta.class_names, stats,
                   f"{paths.judge}/judge.json")
    for model in (generator, judge):
        model.to(memory_format=torch.channels_last)  # about a third faster on the CPU

    real_counts = stats.split_counts("train")
    plan = pd.DataFrame({
        "label": [c.label for c in stats.classes],
        "class_name": stats.class_names,
        "folder": [c.folder for c in stats.classes],
        "real": real_counts,
        "planned": plan_counts(real_counts, cfg.target, cfg.max_synthetic_per_real),
    })
    print(f"generate: plan for target {cfg.target!r}, {plan['planned'].sum()} synthetic images:")
    print(plan[["class_name", "real", "planned"]].to_string(index=False))

    gates = build_gates(judge, stats, paths, cfg)
    generator_hash = nets.weights_hash(generator)
    with atomic_output(paths.synthetic) as out:
        manifests, outcome = [], []
        for row, gate in zip(plan.itertuples(), gates):
            rows = sample_class(row, generator, generator_meta.z_dim, gate, params.seed, out)
            accepted, candidates = int(rows["accepted"].sum()), len(rows)
            outcome.append((accepted, candidates, round(accepted / candidates, 6) if candidates else None))
            if accepted < row.planned:
                message = (f"class {row.class_name!r}: {accepted} of {row.planned} images passed the gate after "
                           f"{candidates} candidates (acceptance rate {accepted / candidates:.1%}, "
                           f"generate.max_attempts {cfg.max_attempts})")
                if not cfg.allow_short:
                    raise GateError(message + "; lower generate.label_pass_rate, train the GAN longer, raise "
                                    "generate.max_attempts or set generate.allow_short: true")
                print(f"generate: warning: {message}; kept short (generate.allow_short)", file=sys.stderr)
            manifests.append(rows)

        plan["generated"], plan["candidates"], plan["acceptance_rate"] = zip(*outcome)
        plan["short"] = plan["planned"] - plan["generated"]
        plan["label_threshold"] = [round(g.label_threshold, 6) for g in gates]
        plan["copy_threshold"] = [round(g.copy_threshold, 6) for g in gates]
        manifest = pd.concat(manifests, ignore_index=True).reindex(columns=MANIFEST_COLUMNS + GATE_COLUMNS)
        manifest["source"] = generator_hash
        write_manifest(manifest, out / "manifest.csv")
        write_manifest(plan, out / "plan.csv")
        SyntheticSummary(
            generator_hash=generator_hash, judge_hash=nets.weights_hash(judge), image_size=stats.image_size,
            channels=stats.channels, class_names=stats.class_names, generated=int(plan["generated"].sum()),
            candidates=int(plan["candidates"].sum()), short=int(plan["short"].sum()),
            label_thresholds=dict(zip(plan["class_name"], plan["label_threshold"])),
            copy_thresholds=dict(zip(plan["class_name"], plan["copy_threshold"])),
            params={"seed": params.seed, "generate": params_to_dict(cfg)},
        ).write(out)
    print(f"generate: accepted {plan['generated'].sum()} of {plan['candidates'].sum()} candidates; "
          f"{plan['short'].sum()} short")


@torch.inference_mode()
def sample_class(plan_row, generator: nets.Generator, z_dim: int, gate: ClassGate, seed: int, out: Path) -> pd.DataFrame:
    """Draw and gate candidates of one class until enough pass (the planned count, times `pool` for the
    diverse selection) or its budget is spent; select; write the selected images to `out/<folder>/`.

    Returns one manifest row per candidate judged; `accepted` marks the selected ones.
    """
    cfg, label, planned = gate.cfg, plan_row.label, plan_row.planned
    wanted = planned * (1 if cfg.selection == "first" else cfg.pool)
    seeds = candidate_seeds(seed, label, planned * cfg.max_attempts)
    verdicts, images, features, passed, drawn = [], [], [], 0, 0
    while passed < wanted and drawn < len(seeds):
        # Batches follow the pass rate so far, so that a class draws little more than it needs.
        rate = max(passed / drawn if drawn else 1.0, 1.0 / cfg.max_attempts)
        size = min(cfg.batch_size, len(seeds) - drawn, math.ceil((wanted - passed) / rate))
        batch_seeds = seeds[drawn:drawn + size]
        drawn += size
        batch = nets.to_uint8(generator(latents(batch_seeds, z_dim, cfg.truncation), torch.full((size,), label)))
        batch_verdicts, batch_features = gate(batch)
        kept = keep_until_target(batch_verdicts["accepted"].to_numpy(), wanted - passed)
        batch_verdicts = batch_verdicts.iloc[:kept].assign(seed=batch_seeds[:kept])
        passing = torch.from_numpy(batch_verdicts["accepted"].to_numpy(dtype=bool, copy=True))
        verdicts.append(batch_verdicts)
        images.append(batch[:kept][passing])
        features.append(batch_features[:kept][passing.numpy()])
        passed += int(passing.sum())
    if not verdicts:
        return pd.DataFrame(columns=GATE_COLUMNS + ["path", "sha256", "seed"]).assign(
            label=label, class_name=plan_row.class_name, split="train", origin="synthetic")
    rows = pd.concat(verdicts, ignore_index=True)
    passing_rows = np.flatnonzero(rows["accepted"].to_numpy())
    if cfg.selection == "diverse":
        chosen = farthest_point_selection(np.concatenate(features), rows.loc[passing_rows, "nn_distance"].to_numpy(),
                                          planned)
    elif cfg.selection == "informative":
        chosen = np.sort(np.argsort(rows.loc[passing_rows, "judge_confidence"].to_numpy(), kind="stable")[:planned])
    else:
        chosen = np.arange(min(planned, len(passing_rows)))
    rows.loc[passing_rows, "accepted"] = False
    rows.loc[passing_rows, "reject_reason"] = "not_selected"
    rows["path"], rows["sha256"] = "", ""
    (out / plan_row.folder).mkdir(exist_ok=True)
    for number, (row, image) in enumerate(zip(passing_rows[chosen], torch.cat(images)[chosen])):
        png = encode_png_tensor(image)
        path = f"{plan_row.folder}/{number:05d}.png"
        (out / path).write_bytes(png)
        rows.loc[row, ["accepted", "reject_reason", "path", "sha256"]] = [True, "", path, sha256_bytes(png)]
    return rows.assign(label=label, class_name=plan_row.class_name, split="train", origin="synthetic")
