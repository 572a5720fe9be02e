"""The judge stage: a classifier of the real data trained by the shared recipe (pipeline/classifier_training.py),
class-balanced, early-stopped on val and never trained on it; nets.load_judge rebuilds it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dvc.fs import LocalFileSystem
from dvc.repo.plots import parse as dvc_parse_plot

from conftest import TINY_CLASSIFIER, TINY_PARAMS, run_cli, tiny_params, write_params
from pipeline.config import params_to_dict
from pipeline.contracts import GeneratorDetails, JudgeDetails, ModelMeta, PreparedStats
from pipeline.errors import InputError
from pipeline.io import read_json
from pipeline.manifests import load_split
from pipeline.metrics import balanced_accuracy
from pipeline.nets import load_judge, predict, weights_hash
from pipeline.paths import Paths
from pipeline.stages import judge

# Scored every 10 updates, it stops after about 120 of the 200 on the tiny data.
EARLY_STOPPING = {"eval_every": 10, "patience": 2, "max_steps": 200}
# One val scoring: neither when training stops nor which weights are kept can depend on val.
ONE_SCORING = {"eval_every": 20, "max_steps": 20}
# DVCLive's Lightning logger files `val_balanced_accuracy` as val/balanced_accuracy.
VAL_SCORES = "plots/metrics/val/balanced_accuracy.tsv"


def judged(prepared_tiny: Path, folder: Path, seed: int = 0, damage=None, **recipe) -> Paths:
    """The judge stage run in `folder` on a copy of the tiny prepared data (after `damage`, if any)."""
    shutil.copytree(prepared_tiny / "data", folder / "data")
    paths = Paths(folder)
    if damage:
        damage(paths)
    judge.run(tiny_params(seed=seed, judge=recipe), paths)
    return paths


def details(paths: Paths) -> JudgeDetails:
    return ModelMeta.read(paths.judge / "judge.json", JudgeDetails).details


def val_scores(paths: Paths) -> pd.DataFrame:
    return pd.read_csv(paths.judge_report / VAL_SCORES, sep="\t")


@pytest.fixture(scope="module")
def early_stopped(prepared_tiny, tmp_path_factory) -> Paths:
    return judged(prepared_tiny, tmp_path_factory.mktemp("judge"), **EARLY_STOPPING)


@pytest.fixture(scope="module")
def one_scoring(prepared_tiny, tmp_path_factory) -> Paths:
    return judged(prepared_tiny, tmp_path_factory.mktemp("judge_one_scoring"), **ONE_SCORING)


def test_stage_writes_the_judge_that_load_judge_rebuilds(early_stopped):
    paths = early_stopped
    stats = PreparedStats.read(paths.prepared)
    model, meta = load_judge(paths.judge)
    assert (meta.image_size, meta.channels, meta.class_names) == (stats.image_size, stats.channels, stats.class_names)
    assert meta.width == TINY_CLASSIFIER["width"] and meta.z_dim is None
    assert meta.details.params == {"seed": 0, "judge": params_to_dict(tiny_params(judge=EARLY_STOPPING).judge)}
    assert meta.details.source_fingerprint == stats.source_fingerprint

    # the rebuilt model is the trained one: its val predictions give the recorded scores
    val_images, val_labels = load_split(paths.prepared, stats, "val")
    probabilities, features = predict(model, val_images)
    predicted, truth = probabilities.argmax(dim=1).numpy(), val_labels.numpy()
    assert round(balanced_accuracy(truth, predicted), 6) == meta.details.val_balanced_accuracy
    assert meta.details.val_recall_per_class["0"] == round(float(np.mean(predicted[truth == 0] == 0)), 6)
    assert meta.details.val_balanced_accuracy > 0.6  # 10 classes: chance is 0.1
    assert features.shape == (len(val_images), 4 * TINY_CLASSIFIER["width"])  # small_cnn: its pooled last stage


def test_the_record_is_typed_and_writes_the_file_it_was_read_from(early_stopped, tmp_path):
    path = early_stopped.judge / "judge.json"
    meta = ModelMeta.read(path, JudgeDetails)
    assert isinstance(meta.details, JudgeDetails) and meta.details.arch == "small_cnn"
    meta.write(tmp_path / "judge.json")
    assert (tmp_path / "judge.json").read_bytes() == path.read_bytes()
    # without val images the scores are left out of the file, and read back as None
    no_val = dataclasses.replace(
        meta, details=dataclasses.replace(meta.details, val_balanced_accuracy=None, val_recall_per_class=None)
    )
    no_val.write(tmp_path / "no_val.json")
    assert not {"val_balanced_accuracy", "val_recall_per_class"} & set(read_json(tmp_path / "no_val.json")["details"])
    assert ModelMeta.read(tmp_path / "no_val.json", JudgeDetails) == no_val
    with pytest.raises(InputError, match=r"no_val\.json: written by another version of the stage"):
        ModelMeta.read(tmp_path / "no_val.json", GeneratorDetails)


def test_judge_report_is_dvclive_metrics_and_plain_tsv_plots(early_stopped):
    report = early_stopped.judge_report
    tsvs = sorted((report / "plots/metrics").rglob("*.tsv"))
    assert report / VAL_SCORES in tsvs
    for tsv in tsvs:
        rows = dvc_parse_plot(LocalFileSystem(), str(tsv))["data"]  # DVC's own reader of `dvc plots show`
        assert list(rows[0]) == ["step", tsv.stem]
        steps = [int(row["step"]) for row in rows]
        if tsv.stem != "epoch":  # Lightning adds `epoch` to both the training and the val log: each step twice
            assert steps == sorted(set(steps))
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["val"]["balanced_accuracy"] == pytest.approx(val_scores(early_stopped)["balanced_accuracy"].iloc[-1])


def test_judge_stops_early_and_keeps_its_best_weights_on_val(early_stopped):
    scores = val_scores(early_stopped)["balanced_accuracy"]
    steps, patience = details(early_stopped).steps, EARLY_STOPPING["patience"]
    assert steps < EARLY_STOPPING["max_steps"]
    assert len(scores) == steps // EARLY_STOPPING["eval_every"]  # one scoring every eval_every updates
    assert scores.iloc[-patience:].max() <= scores.iloc[:-patience].max()  # the last `patience` did not improve
    assert scores.iloc[-1] < scores.max()  # so "best" and "last" differ here, and the judge is the best
    assert details(early_stopped).val_balanced_accuracy == pytest.approx(scores.max(), abs=1e-6)


def test_judge_is_trained_class_balanced_and_recognises_the_rarest_class(early_stopped):
    counts = PreparedStats.read(early_stopped.prepared).split_counts("train")
    rarest = str(int(np.argmin(counts)))  # class 9: 12 train images against 122 of class 0
    # chance is 0.1; the same recipe drawing classes at their natural frequencies scores 0 here
    assert details(early_stopped).val_recall_per_class[rarest] >= 0.5


def test_same_seed_gives_the_same_judge_and_another_seed_another(one_scoring, prepared_tiny, tmp_path):
    again = judged(prepared_tiny, tmp_path / "again", **ONE_SCORING)
    other_seed = judged(prepared_tiny, tmp_path / "other_seed", seed=1, **ONE_SCORING)
    first = weights_hash(load_judge(one_scoring.judge)[0])
    assert weights_hash(load_judge(again.judge)[0]) == first
    assert weights_hash(load_judge(other_seed.judge)[0]) != first


def _val_and_test_swapped(paths: Paths):
    manifest = pd.read_csv(paths.prepared / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["split"] = manifest["split"].replace({"val": "test", "test": "val"})
    manifest.to_csv(paths.prepared / "manifest.csv", index=False, lineterminator="\n")


def test_judge_never_trains_on_val(one_scoring, prepared_tiny, tmp_path):
    # With one scoring, val can only be scored, so a judge that learns from train alone has the same
    # weights whatever val holds; one trained on val (or with val updating its BatchNorm) would not.
    other_val = judged(prepared_tiny, tmp_path, damage=_val_and_test_swapped, **ONE_SCORING)
    assert details(other_val).val_balanced_accuracy != details(one_scoring).val_balanced_accuracy  # val read
    assert weights_hash(load_judge(other_val.judge)[0]) == weights_hash(load_judge(one_scoring.judge)[0])


def test_judge_cli_without_prepared_data_fails_with_one_line(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    result = run_cli("judge", cwd=tmp_path)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "data/prepared/stats.json: not found" in last_line
    assert "Traceback" not in result.stderr
