"""The judge stage: a classifier of the real data, trained once, rebuilt by nets.load_judge."""

import torch
from conftest import TINY_PARAMS, run_cli, tiny_params, write_params

from pipeline import judge, nets
from pipeline.io import load_prepared_split, read_json

FAST_JUDGE = {"max_epochs": 4, "width": 8}


def test_random_shift_moves_each_image_by_at_most_max_shift_and_keeps_its_content():
    images = torch.zeros(64, 1, 9, 9)
    images[:, 0, 4, 4] = 1.0  # one bright pixel in the centre
    shifted = judge.random_shift(images, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert torch.equal(shifted.sum(dim=(1, 2, 3)), images.sum(dim=(1, 2, 3)))  # nothing lost at the edges
    rows, cols = (shifted[:, 0] == 1.0).nonzero()[:, 1:].T
    assert ((rows - 4).abs() <= 2).all() and ((cols - 4).abs() <= 2).all()
    assert len({(int(r), int(c)) for r, c in zip(rows, cols)}) > 10  # every image draws its own offset
    assert torch.equal(judge.random_shift(images, 0, torch.Generator()), images)


def test_balanced_sample_weights_give_every_class_the_same_mass():
    labels = torch.tensor([0] * 90 + [1] * 9 + [2])
    masses = torch.bincount(labels, weights=judge.balanced_sample_weights(labels))
    assert torch.allclose(masses, torch.ones(3, dtype=torch.double))


def test_judge_stage_trains_a_competent_classifier_that_load_judge_rebuilds(workspace):
    judge.run(tiny_params(judge=FAST_JUDGE))
    model, meta = nets.load_judge()
    stats = read_json("data/prepared/stats.json")
    assert (meta["image_size"], meta["channels"]) == (stats["image_size"], stats["channels"])
    assert meta["class_names"] == [c["class_name"] for c in stats["classes"]]
    assert meta["width"] == FAST_JUDGE["width"]

    # the rebuilt model is the trained one: its val predictions give the recorded accuracy
    val_images, val_labels = load_prepared_split("val")
    probabilities, features = judge.judge_outputs(model, val_images)
    assert round(float((probabilities.argmax(dim=1) == val_labels).double().mean()), 6) == meta["val_accuracy"]
    assert meta["val_balanced_accuracy"] > 0.6  # 10 classes: chance is 0.1
    assert features.shape == (len(val_images), model.feature_dim)


def test_training_is_reproducible_for_a_seed(workspace):
    images, labels = load_prepared_split("train")
    cfg = tiny_params(judge={"max_epochs": 1, "width": 4}).judge
    first, second, other_seed = (judge.train_classifier(images, labels, 10, cfg, seed) for seed in (0, 0, 1))
    assert nets.weights_hash(first) == nets.weights_hash(second)
    assert nets.weights_hash(first) != nets.weights_hash(other_seed)


def test_judge_cli_without_prepared_data_fails_with_one_line(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    result = run_cli("judge", cwd=tmp_path)
    assert result.returncode == 2
    assert "data/prepared/stats.json: not found" in result.stderr and "Traceback" not in result.stderr
