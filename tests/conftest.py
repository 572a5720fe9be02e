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


def copy_outputs(source: Path, dest: Path, folders=("data", "models")) -> Path:
    """Copy the stage outputs under `source` (those of `folders` that exist) into `dest`."""
    for folder in folders:
        if (source / folder).exists():
            shutil.copytree(source / folder, dest / folder)
    return dest


@pytest.fixture
def workspace(tmp_path, monkeypatch, prepared_tiny) -> Path:
    """A fresh scratch folder holding a copy of the tiny prepared data, set as the working directory."""
    copy_outputs(prepared_tiny, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def dvc(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """The `dvc` CLI of this environment, with the venv's `python` first on PATH (dvc.yaml calls `python`)."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def make_repo_copy(dest: Path, params_raw: dict) -> Path:
    """A git + DVC repository in `dest` holding this project's files (as in the working tree) and the
    given params.yaml, committed, as a user's fresh clone would be."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for rel in filter(None, listed):
        if rel.startswith(("data/", "models/", "reports/")) or rel == "dvc.lock" or not (REPO_ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest / rel)
    write_params(dest, params_raw)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest
