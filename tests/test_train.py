"""The train stage: GAN maths, limited-data techniques, the Lightning module, resume, DDP and bad input."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import TINY_PARAMS, merge_dicts, run_cli, tiny_params, write_params
from pipeline import train
from pipeline.augment import AUGMENTATIONS, diff_augment
from pipeline.gan import (
    ConditionalGAN,
    TrainImages,
    class_balanced_weights,
    conditioning_strength,
    discriminator_loss,
    generator_loss,
    group_spectral_norm,
    lecam_penalty,
)
from pipeline.io import PREPARED_DIR, load_prepared_split
from pipeline.nets import load_generator, weights_hash

# Small networks and two short epochs: a full stage run takes a few seconds on two CPU cores.
FAST = {"max_epochs": 2, "batch_size": 32, "z_dim": 16, "g_width": 8, "d_width": 8, "sample_every_n_epochs": 1,
        "samples_per_class": 4}


def fast_params(**train_overrides):
    return tiny_params(train={**FAST, **train_overrides})


def train_checkpoint_state() -> dict:
    return torch.load(train.RESUME_DIR / train.CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]


def prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# --- pure functions ------------------------------------------------------------------------------


def test_losses_match_their_definitions():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss("hinge", real, fake) == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert generator_loss("hinge", fake) == pytest.approx(0.75)
    assert discriminator_loss("nonsaturating", real, fake) == pytest.approx(
        (F.softplus(-real).mean() + F.softplus(fake).mean()).item())
    assert generator_loss("nonsaturating", fake) == pytest.approx(F.softplus(-fake).mean().item())


def test_lecam_penalises_only_logits_beyond_the_other_sides_average():
    ema_real, ema_fake = torch.tensor(1.0), torch.tensor(-1.0)
    assert lecam_penalty(torch.tensor([-2.0]), torch.tensor([2.0]), ema_real, ema_fake) == 0
    assert lecam_penalty(torch.tensor([0.0]), torch.tensor([-1.0]), ema_real, ema_fake) == pytest.approx(1 + 4)


def test_group_spectral_norm_is_the_mean_largest_singular_value_of_the_folded_class_vectors():
    table = torch.randn(3, 16, requires_grad=True)
    expected = torch.stack([torch.linalg.svdvals(row.view(4, 4))[0] for row in table]).mean()
    value = group_spectral_norm(table)
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    value.backward()  # differentiable, also from the zero initialisation of the tables
    assert torch.isfinite(table.grad).all()
    zeros = torch.zeros(3, 16, requires_grad=True)
    group_spectral_norm(zeros).backward()
    assert torch.isfinite(zeros.grad).all()


def test_conditioning_strength_ramps_from_unconditional_to_conditional():
    assert [conditioning_strength(b, start=2, steps=4) for b in (0, 1, 2, 4, 6, 100)] == [0, 0, 0, 0.5, 1, 1]
    assert conditioning_strength(0, start=0, steps=0) == 1.0


@pytest.mark.parametrize("balance, expected", [(0.0, [0.8, 0.2]), (0.5, [2 / 3, 1 / 3]), (1.0, [0.5, 0.5])])
def test_class_balanced_weights_interpolate_between_natural_and_uniform(balance, expected):
    labels = torch.tensor([0] * 16 + [1] * 4)
    weights = class_balanced_weights(labels, 2, balance)
    class_mass = torch.stack([weights[labels == c].sum() for c in (0, 1)])
    assert (class_mass / class_mass.sum()).tolist() == pytest.approx(expected)


@pytest.mark.parametrize("name", sorted(AUGMENTATIONS))
def test_each_diffaugment_changes_images_and_passes_gradients(name):
    torch.manual_seed(0)
    images = (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_()
    augmented = diff_augment(images, [name])
    assert augmented.shape == images.shape
    assert not torch.equal(augmented, images)
    augmented.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_translation_shifts_and_cutout_blanks_a_square():
    torch.manual_seed(0)
    ones = torch.ones(64, 1, 16, 16)
    shifted = diff_augment(ones, ["translation"])
    assert set(shifted.unique().tolist()) <= {0.0, 1.0}
    assert (shifted == 0).any(dim=(1, 2, 3)).float().mean() > 0.5  # most images moved, leaving a zero border
    blanked = diff_augment(ones, ["cutout"])
    blank_counts = (blanked == 0).sum(dim=(1, 2, 3))
    assert blank_counts.max() == 8 * 8 and (blank_counts > 0).all()
    assert torch.equal(diff_augment(ones, []), ones)


# --- the LightningModule at every supported size -------------------------------------------------


@pytest.mark.parametrize("size, channels", [(16, 1), (16, 3), (32, 1), (32, 3), (64, 1), (64, 3)])
def test_one_training_step_at_each_size_and_channel_count(prepared_tiny, size, channels):
    images, labels = load_prepared_split("train", prepared_tiny / PREPARED_DIR)
    images = F.interpolate(images[:16].float(), size=size).round().to(torch.uint8).repeat(1, channels, 1, 1)
    cfg = fast_params(g_width=4, d_width=4).train
    pl.seed_everything(0, verbose=False)
    module = ConditionalGAN(cfg, size, channels, num_classes=10)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader(TensorDataset(images, labels[:16]), batch_size=8))
    after = module.state_dict()
    for prefix in ("generator.", "discriminator.", "generator_ema.module."):
        changed = [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]
        assert changed, f"{prefix} did not train"
    assert int(module.batches_seen) == 1  # two optimiser steps (max_steps=2) are one batch
    with torch.no_grad():
        fakes = module.generator_ema.module.eval()(torch.randn(10, cfg.z_dim), torch.arange(10))
    assert fakes.shape == (10, channels, size, size) and fakes.abs().max() <= 1


# --- the stage -----------------------------------------------------------------------------------

BATCHES_PER_EPOCH = 498 // 32  # the tiny train split has 498 images


@dataclass
class Run:
    """What one stage run in a fresh workspace left behind."""

    folder: Path
    generator_hash: str
    state: dict  # the state_dict of Lightning's last checkpoint
    losses: pd.DataFrame

    def class_tables(self) -> list[torch.Tensor]:
        """The generator's class-conditional norm tables (gains and biases)."""
        return [v for k, v in self.state.items()
                if k.startswith("generator.") and k.endswith(("gain.weight", "bias.weight"))]


