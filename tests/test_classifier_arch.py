"""The classifier chosen by name (`judge.arch`, `evaluate.classifier.arch`): torchvision's networks adapted
to the data, a user's own factory (tests/user_networks.py), what the judge accepts, one-line errors, and
the whole protocol through `dvc exp run -S evaluate.classifier.arch=...`."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import yaml
from torch import nn

from conftest import REPO_ROOT, TINY_CLASSIFIER, TINY_PARAMS, dvc, make_repo_copy, merge_dicts, tiny_params
from pipeline import nets
from pipeline.arms import read_arm_inputs, run_arms
from pipeline.classifier_training import TrainingSet, train_classifier
from pipeline.contracts import JudgeDetails, ModelMeta, PreparedStats
from pipeline.errors import ConfigError
from pipeline.manifests import load_split
from pipeline.metrics import balanced_accuracy
from pipeline.nets import predict
from pipeline.paths import Paths
from pipeline.stages import judge

MLP = "tests.user_networks:mlp"


def final_map_size(net: nn.Module, image_size: int) -> int:
    """The side of the feature map that a ResNet's last stage gives for one image."""
    seen = {}
    net.layer4.register_forward_hook(lambda _, __, output: seen.update(size=output.shape[-1]))
    net.eval()(torch.zeros(1, net.conv1.in_channels, image_size, image_size))
    return seen["size"]


