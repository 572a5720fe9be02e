"""AugmentedDataModule: the published dataset for a user's Lightning training. It trains on load_augmented's
items and class-balanced draws (from files or shards, with worker processes), validates and tests on the
real prepared splits, and examples/train_resnet.py trains a torchvision network through it."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import ToTensor

from conftest import REPO_ROOT, copy_outputs, tiny_params
from pipeline.contracts import PreparedStats
from pipeline.datamodule import AugmentedDataModule
from pipeline.dataset import load_augmented
from pipeline.manifests import load_split
from pipeline.paths import Paths
from pipeline.stages import merge


@pytest.fixture(scope="module", params=["imagefolder", "shards"])
def published(request, evaluate_inputs, tmp_path_factory) -> Paths:
    """The tiny prepared data and its augmented dataset, published as files or as shards (read-only)."""
    paths = Paths(copy_outputs(evaluate_inputs, tmp_path_factory.mktemp(request.param)))
    merge.run(tiny_params(merge={"format": request.param}), paths)
    assert (paths.augmented / "train").exists() == (request.param == "imagefolder")
    return paths


def batches(loader: DataLoader, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)  # the sampler draws from torch's global generator, as load_augmented's does
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def test_training_draws_load_augmenteds_items_class_balanced_with_worker_processes(published):
    data = AugmentedDataModule(published.root, batch_size=16, num_workers=2)
    data.setup("fit")
    dataset, manifest, sampler = load_augmented(published.augmented, transform=ToTensor())
    expected_images, expected_labels = batches(DataLoader(dataset, batch_size=16, sampler=sampler), seed=5)
    images, labels = batches(data.train_dataloader(), seed=5)
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
    assert len(labels) == len(manifest) and images.shape[1:] == (1, 16, 16)

    # class-balanced: the rarest class, far rarer in the manifest, is drawn about as often as the largest
    rows = torch.bincount(torch.tensor(manifest["label"].to_numpy()), minlength=data.num_classes)
    drawn = torch.bincount(labels, minlength=data.num_classes)
    assert rows.max() > 2 * rows.min() and drawn.max() < 2 * drawn.min()
    assert not torch.equal(batches(data.train_dataloader(), seed=6)[1], labels)  # each epoch draws anew


def test_val_and_test_are_the_real_prepared_splits_in_order(published):
    data = AugmentedDataModule(published.root, batch_size=16, num_workers=2)
    data.setup("test")
    stats = PreparedStats.read(published.prepared)
    for split, loader in (("val", data.val_dataloader()), ("test", data.test_dataloader())):
        images, labels = batches(loader, seed=0)
        real_images, real_labels = load_split(published.prepared, stats, split)
        assert torch.equal((images * 255).round().to(torch.uint8), real_images) and torch.equal(labels, real_labels)


def test_each_split_has_its_own_transform_and_no_arguments_read_the_repository_it_runs_in(evaluate_inputs, monkeypatch):
    monkeypatch.chdir(evaluate_inputs)  # as a user's script run from the repository root
    data = AugmentedDataModule(
        train_transform=lambda image: torch.tensor(0),
        val_transform=lambda image: torch.tensor(1),
        test_transform=lambda image: torch.tensor(2),
        batch_size=1000,
    )
    data.setup("fit")
    assert len(data.train_set) == len(load_augmented(evaluate_inputs / "data/augmented")[1])
    for value, loader in enumerate((data.train_dataloader(), data.val_dataloader(), data.test_dataloader())):
        assert set(torch.cat([images for images, _ in loader]).tolist()) == {value}


def test_the_example_trains_a_torchvision_network_through_the_data_module(evaluate_inputs):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "examples/train_resnet.py"),
            "--root",
            str(evaluate_inputs),
            "--max-steps",
            "3",
            "--batch-size",
            "8",
            "--num-workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    score = re.search(r"resnet18: balanced accuracy (\d\.\d+) on the real test split after 3 updates", result.stdout)
    assert score and 0.0 <= float(score.group(1)) <= 1.0, result.stdout[-2000:]
