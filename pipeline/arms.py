"""Is a classifier better off with the synthetic images? The downstream arms and their protocol.

Every arm trains the same recipe (pipeline/classifier_training.py: the network of evaluate.classifier.arch,
early-stopped on the real val split, best weights kept) and differs only in its training data and how
it is drawn:
- real: the imbalanced real train images, drawn uniformly;
- classical: the same images, each rare class randomly oversampled (repeats) to the largest;
- classical_la: the real images drawn naturally, with the logit-adjusted loss (Menon et al., 2021);
- augmented: the merged dataset (data/augmented) drawn with its manifest's `weight` column;
  classical and augmented, both drawn class-balanced, also adjust their logits by the real class
  frequencies with `balanced_logit_adjustment` (a rare class's draws repeat its few real images or
  its narrower synthetic ones, so even balanced it is less varied than a large class);
- synthetic_only: the synthetic images alone, classes drawn equally (the Classification Accuracy Score);
- oracle: the un-thinned real train split (the train images plus data/holdout), drawn uniformly. Only
  when prepare thinned the source: the ceiling, what collecting real images would have given.
Seeds are paired: with seed s every arm starts from the same weights and draws the same
augmentation stream, so arm differences are measured seed by seed. The arms share one scratch file
of images (the merged dataset, then the holdout); each arm's training set is its row numbers.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import nets
from pipeline.balancing import class_weights, oversample_to_balance
from pipeline.classifier_training import TrainingSet, drawn_frequencies, train_classifier
from pipeline.config import EvaluateParams
from pipeline.contracts import MANIFEST_COLUMNS, SCORES, PreparedStats
from pipeline.dataset import decode_augmented
from pipeline.hardware import classifier_settings
from pipeline.image_rows import ImageRows, Images, append_image_rows, decoded_pngs
from pipeline.io import manifest_chunks
from pipeline.metrics import classification_scores, mean_std, paired_difference
from pipeline.paths import Paths
from pipeline.progress import Progress, finishing_order

CLASSICAL_ARMS = ("classical", "classical_la")


@dataclass(frozen=True)
class ArmInputs:
    """Everything the arms are built from: the merged dataset's images, then the holdout's, decoded once into
    one scratch file that every arm reads by row as it draws them; their labels (int64) and the merged
    dataset's columns."""

    images: ImageRows  # data/augmented in manifest order, then data/holdout (empty when prepare thinned nothing)
    merged_labels: torch.Tensor
    merged_synthetic: np.ndarray  # bool per merged image
    merged_weights: np.ndarray  # the manifest's weight column
    holdout_labels: torch.Tensor
    num_classes: int


def read_arm_inputs(paths: Paths, stats: PreparedStats, scratch: Path) -> ArmInputs:
    """The merged dataset (the images load_augmented gives, from files or shards, in manifest order) and the
    holdout, decoded once into the file <scratch>/arms.u8, a chunk of rows or a shard at a time."""
    shape = (stats.image_size, stats.image_size, stats.channels)
    images, merged = decode_augmented(paths.augmented, scratch / "arms.u8", shape)
    holdout_labels = []
    for rows in manifest_chunks(paths.holdout / "manifest.csv", ["path", "label"], MANIFEST_COLUMNS):
        for chunk in decoded_pngs(paths.holdout, rows["path"], stats.channels):
            images = append_image_rows(images, chunk)
        holdout_labels.append(rows["label"].to_numpy())
    return ArmInputs(
        images,
        torch.tensor(merged["label"].to_numpy()),
        (merged["origin"] == "synthetic").to_numpy(),
        merged["weight"].to_numpy(),
        torch.tensor(np.concatenate(holdout_labels), dtype=torch.int64),  # a chunk at least, if empty
        stats.num_classes,
    )


