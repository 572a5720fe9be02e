"""Head-to-tail latents (the cGAN form of M2m's translation), measured on the val split.

Run from the repository root after a full `dvc repro` (it reads the workspace and writes nothing):

    python benchmarks/head_to_tail.py [--steps 300] [--min-donor-count 40] [--seeds 5]

1. Invert every real train image of the classes with at least `--min-donor-count` images into the
   GAN's latent space: the latent z with G(z, its class) closest to the image (Adam on z, mean squared
   pixel error plus a small pull towards the prior).
2. Render each donor's latent under every other class that the plan raises, pass the renderings
   through the generate stage's gate and informative selection, and compare their spread with the
   committed (random-latent) synthetic images: precision/recall/coverage against the class's real val
   images in the judge's features.
3. Train the augmented arm on val over the paired seeds with the synthetic images of every class
   replaced by the translated ones (`translated`, topped up with random-latent images where too few
   passed) or half of them (`mix`), against the merged dataset as it is (`default`), and print the
   paired differences with their 95 % intervals. The test split is not read.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import nets
from pipeline.arms import ArmInputs, read_arm_inputs, run_arms
from pipeline.config import load_params
from pipeline.contracts import PreparedStats
from pipeline.gate import build_gates, select_passing
from pipeline.image_rows import write_image_rows
from pipeline.manifests import load_split
from pipeline.metrics import mean_std, paired_difference, precision_recall_density_coverage, tail_classes
from pipeline.nets import predict
from pipeline.paths import Paths
from pipeline.stages.generate import plan_counts
from pipeline.stages.merge import merged_weights


def invert(generator: nets.Generator, images: torch.Tensor, labels: torch.Tensor, steps: int) -> torch.Tensor:
    """Latents z with generator(z, labels) close to the uint8 images."""
    torch.manual_seed(0)
    target = nets.to_unit_range(images)
    z = torch.randn(len(images), generator.z_dim).requires_grad_(True)
    optimiser = torch.optim.Adam([z], lr=0.05)
    for step in range(steps):
        optimiser.zero_grad()
        loss = ((generator(z, labels) - target) ** 2).mean() + 1e-3 * (z**2).mean()
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"inversion step {step}: pixel loss {loss.item():.4f}", flush=True)
    return z.detach()


def with_synthetic(
    inputs: ArmInputs, synthetic: dict[int, torch.Tensor], num_classes: int, share: float, path: Path
) -> ArmInputs:
    """The merged dataset with its real images and, per class, the given synthetic images instead of its own
    (then the holdout, as read_arm_inputs orders them), in the new scratch file `path`."""
    real = ~inputs.merged_synthetic
    holdout = len(inputs.merged_labels) + np.arange(len(inputs.holdout_labels))
    chunks = [
        inputs.images[np.flatnonzero(real)],
        *(images.permute(0, 2, 3, 1).numpy() for images in synthetic.values()),
        inputs.images[holdout],
    ]
    labels = torch.cat([inputs.merged_labels[real], *(torch.full((len(v),), k) for k, v in synthetic.items())])
    is_synthetic = np.r_[np.zeros(int(real.sum()), bool), np.ones(len(labels) - int(real.sum()), bool)]
    return dataclasses.replace(
        inputs,
        images=write_image_rows(path, inputs.images.image_shape, chunks),
        merged_labels=labels,
        merged_synthetic=is_synthetic,
        merged_weights=merged_weights(labels.numpy(), is_synthetic, num_classes, share),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="Adam steps of the inversion")
    parser.add_argument(
        "--min-donor-count", type=int, default=40, help="classes with at least this many train images donate"
    )
    parser.add_argument("--seeds", type=int, help="paired seeds (default: evaluate.seeds)")
    args = parser.parse_args()

    paths, params = Paths(), load_params("params.yaml")
    stats = PreparedStats.read(paths.prepared)
    generator, _ = nets.load_generator(paths.gan)
    generator.eval().requires_grad_(False)
    judge, _ = nets.load_judge(paths.judge)
    train_images, train_labels = load_split(paths.prepared, stats, "train")
    val_images, val_labels = load_split(paths.prepared, stats, "val")
    counts = stats.split_counts("train")

    donors = torch.from_numpy(np.flatnonzero(np.array(counts)[train_labels.numpy()] >= args.min_donor_count))
    started = time.perf_counter()
    latents = invert(generator, train_images[donors], train_labels[donors], args.steps)
    donor_labels = train_labels[donors]
    print(f"inverted {len(donors)} donor images in {time.perf_counter() - started:.0f} s")

    gates = build_gates(judge, stats, paths, params.generate)
    scratch = tempfile.TemporaryDirectory(prefix="head-to-tail-")  # the arms' images, deleted on exit
    inputs = read_arm_inputs(paths, stats, Path(scratch.name))
    translated, committed = {}, {}
    for label, planned in enumerate(
        plan_counts(counts, params.generate.target, params.generate.max_synthetic_per_real)
    ):
        if not planned:
            continue
        others = donor_labels != label
        with torch.no_grad():
            candidates = nets.to_uint8(generator(latents[others], torch.full((int(others.sum()),), label)))
        verdicts, features = gates[label](candidates)
        passing = verdicts["accepted"].to_numpy()
        chosen = select_passing(
            "informative",
            planned,
            features[passing],
            verdicts["nn_distance"].to_numpy()[passing],
            verdicts["judge_confidence"].to_numpy()[passing],
            verdicts["judge_prediction"].to_numpy()[passing] == label,
        )
        translated[label] = candidates[torch.from_numpy(np.flatnonzero(passing)[chosen])]
        rows = np.flatnonzero(inputs.merged_synthetic & (inputs.merged_labels == label).numpy())
        committed[label] = torch.from_numpy(inputs.images[rows]).permute(0, 3, 1, 2).contiguous()
        real_features = predict(judge, val_images[val_labels == label])[1]
        spread = {
            name: precision_recall_density_coverage(real_features, predict(judge, images)[1], params.evaluate.k)
            for name, images in (("translated", translated[label]), ("random", committed[label]))
        }
        print(
            f"class {stats.class_names[label]!r}: {counts[label]} real, {planned} planned; translated: "
            f"{passing.sum()} of {len(passing)} passed the gate, {len(translated[label])} kept; against real val "
            + ", ".join(
                f"{name} precision {s['precision']:.2f} recall {s['recall']:.2f} coverage {s['coverage']:.2f}"
                for name, s in spread.items()
            ),
            flush=True,
        )

    def top_up(label: int, first: int) -> torch.Tensor:  # `first` translated images, then random-latent ones
        return torch.cat([translated[label][:first], committed[label][: len(committed[label]) - first]])

    variants = {
        "default": inputs,
        "translated": with_synthetic(
            inputs,
            {k: top_up(k, len(v)) for k, v in translated.items()},
            stats.num_classes,
            params.merge.synthetic_share,
            Path(scratch.name) / "translated.u8",
        ),
        "mix": with_synthetic(
            inputs,
            {k: top_up(k, min(len(v), len(committed[k]) // 2)) for k, v in translated.items()},
            stats.num_classes,
            params.merge.synthetic_share,
            Path(scratch.name) / "mix.u8",
        ),
    }
    cfg = params.evaluate if args.seeds is None else dataclasses.replace(params.evaluate, seeds=args.seeds)
    val, tail = (val_images, val_labels), tail_classes(counts)
    scores = {}
    for name, data in variants.items():
        runs = run_arms(data, val, val, tail, cfg, params.seed, arms=["augmented"])  # scored on val twice
        scores[name] = runs.sort_values("seed")["val_balanced_accuracy"].to_numpy()
    for name, values in scores.items():
        mean, std = mean_std(values)
        line = f"{name:<10} val balanced accuracy {mean:.4f} +- {std:.4f} (seeds: {np.round(values, 3).tolist()})"
        if name != "default":
            difference, low, high = paired_difference(values, scores["default"])
            line += f"; vs default {difference:+.4f} (95 % interval {low:+.4f} to {high:+.4f})"
        print(line)


if __name__ == "__main__":
    main()
