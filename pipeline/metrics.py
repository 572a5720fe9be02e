"""Pure metric functions of the report: fidelity, diversity, memorisation and downstream utility.

Feature-space metrics take NxD float tensors from one fixed feature extractor (the report uses the
judge's penultimate layer, never Inception: nothing here downloads weights). Nothing here reads or
writes files.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, recall_score

from pipeline.errors import InputError


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact Euclidean distances (len(a) x len(b)); the matmul shortcut would blur exact duplicates."""
    return torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")


# --- fidelity: distances between two feature distributions --------------------------------------


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (each needs at least 2 rows).

    ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)). The trace of the matrix square root is
    the sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2), a symmetric PSD matrix,
    which stays stable for the singular covariances of small classes.
    """
    a, b = a.double(), b.double()
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    sqrt_a = psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    mean_term = (a.mean(0) - b.mean(0)).square().sum()
    return float(mean_term + cov_a.trace() + cov_b.trace() - 2 * cross)


def psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T


def kernel_distance(
    a: torch.Tensor, b: torch.Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the kernel (x.y / d + 1)^3, as mean and std over random subsets.

    The subset size shrinks to the smaller set, so a class of a handful of images still gets a value
    (a noisy one); it needs at least 2 rows per set.
    """
    size = min(subset_size, len(a), len(b))
    if size < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    a, b = a.double(), b.double()
    dim = a.shape[1]
    generator = torch.Generator().manual_seed(seed)
    estimates = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=generator)[:size]]
        y = b[torch.randperm(len(b), generator=generator)[:size]]
        k_xx, k_yy, k_xy = ((p @ q.T / dim + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off_diagonal = size * (size - 1)
        mmd = ((k_xx.sum() - k_xx.diagonal().sum()) + (k_yy.sum() - k_yy.diagonal().sum())) / off_diagonal
        estimates.append(float(mmd - 2 * k_xy.mean()))
    return float(np.mean(estimates)), float(np.std(estimates))


# --- fidelity and diversity: manifold estimates (Kynkäänniemi 2019, Naeem 2020) -------------------


def kth_neighbour_distance(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the radius of its k-NN ball)."""
    return pairwise_distances(features, features).kthvalue(k + 1, dim=1).values  # +1: itself at 0


def precision_recall_density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of `fake` against `real` with k-NN balls.

    precision: share of fakes inside some real ball (fidelity); recall: share of reals inside some
    fake ball (diversity); density: fakes counted once per real ball that holds them, over k (about 1
    when the sets match, above 1 when fakes crowd the real modes); coverage: share of reals whose
    ball holds some fake. k shrinks to (smaller set size - 1) for tiny classes.
    """
    k = min(k, len(real) - 1, len(fake) - 1)
    if k < 1:
        raise ValueError(f"precision/recall need at least 2 samples per set, got {len(real)} and {len(fake)}")
    real_radii = kth_neighbour_distance(real, k)
    fake_radii = kth_neighbour_distance(fake, k)
    distances = pairwise_distances(real, fake)  # real x fake
    in_real_ball = distances <= real_radii[:, None]
    return {
        "precision": float(in_real_ball.any(dim=0).double().mean()),
        "recall": float((distances <= fake_radii[None, :]).any(dim=1).double().mean()),
        "density": float(in_real_ball.sum(dim=0).double().mean() / k),
        "coverage": float((distances.min(dim=1).values <= real_radii).double().mean()),
    }


# --- memorisation --------------------------------------------------------------------------------


def nearest_neighbours(
    query: torch.Tensor, reference: torch.Tensor, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query row: the distance to its nearest reference row, and that row's index (the first such
    row on a tie). Computed in blocks of chunk x chunk rows, so memory stays at chunk x chunk distances
    however many rows either side has (a class's train images number tens of thousands at scale)."""
    nearest, indices = [], []
    for part in query.split(chunk):
        best = torch.full((len(part),), float("inf"), dtype=torch.float64)
        best_index = torch.zeros(len(part), dtype=torch.int64)
        for start in range(0, len(reference), chunk):
            block = pairwise_distances(part, reference[start : start + chunk]).min(dim=1)
            closer = block.values < best  # strictly: an earlier row keeps a tie
            best = torch.where(closer, block.values, best)
            best_index = torch.where(closer, block.indices + start, best_index)
        nearest.append(best)
        indices.append(best_index)
    return torch.cat(nearest), torch.cat(indices)  # no query rows: split gives one empty part


def closest_real_pair(train: torch.Tensor, other: torch.Tensor, chunk: int = 1024) -> float | None:
    """The smallest distance between two distinct real images of a class: a train image and another
    train image, or a held-out image (`other`) and a train image. Identical images (distance 0) are not
    distinct. None when the class has no such pair. Computed in blocks of chunk x chunk rows.

    This is the copy rule of the gate and of the evaluate stage alike: a synthetic image closer than
    this to a training image of its class is closer than any two real images of the class ever came.
    """
    smallest = float("inf")
    for query in (train, other):
        for part in query.split(chunk):
            for block in train.split(chunk):
                distances = pairwise_distances(part, block)
                distances[distances == 0] = float("inf")  # itself, or an identical image
                if distances.numel():  # no held-out images: an empty block
                    smallest = min(smallest, float(distances.min()))
    return None if smallest == float("inf") else smallest


MIN_COPY_RULE_IMAGES = 5  # fewer real images than this: the closest pair says little about how close reals get


def copy_thresholds(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    held_out: torch.Tensor,
    held_out_labels: torch.Tensor,
    num_classes: int,
) -> list[float]:
    """The copy rule's threshold per class: its closest_real_pair over its train and held-out features.

    A class with fewer than MIN_COPY_RULE_IMAGES real images, or without a pair, borrows the median
    threshold of the classes that have enough: two or three images are too few to know how close
    real images of the class can come (their closest pair is far, and would call most samples copies).
    """
    return class_copy_thresholds(
        (train[train_labels == label], held_out[held_out_labels == label]) for label in range(num_classes)
    )


def class_copy_thresholds(classes: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """copy_thresholds from each class's (train, held-out) features in label order, given a class at a time
    (a caller that never holds every class's features at once)."""
    pairs, sizes = [], []
    for own_train, own_held_out in classes:
        pairs.append(closest_real_pair(own_train, own_held_out))
        sizes.append(len(own_train) + len(own_held_out))
    known = [d for d, n in zip(pairs, sizes) if d is not None and n >= MIN_COPY_RULE_IMAGES]
    known = known or [d for d in pairs if d is not None]
    if not known:
        raise InputError(
            "no class has two distinct real images (train or val): the copy rule has no scale; add images to the source"
        )
    fallback = float(np.median(known))
    return [d if d is not None and n >= MIN_COPY_RULE_IMAGES else fallback for d, n in zip(pairs, sizes)]


def memorised_share(synthetic_to_train: torch.Tensor, threshold: float) -> float:
    """Share of synthetic images closer to a training image than the copy threshold."""
    return float((synthetic_to_train < threshold).double().mean())


# --- downstream utility --------------------------------------------------------------------------


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (a class absent from a small val split does not count)."""
    present = np.unique(y_true)
    if len(present) == 0:
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == label] == label) for label in present]))


def tail_classes(train_counts: list[int]) -> list[int]:
    """The rarest third of the classes by real train count (at least one; ties broken by label)."""
    order = sorted(range(len(train_counts)), key=lambda label: (train_counts[label], label))
    return sorted(order[: max(1, round(len(train_counts) / 3))])


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, tail: list[int]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, tail recall (mean recall of the `tail` classes) and the
    recall of each class (a list in label order)."""
    labels = list(range(num_classes))
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "tail_recall": float(np.mean(recall[tail])),
        "recall": recall.tolist(),
    }


def paired_difference(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over paired seeds and its Student-t confidence interval: (mean, low, high).

    With a single pair the interval is unbounded (-inf, inf): one seed says nothing about noise.
    """
    differences = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean = float(differences.mean())
    if len(differences) < 2:
        return mean, float("-inf"), float("inf")
    half = stats.t.ppf(0.5 + confidence / 2, len(differences) - 1) * differences.std(ddof=1) / np.sqrt(len(differences))
    return mean, float(mean - half), float(mean + half)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (std 0 for a single seed)."""
    values = np.asarray(values, dtype=float)
    std = values.std(ddof=1) if len(values) > 1 else 0.0
    return float(values.mean()), float(std)
