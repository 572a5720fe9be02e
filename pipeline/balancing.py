"""How often each training image is drawn: the class-balancing weights the GAN, the judge, the merged
dataset's `weight` column and the downstream arms all use, and random oversampling."""

from __future__ import annotations

import numpy as np


def class_weights(
    labels: np.ndarray,
    num_classes: int,
    balance: float = 1.0,
    synthetic: np.ndarray | None = None,
    synthetic_share: float | np.ndarray = 0.5,
) -> np.ndarray:
    """Per-image sampling weights (unnormalised; samplers normalise them).

    A class is drawn with probability proportional to count**(1 - balance): balance 0 keeps the natural
    class frequencies, 1 draws every class equally often. With `synthetic` (a boolean per image), a
    class that has both real and synthetic images puts `synthetic_share` (one for all classes, or one
    per class) of its mass on the synthetic ones; a class of one origin keeps all its mass there.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = counts[labels] ** -balance
    if synthetic is None:
        return weights
    synthetic = np.asarray(synthetic, dtype=bool)
    n_synthetic = np.bincount(labels, weights=synthetic, minlength=num_classes)[labels]
    n_real = counts[labels] - n_synthetic
    mixed = (n_synthetic > 0) & (n_real > 0)
    class_share = np.broadcast_to(np.asarray(synthetic_share, dtype=np.float64), (num_classes,))[labels]
    share = np.where(synthetic, class_share, 1.0 - class_share)
    within_origin = np.where(synthetic, n_synthetic, n_real)
    return np.where(mixed, weights * counts[labels] * share / np.maximum(within_origin, 1), weights)


def oversample_to_balance(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices holding every item once plus random repeats of each smaller class up to the largest."""
    counts = np.bincount(labels)
    extra = [
        rng.choice(np.flatnonzero(labels == label), counts.max() - count, replace=True)
        for label, count in enumerate(counts)
        if count > 0
    ]
    return np.concatenate([np.arange(len(labels)), *extra])
