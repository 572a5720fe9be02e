"""Networks of a user's own for the tests, named in params as `tests.user_networks:<factory>` (importable
from the repository root, where the stages run)."""

from torch import nn


def mlp(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """Ends in a linear layer on a feature vector: any stage can train it, the judge included."""
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * image_size**2, 32), nn.ReLU(), nn.Linear(32, num_classes))


def pooled_convolution(num_classes: int, channels: int, image_size: int) -> nn.Module:
    """Logits from a convolution, averaged: a classifier for the arms, with no features for the judge to take."""
    return nn.Sequential(nn.Conv2d(channels, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_network(num_classes: int, channels: int, image_size: int) -> str:
    return "a network"
