"""The classifier of the judge and of the downstream arms, chosen by name (`arch` of config.ClassifierParams):

- `small_cnn`: `SmallCNN` below, a small CNN sized for the CPU (the default);
- the name of a torchvision classification model that takes `num_classes` (`resnet18`, `densenet121`,
  ...), always untrained (`weights=None`: nothing is downloaded) and adapted to the data: its first
  convolution takes the data's channels and, for images up to SMALL_IMAGE pixels, keeps the full
  resolution, as the CIFAR variants of these networks do (a 3x3 stride-1 stem, no max-pool after it);
- `package.module:factory`: a function of your own, called as
  `factory(num_classes=..., channels=..., image_size=...)`, that returns an `nn.Module`.

Every network takes float images in [-1, 1], N x C x H x W, and gives logits. The judge also needs
features: the input of the network's output layer (`logits_and_features`). `predict` and
`predict_labels` run a trained network over uint8 images in batches (the training is
pipeline/classifier_training.py's).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator

import torch
import torchvision
from torch import nn

from pipeline.errors import ConfigError
from pipeline.image_rows import Images, image_batches
from pipeline.nets.common import to_unit_range

SMALL_CNN = "small_cnn"
# Up to this size a torchvision network's stem keeps the full resolution: with the ImageNet stem (a
# stride-2 convolution and a max-pool) a 32x32 image would be 8x8 after the first layer and 1x1 at the end.
SMALL_IMAGE = 64


class SmallCNN(nn.Module):
    """A small, fast CNN: a stride-2 stem, then three conv-BN-ReLU-maxpool stages that double the
    width, global average pooling and a linear head. The pooled vector, the head's input, is the
    feature space of the gate and the evaluation. Sized for the CPU: a run converges in seconds."""

    def __init__(self, image_size: int, channels: int, num_classes: int, width: int):
        super().__init__()
        layers, in_ch, size = [], channels, image_size
        for stage, out_ch in enumerate((width, 2 * width, 4 * width)):
            layers += [
                nn.Conv2d(in_ch, out_ch, 3, stride=2 if stage == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(out_ch),
                nn.ReLU(inplace=True),
            ]
            size = (size + 1) // 2 if stage == 0 else size
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            in_ch = out_ch
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(in_ch, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_classifier(arch: str, image_size: int, channels: int, num_classes: int, width: int) -> nn.Module:
    """A new network of `arch` (one of the three forms above); `width` is small_cnn's."""
    if arch == SMALL_CNN:
        return SmallCNN(image_size, channels, num_classes, width)
    if ":" in arch:
        return user_classifier(arch, image_size, channels, num_classes)
    if arch in torchvision.models.list_models(module=torchvision.models):
        return torchvision_classifier(arch, image_size, channels, num_classes)
    raise ValueError(
        f"{arch!r} is neither {SMALL_CNN}, a torchvision classification model (e.g. resnet18) "
        "nor package.module:factory"
    )


def torchvision_classifier(name: str, image_size: int, channels: int, num_classes: int) -> nn.Module:
    """torchvision's untrained `name`, its stem adapted to the channels and, up to SMALL_IMAGE, to small images."""
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    modules = list(net.named_modules())
    convolutions = [i for i, (_, module) in enumerate(modules) if isinstance(module, nn.Conv2d)] + [len(modules)]
    stem_name, stem = modules[convolutions[0]]
    small = image_size <= SMALL_IMAGE
    net.set_submodule(
        stem_name,
        nn.Conv2d(
            channels,
            stem.out_channels,
            3 if small else stem.kernel_size,
            stride=1 if small else stem.stride,
            padding=1 if small else stem.padding,
            bias=stem.bias is not None,
        ),
    )
    if small:  # the max-pool between the stem and the next convolution goes too
        for pool_name, module in modules[convolutions[0] + 1 : convolutions[1]]:
            if isinstance(module, nn.MaxPool2d):
                net.set_submodule(pool_name, nn.Identity())
    return net


