"""The ResNet generator (SNGAN / BigGAN style): residual up-sampling blocks with class-conditional
BatchNorm, from a 4x4 start to any supported image size, 1 or 3 channels.

Two ways to condition its norms on the class (`conditioning`):
- "tables": every conditional BatchNorm has its own table of a gain and a bias per class;
- "biggan": BigGAN's (Brock et al., 2019) shared class embedding and hierarchical latent: the latent
  is split into one chunk for the stem and one per block, and each block's norms compute their gain
  and bias by linear layers from [its chunk, the shared embedding of the class].
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import ConfigError
from pipeline.nets.common import check_image_size
from pipeline.nets.stylegan import StyleGenerator


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


class VectorConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias are linear in a conditioning vector (BigGAN: [latent chunk, class
    embedding]); zero-initialised, so training starts from a plain BatchNorm as the tables do."""

    def __init__(self, num_features: int, condition_dim: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Linear(condition_dim, num_features)  # added to 1
        self.bias = nn.Linear(condition_dim, num_features)
        for layer in (self.gain, self.bias):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, condition: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        gain, bias = 1.0 + self.gain(condition), self.bias(condition)  # `conditioning` is inside `condition`
        return self.norm(x) * gain[:, :, None, None] + bias[:, :, None, None]


class GeneratorBlock(nn.Module):
    """Residual up-sampling block (SNGAN / BigGAN style) with conditional BatchNorm: per-class tables,
    or linear in a conditioning vector of `condition_dim` values."""

    def __init__(self, in_ch: int, out_ch: int, num_classes: int, condition_dim: int | None = None):
        super().__init__()
        norm = (
            (lambda ch: ConditionalBatchNorm2d(ch, num_classes))
            if condition_dim is None
            else (lambda ch: VectorConditionalBatchNorm2d(ch, condition_dim))
        )
        self.norm1 = norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x, y, conditioning=1.0):
        h = F.interpolate(F.relu(self.norm1(x, y, conditioning)), scale_factor=2)
        h = self.conv2(F.relu(self.norm2(self.conv1(h), y, conditioning)))
        return h + self.skip(F.interpolate(x, scale_factor=2))


class Generator(nn.Module):
    """`conditioning` in forward, in [0, 1], scales the class-dependent part (transitional conditioning)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int,
        z_dim: int = 64,
        width: int = 32,
        conditioning: str = "tables",
    ):
        super().__init__()
        check_image_size(image_size)
        self.z_dim = z_dim
        n_blocks = int(math.log2(image_size // 4))
        widths = [width * min(8, 2 ** (n_blocks - i)) for i in range(n_blocks + 1)]  # e.g. 8w 4w 2w w
        if conditioning == "biggan":
            if z_dim < n_blocks + 1:
                raise ConfigError(
                    f"train.z_dim {z_dim} is too small to split over the stem and {n_blocks} blocks "
                    f"(train.g_conditioning biggan needs at least {n_blocks + 1})"
                )
            self.chunks = [len(c) for c in torch.arange(z_dim).tensor_split(n_blocks + 1)]  # stem, then each block
            self.shared = nn.Embedding(num_classes, z_dim)  # the one class embedding every block reads
            stem_in, condition_dims = self.chunks[0], [chunk + z_dim for chunk in self.chunks[1:]]
        else:
            self.chunks, self.shared = None, None
            stem_in, condition_dims = z_dim, [None] * n_blocks
        self.stem = nn.Linear(stem_in, widths[0] * 4 * 4)
        self.blocks = nn.ModuleList(
            GeneratorBlock(widths[i], widths[i + 1], num_classes, condition_dims[i]) for i in range(n_blocks)
        )
        self.out_norm = nn.BatchNorm2d(widths[-1])
        self.out_conv = nn.Conv2d(widths[-1], channels, 3, padding=1)

    def forward(self, z: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        if self.chunks is None:
            h, conditions = self.stem(z), [y] * len(self.blocks)
        else:
            stem_chunk, *block_chunks = z.split(self.chunks, dim=1)
            embedding = conditioning * self.shared(y)
            h, conditions = self.stem(stem_chunk), [torch.cat([c, embedding], dim=1) for c in block_chunks]
        h = h.view(z.shape[0], -1, 4, 4)
        for block, condition in zip(self.blocks, conditions):
            h = block(h, condition, conditioning)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))

    def conditional_norms(self) -> list[ConditionalBatchNorm2d]:
        """The per-class tables (group spectral regularisation's subject); none with BigGAN conditioning."""
        return [m for m in self.modules() if isinstance(m, ConditionalBatchNorm2d)]


def build_generator(
    arch: str, image_size: int, channels: int, num_classes: int, z_dim: int, width: int, conditioning: str = "tables"
) -> nn.Module:
    """The generator of `train.arch` (resnet | stylegan2); `conditioning` (train.g_conditioning) is the
    resnet's way of conditioning its norms."""
    if arch == "stylegan2":
        return StyleGenerator(image_size, channels, num_classes, z_dim, width)
    return Generator(image_size, channels, num_classes, z_dim, width, conditioning)
