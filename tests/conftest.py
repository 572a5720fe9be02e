"""Shared fixtures: tiny real datasets and a way to run stages in a scratch workspace.

Stages read and write paths relative to the working directory (data/prepared, models/gan, ...), so a
test runs them in a temporary folder of its own with its own params.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from pipeline.config import Params, params_from_dict  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]

# A tiny but real config: sklearn's 8x8 digits fitted to 16x16, long-tailed train split.
TINY_PARAMS = {
    "seed": 0,
    "data": {
        "source": "digits",
        "image_size": 16,
        "imbalance": {"profile": "exponential", "ratio": 10},
        "val_fraction": 0.1,
        "test_fraction": 0.2,
    },
}


def merge_dicts(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge_dicts(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return merged


def tiny_params(**overrides) -> Params:
    """Validated Params of the tiny config with nested overrides, e.g. tiny_params(train={"max_epochs": 1})."""
    return params_from_dict(merge_dicts(TINY_PARAMS, overrides))


def write_params(folder: Path, raw: dict) -> Path:
    import yaml

    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python -m pipeline <args>` in `cwd`, as DVC would call it; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
    )


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """A workspace in which `prepare` ran once on the tiny config (read-only for tests: copy it)."""
    from pipeline import prepare

    root = tmp_path_factory.mktemp("prepared_tiny")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        prepare.run(tiny_params())
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def workspace(tmp_path, monkeypatch, prepared_tiny) -> Path:
    """A fresh scratch folder holding a copy of the tiny prepared data, set as the working directory."""
    shutil.copytree(prepared_tiny / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    return tmp_path
