"""Known answers for the report's metric functions (pure tensors, no files)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from pipeline import metrics
from pipeline.errors import InputError
from pipeline.metrics import (
    balanced_accuracy,
    classification_scores,
    closest_real_pair,
    copy_thresholds,
    frechet_distance,
    kernel_distance,
    mean_std,
    memorised_share,
    nearest_neighbours,
    paired_difference,
    pairwise_distances,
    precision_recall_density_coverage,
    tail_classes,
)


def gaussian(n: int, dim: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def with_exact_moments(n: int, mean: np.ndarray, cov: np.ndarray, seed: int) -> torch.Tensor:
    """n samples whose sample mean and (n-1)-normalised covariance are exactly `mean` and `cov`."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(axis=0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x.T))).T  # whiten: sample covariance = I
    return torch.from_numpy(x @ np.linalg.cholesky(cov).T + mean)


def test_frechet_distance_of_identical_sets_is_zero():
    features = gaussian(300, 16, seed=0)
    assert frechet_distance(features, features.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_two_gaussians_is_the_analytic_value():
    rng = np.random.default_rng(1)
    mean_a, mean_b = rng.normal(size=4), rng.normal(size=4)
    root_a, root_b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    cov_a, cov_b = root_a @ root_a.T + np.eye(4), root_b @ root_b.T + np.eye(4)
    analytic = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)

    measured = frechet_distance(
        with_exact_moments(500, mean_a, cov_a, seed=2), with_exact_moments(800, mean_b, cov_b, seed=3)
    )

    assert measured == pytest.approx(analytic, rel=1e-8)
    assert analytic > 1.0  # the two Gaussians really differ


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    features = gaussian(200, 8, seed=4)
    assert frechet_distance(features, features + 3.0) == pytest.approx(8 * 3.0**2, rel=1e-9)


def test_frechet_distance_handles_a_class_smaller_than_the_feature_dimension():
    small, large = gaussian(4, 32, seed=5), gaussian(400, 32, seed=6)
    assert np.isfinite(frechet_distance(small, large)) and frechet_distance(small, large) > 0


def test_kernel_distance_is_about_zero_for_the_same_distribution_and_large_for_another():
    a, b = gaussian(400, 16, seed=7), gaussian(400, 16, seed=8)
    same_mean, same_std = kernel_distance(a, b, subset_size=200, subsets=50)
    shifted_mean, _ = kernel_distance(a, b + 1.0, subset_size=200, subsets=50)
    assert abs(same_mean) < 3 * same_std + 1e-3
    assert shifted_mean > 100 * abs(same_mean)