def train_fresh(prepared_tiny: Path, folder: Path, seed: int = 0, **train_overrides) -> Run:
    shutil.copytree(prepared_tiny / "data", folder / "data")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        train.run(tiny_params(seed=seed, train={**FAST, "max_epochs": 1, **train_overrides}))
        checkpoint = torch.load(train.RESUME_DIR / train.CHECKPOINT, map_location="cpu", weights_only=True)
        return Run(folder, weights_hash(load_generator()[0]), checkpoint["state_dict"],
                   pd.read_csv("reports/train/losses.csv"))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def default_run(prepared_tiny, tmp_path_factory) -> Run:
    """One epoch with the default switches (DiffAugment, EMA, balance, GSR; no LeCam, no transition)."""
    return train_fresh(prepared_tiny, tmp_path_factory.mktemp("default_run"))


def test_stage_writes_the_generator_checkpoint_losses_and_grids(default_run):
    folder = default_run.folder
    generator, meta = load_generator(folder / "models/gan")
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert (meta["image_size"], meta["channels"], meta["z_dim"], meta["width"]) == (16, 1, 16, 8)
    with torch.no_grad():
        images = generator(torch.randn(10, 16), torch.arange(10))
    assert images.shape == (10, 1, 16, 16) and images.abs().max() <= 1

    state = torch.load(folder / "models/gan/generator_ema.pt", weights_only=True)
    checkpoint = torch.load(folder / "models/gan/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and int(checkpoint["state_dict"]["batches_seen"]) == BATCHES_PER_EPOCH
    ema_in_checkpoint = prefixed(checkpoint["state_dict"], "generator_ema.module.")
    assert all(torch.equal(ema_in_checkpoint[k], v) for k, v in state.items())

    losses = default_run.losses
    assert {"step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "conditioning"} <= set(losses.columns)
    assert losses["step"].is_monotonic_increasing and losses["loss_d"].notna().all() and len(losses) >= 2
    assert [p.name for p in (folder / "reports/train/grids").iterdir()] == ["epoch_0001.png"]
    with Image.open(folder / "reports/train/samples.png") as grid:  # 10 rows of 4 images of 16 px, 2 px padding
        assert grid.size == (4 * 18 + 2, 10 * 18 + 2)


def test_two_runs_with_the_same_seed_give_identical_weights(default_run, prepared_tiny, tmp_path):
    assert train_fresh(prepared_tiny, tmp_path / "same").generator_hash == default_run.generator_hash
    assert train_fresh(prepared_tiny, tmp_path / "other", seed=1).generator_hash != default_run.generator_hash


def test_an_interrupted_run_resumes_from_its_last_checkpoint(workspace, monkeypatch, capsys):
    params = fast_params(max_epochs=2)
    steps_run = []
    original_step = ConditionalGAN.training_step

    def counting_step(self, batch, batch_idx):
        steps_run.append(batch_idx)
        return original_step(self, batch, batch_idx)

    def crash_at_end_of_second_epoch(self):  # Lightning calls it before the epoch's checkpoint is saved
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ConditionalGAN, "training_step", counting_step)
    monkeypatch.setattr(ConditionalGAN, "on_train_epoch_end", crash_at_end_of_second_epoch, raising=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run(params)
    assert not (workspace / "models/gan").exists()  # an unfinished run publishes nothing
    assert torch.load(train.RESUME_DIR / train.CHECKPOINT, weights_only=True)["epoch"] == 0

    monkeypatch.delattr(ConditionalGAN, "on_train_epoch_end")
    steps_run.clear()
    train.run(params)
    assert "train: resuming from models/gan-resume/last.ckpt" in capsys.readouterr().out
    assert len(steps_run) == BATCHES_PER_EPOCH  # the second epoch only
    assert int(train_checkpoint_state()["batches_seen"]) == 2 * BATCHES_PER_EPOCH
    assert json.loads((workspace / "models/gan/generator_ema.json").read_text())["epochs"] == 2
    assert set(pd.read_csv("reports/train/losses.csv")["epoch"]) == {0, 1}  # the logs of both runs

    steps_run.clear()
    train.run(fast_params(max_epochs=2, lr_g=5e-4))
    assert "was made with other params or data; starting fresh" in capsys.readouterr().out
    assert len(steps_run) == 2 * BATCHES_PER_EPOCH


# --- each limited-data technique is switchable and has an effect ---------------------------------


def test_class_balanced_sampling_draws_rare_classes_more_often(workspace):
    def rare_share(balance: float) -> float:
        data = TrainImages(PREPARED_DIR, 32, balance, seed=0)
        labels = torch.cat([y for _, y in data.train_dataloader()] * 5)
        return (labels == 9).float().mean().item()

    counts = TrainImages(PREPARED_DIR, 32, 0.0, seed=0).counts
    natural, uniform = rare_share(0.0), rare_share(1.0)
    assert natural == pytest.approx(counts[9] / sum(counts), abs=0.02)
    assert uniform == pytest.approx(0.1, abs=0.03)
    assert natural < rare_share(0.5) < uniform


def test_ema_on_saves_an_average_and_off_the_generator_itself(default_run, prepared_tiny, tmp_path):
    def generator_and_ema(run: Run):
        return prefixed(run.state, "generator."), prefixed(run.state, "generator_ema.module.")

    generator, ema = generator_and_ema(default_run)
    assert not all(torch.equal(generator[k], ema[k]) for k in generator if generator[k].is_floating_point())
    generator, ema = generator_and_ema(train_fresh(prepared_tiny, tmp_path, ema=False))
    assert all(torch.equal(generator[k], ema[k]) for k in generator)


@pytest.mark.parametrize("switch", [{"diffaugment": []}, {"lecam_weight": 0.5}, {"loss": "nonsaturating"}])
def test_diffaugment_lecam_and_loss_switches_change_the_training(default_run, prepared_tiny, tmp_path, switch):
    run = train_fresh(prepared_tiny, tmp_path, **switch)
    assert run.generator_hash != default_run.generator_hash
    assert ("lecam" in run.losses.columns) == ("lecam_weight" in switch)


def test_transitional_conditioning_keeps_the_generator_unconditional_until_it_starts(default_run, prepared_tiny,
                                                                                    tmp_path):
    assert any((table != 0).any() for table in default_run.class_tables())
    # GSR off: its (sub)gradient would move the tables even while the class conditioning is off
    run = train_fresh(prepared_tiny, tmp_path, transition_start=BATCHES_PER_EPOCH, gsr_weight=0.0)
    assert all((table == 0).all() for table in run.class_tables())  # no class information reached G yet
    assert run.losses["conditioning"].eq(0).all()


def test_group_spectral_regularisation_lowers_the_class_tables_spectral_norms(prepared_tiny, tmp_path):
    def total_spectral_norm(run: Run) -> float:
        return sum(group_spectral_norm(table).item() for table in run.class_tables())

    off = train_fresh(prepared_tiny, tmp_path / "off", gsr_weight=0.0)
    strong = train_fresh(prepared_tiny, tmp_path / "strong", gsr_weight=10.0)
    assert total_spectral_norm(strong) < 0.5 * total_spectral_norm(off)
    assert strong.losses["gsr"].notna().all() and "gsr" not in off.losses.columns


# --- DDP and the command line --------------------------------------------------------------------


def stage_folder(workspace, **train_overrides):
    write_params(workspace, merge_dicts(TINY_PARAMS, {"train": {**FAST, **train_overrides}}))
    return workspace


def test_ddp_on_two_cpu_processes_trains_one_epoch(workspace):
    stage_folder(workspace, max_epochs=1, accelerator="cpu", devices=2, strategy="ddp")
    result = run_cli("train", cwd=workspace)
    assert result.returncode == 0, result.stderr[-3000:]
    generator, meta = load_generator()
    with torch.no_grad():
        images = generator(torch.randn(10, meta["z_dim"]), torch.arange(10))
    assert images.shape == (10, 1, 16, 16) and torch.isfinite(images).all()
    assert meta["batches"] == 498 // (32 * 2)  # each process trains on half of every epoch


def _one_class_left(workspace):
    manifest = pd.read_csv(PREPARED_DIR / "manifest.csv")
    manifest[manifest.label == 0].to_csv(PREPARED_DIR / "manifest.csv", index=False)
    stats = json.loads((PREPARED_DIR / "stats.json").read_text())
    stats["classes"] = stats["classes"][:1]
    (PREPARED_DIR / "stats.json").write_text(json.dumps(stats))


def _no_train_image_for_class_3(workspace):
    manifest = pd.read_csv(PREPARED_DIR / "manifest.csv")
    manifest[~((manifest.label == 3) & (manifest.split == "train"))].to_csv(PREPARED_DIR / "manifest.csv", index=False)


def _image_size_24(workspace):
    stats = json.loads((PREPARED_DIR / "stats.json").read_text())
    stats["image_size"] = 24
    (PREPARED_DIR / "stats.json").write_text(json.dumps(stats))


@pytest.mark.parametrize("damage, overrides, message", [
    (lambda w: shutil.rmtree(w / "data"), {}, "data/prepared/stats.json: not found"),
    (_one_class_left, {}, "1 class(es); a conditional GAN needs at least 2"),
    (_no_train_image_for_class_3, {}, "class '3' has no training image"),
    (_image_size_24, {}, "image size 24 is not supported"),
    (None, {"batch_size": 1000}, "train.batch_size 1000 is larger than the training set (498 images"),
    (None, {"loss": "wgan"}, "train.loss must be one of hinge, nonsaturating, got 'wgan'"),
    (None, {"diffaugment": ["color", "flip"]}, "train.diffaugment[1] must be one of color, translation, cutout"),
    (None, {"transition_start": 100}, "train.transition_start + train.transition_steps (100 batches) is longer"),
])
def test_bad_input_is_one_line_naming_the_culprit(workspace, damage, overrides, message):
    stage_folder(workspace, **overrides)
    if damage:
        damage(workspace)
    result = run_cli("train", cwd=workspace)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and message in last_line
    assert "Traceback" not in result.stderr
