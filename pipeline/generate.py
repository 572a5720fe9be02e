"""Stage `generate`: EMA generator + judge + class counts -> data/synthetic/<class>/*.png, manifest.csv.

1. Plan: how many synthetic images each class needs to reach `generate.target` (printed, and saved
   as plan.csv together with what the gate let through).
2. Sample candidates from the EMA generator in batches. Every candidate has its own latent seed,
   drawn from a stream that belongs to its class, so changing one class's count never changes the
   images of another class.
3. Gate every candidate: (1) label agreement, the judge gives the intended class a probability of at
   least `min_confidence`; (2) memorisation, its nearest real train image in the judge's feature space
   must not be closer than the `memorisation_quantile` of the real-to-real nearest-neighbour
   distances. Candidates are drawn until the class's target is met, or until it has drawn
   `max_attempts` candidates per image it needs; then the stage fails naming the class, or with
   `allow_short` keeps what it has.

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
from pipeline.config import ConfigError, GenerateParams, Params, params_to_dict
from pipeline.io import (
    MANIFEST_COLUMNS,
    PREPARED_DIR,
    atomic_output,
    encode_png_tensor,
    load_images,
    read_json,
    read_manifest,
    sha256_bytes,
    write_json,
    write_manifest,
)
from pipeline.judge import judge_outputs

SYNTHETIC_DIR = Path("data/synthetic")
GATE_COLUMNS = ["accepted", "reject_reason", "judge_confidence", "judge_prediction", "nn_distance", "nearest_real"]


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


def memorisation_threshold(real_index: NearestNeighbors, quantile: float) -> float:
    """The `quantile` of the distances from each real image to its nearest other real image."""
    distances, _ = real_index.kneighbors(n_neighbors=1)  # without a query: each point's neighbours but itself
    return float(np.quantile(distances[:, 0], quantile))


def gate_verdicts(confidence: np.ndarray, nn_distance: np.ndarray, cfg: GenerateParams,
                  threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(accepted, reject_reason) per candidate; a disabled check never rejects."""
    low_confidence = cfg.check_label & (confidence < cfg.min_confidence)
    too_close = cfg.check_memorisation & (nn_distance < threshold)
    reasons = np.select(
        [low_confidence & too_close, low_confidence, too_close], ["low_confidence;too_close", "low_confidence", "too_close"], ""
    )
    return ~(low_confidence | too_close), reasons


def keep_until_target(accepted: np.ndarray, still_needed: int) -> int:
    """How many candidates of a batch, in order, it takes to accept `still_needed` (all if it never does)."""
    positions = np.flatnonzero(accepted)
    return len(accepted) if len(positions) <= still_needed else int(positions[still_needed - 1]) + 1


# --- the stage -----------------------------------------------------------------------------------


def check_matches_data(meta: dict, stats: dict, what: str) -> None:
    """A model must have been trained for the prepared data's image size, channels and classes."""
    made_for = (meta["image_size"], meta["channels"])
    if made_for != (stats["image_size"], stats["channels"]):
        raise ConfigError(
            f"{what}: made for {made_for[0]}x{made_for[0]} images with {made_for[1]} channel(s), but data/prepared "
            f"holds {stats['image_size']}x{stats['image_size']} with {stats['channels']}; rerun the stage that makes it"
        )
    class_names = [c["class_name"] for c in stats["classes"]]
    if meta["class_names"] != class_names:
        extra = [n for n in meta["class_names"] if n not in class_names]
        missing = [n for n in class_names if n not in meta["class_names"]]
        detail = "; ".join(filter(None, [f"classes not in data/prepared: {extra}" if extra else "",
                                         f"classes it lacks: {missing}" if missing else ""]))
        raise ConfigError(
            f"{what}: trained for other classes than data/prepared ({detail or 'same classes, other order'}); "
            "rerun the stage that makes it"
        )


@dataclass
class Gate:
    """The quality gate: the judge, and the real train images in its feature space."""

    judge: nets.Classifier
    real_index: NearestNeighbors
    real_paths: np.ndarray
    threshold: float
    cfg: GenerateParams

    def __call__(self, images: torch.Tensor, label: int) -> pd.DataFrame:
        """The gate's columns (GATE_COLUMNS) for a batch of uint8 candidates of class `label`."""
        probabilities, features = judge_outputs(self.judge, images, batch_size=len(images))
        distances, nearest = self.real_index.kneighbors(features.numpy())
        confidence = probabilities[:, label].numpy()
        accepted, reasons = gate_verdicts(confidence, distances[:, 0], self.cfg, self.threshold)
        return pd.DataFrame({
            "accepted": accepted,
            "reject_reason": reasons,
            "judge_confidence": confidence.astype(np.float64).round(6),
            "judge_prediction": probabilities.argmax(dim=1).numpy(),
            "nn_distance": distances[:, 0].round(6),
            "nearest_real": self.real_paths[nearest[:, 0]],
        })