def test_kernel_distance_shrinks_its_subsets_for_a_tiny_class_and_is_seeded():
    tiny, large = gaussian(3, 16, seed=9), gaussian(500, 16, seed=10)
    first = kernel_distance(tiny, large, subset_size=1000, subsets=20, seed=1)
    assert np.isfinite(first[0]) and first == kernel_distance(tiny, large, subset_size=1000, subsets=20, seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        kernel_distance(tiny[:1], large)


def test_identical_sets_have_precision_recall_and_coverage_one():
    features = gaussian(200, 8, seed=11)
    scores = precision_recall_density_coverage(features, features.clone(), k=5)
    assert scores["precision"] == scores["recall"] == scores["coverage"] == 1.0
    assert scores["density"] >= 1.0  # every fake sits in its own ball and in those of its neighbours


def test_disjoint_sets_have_precision_recall_density_and_coverage_zero():
    real, fake = gaussian(200, 8, seed=12), gaussian(150, 8, seed=13, shift=100.0)
    scores = precision_recall_density_coverage(real, fake, k=5)
    assert scores == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_collapsed_fakes_have_high_precision_and_low_recall():
    real = gaussian(300, 4, seed=14)
    near_one_mode = real[:1] + 0.01 * gaussian(300, 4, seed=15)  # every fake near one real point
    scores = precision_recall_density_coverage(real, near_one_mode, k=5)
    assert scores["precision"] == 1.0
    assert scores["recall"] < 0.05 and scores["coverage"] < 0.05


def test_precision_recall_shrink_k_for_a_tiny_class():
    real, fake = gaussian(3, 8, seed=16), gaussian(50, 8, seed=17)
    scores = precision_recall_density_coverage(real, fake, k=5)
    assert all(0.0 <= scores[name] <= 1.0 for name in ("precision", "recall", "coverage"))
    with pytest.raises(ValueError, match="at least 2"):
        precision_recall_density_coverage(real[:1], fake)


def test_nearest_neighbours_in_chunks_and_the_share_of_copies():
    train = gaussian(100, 8, seed=18)
    test = gaussian(40, 8, seed=19)
    copies = train[[3, 7, 7, 50]]
    synthetic = torch.cat([copies, test[:16]])  # as close to train as real held-out images: not copies

    distances, indices = nearest_neighbours(synthetic, train, chunk=3)
    assert indices[:4].tolist() == [3, 7, 7, 50] and distances[:4].tolist() == [0.0] * 4
    assert torch.equal(distances, nearest_neighbours(synthetic, train)[0])  # chunking changes nothing
    threshold = closest_real_pair(train, test)
    assert memorised_share(distances, threshold) == pytest.approx(4 / 20)
    assert memorised_share(nearest_neighbours(test, train)[0], threshold) == 0.0  # nothing is closer than the closest


def test_nearest_neighbours_by_blocks_equal_the_whole_distance_matrix_and_keep_the_first_of_a_tie(monkeypatch):
    train = gaussian(50, 8, seed=20)
    train = torch.cat([train, train[[4, 11]]])  # rows 50 and 51 repeat rows 4 and 11, in later blocks
    query = torch.cat([gaussian(20, 8, seed=21), train[[4, 11, 49]]])
    whole = pairwise_distances(query, train)
    counted = []

    def counting(a, b):
        counted.append((len(a), len(b)))
        return pairwise_distances(a, b)

    monkeypatch.setattr(metrics, "pairwise_distances", counting)
    distances, indices = nearest_neighbours(query, train, chunk=4)  # 4 x 4 blocks
    assert max(rows for rows, _ in counted) == 4 and max(columns for _, columns in counted) == 4
    assert torch.equal(distances, whole.min(dim=1).values)  # exact distances: blocks change no value
    assert torch.equal(indices, whole.argmin(dim=1))
    assert indices[-3:].tolist() == [4, 11, 49]  # the first of two equal rows, across blocks
    no_distances, no_indices = nearest_neighbours(query[:0], train, chunk=4)
    assert no_distances.dtype == torch.float64 and no_indices.dtype == torch.int64 and len(no_indices) == 0
    assert closest_real_pair(train, query[:20], chunk=4) == closest_real_pair(train, query[:20])


def test_closest_real_pair_is_the_smallest_distance_between_distinct_real_images():
    train = torch.tensor([[0.0], [10.0], [10.0], [13.0]])  # 10.0 twice: identical, not distinct
    assert closest_real_pair(train, torch.tensor([[20.0]])) == 3.0  # 10 -> 13
    assert closest_real_pair(train, torch.tensor([[11.5]])) == 1.5  # a held-out image nearer still
    assert closest_real_pair(train[:1], torch.tensor([[2.0]])) == 2.0  # one train image and one held out
    assert closest_real_pair(train[:1], torch.empty(0, 1)) is None  # a single image has no pair
    assert closest_real_pair(train[1:3], torch.empty(0, 1)) is None  # two identical images are not a pair


def test_copy_thresholds_are_per_class_and_a_class_of_few_images_borrows_the_median():
    # class 0: five images 1 apart; class 1: five images 3 apart; class 2: two images 10 apart; class 3: one image
    train = torch.tensor([[0.0], [1.0], [2.0], [3.0], [100.0], [103.0], [106.0], [109.0], [200.0], [210.0], [300.0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    held_out, held_out_labels = torch.tensor([[4.0], [112.0]]), torch.tensor([0, 1])
    assert copy_thresholds(train, labels, held_out, held_out_labels, 4) == [1.0, 3.0, 2.0, 2.0]
    with pytest.raises(InputError, match="no class has two distinct real images"):
        copy_thresholds(train[-1:], labels[-1:], held_out[:0], held_out_labels[:0], 4)


def test_balanced_accuracy_counts_only_classes_present_in_the_truth():
    assert balanced_accuracy(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])) == pytest.approx((0.5 + 1.0) / 2)
    assert np.isnan(balanced_accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_tail_classes_are_the_rarest_third():
    assert tail_classes([350, 210, 126, 75, 45, 27, 16, 10, 6, 4]) == [7, 8, 9]
    assert tail_classes([5, 1, 5]) == [1]
    assert tail_classes([3, 3, 3]) == [0]  # ties broken by label


def test_classification_scores_known_answer():
    scores = classification_scores(np.array([0, 0, 0, 1, 2]), np.array([0, 0, 1, 1, 0]), num_classes=3, tail=[1, 2])
    assert scores["accuracy"] == pytest.approx(3 / 5)
    assert scores["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert scores["recall"] == pytest.approx([2 / 3, 1.0, 0.0])
    assert scores["tail_recall"] == pytest.approx((1.0 + 0.0) / 2)
    f1_class0 = 2 * (2 / 3) * (2 / 3) / (4 / 3)  # precision 2/3, recall 2/3
    f1_class1 = 2 * 0.5 * 1.0 / 1.5  # precision 1/2, recall 1
    assert scores["macro_f1"] == pytest.approx((f1_class0 + f1_class1 + 0.0) / 3)


def test_paired_difference_is_the_mean_difference_with_a_student_t_interval():
    a, b = [0.90, 0.92, 0.91, 0.95, 0.93], [0.88, 0.91, 0.90, 0.92, 0.90]
    mean, low, high = paired_difference(a, b)
    differences = np.subtract(a, b)
    half = 2.7764451 * differences.std(ddof=1) / np.sqrt(5)  # t(0.975, 4 degrees of freedom)
    assert mean == pytest.approx(0.02) and (low, high) == pytest.approx((0.02 - half, 0.02 + half))
    assert low > 0  # every seed gained: the interval excludes zero
    # pairing matters: the same values unpaired would not give an interval above zero
    assert paired_difference([0.90, 0.80], [0.89, 0.79])[1] > 0 > paired_difference([0.90, 0.80], [0.79, 0.89])[1]
    assert paired_difference([0.9], [0.8])[1:] == (float("-inf"), float("inf"))


def test_mean_std_over_seeds():
    assert mean_std([0.8, 0.9, 1.0]) == pytest.approx((0.9, 0.1))
    assert mean_std([0.7]) == (0.7, 0.0)