def test_torchvision_networks_are_untrained_and_adapted_to_the_channels_and_to_small_images(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    small = nets.build_classifier("resnet18", 32, 1, 7, width=4)
    assert small.conv1.in_channels == 1 and small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity) and small.fc.out_features == 7
    assert final_map_size(small, 32) == 4  # as CIFAR's ResNet-18; ImageNet's stem would leave 1x1
    large = nets.build_classifier("resnet18", 128, 3, 7, width=4)  # large images keep ImageNet's stem
    assert large.conv1.stride == (2, 2) and isinstance(large.maxpool, nn.MaxPool2d)
    assert final_map_size(large, 128) == 4
    densenet = nets.build_classifier("densenet121", 16, 3, 5, width=4)  # any builder that takes num_classes
    assert densenet(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


@pytest.mark.parametrize(
    "arch, message",
    [
        ("resnet1", "'resnet1' is neither small_cnn, a torchvision classification model"),
        ("no_such_package.networks:make", "cannot import no_such_package.networks:make: No module named"),
        ("tests.user_networks:missing", "cannot import tests.user_networks:missing"),
        (
            "tests.user_networks:not_a_network",
            "tests.user_networks:not_a_network returned a str, not a torch.nn.Module",
        ),
        ("vit_b_16", "vit_b_16 does not classify 16x16 images with 1 channel(s) into 10 classes: Wrong image height"),
    ],
)
def test_an_arch_that_gives_no_classifier_is_a_one_line_error_naming_the_param(arch, message):
    with pytest.raises(ConfigError) as err:
        nets.check_classifier(arch, 16, 1, 10, 4, "evaluate.classifier.arch")
    assert str(err.value).startswith(f"params.yaml: evaluate.classifier.arch: {message}")
    assert "\n" not in str(err.value)


def test_the_judge_takes_only_networks_whose_output_layer_gives_features():
    nets.check_classifier("tests.user_networks:pooled_convolution", 16, 1, 10, 4, "evaluate.classifier.arch")
    with pytest.raises(
        ConfigError,
        match=r"^params.yaml: judge.arch: tests.user_networks:pooled_convolution "
        r"cannot be the judge: Sequential has no features to take",
    ):
        nets.check_classifier("tests.user_networks:pooled_convolution", 16, 1, 10, 4, "judge.arch", features=True)
    nets.check_classifier(MLP, 16, 1, 10, 4, "judge.arch", features=True)


def test_a_torchvision_judge_is_trained_saved_and_rebuilt_with_its_features(workspace):
    recipe = {"arch": "resnet18", "batch_size": 8, "eval_every": 2, "patience": 1, "max_steps": 4}
    judge.run(tiny_params(judge=recipe), workspace)
    model, meta = nets.load_judge(workspace.judge)
    assert type(model).__name__ == "ResNet" and model.conv1.in_channels == 1
    stats = PreparedStats.read(workspace.prepared)
    val_images, val_labels = load_split(workspace.prepared, stats, "val")
    probabilities, features = predict(model, val_images)
    assert features.shape == (len(val_images), 512)  # ResNet-18's pooled vector, the input of its fc layer
    predicted = probabilities.argmax(dim=1).numpy()
    assert round(balanced_accuracy(val_labels.numpy(), predicted), 6) == meta.details.val_balanced_accuracy


def test_the_judge_stage_refuses_a_network_without_features_before_training(workspace):
    with pytest.raises(ConfigError, match=r"judge.arch: .* cannot be the judge"):
        judge.run(tiny_params(judge={"arch": "tests.user_networks:pooled_convolution"}), workspace)
    assert not workspace.judge.exists()


def test_the_arms_train_a_users_network_the_same_in_worker_processes(evaluate_inputs, tmp_path):
    paths = Paths(evaluate_inputs)
    stats = PreparedStats.read(paths.prepared)
    images, labels = load_split(paths.prepared, stats, "train")
    recipe = dataclasses.replace(tiny_params().evaluate.classifier, arch=MLP)
    no_val = images[:0], labels[:0]
    model, _ = train_classifier(TrainingSet(images, labels, stats.num_classes), no_val, recipe, seed=0)
    assert isinstance(model[0], nn.Flatten)  # train_classifier trained the factory's network

    val, test = load_split(paths.prepared, stats, "val"), load_split(paths.prepared, stats, "test")
    cfg = dataclasses.replace(tiny_params().evaluate, seeds=1, classifier=recipe)
    runs = {
        workers: run_arms(
            read_arm_inputs(paths, stats, tmp_path),
            val,
            test,
            [9],
            dataclasses.replace(cfg, workers=workers),
            first_seed=0,
            arms=["classical", "augmented"],
        ).drop(columns="seconds")
        for workers in (1, 2)
    }  # spawned workers import the factory too
    assert runs[1].equals(runs[2])


# --- the whole protocol through DVC ----------------------------------------------------------------

# The tiny config in a repository copy, the GAN trained briefly and every classifier capped at 4 updates.
BUDGET = {
    "data": {"source": "data/builtin/digits.yaml"},
    "train": {
        "max_epochs": 2,
        "z_dim": 8,
        "g_width": 4,
        "d_width": 4,
        "sample_every_n_epochs": 1,
        "samples_per_class": 2,
    },
    "evaluate": {"classifier": {**TINY_CLASSIFIER, "batch_size": 16, "eval_every": 2, "max_steps": 4}},
}


def only_stages_run(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", output))


def test_dvc_exp_run_measures_the_verdict_with_resnet18_and_with_a_users_network(tmp_path):
    project = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())  # every key, so that -S can set it
    repo = make_repo_copy(tmp_path / "repo", merge_dicts(project, merge_dicts(TINY_PARAMS, BUDGET)))
    shown = {}
    for arch, stages in (
        ("resnet18", {"prepare", "judge", "train", "generate", "merge", "evaluate", "report"}),
        (MLP, {"evaluate", "report"}),
    ):  # the arch is evaluate's: nothing upstream reruns
        result = dvc("exp", "run", "-S", f"evaluate.classifier.arch={arch}", cwd=repo)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert only_stages_run(result.stdout) == stages
        metrics = json.loads((repo / "reports/metrics.json").read_text())
        assert metrics["classifier"] == arch and "gain_low" in metrics and "gap_closed" in metrics  # oracle: thinned
        page = (repo / "reports/report.html").read_text(encoding="utf-8")
        assert f"trained the downstream classifier <b>{arch}</b>" in page
        shown[arch] = metrics
    assert ModelMeta.read(repo / "models/judge/judge.json", JudgeDetails).details.params["judge"]["arch"] == "small_cnn"

    experiments = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    listed = {
        exp["revs"][0]["data"]["metrics"]["reports/metrics.json"]["data"]["classifier"]
        for commit in experiments
        for exp in (commit.get("experiments") or [])
    }
    assert listed == {"resnet18", MLP}
