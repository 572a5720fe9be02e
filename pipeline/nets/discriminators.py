"""The projection discriminator (Miyato & Koyama, 2018) with spectrally normalised residual blocks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.nets.common import check_image_size


class DiscriminatorBlock(nn.Module):
    """Residual down-sampling block with spectrally normalised convolutions."""

    def __init__(self, in_ch: int, out_ch: int, first: bool = False):
        super().__init__()
        self.first = first
        self.conv1 = spectral_norm(nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(in_ch, out_ch, 1))

    def forward(self, x):
        h = x if self.first else F.relu(x)  # no ReLU on raw pixels
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(h))), 2)
        return h + self.skip(F.avg_pool2d(x, 2))


class Discriminator(nn.Module):
    """Projection discriminator (Miyato & Koyama, 2018): D(x, y) = psi(h) + <embed(y), h>."""

    def __init__(self, image_size: int, channels: int, num_classes: int, width: int = 32):
        super().__init__()
        check_image_size(image_size)
        n_blocks = int(math.log2(image_size // 4))
        widths = [channels] + [width * min(8, 2**i) for i in range(n_blocks)]
        self.blocks = nn.Sequential(
            *(DiscriminatorBlock(widths[i], widths[i + 1], first=i == 0) for i in range(n_blocks))
        )
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        return out + conditioning * (self.embed(y) * h).sum(dim=1)
