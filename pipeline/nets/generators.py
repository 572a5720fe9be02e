"""The ResNet generator (SNGAN / BigGAN style): residual up-sampling blocks with class-conditional
BatchNorm, from a 4x4 start to any supported image size, 1 or 3 channels."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.nets.common import check_image_size

class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias depend on the class.

    `conditioning` in [0, 1] scales the class-dependent part: 0 is an unconditional BatchNorm,
    1 the full class conditioning (transitional conditioning blends between the two).
    """

    def __init__(self, num_features: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)  # added to 1
        self.bias = nn.Embedding(num_classes, num_features)
        nn.init.zeros_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        gain = 1.0 + conditioning * self.gain(y)
        bias = conditioning * self.bias(y)
        return self.norm(x) * gain[:, :, None, None] + bias[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Residual up-sampling block (SNGAN / BigGAN style) with conditional BatchNorm."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int):
        super().__init__()
        self.norm1 = ConditionalBatchNorm2d(in_ch, num_classes)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = ConditionalBatchNorm2d(out_ch, num_classes)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x, y, conditioning=1.0):
        h = F.interpolate(F.relu(self.norm1(x, y, conditioning)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), y, conditioning)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
    def __init__(self, image_size: int, channels: int, num_classes: int, z_dim: int = 64, width: int = 32):
        super().__init__()
        check_image_size(image_size)
        self.z_dim = z_dim
        n_blocks = int(math.log2(image_size // 4))
        widths = [width * min(8, 2 ** (n_blocks - i)) for i in range(n_blocks + 1)]  # e.g. 8w 4w 2w w
        self.stem = nn.Linear(z_dim, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(GeneratorBlock(widths[i], widths[i + 1], num_classes) for i in range(n_blocks))
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        h = self.stem(z).view(z.shape[0], -1, 4, 4)
        for block in self.blocks:
            h = block(h, y, conditioning)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))

    def conditional_norms(self) -> list[ConditionalBatchNorm2d]:
        return [m for m in self.modules() if isinstance(m, ConditionalBatchNorm2d)]
