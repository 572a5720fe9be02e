"""Shared fixtures: tiny real datasets and a way to run stages in a scratch workspace.

Stages read and write below a root (`Paths(root)`: data/prepared, models/gan, ...), so a test runs
them in a temporary folder of its own with its own params.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import Params, params_from_dict
from pipeline.paths import Paths

REPO_ROOT = Path(__file__).resolve().parents[1]

# `make test` runs the tests in one pytest-xdist worker per core. PyTorch gives each process a thread per
# core, so each worker, and each stage it starts in a subprocess, takes only its share of the cores.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    import torch

    _threads = str(max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS))
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = _threads
    torch.set_num_threads(int(_threads))

DIGITS = str(REPO_ROOT / "data/builtin/digits.yaml")

# Small networks for the GAN tests: a stage run takes a few seconds on two CPU cores.
FAST_GAN = {
    "batch_size": 32,
    "z_dim": 16,
    "g_width": 8,
    "d_width": 8,
    "sample_every_n_epochs": 1,
    "samples_per_class": 4,
}

# A tiny but real config: sklearn's 8x8 digits fitted to 16x16, long-tailed train split, and
# classifiers that stop after a few dozen updates.
TINY_CLASSIFIER = {"width": 4, "eval_every": 10, "patience": 1, "max_steps": 30}
TINY_PARAMS = {
    "seed": 0,
    "data": {
        "source": DIGITS,
        "image_size": 16,
        "imbalance": {"profile": "auto", "ratio": 10},
        "val_fraction": 0.1,
        "test_fraction": 0.2,
    },
    "judge": TINY_CLASSIFIER,
    "generate": {"selection": "first"},  # the tests of selection itself set it; the others test the rest
    "evaluate": {"seeds": 2, "workers": 1, "classifier": TINY_CLASSIFIER, "kid_subsets": 2},
}


def merge_dicts(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = (
            merge_dicts(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        )
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
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


@pytest.fixture(scope="session")
def prepared_tiny(tmp_path_factory) -> Path:
    """A workspace in which `prepare` ran once on the tiny config (read-only for tests: copy it)."""
    from pipeline.stages import prepare

    root = tmp_path_factory.mktemp("prepared_tiny")
    prepare.run(tiny_params(), Paths(root))
    return root


def copy_outputs(source: Path, dest: Path, folders=("data", "models")) -> Path:
    """Copy the stage outputs under `source` (those of `folders` that exist) into `dest`."""
    for folder in folders:
        if (source / folder).exists():
            shutil.copytree(source / folder, dest / folder)
    return dest


@pytest.fixture
def workspace(tmp_path, prepared_tiny) -> Paths:
    """The paths of a fresh scratch folder holding a copy of the tiny prepared data."""
    copy_outputs(prepared_tiny, tmp_path)
    return Paths(tmp_path)


def dvc(*args: str, cwd: Path, timeout: float = 900, columns: int | None = None) -> subprocess.CompletedProcess:
    """The `dvc` CLI of this environment, with the venv's `python` first on PATH (dvc.yaml calls `python`);
    `columns`: the terminal width its tables are drawn for."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if columns is not None:
        env["COLUMNS"] = str(columns)
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def make_repo_copy(dest: Path, params_raw: dict) -> Path:
    """A git + DVC repository in `dest` holding this project's files (as in the working tree) and the
    given params.yaml, committed, as a user's fresh clone would be."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    for rel in filter(None, listed):
        if rel.startswith(("models/", "reports/")) or rel == "dvc.lock" or not (REPO_ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / rel, dest / rel)
    write_params(dest, params_raw)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "copy"], cwd=dest, check=True)
    return dest


# --- evaluate's inputs, with synthetic images of known quality ------------------------------------

COPIED_CLASS, WRONG_CLASS = "5", "7"  # synthetic images: copies of its train images / images of class 0


def write_synthetic(paths: Paths, images_by_label: dict) -> None:
    """data/synthetic as generate writes it (accepted images, one rejected candidate, summary.json),
    from images chosen by hand."""
    import pandas as pd

    from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, PreparedStats, SyntheticSummary
    from pipeline.io import encode_png_tensor, sha256_bytes, write_manifest

    stats = PreparedStats.read(paths.prepared)
    rows = []
    for label, images in images_by_label.items():
        folder, name = stats.classes[label].folder, stats.classes[label].class_name
        (paths.synthetic / folder).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            png = encode_png_tensor(image)
            (paths.synthetic / folder / f"{i:05d}.png").write_bytes(png)
            rows.append(
                {
                    "path": f"{folder}/{i:05d}.png",
                    "label": label,
                    "class_name": name,
                    "split": "train",
                    "origin": "synthetic",
                    "source": "hand-made",
                    "seed": i,
                    "sha256": sha256_bytes(png),
                    "accepted": True,
                    "reject_reason": "",
                    "judge_confidence": 1.0,
                    "judge_prediction": label,
                    "nn_distance": 1.0,
                    "nearest_real": "",
                }
            )
    rows.append({**rows[0], "path": "", "sha256": "", "accepted": False, "reject_reason": "low_confidence"})
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS + GATE_COLUMNS), paths.synthetic / "manifest.csv")
    SyntheticSummary(
        "hand-made",
        "hand-made",
        stats.image_size,
        stats.channels,
        stats.class_names,
        generated=len(rows) - 1,
        candidates=len(rows),
        short=0,
        label_thresholds={},
        copy_thresholds={},
        planned={name: len(images_by_label.get(label, [])) for label, name in enumerate(stats.class_names)},
        short_classes={},
        environment={},
        params={"generate": {}},
    ).write(paths.synthetic)


@pytest.fixture(scope="session")
def evaluate_inputs(prepared_tiny, tmp_path_factory) -> Path:
    """data/prepared, data/holdout, models/judge, data/synthetic and data/augmented of the tiny data
    (read-only for tests: copy it). Synthetic images: exact copies of the train images of COPIED_CLASS,
    images of class 0 labelled WRONG_CLASS, and for the other rare classes genuinely new real images
    (held-out val images and their one-pixel shifts). Class 0, the largest, gets none."""
    import torch

    from pipeline.contracts import PreparedStats
    from pipeline.manifests import load_split
    from pipeline.stages import judge, merge

    paths = Paths(copy_outputs(prepared_tiny, tmp_path_factory.mktemp("evaluate_inputs")))
    judge.run(tiny_params(), paths)
    stats = PreparedStats.read(paths.prepared)
    train_images, train_labels = load_split(paths.prepared, stats, "train")
    val_images, val_labels = load_split(paths.prepared, stats, "val")
    synthetic = {}
    for label, name in enumerate(stats.class_names[1:], start=1):
        if name == COPIED_CLASS:
            synthetic[label] = train_images[train_labels == label].repeat(2, 1, 1, 1)
        elif name == WRONG_CLASS:
            synthetic[label] = val_images[val_labels == 0]
        else:
            new_images = val_images[val_labels == label]
            synthetic[label] = torch.cat([new_images, torch.roll(new_images, shifts=1, dims=-1)])
    write_synthetic(paths, synthetic)
    merge.run(tiny_params(), paths)
    return paths.root


@pytest.fixture(scope="session")
def evaluated_without_synthetic(prepared_tiny, tmp_path_factory) -> tuple[Path, str]:
    """generate (untrained models, generate.target 0: nothing to generate), merge and evaluate on the
    tiny data: (the folder, what generate, merge and evaluate printed)."""
    import contextlib
    import io

    from pipeline.stages import evaluate, generate, merge
    from test_generate import save_untrained_models

    paths = Paths(copy_outputs(prepared_tiny, tmp_path_factory.mktemp("evaluated_without_synthetic")))
    save_untrained_models(paths)
    params = tiny_params(generate={"target": 0})
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for stage in (generate, merge, evaluate):
            stage.run(params, paths)
    return paths.root, printed.getvalue()


@pytest.fixture(scope="session")
def evaluated(evaluate_inputs, tmp_path_factory) -> tuple[Path, str]:
    """The evaluate stage run once on `evaluate_inputs`: (its folder, what it printed)."""
    import contextlib
    import io

    from pipeline.stages import evaluate

    paths = Paths(copy_outputs(evaluate_inputs, tmp_path_factory.mktemp("evaluated")))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        evaluate.run(tiny_params(), paths)
    return paths.root, printed.getvalue()