def user_classifier(arch: str, image_size: int, channels: int, num_classes: int) -> nn.Module:
    """The network that the factory `package.module:factory` makes."""
    module_name, _, factory_name = arch.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import {arch}: {err}") from err
    try:
        net = factory(num_classes=num_classes, channels=channels, image_size=image_size)
    except Exception as err:  # the user's code may fail in any way
        raise ValueError(f"{arch} failed: {type(err).__name__}: {err}") from err
    if not isinstance(net, nn.Module):
        raise TypeError(f"{arch} returned a {type(net).__name__}, not a torch.nn.Module")
    return net


def logits_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of a batch and its features: the input of the network's output layer, its last
    nn.Linear, whose output must be the network's (ValueError otherwise: there are no features to take)."""
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    seen = {}
    if linear:
        hook = linear[-1].register_forward_hook(
            lambda _, inputs, output: seen.update(features=inputs[0], logits=output)
        )
        try:
            logits = model(images)
        finally:
            hook.remove()
    if not linear or seen.get("logits") is not logits or seen["features"].dim() != 2:
        raise ValueError(
            f"{type(model).__name__} has no features to take: its output must be that of its last "
            "nn.Linear, on a feature vector"
        )
    return logits, seen["features"]


@torch.inference_mode()
def predict(model: nn.Module, images: Images, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities, features) of uint8 images (in memory or a scratch file's rows), computed in
    batches; the features are the input of the network's output layer (logits_and_features: the judge's
    networks have one)."""
    probabilities, features = zip(*predict_batches(model, images, batch_size))
    return torch.cat(probabilities), torch.cat(features)


@torch.inference_mode()
def predict_batches(
    model: nn.Module, images: Images, batch_size: int = 500
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """predict's (class probabilities, features), a batch at a time (one empty batch for no images): the same
    numbers, for a caller that keeps only some of them."""
    model.eval()
    for batch in image_batches(images, batch_size):
        logits, batch_features = logits_and_features(model, to_unit_range(batch))
        yield logits.softmax(dim=1), batch_features


@torch.inference_mode()
def predict_labels(model: nn.Module, images: Images, batch_size: int = 500) -> torch.Tensor:
    """The class that any classification network gives each uint8 image (the argmax of its logits)."""
    model.eval()
    return torch.cat([model(to_unit_range(batch)).argmax(dim=1) for batch in image_batches(images, batch_size)])


def check_classifier(
    arch: str, image_size: int, channels: int, num_classes: int, width: int, param: str, features: bool = False
) -> None:
    """Build `arch` and run it on two blank images before a stage trains it: a one-line ConfigError naming
    `param` when it cannot be built, gives no logits for these images or, with `features` (the judge),
    has no features to take."""
    try:
        net = build_classifier(arch, image_size, channels, num_classes, width)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"params.yaml: {param}: {_one_line(err)}") from None
    blank = torch.zeros(2, channels, image_size, image_size)
    with torch.no_grad():
        try:
            logits = net.train()(blank)
            if not isinstance(logits, torch.Tensor) or logits.shape != (2, num_classes):
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise ValueError(f"it gives {shape} for 2 images, not logits of shape (2, {num_classes})")
        except Exception as err:  # a network may fail in any way on images it was not made for: one line
            raise ConfigError(
                f"params.yaml: {param}: {arch} does not classify {image_size}x{image_size} images "
                f"with {channels} channel(s) into {num_classes} classes: {_one_line(err)}"
            ) from None
        if features:
            try:
                logits_and_features(net.eval(), blank)
            except ValueError as err:
                raise ConfigError(f"params.yaml: {param}: {arch} cannot be the judge: {_one_line(err)}") from None


def classifier_name(arch: str, width: int) -> str:
    """How reports name the network: small_cnn with its width, any other by its `arch`."""
    return f"{SMALL_CNN} (width {width})" if arch == SMALL_CNN else arch


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__
