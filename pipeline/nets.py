"""The networks: a class-conditional generator, a projection discriminator and a small classifier.

All networks take and give images as float tensors in [-1, 1], NxCxHxW; `to_unit_range` and
`to_uint8` convert from and to the uint8 tensors that stages keep in memory. Both GAN networks adapt
to any power-of-two image size from 16 to 128 and to 1 or 3 channels.

Saved models are a plain `state_dict` (`<name>.pt`, loads with `torch.load(..., weights_only=True)`)
beside `<name>.json` (contracts.ModelMeta: the architecture and the data it was made for), so no
pickled code is ever loaded.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.contracts import ModelMeta
from pipeline.errors import ConfigError, InputError

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


# --- generator -----------------------------------------------------------------------------------


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


# --- discriminator -------------------------------------------------------------------------------


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
        widths = [channels] + [width * min(8, 2 ** i) for i in range(n_blocks)]
        self.blocks = nn.Sequential(*(DiscriminatorBlock(widths[i], widths[i + 1], first=i == 0) for i in range(n_blocks)))
        self.linear = spectral_norm(nn.Linear(widths[-1], 1))
        self.embed = spectral_norm(nn.Embedding(num_classes, widths[-1]))

    def forward(self, x: torch.Tensor, y: torch.Tensor, conditioning: float = 1.0) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))
        out = self.linear(h).squeeze(1)
        return out + conditioning * (self.embed(y) * h).sum(dim=1)


# --- classifier (the judge, and the report's downstream classifier) ------------------------------


class Classifier(nn.Module):
    """A small, fast CNN: a stride-2 stem, then three conv-BN-ReLU-maxpool stages that double the
    width, global average pooling and a linear head. `features` (the pooled vector) is the feature
    space of the gate and the evaluation. Sized for the CPU: a run converges in seconds."""

    def __init__(self, image_size: int, channels: int, num_classes: int, width: int):
        super().__init__()
        layers, in_ch, size = [], channels, image_size
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            layers += [nn.Conv2d(in_ch, out_ch, 3, stride=2 if stage == 0 else 1, padding=1, bias=False),
                       nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True)]
            size = (size + 1) // 2 if stage == 0 else size
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_ch, num_classes))
        self.feature_dim = in_ch

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


# --- saving and loading --------------------------------------------------------------------------


def save_model(model: nn.Module, folder: Path | str, name: str, meta: ModelMeta) -> None:
    """`<name>.pt` (a plain state_dict) and `<name>.json` (everything needed to rebuild it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.pt")
    meta.write(folder / f"{name}.json")


def load_model(folder: Path | str, name: str, build) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model saved by `save_model`; `build(meta)` makes the empty network."""
    folder = Path(folder)
    weights = folder / f"{name}.pt"
    if not weights.is_file():
        raise InputError(f"{weights}: not found (run the stage that makes it first)")
    meta = ModelMeta.read(folder / f"{name}.json")
    model = build(meta)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval(), meta


def weights_hash(model: nn.Module) -> str:
    """sha256 of the parameters and buffers: equal weights give equal hashes, whatever the file."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_generator(folder: Path | str) -> tuple[Generator, ModelMeta]:
    """The EMA generator of the train stage: `generator_ema.pt` + `generator_ema.json`."""
    return load_model(folder, "generator_ema",
                      lambda m: Generator(m.image_size, m.channels, len(m.class_names), m.z_dim, m.width))


def load_judge(folder: Path | str) -> tuple[Classifier, ModelMeta]:
    """The judge stage's classifier: `judge.pt` + `judge.json`."""
    return load_model(folder, "judge", lambda m: Classifier(m.image_size, m.channels, len(m.class_names), m.width))
