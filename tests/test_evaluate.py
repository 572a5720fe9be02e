"""The evaluate stage on the tiny data with synthetic images of known quality (see conftest's
`evaluate_inputs`): the paired protocol, the arms and the oracle's isolation, the gain and its
interval, per-class quality and verdicts, the headline (metrics.json, for DVC) and the detail (detail.json
and the tables), and bad input."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.io
import pipeline.judge_features as judge_features_module
from conftest import (
    COPIED_CLASS,
    REPO_ROOT,
    TINY_PARAMS,
    WRONG_CLASS,
    copy_outputs,
    merge_dicts,
    tiny_params,
    write_params,
)
from pipeline.arms import ArmInputs, arm_training_sets, best_classical, gain, read_arm_inputs, run_arms
from pipeline.classifier_training import AugmentedBatches, TrainingSet, train_classifier
from pipeline.config import ClassifierParams, VerdictParams
from pipeline.contracts import (
    ARMS,
    GATE_COLUMNS,
    HEADLINE_KEYS,
    MANIFEST_COLUMNS,
    JudgeDetails,
    ModelMeta,
    PreparedStats,
)
from pipeline.dataset import encoded, load_augmented
from pipeline.errors import InputError
from pipeline.image_rows import decode_split
from pipeline.io import read_manifest, read_png, write_manifest
from pipeline.judge_features import judge_features
from pipeline.manifests import load_split
from pipeline.nets import load_judge, predict
from pipeline.paths import Paths
from pipeline.quality import add_verdicts
from pipeline.stages import evaluate


@pytest.fixture
def inputs_copy(evaluate_inputs, tmp_path) -> Paths:
    return Paths(copy_outputs(evaluate_inputs, tmp_path))


def image_hashes(images: np.ndarray) -> set[str]:
    return {hashlib.sha256(image.tobytes()).hexdigest() for image in images}


def arm_inputs(paths: Paths, scratch: Path) -> ArmInputs:
    return read_arm_inputs(paths, PreparedStats.read(paths.prepared), scratch)


def drawn_images(data: TrainingSet) -> np.ndarray:
    """The images a training set draws from, N x H x W x C (its rows of its file)."""
    return data.images[data.rows]


# --- the protocol --------------------------------------------------------------------------------


def test_the_same_seed_gives_every_arm_the_same_initial_weights_and_augmentation_stream(prepared_tiny):
    paths = Paths(prepared_tiny)
    stats = PreparedStats.read(paths.prepared)
    images, labels = load_split(paths.prepared, stats, "train")
    frozen = ClassifierParams(width=4, lr=0.0, weight_decay=0.0, eval_every=2, max_steps=2)  # lr 0: the initial weights
    k, no_val = stats.num_classes, (images[:0], labels[:0])
    everything, class_0 = TrainingSet(images, labels, k), TrainingSet(images[labels == 0], labels[labels == 0], k)
    one, _ = train_classifier(everything, no_val, frozen, seed=3)
    other, _ = train_classifier(class_0, no_val, frozen, seed=3)
    third, _ = train_classifier(everything, no_val, frozen, seed=4)
    assert torch.equal(one.body[0].weight, other.body[0].weight)
    assert not torch.equal(one.body[0].weight, third.body[0].weight)

    # the k-th drawn group is augmented with the k-th parameters of the seed's stream, whatever the data
    n = len(images)
    drawn, drawn_labels = AugmentedBatches(images, labels, seed=3, group=2, seed_each_batch=False)(batch(0, 0, 1, 2, 3))
    again, _ = AugmentedBatches(images.flip(0), labels.flip(0), 3, 2, False)(batch(0, n - 1, n - 2, n - 3, n - 4))
    assert torch.equal(drawn, again) and torch.equal(drawn_labels, labels[:4])
    assert drawn.shape == images[:4].shape and not torch.equal(drawn[0], images[0])  # it is augmented

    # the images of a group share one random affine, and the next group draws another
    same_image, _ = AugmentedBatches(images, labels, seed=5, group=2, seed_each_batch=False)(batch(0, 0, 0, 0, 0))
    assert torch.equal(same_image[0], same_image[1]) and not torch.equal(same_image[1], same_image[2])


def batch(number: int, *indices: int) -> list[tuple[int, int]]:
    """A numbered batch of drawn indices, as the loader hands it to AugmentedBatches."""
    return [(number, index) for index in indices]


def test_loader_processes_augment_each_batch_by_its_number_so_their_count_changes_nothing(prepared_tiny):
    paths = Paths(prepared_tiny)
    stats = PreparedStats.read(paths.prepared)
    images, labels = load_split(paths.prepared, stats, "train")

    # a batch seeded by its number is the same whichever process's copy augments it, and after whatever batches
    in_order = AugmentedBatches(images, labels, seed=3, group=2, seed_each_batch=True)
    in_order(batch(0, 0, 1, 2, 3))
    second, _ = in_order(batch(1, 4, 5, 6, 7))
    alone, _ = AugmentedBatches(images, labels, seed=3, group=2, seed_each_batch=True)(batch(1, 4, 5, 6, 7))
    assert torch.equal(second, alone)
    # whereas the in-process stream depends on the batches before (why loader processes seed each batch)
    streamed = AugmentedBatches(images, labels, seed=3, group=2, seed_each_batch=False)
    first_in_stream, _ = streamed(batch(0, 4, 5, 6, 7))
    assert not torch.equal(first_in_stream, alone)

    # a whole training with one or two loader processes: the same network, unlike training in-process
    recipe = ClassifierParams(width=4, eval_every=5, max_steps=10)
    data, val = TrainingSet(images, labels, stats.num_classes), load_split(paths.prepared, stats, "val")
    nets = [train_classifier(data, val, recipe, seed=1, loader_workers=w)[0] for w in (1, 2, 0)]
    assert torch.equal(nets[0].head[-1].weight, nets[1].head[-1].weight)
    assert not torch.equal(nets[0].head[-1].weight, nets[2].head[-1].weight)


def test_fine_tuning_starts_from_the_given_weights_instead_of_the_seeds(prepared_tiny):
    paths = Paths(prepared_tiny)
    stats = PreparedStats.read(paths.prepared)
    images, labels = load_split(paths.prepared, stats, "train")
    frozen = ClassifierParams(width=4, lr=0.0, weight_decay=0.0, eval_every=2, max_steps=2)  # lr 0: the initial weights
    no_val = images[:0], labels[:0]
    data = TrainingSet(images, labels, stats.num_classes)
    start, _ = train_classifier(data, no_val, frozen, seed=3)
    tuned, _ = train_classifier(data, no_val, frozen, seed=4, initial_weights=start.state_dict())
    fresh, _ = train_classifier(data, no_val, frozen, seed=4)
    assert torch.equal(tuned.body[0].weight, start.body[0].weight)
    assert torch.equal(tuned.head[-1].weight, start.head[-1].weight)
    assert not torch.equal(tuned.body[0].weight, fresh.body[0].weight)


def test_the_logit_adjustment_is_relative_to_the_given_class_frequencies(prepared_tiny):
    paths = Paths(prepared_tiny)
    stats = PreparedStats.read(paths.prepared)
    images, labels = load_split(paths.prepared, stats, "train")
    recipe, no_val, k = (
        ClassifierParams(width=4, eval_every=20, max_steps=60),
        (images[:0], labels[:0]),
        stats.num_classes,
    )
    frequencies = np.full(k, 0.01 / (k - 1))
    frequencies[0] = 0.99  # class 0 "frequent": the adjusted network must favour the others at prediction time
    plain, _ = train_classifier(TrainingSet(images, labels, k), no_val, recipe, seed=0)
    adjusted, _ = train_classifier(
        TrainingSet(images, labels, k, logit_adjustment=1.0, class_frequencies=frequencies), no_val, recipe, seed=0
    )

    def share_of_class_0(model) -> float:
        return float((predict(model, images)[0].argmax(dim=1) == 0).float().mean())

    assert share_of_class_0(plain) > 0.5 * float((labels == 0).float().mean())
    assert share_of_class_0(adjusted) < 0.5 * share_of_class_0(plain)


def test_early_stopping_keeps_the_best_on_val_weights(prepared_tiny):
    paths = Paths(prepared_tiny)
    stats = PreparedStats.read(paths.prepared)
    train, val = load_split(paths.prepared, stats, "train"), load_split(paths.prepared, stats, "val")
    recipe = ClassifierParams(width=4, eval_every=10, patience=2, max_steps=400)
    model, history = train_classifier(TrainingSet(*train, stats.num_classes), val, recipe, seed=0)
    assert history["steps"] < 400  # it stopped early
    from pipeline.metrics import balanced_accuracy

    predicted = predict(model, val[0])[0].argmax(dim=1).numpy()
    assert balanced_accuracy(val[1].numpy(), predicted) == pytest.approx(history["best_val_balanced_accuracy"])


def test_arms_differ_only_in_data_and_the_oracle_alone_sees_the_holdout(evaluate_inputs, tmp_path):
    inputs = arm_inputs(Paths(evaluate_inputs), tmp_path)
    arms = arm_training_sets(inputs, logit_adjustment=1.0, balanced_logit_adjustment=0.5, seed=0)
    assert set(arms) == set(ARMS)
    merged, stats = len(inputs.merged_labels), PreparedStats.read(Paths(evaluate_inputs).prepared)
    holdout_images, _ = load_split(Paths(evaluate_inputs).holdout, stats, "holdout")
    holdout = image_hashes(holdout_images.permute(0, 2, 3, 1).numpy())
    assert holdout == image_hashes(inputs.images[merged + np.arange(len(inputs.holdout_labels))])
    assert holdout and all(
        not holdout & image_hashes(drawn_images(data)) for arm, data in arms.items() if arm != "oracle"
    )
    assert holdout <= image_hashes(drawn_images(arms["oracle"]))

    # every arm draws rows of the one file: the oversampled classical arm repeats row numbers, not images
    assert all(data.images is inputs.images and len(data.rows) == len(data.labels) for data in arms.values())
    real = ~inputs.merged_synthetic
    assert np.array_equal(drawn_images(arms["real"]), inputs.images[np.flatnonzero(real)])
    assert arms["real"].weights is None
    counts = torch.bincount(arms["classical"].labels)
    assert counts.min() == counts.max()  # oversampled to balance
    assert len(arms["classical"].rows) > real.sum() and set(arms["classical"].rows) == set(np.flatnonzero(real))
    assert torch.equal(arms["classical"].labels, inputs.merged_labels[arms["classical"].rows])
    assert arms["classical_la"].logit_adjustment == 1.0 and arms["classical_la"].weights is None
    assert np.array_equal(arms["augmented"].weights, inputs.merged_weights)
    assert image_hashes(drawn_images(arms["synthetic_only"])) == image_hashes(inputs.images[np.flatnonzero(~real)])
    # the two class-balanced arms are adjusted by the real class frequencies, the others not at all
    real_frequencies = np.bincount(inputs.merged_labels[real].numpy(), minlength=inputs.num_classes) / real.sum()
    for arm in ("classical", "augmented"):
        assert arms[arm].logit_adjustment == 0.5 and np.allclose(arms[arm].class_frequencies, real_frequencies)
    assert all(arms[arm].logit_adjustment == 0 for arm in ("real", "synthetic_only", "oracle"))


def test_the_arms_read_the_same_images_from_shards_as_from_the_imagefolder(evaluate_inputs, tmp_path):
    from pipeline.stages import merge

    shards = Paths(copy_outputs(evaluate_inputs, tmp_path))
    merge.run(tiny_params(merge={"format": "shards"}), shards)
    assert not (shards.augmented / "train").exists()
    (tmp_path / "files").mkdir(), (tmp_path / "shards").mkdir()
    from_files, from_shards = (
        arm_inputs(Paths(evaluate_inputs), tmp_path / "files"),
        arm_inputs(shards, tmp_path / "shards"),
    )
    order = np.lexsort((from_files.merged_synthetic, from_files.merged_labels.numpy()))
    merged = np.arange(len(from_files.merged_labels))
    assert image_hashes(from_files.images[merged]) == image_hashes(from_shards.images[merged])
    assert sorted(from_files.merged_weights) == pytest.approx(sorted(from_shards.merged_weights))
    assert len(order) == len(from_shards.merged_labels)


def test_a_short_class_keeps_its_verdict_and_its_reason_says_how_short():
    quality = pd.DataFrame(
        {
            "class_name": ["full", "short", "none passed", "balanced"],
            "planned": [40, 80, 80, 0],
            "synthetic": [40, 19, 0, 0],
            "label_agreement": [0.9, 0.9, np.nan, np.nan],
            "judge_real_recall": 0.9,
            "memorised_share": [0.0, 0.0, np.nan, np.nan],
        }
    )
    verdicts = add_verdicts(quality, np.array([0.01, 0.01, 0.0, 0.0]), VerdictParams()).set_index("class_name")
    assert verdicts["verdict"].tolist() == ["use", "use", "no synthetic images", "no synthetic images"]
    assert "short" not in verdicts.loc["full", "reason"]
    assert verdicts.loc["short", "reason"].endswith("; short: 19 of 80 passed the gate, its real images fill the rest")
    assert verdicts.loc["none passed", "reason"] == (
        "none of 80 planned images passed the gate; its real images fill the class"
    )
    assert verdicts.loc["balanced", "reason"] == "the class is at or above the target"


def test_best_classical_is_chosen_on_val_and_the_gain_is_paired_by_seed():
    runs = pd.DataFrame(
        [
            {"arm": arm, "seed": seed, "val_balanced_accuracy": val, "balanced_accuracy": test, "tail_recall": tail}
            for arm, seed, val, test, tail in [
                ("classical", 0, 0.80, 0.90, 0.5),
                ("classical", 1, 0.81, 0.80, 0.4),
                ("classical_la", 0, 0.85, 0.70, 0.6),
                ("classical_la", 1, 0.86, 0.72, 0.6),  # better on val, worse on test
                ("augmented", 0, 0.84, 0.75, 0.7),
                ("augmented", 1, 0.84, 0.76, 0.8),
                ("oracle", 0, 0.95, 0.95, 0.9),
                ("oracle", 1, 0.95, 0.95, 0.9),
            ]
        ]
    )
    assert best_classical(runs) == "classical_la"  # never chosen on test
    result = gain(runs, "classical_la")
    assert result["balanced_accuracy"] == pytest.approx(0.045) and result["tail_recall"] == pytest.approx(0.15)
    assert result["ci95_low"] < 0.045 < result["ci95_high"]
    assert result["gap_closed"] == pytest.approx(0.045 / (0.95 - 0.71))


def test_results_do_not_depend_on_the_number_of_worker_processes(evaluate_inputs, tmp_path, capsys):
    paths = Paths(evaluate_inputs)
    stats = PreparedStats.read(paths.prepared)
    val, test = (decode_split(paths.prepared, stats, split, tmp_path) for split in ("val", "test"))
    cfg = tiny_params(evaluate={"seeds": 1, "workers": 1}).evaluate
    inputs = arm_inputs(paths, tmp_path)
    # the worker processes get the files' paths, not their images
    image_bytes = (len(inputs.images) + len(val[0]) + len(test[0])) * inputs.images.row_bytes
    assert len(pickle.dumps((inputs, val, test))) < image_bytes / 4
    alone = run_arms(inputs, val, test, [9], cfg, 0).drop(columns="seconds")
    capsys.readouterr()
    in_two = run_arms(inputs, val, test, [9], tiny_params(evaluate={"seeds": 1, "workers": 2}).evaluate, 0)
    pd.testing.assert_frame_equal(alone, in_two.drop(columns="seconds"))  # and the rows in the order of the runs

    # each run is reported on stderr as it finished (progress.finishing_order), counted, with the time left
    printed = capsys.readouterr()
    lines = printed.err.splitlines()
    assert printed.out == "" and len(lines) == len(alone)
    for done, line in enumerate(lines, start=1):
        assert re.match(rf"evaluate: {done} of {len(alone)} runs: \w+ seed 0, test balanced accuracy [\d.]+, ", line)
    assert lines[-1].endswith("about 0 s left")


# --- the stage -----------------------------------------------------------------------------------


def test_metrics_json_is_the_headline_and_the_detail_is_in_detail_json_and_the_tables(evaluated):
    root, _ = evaluated
    metrics = json.loads((root / "reports/metrics.json").read_text())
    # the tiny source was thinned, so the oracle exists; the keys in reading order, the gain first
    assert list(metrics) == [*HEADLINE_KEYS[:7], "gap_closed", *HEADLINE_KEYS[7:]]
    assert metrics["classifier"] == "small_cnn (width 4)"  # the network the verdict holds for
    assert metrics["baseline"] in ("classical", "classical_la")
    arms = pd.read_csv(root / "reports/tables/utility.csv").set_index("arm")
    assert set(arms.index) == set(ARMS)
    for score in ("balanced_accuracy", "tail_recall", "accuracy", "macro_f1", "val_balanced_accuracy"):
        assert arms[[f"{score}_mean", f"{score}_std"]].notna().all().all()  # every arm's scores, with their std
    assert metrics["baseline_score"] == pytest.approx(arms.loc[metrics["baseline"], "balanced_accuracy_mean"])
    assert metrics["augmented_score"] == pytest.approx(arms.loc["augmented", "balanced_accuracy_mean"])
    assert metrics["gain"] == pytest.approx(metrics["augmented_score"] - metrics["baseline_score"], abs=1e-5)
    assert metrics["gain_low"] <= metrics["gain"] <= metrics["gain_high"]
    oracle_gain = arms.loc["oracle", "balanced_accuracy_mean"] - metrics["baseline_score"]
    assert metrics["gap_closed"] == pytest.approx(metrics["gain"] / oracle_gain, abs=1e-4)
    quality = pd.read_csv(root / "reports/tables/quality.csv", dtype={"class_name": str})
    assert metrics["classes"] == {
        "use": (quality["verdict"] == "use").sum(),
        "use_with_care": (quality["verdict"] == "use with care").sum(),
        "do_not_use": (quality["verdict"] == "do not use").sum(),
        "no_synthetic_images": 1,  # class 0, the largest
        "short": 0,
    }
    assert all(isinstance(value, (int, float, str)) for value in metrics.values() if not isinstance(value, dict))

    detail = json.loads((root / "reports/detail.json").read_text())
    assert detail["tail_classes"] == ["7", "8", "9"] and detail["short_classes"] == {}
    with_synthetic = quality[quality["synthetic"] > 0]
    means = detail["quality_mean_over_classes"]
    assert {"frechet", "kid", "precision", "recall", "memorised_share", "label_agreement"} <= set(means)
    for column, mean in means.items():
        assert mean == pytest.approx(with_synthetic[column].mean(), abs=1e-5)


def test_tables_hold_every_run_and_class(evaluated):
    root, _ = evaluated
    runs = pd.read_csv(root / "reports/tables/utility_runs.csv")
    assert sorted(runs.groupby("arm").size().to_dict().items()) == sorted((arm, 2) for arm in ARMS)  # 2 seeds each
    assert "seconds" not in runs  # no timings: the table is reproducible byte for byte
    recall = pd.read_csv(root / "reports/tables/recall.csv", dtype={"class_name": str})
    assert recall["class_name"].tolist() == [str(d) for d in range(10)]
    nearest = pd.read_csv(root / "reports/tables/nearest_real.csv")
    assert nearest["relative_distance"].is_monotonic_increasing and len(nearest) > 0


def test_quality_and_verdicts_name_their_cause(evaluated):
    root, printed = evaluated
    quality = pd.read_csv(root / "reports/tables/quality.csv", dtype={"class_name": str}).set_index("class_name")
    assert quality.loc[COPIED_CLASS, "memorised_share"] == 1.0
    assert quality.loc[COPIED_CLASS, "verdict"] == "do not use" and "copies" in quality.loc[COPIED_CLASS, "reason"]
    assert quality.loc[WRONG_CLASS, "label_agreement"] < 0.5
    assert quality.loc[WRONG_CLASS, "verdict"] == "do not use" and "recognises" in quality.loc[WRONG_CLASS, "reason"]
    genuine = quality.loc[list("1234689")]  # held-out real images: new, not copies
    assert genuine["memorised_share"].mean() < 0.2
    assert (
        genuine[["frechet", "frechet_floor", "kid", "kid_floor", "precision", "recall", "density", "coverage"]]
        .notna()
        .all()
        .all()
    )
    assert quality.loc[WRONG_CLASS, "frechet"] > 5 * genuine["frechet"].max()  # another class is far
    assert quality.loc["0", "verdict"] == "no synthetic images"

    last_line = printed.strip().splitlines()[-1]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert re.fullmatch(
        r"evaluate: balanced accuracy of augmented \d\.\d{3} vs classical(_la)? \d\.\d{3}: gain "
        r"[+-]\d\.\d{3} \(95 % interval [+-]\d\.\d{3} to [+-]\d\.\d{3}\), tail recall [+-]\d\.\d{3}, "
        r"gap to the oracle closed -?\d+%; classes: .*no synthetic images 1",
        last_line,
    ), last_line
    assert f"do not use {metrics['classes']['do_not_use']}" in last_line


def test_with_nothing_to_generate_the_augmented_arm_draws_the_real_images_class_balanced(evaluated_without_synthetic):
    root, printed = evaluated_without_synthetic
    assert "generate: nothing to generate: the plan for target 0 asks for no synthetic images" in printed
    metrics = json.loads((root / "reports/metrics.json").read_text())
    arms = set(pd.read_csv(root / "reports/tables/utility.csv")["arm"])
    assert arms == set(ARMS) - {"synthetic_only"}  # no synthetic images to train on alone
    assert metrics["classes"] == {"use": 0, "use_with_care": 0, "do_not_use": 0, "no_synthetic_images": 10, "short": 0}
    assert json.loads((root / "reports/detail.json").read_text())["quality_mean_over_classes"] == {}
    assert re.search(r"evaluate: balanced accuracy of augmented \d\.\d{3} vs classical", printed.splitlines()[-1])

    merged = read_manifest(root / "data/augmented/manifest.csv", MANIFEST_COLUMNS + ["weight"])
    assert (merged["origin"] == "real").all()
    assert np.allclose(merged.groupby("label")["weight"].sum(), len(merged) / 10)  # every class drawn equally often
    quality = pd.read_csv(root / "reports/tables/quality.csv", dtype={"class_name": str})
    assert (quality["synthetic"] == 0).all() and (quality["reason"] == "the class is at or above the target").all()
    assert quality[["label_agreement", "memorised_share", "frechet", "precision"]].isna().all().all()  # empty columns
    assert len(pd.read_csv(root / "reports/tables/nearest_real.csv")) == 0


# --- bad input -----------------------------------------------------------------------------------


def test_a_judge_of_other_classes_is_an_error_naming_it(inputs_copy):
    meta = ModelMeta.read(inputs_copy.judge / "judge.json", JudgeDetails)
    ModelMeta(meta.image_size, meta.channels, [*meta.class_names[:-1], "ten"], meta.width).write(
        inputs_copy.judge / "judge.json"
    )
    with pytest.raises(InputError, match=r"models/judge/judge.json: made for other classes"):
        evaluate.run(tiny_params(), inputs_copy)


def worker_processes(parent: int) -> list[int]:
    """The processes `parent` started with multiprocessing's spawn (its pool's workers), from /proc."""
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):  # a process that ended meanwhile
            continue
        if ppid == parent and b"multiprocessing.spawn" in command:
            workers.append(int(stat.parent.name))
    return workers


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the processes from /proc")
def test_sigterm_stops_the_workers_and_removes_the_scratch_folder_keeping_the_previous_reports(
    evaluate_inputs, tmp_path
):
    root = copy_outputs(evaluate_inputs, tmp_path / "workspace")
    write_params(root, merge_dicts(TINY_PARAMS, {"evaluate": {"workers": 2, "seeds": 5}}))
    (root / "reports").mkdir(exist_ok=True)
    (root / "reports/metrics.json").write_text("the previous headline")
    scratch = tmp_path / "scratch"  # the stage's TMPDIR
    scratch.mkdir()
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT), "TMPDIR": str(scratch)}
    stage = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "evaluate"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while len(workers := worker_processes(stage.pid)) < 2 and stage.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2, stage.stderr.read() if stage.poll() is not None else "no workers in 300 s"
    assert [folder.name for folder in scratch.glob("evaluate-*")]  # its scratch folder, holding the decoded images

    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=120) == 143
    stage.stderr.close()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]  # the workers did not run on
    assert not list(scratch.glob("evaluate-*"))
    assert (root / "reports/metrics.json").read_text() == "the previous headline"
    assert not list((root / "reports").glob("*.tmp-*"))


def test_evaluate_fixes_the_mmap_threshold_of_its_process_before_it_reads_anything(inputs_copy, monkeypatch):
    calls = []
    monkeypatch.setattr(evaluate, "fix_mmap_threshold", lambda: calls.append("fixed"))
    monkeypatch.setattr(evaluate.PreparedStats, "read", lambda folder: calls.append("read") or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        evaluate.run(tiny_params(), inputs_copy)
    assert calls == ["fixed", "read"]


def test_synthetic_images_of_an_unknown_class_are_an_error_naming_the_class(inputs_copy):
    manifest = read_manifest(inputs_copy.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    manifest.loc[manifest["class_name"] == "9", "class_name"] = "nine"
    write_manifest(manifest, inputs_copy.synthetic / "manifest.csv")
    with pytest.raises(
        InputError,
        match=r"data/synthetic/manifest.csv: classes that data/prepared does not have: "
        r"'nine' \(label 9\)",
    ):
        evaluate.run(tiny_params(), inputs_copy)


def test_an_augmented_dataset_of_other_synthetic_images_is_an_error(inputs_copy):
    manifest = read_manifest(inputs_copy.augmented / "manifest.csv", MANIFEST_COLUMNS + ["weight"])
    write_manifest(
        manifest[~((manifest["origin"] == "synthetic") & (manifest["class_name"] == "9"))],
        inputs_copy.augmented / "manifest.csv",
    )
    with pytest.raises(InputError, match=r"data/augmented/manifest.csv: its synthetic images are not those"):
        evaluate.run(tiny_params(), inputs_copy)


@pytest.mark.parametrize("layout", ["imagefolder", "shards"])
def test_the_arms_decode_the_images_load_augmented_gives_in_manifest_order_then_the_holdout(
    evaluate_inputs, tmp_path, monkeypatch, layout
):
    from pipeline.stages import merge

    paths = Paths(copy_outputs(evaluate_inputs, tmp_path / "inputs"))
    if layout == "shards":
        merge.run(tiny_params(merge={"format": "shards", "shard_size": 40}), paths)
        assert len(list((paths.augmented / "shards").glob("*.tar"))) > 2
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 7)  # every manifest read a few rows at a time
    inputs = arm_inputs(paths, tmp_path)

    dataset, manifest, _ = load_augmented(paths.augmented, transform=np.array)  # as a user reads them
    holdout = read_manifest(paths.holdout / "manifest.csv", MANIFEST_COLUMNS)
    channels = PreparedStats.read(paths.prepared).channels
    merged, held = np.arange(len(manifest)), len(manifest) + np.arange(len(holdout))
    assert len(holdout) and len(inputs.images) == len(merged) + len(held)
    assert np.array_equal(inputs.images[merged], np.stack([np.atleast_3d(image) for image, _ in dataset]))
    assert np.array_equal(
        inputs.images[held], np.stack([read_png(paths.holdout / p, channels) for p in holdout["path"]])
    )
    assert torch.equal(inputs.merged_labels, torch.tensor(manifest["label"].to_numpy()))
    assert np.array_equal(inputs.merged_synthetic, (manifest["origin"] == "synthetic").to_numpy())
    assert np.array_equal(inputs.merged_weights, manifest["weight"].to_numpy())
    assert torch.equal(inputs.holdout_labels, torch.tensor(holdout["label"].to_numpy()))


def test_the_arms_name_a_shard_that_lacks_an_image_or_cannot_be_read(evaluate_inputs, tmp_path):
    from pipeline.stages import merge

    paths = Paths(copy_outputs(evaluate_inputs, tmp_path / "inputs"))
    merge.run(tiny_params(merge={"format": "shards", "shard_size": 40}), paths)
    manifest = read_manifest(paths.augmented / "manifest.csv", ["shard", "key"])
    shard = paths.augmented / manifest["shard"].iloc[-1]
    shard.write_bytes(shard.read_bytes()[:4096])  # cut short on the way
    with pytest.raises(InputError, match=rf"{shard.name}: has no sample-\d+\.png, which manifest\.csv lists"):
        arm_inputs(paths, tmp_path)
    shard.write_bytes(b"")
    with pytest.raises(InputError, match=rf"{shard.name}: not a readable tar file"):
        arm_inputs(paths, tmp_path)


def test_judge_features_of_a_class_are_the_rows_of_predicts_features(evaluate_inputs, tmp_path, monkeypatch):
    paths = Paths(evaluate_inputs)
    stats = PreparedStats.read(paths.prepared)
    judge, _ = load_judge(paths.judge)
    images, labels = decode_split(paths.prepared, stats, "train", tmp_path)
    monkeypatch.setattr(judge_features_module, "FEATURE_BLOCK", 7)  # a class's rows gathered over many blocks
    features = judge_features(judge, images, labels, tmp_path / "train.f32")
    probabilities, expected = predict(judge, images)
    assert torch.equal(features.predictions, probabilities.argmax(dim=1))
    for label in range(stats.num_classes):
        assert torch.equal(features.of_class(label), expected[labels == label])  # the same bits


def test_the_nearest_real_table_is_written_a_chunk_at_a_time_closest_first_then_by_path(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    count = 23
    synthetic_paths = np.array([f"train/é{i % 5}/s{i:03d}.png" for i in rng.permutation(count)])
    train_paths = np.array([f"train/c/{i:03d}.png" for i in range(9)])
    nearest = {
        "label": rng.integers(0, 3, count),
        "synthetic_row": rng.permutation(count),
        "train_row": rng.integers(0, 9, count),
        "distance": rng.random(count),
        "relative_distance": rng.choice([0.5, 1.25, 2.0, np.nan], count),  # ties: the path decides
    }
    table = pd.DataFrame(
        {
            "label": nearest["label"],
            "synthetic_path": synthetic_paths[nearest["synthetic_row"]],
            "train_path": train_paths[nearest["train_row"]],
            "distance": nearest["distance"],
            "relative_distance": nearest["relative_distance"],
        }
    ).sort_values(["relative_distance", "synthetic_path"])
    table.to_csv(tmp_path / "whole.csv", index=False, lineterminator="\n", float_format="%.6f")
    monkeypatch.setattr(evaluate, "CHUNK_ROWS", 5)
    evaluate.write_nearest_table(tmp_path / "chunked.csv", nearest, encoded(train_paths), encoded(synthetic_paths))
    assert (tmp_path / "chunked.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()

    nothing = {key: values[:0] for key, values in nearest.items()}
    evaluate.write_nearest_table(tmp_path / "empty.csv", nothing, encoded(train_paths), encoded([]))
    assert (tmp_path / "empty.csv").read_text() == "label,synthetic_path,train_path,distance,relative_distance\n"
