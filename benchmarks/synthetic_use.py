"""Other ways of using the merged dataset's synthetic images, measured on the val split.

Run from the repository root after `dvc repro merge` (it reads the workspace and writes nothing):

    python benchmarks/synthetic_use.py [--seeds 5] \
        [--variants all,below:100,below:50,none,soft:0.5,soft:1,mix:0.5,finetune:classical,finetune:all]

Each variant trains the augmented arm's recipe (the manifest's class-balanced weights, the
evaluate params' classifier) on the paired seeds and is scored on val; the paired difference to the
first variant is printed with its 95 % interval. The test split is not read.
- `all`: the merged dataset as published (the augmented arm).
- `below:N`: synthetic images only in the classes with fewer than N real train images; the other
  classes keep their real images alone, still drawn class-balanced (`none`: no synthetic image at all).
- `soft:A`: every image as published, the synthetic ones learnt with soft labels: (1 - A) x their
  one-hot label + A x the judge's class probabilities (distillation from the real-data judge, which
  marks a synthetic image that looks like two classes as such).
- `mix:L`: every synthetic image blended with a real train image of its own class, drawn at random,
  the synthetic image's weight uniform in [L, 1] (mixup of real with synthetic images within a
  class, so the label stays); drawn once, from params.yaml's seed.
- `finetune:S`: the `all` run, then fine-tuned from its best weights on the set S at a fifth of the
  learning rate, early-stopped on val as every run: S `classical` is the real images alone, each
  class randomly oversampled to the largest (synthetic images teach the features, real ones have the
  last word); S `classical_la` is the real images drawn naturally with the logit-adjusted loss (the
  classical_la arm's set); S `all` continues on the merged dataset, the control with as many val scorings.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline import nets
from pipeline.arms import arm_training_sets, read_arm_inputs
from pipeline.classifier_training import TrainingSet, train_classifier
from pipeline.config import load_params
from pipeline.contracts import PreparedStats
from pipeline.manifests import load_split
from pipeline.metrics import mean_std, paired_difference
from pipeline.nets import predict
from pipeline.paths import Paths
from pipeline.stages.merge import merged_weights


def mixed_with_real(
    images: torch.Tensor, labels: torch.Tensor, synthetic: np.ndarray, lowest: float, seed: int
) -> torch.Tensor:
    """The images with each synthetic one blended with a random real image of its class (see `mix:L`)."""
    rng = np.random.default_rng(seed)
    classes, mixed = labels.numpy(), images.clone()
    for label in np.unique(classes[synthetic]):
        fakes = np.flatnonzero(synthetic & (classes == label))
        partners = rng.choice(np.flatnonzero(~synthetic & (classes == label)), len(fakes))
        weight = torch.from_numpy(rng.uniform(lowest, 1.0, len(fakes))).float().view(-1, 1, 1, 1)
        blend = weight * images[fakes].float() + (1 - weight) * images[partners].float()
        mixed[fakes] = blend.round().clamp(0, 255).to(torch.uint8)
    return mixed


def variant_set(
    variant: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    synthetic: np.ndarray,
    judge_probabilities: torch.Tensor,
    train_counts: np.ndarray,
    share: float,
    balanced_logit_adjustment: float,
    seed: int,
) -> TrainingSet:
    """The training set of one variant (see the module's docstring), logit-adjusted as the augmented arm is."""
    num_classes = len(train_counts)
    adjustment = {"logit_adjustment": balanced_logit_adjustment, "class_frequencies": train_counts / train_counts.sum()}
    kind, _, value = variant.partition(":")
    if kind in ("mix", "soft"):  # every image as published, drawn by the published weights
        weights = merged_weights(labels.numpy(), synthetic, num_classes, share)
        if kind == "mix":
            return TrainingSet(
                mixed_with_real(images, labels, synthetic, float(value), seed),
                labels,
                num_classes,
                weights,
                **adjustment,
            )
        targets = torch.nn.functional.one_hot(labels, num_classes).float()
        alpha = float(value)
        targets[synthetic] = (1 - alpha) * targets[synthetic] + alpha * judge_probabilities[synthetic]
        return TrainingSet(images, targets, num_classes, weights, **adjustment)
    below = {"all": np.inf, "none": 0, "below": float(value or 0)}[kind]
    keep = ~synthetic | (train_counts[labels.numpy()] < below)
    index = torch.from_numpy(np.flatnonzero(keep))
    return TrainingSet(
        images[index],
        labels[index],
        num_classes,
        merged_weights(labels.numpy()[keep], synthetic[keep], num_classes, share),
        **adjustment,
    )


_CONTEXT: dict = {}


def _start_worker(context: dict) -> None:
    _CONTEXT.update(context)
    torch.set_num_threads(1)


def _run(job: tuple[str, int]) -> tuple[str, int, float]:
    variant, seed = job
    c = _CONTEXT
    kind, _, second = variant.partition(":")
    stages = ["all", second] if kind == "finetune" else [variant]
    recipe, weights = c["recipe"], None
    for name in stages:
        if name in ("classical", "classical_la"):  # that arm's own training set of this seed
            data = arm_training_sets(c["inputs"], *c["logit_adjustments"], seed)[name]
        else:
            inputs = c["inputs"]
            data = variant_set(
                name,
                c["merged_images"],
                inputs.merged_labels,
                inputs.merged_synthetic,
                c["probabilities"],
                c["counts"],
                c["share"],
                c["logit_adjustments"][1],
                c["mix_seed"],
            )
        model, history = train_classifier(data, c["val"], recipe, seed, initial_weights=weights)
        recipe, weights = dataclasses.replace(recipe, lr=recipe.lr / 5), model.state_dict()
    return variant, seed, history["best_val_balanced_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--variants", default="all,below:100,below:50,none,soft:0.5,soft:1,mix:0.5,finetune:classical,finetune:all"
    )
    parser.add_argument("--seeds", type=int)
    args = parser.parse_args()

    paths = Paths()
    params = load_params(paths.root / "params.yaml")
    stats = PreparedStats.read(paths.prepared)
    scratch = tempfile.TemporaryDirectory(prefix="synthetic-use-")  # the arms' images, deleted on exit
    inputs = read_arm_inputs(paths, stats, Path(scratch.name))
    merged_images = torch.from_numpy(inputs.images[np.arange(len(inputs.merged_labels))]).permute(0, 3, 1, 2)
    judge, _ = nets.load_judge(paths.judge)
    synthetic = torch.tensor(inputs.merged_synthetic)
    context = {
        "inputs": inputs,
        "merged_images": merged_images.contiguous(),  # the variants reweight and mix them in memory
        "probabilities": predict(judge, merged_images.contiguous())[0],
        "counts": np.array(stats.split_counts("train")),
        "share": params.merge.synthetic_share,
        "val": load_split(paths.prepared, stats, "val"),
        "recipe": params.evaluate.classifier,
        "mix_seed": params.seed,
        "logit_adjustments": (params.evaluate.logit_adjustment, params.evaluate.balanced_logit_adjustment),
    }
    label_probability = context["probabilities"][synthetic].gather(1, inputs.merged_labels[synthetic, None])
    print(f"judge's mean probability of the intended class on the synthetic images: {label_probability.mean():.3f}")

    variants = args.variants.split(",")
    seeds = range(params.seed, params.seed + (args.seeds or params.evaluate.seeds))
    jobs = [(variant, seed) for variant in variants for seed in seeds]
    workers = len(os.sched_getaffinity(0))
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker, initargs=(context,)
    ) as pool:
        runs = pd.DataFrame(list(pool.map(_run, jobs)), columns=["variant", "seed", "val"])
    scores = runs.pivot(index="seed", columns="variant", values="val")[variants]
    for variant in variants:
        mean, std = mean_std(scores[variant])
        line = f"{variant:<12} val balanced accuracy {mean:.4f} ± {std:.4f}"
        if variant != variants[0]:
            difference, low, high = paired_difference(scores[variant], scores[variants[0]])
            line += f"   minus {variants[0]}: {difference:+.4f} (95 % interval {low:+.4f} to {high:+.4f})"
        print(line)


if __name__ == "__main__":
    main()
