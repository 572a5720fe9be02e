"""A class-conditional style-based generator (StyleGAN2: Karras et al., "Analyzing and Improving the
Image Quality of StyleGAN", 2020), sized for small images and small data sets.

- Mapping network: the latent and the class embedding, each normalised, concatenated, then a
  2-layer MLP (the official configs for small data shrink it to 2) to the intermediate latent w.
- Synthesis network: a learned constant 4x4 input; per resolution a 2x up-sampling (bilinear)
  modulated 3x3 convolution and a modulated 3x3 convolution, each followed by per-pixel noise of a
  learned strength, a bias and a leaky ReLU; and a toRGB (1x1 modulated convolution, no
  demodulation) per resolution, summed into the up-sampled image (the "skip" output).
- Modulated convolution: the weights scaled per sample by the style (an affine map of w), then
  demodulated by their norm, done as one grouped convolution over the batch.
- Equalised learning rate: weights drawn from N(0, 1) and scaled by 1/sqrt(fan in) where used.
- Style mixing: in training, 90 % of the images switch to the w of a second latent (same class)
  from a random resolution on.

In training the noise inputs are random; in eval mode they are fixed buffers (StyleGAN2-ADA's
noise_mode "const"), so an image depends only on its latent and label, as the generate stage needs.
The output goes through tanh, into [-1, 1] like the other networks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.nets.common import check_image_size

MAPPING_LAYERS = 2
MIXING_PROBABILITY = 0.9
MAPPING_LR_MULTIPLIER = 0.01  # the mapping network learns 100 times slower (StyleGAN's choice)


def normalise_second_moment(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


def modulated_conv2d(
    x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor, demodulate: bool = True
) -> torch.Tensor:
    """Convolve each sample of x (N x I x H x W) with `weight` (O x I x k x k) scaled by its styles
    (N x I) along the input channels, demodulated to unit norm per output channel; same padding."""
    n, in_channels, height, width = x.shape
    out_channels, _, k, _ = weight.shape
    weights = weight[None] * styles[:, None, :, None, None]  # N x O x I x k x k
    if demodulate:
        weights = weights * torch.rsqrt(weights.square().sum(dim=(2, 3, 4), keepdim=True) + 1e-8)
    out = F.conv2d(
        x.reshape(1, n * in_channels, height, width),
        weights.reshape(n * out_channels, in_channels, k, k),
        padding=k // 2,
        groups=n,
    )
    return out.reshape(n, out_channels, height, width)


class EqualLinear(nn.Module):
    """A linear layer with equalised learning rate (and an optional learning-rate multiplier)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_multiplier: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain, self.bias_gain = lr_multiplier / math.sqrt(in_features), lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)


class StyleLayer(nn.Module):
    """(2x up-sampling,) modulated 3x3 convolution, noise, bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool):
        super().__init__()
        self.up = up
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.weight_gain = 1.0 / math.sqrt(in_channels * 9)
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(1, 1, resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = modulated_conv2d(x, self.weight * self.weight_gain, self.affine(w))
        noise = (
            torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype)
            if self.training
            else self.noise_const
        )
        x = x + noise * self.noise_strength + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


class ToImage(nn.Module):
    """toRGB: a 1x1 modulated convolution without demodulation, to the image's channels."""

    def __init__(self, in_channels: int, channels: int, w_dim: int):
        super().__init__()
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, in_channels, 1, 1))
        self.weight_gain = 1.0 / math.sqrt(in_channels)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        styles = self.affine(w) * self.weight_gain
        return modulated_conv2d(x, self.weight, styles, demodulate=False) + self.bias[None, :, None, None]


class StyleGenerator(nn.Module):
    """Takes (latent, label, conditioning) like the ResNet generator; `conditioning` in [0, 1] scales
    the class embedding (transitional conditioning)."""

    def __init__(self, image_size: int, channels: int, num_classes: int, z_dim: int = 64, width: int = 32):
        super().__init__()
        check_image_size(image_size)
        self.z_dim = w_dim = z_dim
        n_blocks = int(math.log2(image_size // 4))
        widths = [width * min(8, 2 ** (n_blocks - i)) for i in range(n_blocks + 1)]  # e.g. 8w 4w 2w w
        self.embed = nn.Embedding(num_classes, z_dim)
        self.mapping = nn.ModuleList(
            EqualLinear(2 * z_dim if i == 0 else w_dim, w_dim, lr_multiplier=MAPPING_LR_MULTIPLIER)
            for i in range(MAPPING_LAYERS)
        )
        self.const = nn.Parameter(torch.randn(widths[0], 4, 4))
        self.first = StyleLayer(widths[0], widths[0], w_dim, 4, up=False)
        self.ups = nn.ModuleList(
            StyleLayer(widths[i], widths[i + 1], w_dim, 8 * 2**i, up=True) for i in range(n_blocks)
        )
        self.convs = nn.ModuleList(
            StyleLayer(widths[i + 1], widths[i + 1], w_dim, 8 * 2**i, up=False) for i in range(n_blocks)
        )
        self.to_images = nn.ModuleList(ToImage(width_, channels, w_dim) for width_ in widths)

    def map(self, z: torch.Tensor, y: torch.Tensor, conditioning: float) -> torch.Tensor:
        h = torch.cat([normalise_second_moment(z), conditioning * normalise_second_moment(self.embed(y))], dim=1)
        for layer in self.mapping:
            h = F.leaky_relu(layer(h), 0.2) * math.sqrt(2.0)
        return h

    def forward(self, z: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        w = self.map(z, y, conditioning)
        ws = [w] * len(self.to_images)  # one w per resolution
        if self.training and len(ws) > 1:  # style mixing
            mixed = self.map(torch.randn_like(z), y, conditioning)
            cutoff = int(torch.randint(1, len(ws), ()))
            switch = torch.rand(len(z), 1, device=z.device) < MIXING_PROBABILITY
            ws = [torch.where(switch, mixed, w) if i >= cutoff else w for i in range(len(ws))]
        x = self.first(self.const.expand(len(z), -1, -1, -1), ws[0])
        image = self.to_images[0](x, ws[0])
        for up, conv, to_image, w in zip(self.ups, self.convs, self.to_images[1:], ws[1:]):
            x = conv(up(x, w), w)
            image = F.interpolate(image, scale_factor=2, mode="bilinear", align_corners=False) + to_image(x, w)
        return torch.tanh(image)

    def conditional_norms(self) -> list:
        """No per-class norm tables (the class enters through the mapping network)."""
        return []
