"""Stage `judge`: data/prepared/{train,val} -> models/judge/judge.pt + judge.json, reports/judge/ (DVCLive).

The judge is a classifier of the real data, trained once with the project's one classifier recipe
(pipeline/classifier_training.py) on the train split, every class drawn equally often, early-stopped on the
val split. The generate stage's quality gate asks it whether a synthetic image shows its intended
class and measures memorisation in its feature space (the input of its output layer:
`nets.logits_and_features`, so `judge.arch` must end in a linear layer); the evaluate stage uses the
same features. Val is never trained on: the judge must not know more about a rare class
than the generator and the downstream classifiers do.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from dvclive.lightning import DVCLiveLogger

from pipeline import nets
from pipeline.balancing import class_weights
from pipeline.classifier_training import TrainingSet, train_classifier
from pipeline.config import Params, params_to_dict
from pipeline.contracts import MANIFEST_COLUMNS, JudgeDetails, ModelMeta, PreparedStats
from pipeline.environment import environment
from pipeline.hardware import classifier_settings
from pipeline.image_rows import ImageRows, decode_split
from pipeline.io import atomic_output, read_manifest
from pipeline.metrics import balanced_accuracy
from pipeline.paths import Paths


def run(params: Params, paths: Paths = Paths()) -> None:
    recipe = params.judge
    settings = classifier_settings(recipe, torch.cuda.device_count(), "judge")  # a GPU asked for and none: stop here
    stats = PreparedStats.read(paths.prepared)
    nets.check_classifier(
        recipe.arch, stats.image_size, stats.channels, stats.num_classes, recipe.width, "judge.arch", features=True
    )
    with tempfile.TemporaryDirectory(prefix="judge-") as scratch:  # the images, decoded once, read by row as drawn
        manifest = read_manifest(paths.prepared / "manifest.csv", MANIFEST_COLUMNS)
        train_images, train_labels = decode_split(paths.prepared, stats, "train", scratch, manifest)
        val_images, val_labels = decode_split(paths.prepared, stats, "val", scratch, manifest)
        balanced = TrainingSet(
            train_images, train_labels, stats.num_classes, class_weights(train_labels.numpy(), stats.num_classes)
        )
        with atomic_output(paths.judge_report) as live_dir:
            logger = DVCLiveLogger(dir=str(live_dir), save_dvc_exp=False, dvcyaml=False)
            model, history = train_classifier(
                balanced, (val_images, val_labels), recipe, params.seed, logger, section="judge"
            )
            if history["best_val_balanced_accuracy"] is not None:  # the kept weights' score, beside the last one's
                logger.experiment.summary["best_val_balanced_accuracy"] = history["best_val_balanced_accuracy"]
                logger.experiment.make_summary()
        scores = val_scores(model, val_images, val_labels, stats.class_names)
    if scores:
        print(f"judge: val balanced accuracy {scores['val_balanced_accuracy']:.3f} after {history['steps']} updates")
    details = JudgeDetails(
        steps=history["steps"],
        source_fingerprint=stats.source_fingerprint,
        params={"seed": params.seed, "judge": params_to_dict(recipe)},
        environment=environment(settings["accelerator"]),
        **scores,
    )
    meta = ModelMeta(stats.image_size, stats.channels, stats.class_names, recipe.width, details=details)
    with atomic_output(paths.judge) as out:
        nets.save_model(model, out, "judge", meta)


def val_scores(model: torch.nn.Module, images: ImageRows, labels: torch.Tensor, class_names: list[str]) -> dict:
    """The trained judge's balanced accuracy and recall per class on the val split (none without val images)."""
    if not len(labels):
        return {}
    predicted, truth = nets.predict(model, images)[0].argmax(dim=1).numpy(), labels.numpy()
    return {
        "val_balanced_accuracy": round(balanced_accuracy(truth, predicted), 6),
        "val_recall_per_class": {
            name: round(float(np.mean(predicted[truth == label] == label)), 6)
            for label, name in enumerate(class_names)
            if (truth == label).any()
        },
    }