def arm_training_sets(
    inputs: ArmInputs, logit_adjustment: float, balanced_logit_adjustment: float, seed: int
) -> dict[str, TrainingSet]:
    """The training set of every arm that exists for these inputs (no oracle without a holdout), each as rows
    of the one file of images (the classical arm's oversampling repeats row numbers, not images)."""
    merged = len(inputs.merged_labels)
    real, synthetic = np.flatnonzero(~inputs.merged_synthetic), np.flatnonzero(inputs.merged_synthetic)
    real_labels, synthetic_labels = inputs.merged_labels[real], inputs.merged_labels[synthetic]
    oversampled = oversample_to_balance(real_labels.numpy(), np.random.default_rng(seed))
    balanced_adjustment = {
        "logit_adjustment": balanced_logit_adjustment,
        "class_frequencies": drawn_frequencies(real_labels, None, inputs.num_classes),
    }
    images, k = inputs.images, inputs.num_classes
    arms = {
        "real": TrainingSet(images, real_labels, k, rows=real),
        "classical": TrainingSet(images, real_labels[oversampled], k, rows=real[oversampled], **balanced_adjustment),
        "classical_la": TrainingSet(images, real_labels, k, logit_adjustment=logit_adjustment, rows=real),
        "augmented": TrainingSet(
            images, inputs.merged_labels, k, inputs.merged_weights, rows=np.arange(merged), **balanced_adjustment
        ),
    }
    if len(synthetic):
        arms["synthetic_only"] = TrainingSet(
            images, synthetic_labels, k, class_weights(synthetic_labels.numpy(), k), rows=synthetic
        )
    if len(inputs.holdout_labels):
        arms["oracle"] = TrainingSet(
            images,
            torch.cat([real_labels, inputs.holdout_labels]),
            k,
            rows=np.concatenate([real, merged + np.arange(len(inputs.holdout_labels))]),
        )
    return arms


def run_arms(
    inputs: ArmInputs,
    val: tuple[Images, torch.Tensor],
    test: tuple[Images, torch.Tensor],
    tail: list[int],
    cfg: EvaluateParams,
    first_seed: int,
    arms: list[str] | None = None,
) -> pd.DataFrame:
    """Train every arm once per paired seed; one row per (arm, seed), in that order: val and test scores,
    per-class recall.

    The runs are spread over worker processes: on the CPU `cfg.workers` (auto: one per core), each
    training with one thread, so the results are the same whatever the number of workers; where
    evaluate.classifier trains on GPUs, `cfg.runs_per_gpu` per GPU (auto), each worker on one GPU.
    Each run is reported on stderr as it finishes, with the time left. The workers get the images as files
    (ImageRows pickle as their paths), not as arrays.
    """
    _, channels, size, _ = inputs.images.shape
    nets.check_classifier(
        cfg.classifier.arch, size, channels, inputs.num_classes, cfg.classifier.width, "evaluate.classifier.arch"
    )
    gpu_count = torch.cuda.device_count()
    on_gpu = classifier_settings(cfg.classifier, gpu_count, "evaluate.classifier")["accelerator"] == "gpu"
    gpus = gpu_count if on_gpu else 0
    arms = arms or list(arm_training_sets(inputs, cfg.logit_adjustment, cfg.balanced_logit_adjustment, first_seed))
    jobs = [(seed, arm) for seed in range(first_seed, first_seed + cfg.seeds) for arm in arms]
    workers = worker_gpus(cfg, len(jobs), gpus, len(os.sched_getaffinity(0)))
    context = (inputs, val, test, tail, cfg)
    progress = Progress("evaluate", len(jobs), "runs")
    rows = []
    if len(workers) == 1:
        threads = torch.get_num_threads()
        _start_worker(*context, gpu=None)
        try:
            rows = [_report(_run_job(job), progress) for job in jobs]
        finally:
            torch.set_num_threads(threads)
    else:
        spawn = multiprocessing.get_context("spawn")
        gpu_of_worker = spawn.Queue()  # each worker takes its GPU as it starts
        for gpu in workers:
            gpu_of_worker.put(gpu)
        with ProcessPoolExecutor(
            len(workers), mp_context=spawn, initializer=_start_worker_from_queue, initargs=(*context, gpu_of_worker)
        ) as pool:
            rows = [_report(row, progress) for row in finishing_order(pool, _run_job, jobs)]
    order = {job: number for number, job in enumerate(jobs)}
    return pd.DataFrame(sorted(rows, key=lambda row: order[row["seed"], row["arm"]]))


