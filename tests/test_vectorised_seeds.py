"""benchmarks/vectorised_seeds.py: its vectorised update of several seeds is each seed's own update (its own
batch, its own BatchNorm statistics, its own AdamW step), up to float rounding, on a tiny network."""

import copy
import sys

import pytest
import torch

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import vectorised_seeds as vs

from pipeline.config import ClassifierParams

TINY = ClassifierParams(width=4, batch_size=8, lr=0.01)
SHAPE = (8, 1, 3)  # image size, channels, classes
SEEDS = 3


def test_the_vectorised_update_is_each_seeds_sequential_update_up_to_rounding():
    parameters, running_statistics, moved = vs.largest_differences(TINY, SHAPE, SEEDS, 4, torch.float64)
    assert parameters < 1e-10 and running_statistics < 1e-10
    assert moved > 1e-3  # the updates did move the parameters


def test_each_seed_sees_only_its_own_batch():
    """The sequential seeds 0 and 1 train on each other's batches: only seed 2 still matches. Seeds sharing one
    batch, or one BatchNorm statistic over all the seeds' images, would break seed 2's match too."""
    networks = [net.double() for net in vs.without_dropout(vs.seed_networks(TINY, SHAPE, SEEDS))]
    sequential = vs.SequentialSeeds(copy.deepcopy(networks), TINY)
    vectorised = vs.VectorisedSeeds(networks, TINY)
    for images, labels in vs.random_batches(3, SEEDS, TINY.batch_size, SHAPE, torch.Generator().manual_seed(0)):
        swapped = [1, 0, 2]
        sequential.update(images[swapped], labels[swapped])
        vectorised.update(images, labels)
    ours, theirs = sequential.state(), vectorised.state()
    for name in ("body.0.weight", "body.1.running_mean", "head.1.weight"):
        per_seed = (ours[name] - theirs[name]).flatten(1).abs().amax(dim=1)
        assert per_seed[2] < 1e-10 and per_seed[0] > 1e-4 and per_seed[1] > 1e-4, name


def test_one_adamw_step_over_stacked_parameters_is_each_seeds_own_step_exactly():
    generator = torch.Generator().manual_seed(0)
    stacked = torch.randn(SEEDS, 5, 4, generator=generator, requires_grad=True)
    apart = [torch.nn.Parameter(stacked[k].detach().clone()) for k in range(SEEDS)]
    together = torch.optim.AdamW([stacked], lr=0.01, weight_decay=0.1)
    each = [torch.optim.AdamW([p], lr=0.01, weight_decay=0.1) for p in apart]
    for _ in range(3):
        gradients = torch.randn(SEEDS, 5, 4, generator=generator)
        stacked.grad = gradients.clone()
        together.step()
        for k, (parameter, optimizer) in enumerate(zip(apart, each)):
            parameter.grad = gradients[k].clone()
            optimizer.step()
    assert torch.equal(stacked.detach(), torch.stack([p.detach() for p in apart]))


def test_evaluates_best_case_keeps_the_augmentation_and_val_shares():
    assert vs.evaluate_seconds_at_best(1.0) == pytest.approx(vs.EVALUATE_SECONDS * (1 - vs.LIGHTNING_SHARE))
    assert vs.evaluate_seconds_at_best(0.0) == pytest.approx(vs.EVALUATE_SECONDS * 0.12)
