"""Saving and loading networks: a plain `state_dict` (`<name>.pt`, loaded with `weights_only=True`)
beside `<name>.json` (contracts.ModelMeta: the architecture and the data it was made for), so no
pickled code is ever loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from pipeline.contracts import GeneratorDetails, JudgeDetails, ModelMeta
from pipeline.errors import InputError
from pipeline.nets.classifiers import SMALL_CNN, build_classifier
from pipeline.nets.generators import build_generator


def save_model(model: nn.Module, folder: Path | str, name: str, meta: ModelMeta) -> None:
    """`<name>.pt` (a plain state_dict) and `<name>.json` (everything needed to rebuild it)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, folder / f"{name}.pt")
    meta.write(folder / f"{name}.json")


def load_model(folder: Path | str, name: str, build, details: type) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model saved by `save_model`; `build(meta)` makes the empty network, `details` is the type of
    the record of the stage that trains it (contracts.JudgeDetails, GeneratorDetails)."""
    folder = Path(folder)
    weights = folder / f"{name}.pt"
    if not weights.is_file():
        raise InputError(f"{weights}: not found (run the stage that makes it first)")
    meta = ModelMeta.read(folder / f"{name}.json", details)
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


def load_generator(folder: Path | str) -> tuple[nn.Module, ModelMeta]:
    """The EMA generator of the train stage: `generator_ema.pt` + `generator_ema.json` (whose
    GeneratorDetails, the train params it was made with, name its architecture; an untrained generator
    saved without them is the default resnet)."""

    def build(meta: ModelMeta) -> nn.Module:
        details = meta.details
        return build_generator(
            details.arch if details else "resnet",
            meta.image_size,
            meta.channels,
            len(meta.class_names),
            meta.z_dim,
            meta.width,
            details.g_conditioning if details else "tables",
        )

    return load_model(folder, "generator_ema", build, GeneratorDetails)


def load_judge(folder: Path | str) -> tuple[nn.Module, ModelMeta]:
    """The judge stage's classifier: `judge.pt` + `judge.json`, a network of the `arch` of the judge params
    that judge.json's JudgeDetails record (small_cnn for an untrained network saved without them)."""

    def build(meta: ModelMeta) -> nn.Module:
        arch = meta.details.arch if meta.details else SMALL_CNN
        return build_classifier(arch, meta.image_size, meta.channels, len(meta.class_names), meta.width)

    return load_model(folder, "judge", build, JudgeDetails)
