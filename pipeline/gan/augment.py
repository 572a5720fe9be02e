"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training", 2020).

The discriminator sees real and fake images through the same random augmentations, so it cannot
memorise a handful of training images, and the generator still gets gradients because every
augmentation is differentiable. Images are NxCxHxW float tensors in [-1, 1]; each image draws its
own random parameters from torch's global generator (seeded by the stage).

With a probability below 1 (adaptive discriminator augmentation sets it during training), each
augmentation of the policy is applied to each image independently with that probability.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def color(images: torch.Tensor) -> torch.Tensor:
    """Random brightness, saturation and contrast."""
    n = images.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n, 1, 1, 1, device=images.device, dtype=images.dtype).uniform_(low, high)

    images = images + uniform(-0.5, 0.5)
    channel_mean = images.mean(dim=1, keepdim=True)
    images = (images - channel_mean) * uniform(0.0, 2.0) + channel_mean  # a no-op on grayscale
    image_mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - image_mean) * uniform(0.5, 1.5) + image_mean


def translation(images: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each image by up to `ratio` of its size, filling with zeros (mid-grey)."""
    n, _, h, w = images.shape
    max_dy, max_dx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_dy, max_dy + 1, (n, 1, 1), device=images.device)
    dx = torch.randint(-max_dx, max_dx + 1, (n, 1, 1), device=images.device)
    rows = (torch.arange(h, device=images.device)[None, :, None] + dy + 1).clamp(0, h + 1)
    cols = (torch.arange(w, device=images.device)[None, None, :] + dx + 1).clamp(0, w + 1)
    padded = F.pad(images, [1, 1, 1, 1]).permute(0, 2, 3, 1)  # N x H+2 x W+2 x C
    batch = torch.arange(n, device=images.device)[:, None, None]
    return padded[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(images: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero (mid-grey) one square of `ratio` of the image size at a random place in each image."""
    n, _, h, w = images.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_y % 2), (n, 1, 1), device=images.device) - size_y // 2
    left = torch.randint(0, w + (1 - size_x % 2), (n, 1, 1), device=images.device) - size_x // 2
    rows = torch.arange(h, device=images.device)[None, :, None]
    cols = torch.arange(w, device=images.device)[None, None, :]
    inside = (rows >= top) & (rows < top + size_y) & (cols >= left) & (cols < left + size_x)
    return images * (~inside).unsqueeze(1).to(images.dtype)


AUGMENTATIONS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(images: torch.Tensor, policy: list[str], probability: float = 1.0) -> torch.Tensor:
    """Apply the named augmentations in order, each to each image with `probability` (an empty policy
    or probability 0 returns the images unchanged)."""
    if probability <= 0.0:
        return images
    for name in policy:
        augmented = AUGMENTATIONS[name](images)
        if probability >= 1.0:
            images = augmented
        else:
            applied = torch.rand(images.shape[0], 1, 1, 1, device=images.device) < probability
            images = torch.where(applied, augmented, images)
    return images
