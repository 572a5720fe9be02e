"""Typed params, loaded from params.yaml and validated in one place.

Every section of params.yaml is a dataclass below. Each field may carry bounds in its metadata
(`ge`, `gt`, `le`, `lt`) or a set of allowed values (`choices`). Loading fails with one line that
names the key (`params.yaml: train.max_epochs must be >= 1, got -3`) on an unknown key, a wrong
type or an out-of-range value, so a typo is an error and never a silent default.

The validator is our own on purpose: pydantic (installed with albumentations) kept every message
only through strict types and a translation of its error types back into these lines, saved 17 of
357 lines, and validates every construction, which the tests' deliberate out-of-range recipes (a
learning rate of 0 to keep the initial weights) must be able to bypass.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from pipeline.errors import ConfigError

PARAMS_FILE = Path("params.yaml")
# keys that a newer key replaced -> what to write instead
REPLACED_KEYS = {
    "generate.allow_short": "generate.on_short: fill (keep what passed and warn) or fail (stop)",
    "train.memory_budget_mb": "nothing: the train split is read from a scratch file as drawn, whatever its size; "
    "delete the key",
}


def bounded(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules (ge, gt, le, lt, choices) in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


# --- one dataclass per section -------------------------------------------------------------------


@dataclass(frozen=True)
class ImbalanceParams:
    # auto: exponential with `ratio` for the built-in demo sources (data/builtin/*.yaml, balanced
    #   datasets made long-tailed to show the pipeline), none for your own data.
    # none: keep the data as it is.
    # exponential: class k of C keeps ratio**(-k/(C-1)) of the smallest class's train count.
    # step: the second half of the classes (in label order) keeps 1/ratio of it.
    profile: Literal["auto", "none", "exponential", "step"] = "auto"
    ratio: float = bounded(100.0, ge=1.0)


@dataclass(frozen=True)
class DataParams:
    # a built-in source (data/builtin/<name>.yaml) or a path to an ImageFolder, a pre-split folder,
    # a folder of MNIST-style IDX files, or a CSV manifest (path,label)
    source: str = "data/builtin/mnist5k.yaml"
    image_size: int = bounded(32, choices=(16, 32, 64, 128))  # the sizes the GAN's networks are built for
    channels: Literal["auto", "grayscale", "rgb"] = "auto"
    max_per_class: int | None = bounded(None, ge=2)  # at most this many images of a class per source split
    imbalance: ImbalanceParams = field(default_factory=ImbalanceParams)
    val_fraction: float = bounded(0.1, ge=0.0, lt=1.0)
    test_fraction: float = bounded(0.2, gt=0.0, lt=1.0)
    strict: bool = False
    max_image_pixels: int = bounded(50_000_000, ge=1)
    # processes that decode and resize the images: auto, one per CPU core (in this process below 20,000
    # images); the outputs are the same bytes whatever it is
    workers: Literal["auto"] | int = bounded("auto", ge=1)


@dataclass(frozen=True)
class ClassifierParams:
    """One classifier recipe (pipeline/classifier_training.py): the judge, and every downstream arm of evaluate."""

    # the network (pipeline/nets/classifiers.py): small_cnn (nets.SmallCNN), a torchvision classification
    # model by name (e.g. resnet18: untrained, adapted to the channels and small images), or
    # package.module:factory (your own nn.Module, made by factory(num_classes=, channels=, image_size=))
    arch: str = "small_cnn"
    width: int = bounded(32, ge=4)  # channels of the first convolution of small_cnn
    batch_size: int = bounded(64, ge=1)
    augment_group: int = bounded(8, ge=1)  # drawn images that share one random affine (one albumentations call)
    lr: float = bounded(3e-3, gt=0.0)
    weight_decay: float = bounded(1e-4, ge=0.0)
    eval_every: int = bounded(50, ge=1)  # updates between two scorings on the val split
    patience: int = bounded(4, ge=1)  # scorings without improvement before training stops
    max_steps: int = bounded(3000, ge=1)  # the cap on updates
    # hardware, as in train: auto trains on a GPU (bf16-mixed where precision is auto) when there is one, else on
    # the CPU (32-true); a GPU run draws its augmentation in loader processes (the numbers are the GPU's own)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"


@dataclass(frozen=True)
class TrainParams:
    max_epochs: int = bounded(60, ge=1)
    max_batches: int | None = bounded(None, ge=1)  # a cap on the batches trained, before max_epochs ends; null: none
    batch_size: int = bounded(32, ge=1)  # reduced to the train split's size (with a note) when larger
    # networks (pipeline/nets: the generator of `arch`, the projection discriminator)
    arch: Literal["resnet", "stylegan2"] = "resnet"  # the generator family
    # resnet's class conditioning: per-class norm tables, or BigGAN's (a shared embedding, a hierarchical latent)
    g_conditioning: Literal["tables", "biggan"] = "tables"
    z_dim: int = bounded(64, ge=1)
    g_width: int = bounded(16, ge=4)
    d_width: int = bounded(16, ge=4)
    # losses and Adam optimisers
    loss: Literal["hinge", "nonsaturating", "wgan-gp"] = "hinge"
    gp_weight: float = bounded(10.0, ge=0.0)  # lambda of wgan-gp's gradient penalty
    d_steps: int = bounded(1, ge=1)  # discriminator updates per generator update (the WGAN-GP paper: 5)
    lr_g: float = bounded(1e-3, gt=0.0)
    lr_d: float = bounded(1e-3, gt=0.0)
    beta1: float = bounded(0.0, ge=0.0, lt=1.0)
    beta2: float = bounded(0.99, ge=0.0, lt=1.0)
    # limited-data techniques (each one switchable)
    diffaugment: list[Literal["color", "translation", "cutout"]] = bounded(["translation"])
    # adaptive augmentation (ADA): null, the diffaugment policy on every image; a number, the target of
    # E[sign(D(real))] that raises or lowers the probability of each augmentation of the policy
    ada_target: float | None = bounded(None, gt=0.0, lt=1.0)
    ada_kimg: float = bounded(20.0, gt=0.0)  # thousands of images over which the probability can go from 0 to 1
    ada_interval: int = bounded(4, ge=1)  # batches between two adjustments of the probability
    ema: bool = True  # false: "generator_ema" is a plain copy of the generator
    ema_decay: float = bounded(0.999, ge=0.0, lt=1.0)
    balance: float = bounded(0.75, ge=0.0, le=1.0)  # class sampling: 0 natural frequencies, 1 uniform
    lecam_weight: float = bounded(0.0, ge=0.0)  # 0: off
    transition_start: int = bounded(0, ge=0)  # batches trained unconditionally first
    transition_steps: int = bounded(0, ge=0)  # batches over which the class conditioning is blended in
    gsr_weight: float = bounded(0.2, ge=0.0)  # group spectral regularisation of the class norms; 0: off
    mode_seeking_weight: float = bounded(0.1, ge=0.0)  # mode seeking regularisation against collapse; 0: off
    # hardware: "auto" picks the GPU (bf16-mixed) when there is one, else the CPU (32-true)
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Literal["auto"] | int = bounded("auto", ge=1)
    num_nodes: int = bounded(1, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    strategy: Literal["auto", "ddp"] = "auto"  # auto: DDP when training on more than one device
    # progress outputs
    sample_every_n_epochs: int = bounded(10, ge=1)
    samples_per_class: int = bounded(10, ge=1)

    def __post_init__(self):
        if self.arch == "stylegan2" and self.g_conditioning != "tables":
            raise ConfigError(
                "params.yaml: train.g_conditioning biggan is an option of train.arch resnet; "
                "stylegan2 takes the class through its mapping network"
            )


@dataclass(frozen=True)
class GenerateParams:
    # "max" | an integer count | a fraction (0, 1] of the largest class
    target: str | int | float = "max"
    # at most this many synthetic images per real train image of a class (null: no cap)
    max_synthetic_per_real: float | None = bounded(None, gt=0.0)
    batch_size: int = bounded(500, ge=1)
    # null: normal latents; a number t: latents drawn from the normal truncated to [-t, t]
    truncation: float | None = bounded(None, gt=0.0)
    # gate check 1, label: the judge must give the intended class at least the probability that
    # `label_pass_rate` of the class's real val images reach (calibrated per class)
    check_label: bool = True
    label_pass_rate: float = bounded(0.8, gt=0.0, le=1.0)
    # gate check 2, memorisation: reject a candidate closer (judge features) to a real train image of
    # its class than the class's closest pair of distinct real images (the evaluate stage's copy rule)
    check_memorisation: bool = True
    # first: keep the first candidates that pass; diverse: let `pool` times as many pass and keep a
    # spread-out subset (farthest from the class's real images and from each other, in judge features);
    # informative: of `pool` times as many, keep those the judge labels as the class but is least sure of
    selection: Literal["first", "diverse", "informative"] = "informative"
    pool: int = bounded(4, ge=1)
    # a class may draw max_attempts candidates per image it needs before it counts as short
    max_attempts: int = bounded(20, ge=1)
    # a short class (fewer images passed than planned; the gate never lowers its bar): fill keeps what
    # passed, warns, and its real images fill the rest of its sampling mass (merge); fail stops the stage
    on_short: Literal["fill", "fail"] = "fill"
    # hardware of the sampling (Lightning's predict loop), as in train; auto picks the GPU when there is
    # one. The images do not depend on the number of processes; on the CPU they can, in the last bit of
    # a pixel, on the threads per process (PyTorch picks its kernels by thread count; OMP_NUM_THREADS).
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Literal["auto"] | int = bounded(1, ge=1)
    num_nodes: int = bounded(1, ge=1)
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "32-true"  # auto: bf16-mixed on a GPU
    strategy: Literal["auto", "ddp"] = "auto"  # auto: DDP when sampling on more than one device

    def __post_init__(self):
        target = self.target
        if isinstance(target, str) and target != "max":
            raise ConfigError(
                f"params.yaml: generate.target must be max, an integer or a fraction in (0, 1], got {target!r}"
            )
        if isinstance(target, int) and target < 0:
            raise ConfigError(f"params.yaml: generate.target must be >= 0, got {target}")
        if isinstance(target, float) and not 0.0 < target <= 1.0:
            raise ConfigError(f"params.yaml: generate.target as a fraction must be in (0, 1], got {target}")


@dataclass(frozen=True)
class MergeParams:
    synthetic_share: float = bounded(0.1, ge=0.0, le=1.0)  # of a rare class's sampling mass, on its synthetic images
    # imagefolder: one PNG per image (train/<folder>/*.png); shards: WebDataset tar files of `shard_size`
    # images each (shards/train-NNNNNN.tar), a few files for DVC instead of one per image; both
    format: Literal["imagefolder", "shards", "both"] = "imagefolder"
    shard_size: int = bounded(5000, ge=1)


@dataclass(frozen=True)
class VerdictParams:
    # A class's synthetic images get "do not use" when the judge recognises fewer of them than
    # min_relative_label_agreement times its recall of the class's real test images (a judge that knows
    # a rare class from four images misses real ones too), when more than max_memorised_share of them
    # are copies (closer to a training image than the class's closest pair of distinct real images),
    # or when the augmented classifier's recall of the class falls below the best classical arm's by
    # more than max_recall_drop. They get "use" when none of these holds and the recall does not fall
    # at all; "use with care" otherwise.
    min_relative_label_agreement: float = bounded(0.8, ge=0.0, le=1.0)
    max_memorised_share: float = bounded(0.05, ge=0.0, le=1.0)
    max_recall_drop: float = bounded(0.05, ge=0.0, le=1.0)


@dataclass(frozen=True)
class EvaluateParams:
    seeds: int = bounded(5, ge=1)  # paired seeds: every arm is trained once per seed
    # processes training the arms: auto, one per CPU core, or runs_per_gpu per GPU when evaluate.classifier
    # trains on GPUs; results do not depend on it
    workers: Literal["auto"] | int = bounded("auto", ge=1)
    runs_per_gpu: int = bounded(4, ge=1)  # arms trained at once on each GPU (small networks leave a GPU idle alone)
    classifier: ClassifierParams = field(default_factory=ClassifierParams)  # the downstream recipe
    logit_adjustment: float = bounded(1.0, gt=0.0)  # tau of the classical_la arm's logit-adjusted loss
    # tau of a logit adjustment by the real class frequencies for the arms drawn class-balanced (classical,
    # augmented): balanced draws repeat a rare class's few images, so it stays less varied than it looks; 0: off
    balanced_logit_adjustment: float = bounded(0.5, ge=0.0)
    k: int = bounded(5, ge=1)  # neighbours of precision, recall, density and coverage
    kid_subset_size: int = bounded(1000, ge=2)
    kid_subsets: int = bounded(100, ge=1)
    max_images_per_class: int = bounded(2000, ge=2)  # per-class quality metrics on a random subset above this
    verdict: VerdictParams = field(default_factory=VerdictParams)


@dataclass(frozen=True)
class ReportParams:
    images_per_class: int = bounded(8, ge=1)  # real and synthetic images shown per class
    closest_pairs: int = bounded(16, ge=1)  # synthetic images nearest to a training image, shown beside it


@dataclass(frozen=True)
class Params:
    seed: int = bounded(0, ge=0)
    data: DataParams = field(default_factory=DataParams)
    judge: ClassifierParams = field(default_factory=ClassifierParams)  # the judge: the same recipe
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    merge: MergeParams = field(default_factory=MergeParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    report: ReportParams = field(default_factory=ReportParams)


# --- loading and validation ----------------------------------------------------------------------


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found (run from the repository root)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    return params_from_dict(raw or {}, origin=path.name)


def params_from_dict(raw: dict, origin: str = "params.yaml") -> Params:
    return _build(Params, raw, prefix="", origin=origin)


def params_to_dict(obj: Any) -> Any:
    """Plain dict of a params object (for dataset cards and model metadata)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def _build(cls: type, raw: Any, prefix: str, origin: str) -> Any:
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: {where} must be a mapping, got {_show(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if f"{prefix}{key}" in REPLACED_KEYS:
            raise ConfigError(f"{origin}: {prefix}{key} was replaced by {REPLACED_KEYS[prefix + key]}")
        if key not in fields:
            raise ConfigError(f"{origin}: {prefix}{key} is not a known key (known in {where}: {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _convert(hints[name], raw[name], f"{prefix}{name}", origin, f.metadata)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, origin: str, rules: typing.Mapping) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, prefix=key + ".", origin=origin)
    value = _check_type(hint, value, key, origin)
    _check_rules(value, key, origin, rules)
    return value


def _check_type(hint: Any, value: Any, key: str, origin: str) -> Any:
    origin_type = typing.get_origin(hint)
    if origin_type is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(f"{origin}: {key} must be one of {', '.join(map(str, allowed))}, got {_show(value)}")
        return value
    if origin_type in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in (o for o in options if o is not type(None)):
            try:
                return _check_type(option, value, key, origin)
            except ConfigError:
                continue
        names = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
        raise ConfigError(f"{origin}: {key} must be {names}, got {_show(value)}")
    if origin_type is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: {key} must be a list, got {_show(value)}")
        return [_check_type(item, v, f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{origin}: {key} must be a number, got {_show(value)}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: {key} must be an integer, got {_show(value)}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: {key} must be true or false, got {_show(value)}")
        return value
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{origin}: {key} must be a non-empty string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported params type {hint!r} for {key}")  # a bug in this file


def _check_rules(value: Any, key: str, origin: str, rules: typing.Mapping) -> None:
    if value is None or isinstance(value, (str, bool)):
        return
    items = value if isinstance(value, list) else [value]
    for item in items:
        for rule, text, ok in (
            ("ge", ">=", lambda v, b: v >= b),
            ("gt", ">", lambda v, b: v > b),
            ("le", "<=", lambda v, b: v <= b),
            ("lt", "<", lambda v, b: v < b),
        ):
            if rule in rules and not ok(item, rules[rule]):
                raise ConfigError(f"{origin}: {key} must be {text} {rules[rule]}, got {_show(item)}")
        if "choices" in rules and item not in rules["choices"]:
            allowed = ", ".join(map(str, rules["choices"]))
            raise ConfigError(f"{origin}: {key} must be one of {allowed}, got {_show(item)}")


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return " or ".join(map(str, typing.get_args(hint)))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)
