"""Typed params, loaded from params.yaml and validated in one place.

Every section of params.yaml is a dataclass below. Each field may carry bounds in its metadata
(`ge`, `gt`, `le`, `lt`) or a set of allowed values (`choices`). Loading fails with one line that
names the key (`params.yaml: train.max_epochs must be >= 1, got -3`) on an unknown key, a wrong
type or an out-of-range value, so a typo is an error and never a silent default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union  # noqa: F401  (Optional: for stage sections)

import yaml

PARAMS_FILE = Path("params.yaml")


class ConfigError(ValueError):
    """Bad params or bad input: printed as one line, without a traceback, by the CLI."""


def bounded(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules (ge, gt, le, lt, choices) in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=rules)
    return field(default=default, metadata=rules)


# --- one dataclass per section -------------------------------------------------------------------


@dataclass(frozen=True)
class ImbalanceParams:
    # none: keep the data as it is (for data that is imbalanced already).
    # exponential: class k of C keeps ratio**(-k/(C-1)) of the smallest class's train count.
    # step: the second half of the classes (in label order) keeps 1/ratio of it.
    profile: Literal["none", "exponential", "step"] = "exponential"
    ratio: float = bounded(100.0, ge=1.0)


@dataclass(frozen=True)
class DataParams:
    # mnist5k | digits | a path to an ImageFolder, a pre-split folder, or a CSV manifest (path,label)
    source: str = "mnist5k"
    image_size: int = bounded(32, ge=8, le=1024)
    channels: Literal["auto", "grayscale", "rgb"] = "auto"
    imbalance: ImbalanceParams = field(default_factory=ImbalanceParams)
    val_fraction: float = bounded(0.1, ge=0.0, lt=1.0)
    test_fraction: float = bounded(0.2, gt=0.0, lt=1.0)
    strict: bool = False
    max_image_pixels: int = bounded(50_000_000, ge=1)


@dataclass(frozen=True)
class JudgeParams:
    max_epochs: int = bounded(8, ge=1)
    batch_size: int = bounded(128, ge=1)
    lr: float = bounded(2e-3, gt=0.0)
    width: int = bounded(32, ge=4)


@dataclass(frozen=True)
class TrainParams:
    max_epochs: int = bounded(60, ge=1)
    batch_size: int = bounded(64, ge=1)


@dataclass(frozen=True)
class GenerateParams:
    # "max" | an integer count | a fraction (0, 1] of the largest class
    target: Union[str, int, float] = "max"
    batch_size: int = bounded(500, ge=1)


@dataclass(frozen=True)
class MergeParams:
    synthetic_share: float = bounded(0.5, ge=0.0, le=1.0)


@dataclass(frozen=True)
class ReportParams:
    seeds: int = bounded(3, ge=1)


@dataclass(frozen=True)
class Params:
    seed: int = bounded(0, ge=0)
    data: DataParams = field(default_factory=DataParams)
    judge: JudgeParams = field(default_factory=JudgeParams)
    train: TrainParams = field(default_factory=TrainParams)
    generate: GenerateParams = field(default_factory=GenerateParams)
    merge: MergeParams = field(default_factory=MergeParams)
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
        if key not in fields:
            raise ConfigError(
                f"{origin}: {prefix}{key} is not a known key (known in {where}: {', '.join(fields)})"
            )
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
            raise ConfigError(
                f"{origin}: {key} must be one of {', '.join(map(str, allowed))}, got {_show(value)}"
            )
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
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)

