"""What every network here shares: images as float tensors in [-1, 1], NxCxHxW, and the image sizes
the GAN's networks are built for."""

from __future__ import annotations

import torch

from pipeline.errors import ConfigError

SUPPORTED_SIZES = (16, 32, 64, 128)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def check_image_size(image_size: int) -> None:
    if image_size not in SUPPORTED_SIZES:
        raise ConfigError(
            f"image size {image_size} is not supported by the GAN (use data.image_size in {SUPPORTED_SIZES})"
        )