def worker_gpus(cfg: EvaluateParams, jobs: int, gpus: int, cores: int) -> list[int | None]:
    """The GPU of each worker process (None: the CPU), at most one worker per job: `cfg.workers`, or
    with auto `runs_per_gpu` per GPU, round robin, or one per CPU core where there are no GPUs."""
    count = min(jobs, (gpus * cfg.runs_per_gpu if gpus else cores) if cfg.workers == "auto" else cfg.workers)
    return [worker % gpus if gpus else None for worker in range(count)]


_WORKER_CONTEXT: tuple = ()


def _start_worker(*context, gpu: int | None) -> None:
    """One thread per worker; a worker on GPUs sees only its own (it starts before CUDA does)."""
    global _WORKER_CONTEXT
    _WORKER_CONTEXT = context
    torch.set_num_threads(1)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def _start_worker_from_queue(*context_and_queue) -> None:
    *context, gpu_of_worker = context_and_queue
    _start_worker(*context, gpu=gpu_of_worker.get())


def _run_job(job: tuple[int, str]) -> dict:
    seed, arm = job
    inputs, val, test, tail, cfg = _WORKER_CONTEXT
    started = time.perf_counter()
    data = arm_training_sets(inputs, cfg.logit_adjustment, cfg.balanced_logit_adjustment, seed)[arm]
    model, history = train_classifier(data, val, cfg.classifier, seed)
    predicted = nets.predict_labels(model, test[0]).numpy()
    scores = classification_scores(test[1].numpy(), predicted, inputs.num_classes, tail)
    return {
        "arm": arm,
        "seed": seed,
        "steps": history["steps"],
        "seconds": round(time.perf_counter() - started, 1),
        "val_balanced_accuracy": history["best_val_balanced_accuracy"],
        **scores,
    }


def _report(row: dict, progress: Progress) -> dict:
    progress.done(
        1,
        f"{row['arm']} seed {row['seed']}, test balanced accuracy {row['balanced_accuracy']:.3f}, "
        f"{row['steps']} updates ({row['seconds']:.0f} s)",
    )
    return row


def best_classical(runs: pd.DataFrame) -> str:
    """The classical arm with the higher mean val balanced accuracy (chosen on val, never on test)."""
    val = runs[runs["arm"].isin(CLASSICAL_ARMS)].groupby("arm")["val_balanced_accuracy"].mean()
    return str(val.idxmax()) if val.notna().any() else "classical"


def summarise(runs: pd.DataFrame, class_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per arm: mean and std of each score; one row per class: mean and std of each arm's recall)."""
    arms, recalls = [], {"class_name": class_names}
    for arm, rows in runs.groupby("arm", sort=False):
        row = {"arm": arm}
        for name in (*SCORES, "val_balanced_accuracy", "steps"):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(rows[name])
        arms.append(row)
        per_class = np.array(rows["recall"].tolist())  # seeds x classes
        recalls[f"{arm}_mean"], recalls[f"{arm}_std"] = zip(*(mean_std(column) for column in per_class.T))
    return pd.DataFrame(arms), pd.DataFrame(recalls)


def gain(runs: pd.DataFrame, baseline: str) -> dict:
    """Augmented minus `baseline`, paired by seed: balanced accuracy with its 95 % interval, and tail recall;
    gap_closed when the oracle exists."""
    by_arm = {arm: rows.sort_values("seed") for arm, rows in runs.groupby("arm")}
    augmented, base = by_arm["augmented"], by_arm[baseline]
    difference, low, high = paired_difference(augmented["balanced_accuracy"], base["balanced_accuracy"])
    result = {
        "baseline": baseline,
        "balanced_accuracy": difference,
        "ci95_low": low,
        "ci95_high": high,
        "tail_recall": paired_difference(augmented["tail_recall"], base["tail_recall"])[0],
    }
    if "oracle" in by_arm:
        headroom = by_arm["oracle"]["balanced_accuracy"].mean() - base["balanced_accuracy"].mean()
        result["gap_closed"] = difference / headroom if headroom > 0 else float("nan")
    return result