def run(params: Params) -> None:
    cfg = params.generate
    stats = read_json(PREPARED_DIR / "stats.json")
    generator, generator_meta = nets.load_generator()
    check_matches_data(generator_meta, stats, f"{nets.GAN_DIR}/generator_ema.json")
    judge, judge_meta = nets.load_judge()
    check_matches_data(judge_meta, stats, f"{nets.JUDGE_DIR}/judge.json")
    for model in (generator, judge):
        model.to(memory_format=torch.channels_last)  # about a third faster on the CPU

    classes = stats["classes"]
    real_counts = [stats["counts"]["train"][c["class_name"]] for c in classes]
    plan = pd.DataFrame({
        "label": [c["label"] for c in classes],
        "class_name": [c["class_name"] for c in classes],
        "folder": [c["folder"] for c in classes],
        "real": real_counts,
        "planned": plan_counts(real_counts, cfg.target, cfg.max_synthetic_per_real),
    })
    print(f"generate: plan for target {cfg.target!r}, {plan['planned'].sum()} synthetic images:")
    print(plan[["class_name", "real", "planned"]].to_string(index=False))

    prepared = read_manifest(PREPARED_DIR / "manifest.csv")
    real_train = prepared[prepared["split"] == "train"]
    real_images, _ = load_images(PREPARED_DIR, real_train, stats["channels"])
    real_index = NearestNeighbors(n_neighbors=1).fit(judge_outputs(judge, real_images)[1].numpy())
    threshold = memorisation_threshold(real_index, cfg.memorisation_quantile)
    gate = Gate(judge, real_index, real_train["path"].to_numpy(), threshold, cfg)
    generator_hash = nets.weights_hash(generator)

    with atomic_output(SYNTHETIC_DIR) as out:
        manifests, outcome = [], []
        for row in plan.itertuples():
            rows = sample_class(row, generator, generator_meta["z_dim"], gate, params.seed, out)
            accepted, candidates = int(rows["accepted"].sum()), len(rows)
            outcome.append((accepted, candidates, round(accepted / candidates, 6) if candidates else None))
            if accepted < row.planned:
                message = (f"class {row.class_name!r}: {accepted} of {row.planned} images passed the gate after "
                           f"{candidates} candidates (acceptance rate {accepted / candidates:.1%}, "
                           f"generate.max_attempts {cfg.max_attempts})")
                if not cfg.allow_short:
                    raise ConfigError(message + "; lower generate.min_confidence, train the GAN longer, raise "
                                      "generate.max_attempts or set generate.allow_short: true")
                print(f"generate: warning: {message}; kept short (generate.allow_short)", file=sys.stderr)
            manifests.append(rows)

        plan["generated"], plan["candidates"], plan["acceptance_rate"] = zip(*outcome)
        plan["short"] = plan["planned"] - plan["generated"]
        manifest = pd.concat(manifests, ignore_index=True).reindex(columns=MANIFEST_COLUMNS + GATE_COLUMNS)
        manifest["source"] = generator_hash
        write_manifest(manifest, out / "manifest.csv")
        write_manifest(plan, out / "plan.csv")
        write_json(out / "summary.json", {
            "generator_hash": generator_hash,
            "judge_hash": nets.weights_hash(judge),
            "memorisation_threshold": round(threshold, 6),
            "image_size": stats["image_size"],
            "channels": stats["channels"],
            "generated": int(plan["generated"].sum()),
            "candidates": int(plan["candidates"].sum()),
            "short": int(plan["short"].sum()),
            "params": {"seed": params.seed, "generate": params_to_dict(cfg)},
        })
    print(f"generate: accepted {plan['generated'].sum()} of {plan['candidates'].sum()} candidates "
          f"(memorisation threshold {threshold:.4f}); {plan['short'].sum()} short")


@torch.inference_mode()
def sample_class(plan_row, generator: nets.Generator, z_dim: int, gate: Gate, seed: int, out) -> pd.DataFrame:
    """Draw and gate candidates of one class until its planned count is accepted or its budget is spent.

    Accepted images are written to `out/<folder>/`; returns one manifest row per candidate judged.
    """
    cfg, label, planned = gate.cfg, plan_row.label, plan_row.planned
    seeds = candidate_seeds(seed, label, planned * cfg.max_attempts)
    batches, accepted_count, drawn = [], 0, 0
    while accepted_count < planned and drawn < len(seeds):
        # Batches follow the acceptance rate so far, so that a class draws little more than it needs.
        rate = max(accepted_count / drawn if drawn else 1.0, 1.0 / cfg.max_attempts)
        size = min(cfg.batch_size, len(seeds) - drawn, math.ceil((planned - accepted_count) / rate))
        batch_seeds = seeds[drawn:drawn + size]
        drawn += size
        images = nets.to_uint8(generator(latents(batch_seeds, z_dim, cfg.truncation), torch.full((size,), label)))
        verdicts = gate(images, label)
        kept = keep_until_target(verdicts["accepted"].to_numpy(), planned - accepted_count)
        verdicts = verdicts.iloc[:kept]
        paths, hashes = [""] * kept, [""] * kept
        (out / plan_row.folder).mkdir(exist_ok=True)
        for i in np.flatnonzero(verdicts["accepted"].to_numpy()):
            png = encode_png_tensor(images[i])
            paths[i], hashes[i] = f"{plan_row.folder}/{accepted_count:05d}.png", sha256_bytes(png)
            (out / paths[i]).write_bytes(png)
            accepted_count += 1
        batches.append(verdicts.assign(path=paths, sha256=hashes, seed=batch_seeds[:kept]))
    rows = pd.concat(batches, ignore_index=True) if batches else pd.DataFrame(columns=GATE_COLUMNS + ["path", "sha256", "seed"])
    return rows.assign(label=label, class_name=plan_row.class_name, split="train", origin="synthetic")
