"""The train stage: GAN maths, limited-data techniques, the Lightning module, the stage's outputs
(DVCLive log, checkpoint, grids), resume, reproducibility in another folder, the images drawn from a
scratch file, a cap on batches, the hardware settings, DDP and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from dvc.fs import LocalFileSystem
from dvc.repo.plots import parse as dvc_parse_plot
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from conftest import FAST_GAN, TINY_PARAMS, merge_dicts, run_cli, tiny_params, write_params
from pipeline.balancing import class_weights
from pipeline.config import params_to_dict
from pipeline.contracts import GeneratorDetails, ModelMeta, PreparedStats
from pipeline.errors import ConfigError, InputError
from pipeline.gan.augment import AUGMENTATIONS, diff_augment
from pipeline.gan.data import TrainImages
from pipeline.gan.losses import (
    conditioning_strength,
    discriminator_loss,
    generator_loss,
    group_spectral_norm,
    lecam_penalty,
    mode_seeking_penalty,
)
from pipeline.gan.training import ConditionalGAN
from pipeline.hardware import trainer_settings
from pipeline.manifests import load_split
from pipeline.nets import load_generator, weights_hash
from pipeline.paths import Paths
from pipeline.stages import train

# Short epochs of the small GAN (conftest.FAST_GAN).
FAST = {**FAST_GAN, "max_epochs": 2}
TRAIN_IMAGES = 498  # the tiny train split
BATCHES_PER_EPOCH = TRAIN_IMAGES // 32
# the default switches: GSR and mode seeking on, LeCam off
LOGGED = {"loss_d", "loss_g", "d_real", "d_fake", "conditioning", "gsr", "mode_seeking", "epoch"}


def fast_params(**train_overrides):
    return tiny_params(train={**FAST, **train_overrides})


def checkpoint_state(paths: Paths) -> dict:
    return torch.load(paths.gan_resume / train.CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]


def prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def metric_tsvs(live_dir: Path) -> list[Path]:
    return sorted((live_dir / "plots/metrics").rglob("*.tsv"))


def read_live_log(live_dir: Path) -> pd.DataFrame:
    """DVCLive's per-metric TSVs joined on step: one row per logged batch, one column per metric."""
    return pd.concat(
        [pd.read_csv(tsv, sep="\t").set_index("step") for tsv in metric_tsvs(live_dir)], axis=1
    ).reset_index()


def files_under(root: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for folder in folders
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


# --- pure functions ------------------------------------------------------------------------------


def test_losses_match_their_definitions():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    assert discriminator_loss("hinge", real, fake) == pytest.approx((0 + 0.5) / 2 + (0 + 1.5) / 2)
    assert generator_loss("hinge", fake) == pytest.approx(0.75)
    assert discriminator_loss("nonsaturating", real, fake) == pytest.approx(
        (F.softplus(-real).mean() + F.softplus(fake).mean()).item()
    )
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


def test_mode_seeking_penalty_is_the_inverse_ratio_of_image_to_latent_distances():
    noise = torch.tensor([[0.0, 0.0], [2.0, 2.0]])  # one pair: latent distance 2
    distinct = torch.tensor([[0.0], [1.0]])  # image distance 1
    assert mode_seeking_penalty(distinct, noise).item() == pytest.approx(2.0, rel=1e-4)
    collapsed = torch.tensor([[0.5], [0.5]])
    assert mode_seeking_penalty(collapsed, noise) > 1000  # one image for two latents: a large penalty


def test_conditioning_strength_ramps_from_unconditional_to_conditional():
    assert [conditioning_strength(b, start=2, steps=4) for b in (0, 1, 2, 4, 6, 100)] == [0, 0, 0, 0.5, 1, 1]
    assert conditioning_strength(0, start=0, steps=0) == 1.0


@pytest.mark.parametrize("balance, expected", [(0.0, [0.8, 0.2]), (0.5, [2 / 3, 1 / 3]), (1.0, [0.5, 0.5])])
def test_class_weights_interpolate_between_natural_and_uniform(balance, expected):
    labels = np.array([0] * 16 + [1] * 4)
    weights = class_weights(labels, 2, balance)
    class_mass = np.array([weights[labels == c].sum() for c in (0, 1)])
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
    prepared = Paths(prepared_tiny).prepared
    images, labels = load_split(prepared, PreparedStats.read(prepared), "train")
    images = F.interpolate(images[:16].float(), size=size).round().to(torch.uint8).repeat(1, channels, 1, 1)
    cfg = fast_params(g_width=4, d_width=4).train
    pl.seed_everything(0, verbose=False)
    module = ConditionalGAN(params_to_dict(cfg), size, channels, num_classes=10)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
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


@dataclass
class Run:
    """What one stage run in a fresh folder left behind."""

    paths: Paths
    generator_hash: str
    state: dict  # the state_dict of Lightning's last checkpoint
    log: pd.DataFrame  # reports/train's TSVs joined on step

    def class_tables(self) -> list[torch.Tensor]:
        """The generator's class-conditional norm tables (gains and biases)."""
        return [
            v
            for k, v in self.state.items()
            if k.startswith("generator.") and k.endswith(("gain.weight", "bias.weight"))
        ]


def train_fresh(prepared_tiny: Path, folder: Path, seed: int = 0, **train_overrides) -> Run:
    """One epoch of the stage in `folder`, on a copy of the tiny prepared data."""
    shutil.copytree(prepared_tiny / "data", folder / "data")
    paths = Paths(folder)
    train.run(tiny_params(seed=seed, train={**FAST, "max_epochs": 1, **train_overrides}), paths)
    return Run(
        paths, weights_hash(load_generator(paths.gan)[0]), checkpoint_state(paths), read_live_log(paths.train_report)
    )


@pytest.fixture(scope="module")
def default_run(prepared_tiny, tmp_path_factory) -> Run:
    """One epoch with the default switches (DiffAugment, EMA, balance, GSR, mode seeking; no LeCam, no
    transition)."""
    return train_fresh(prepared_tiny, tmp_path_factory.mktemp("default_run"))


def test_stage_writes_the_generator_checkpoint_and_grids(default_run, tmp_path):
    paths = default_run.paths
    generator, meta = load_generator(paths.gan)
    assert meta.class_names == [str(d) for d in range(10)]
    assert (meta.image_size, meta.channels, meta.z_dim, meta.width) == (16, 1, 16, 8)
    assert (meta.details.epochs, meta.details.batches) == (1, BATCHES_PER_EPOCH)
    assert meta.details.train == params_to_dict(tiny_params(train={**FAST, "max_epochs": 1}).train)
    meta.write(tmp_path / "generator_ema.json")  # the typed record writes the file it was read from
    assert (tmp_path / "generator_ema.json").read_bytes() == (paths.gan / "generator_ema.json").read_bytes()
    with torch.no_grad():
        images = generator(torch.randn(10, 16), torch.arange(10))
    assert images.shape == (10, 1, 16, 16) and images.abs().max() <= 1

    state = torch.load(paths.gan / "generator_ema.pt", weights_only=True)
    checkpoint = torch.load(paths.gan / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 0 and int(checkpoint["state_dict"]["batches_seen"]) == BATCHES_PER_EPOCH
    ema_in_checkpoint = prefixed(checkpoint["state_dict"], "generator_ema.module.")
    assert all(torch.equal(ema_in_checkpoint[k], v) for k, v in state.items())
    # the checkpoint alone rebuilds the module: its hyperparameters are saved in it
    module = ConditionalGAN.load_from_checkpoint(paths.gan / "last.ckpt", map_location="cpu")
    assert weights_hash(module.generator_ema.module) == default_run.generator_hash

    assert [p.name for p in (paths.samples / "grids").iterdir()] == ["epoch_0001.png"]
    with Image.open(paths.samples / "samples.png") as grid:  # 10 rows of 4 images of 16 px, 2 px padding
        assert grid.size == (4 * 18 + 2, 10 * 18 + 2)


def test_train_report_is_dvclive_metrics_and_one_plain_tsv_per_metric(default_run):
    report = default_run.paths.train_report
    metrics = json.loads((report / "metrics.json").read_text())
    tsvs = metric_tsvs(report)
    assert {tsv.name for tsv in tsvs} == {f"{name}.tsv" for name in LOGGED}
    assert [tsv.parent for tsv in tsvs] == [report / "plots/metrics"] * len(tsvs)
    for tsv in tsvs:
        rows = dvc_parse_plot(LocalFileSystem(), str(tsv))["data"]  # DVC's own reader of `dvc plots show`
        assert list(rows[0]) == ["step", tsv.stem]
        steps = [int(row["step"]) for row in rows]
        assert len(steps) >= 2 and steps == sorted(set(steps))
        # metrics.json (what `dvc metrics show` and `dvc exp show` read) holds the last logged values
        assert metrics[tsv.stem] == pytest.approx(float(rows[-1][tsv.stem]))
        assert metrics["step"] == steps[-1]
    assert {"loss_d", "loss_g"} <= metrics.keys()
    assert np.isfinite([metrics["loss_d"], metrics["loss_g"]]).all()
    assert default_run.log["conditioning"].eq(1).all()  # no transition: fully conditional throughout


def test_outputs_are_byte_identical_in_another_folder_and_hold_no_absolute_path(default_run, prepared_tiny, tmp_path):
    # dvc.lock hashes these folders: a fresh clone elsewhere must reproduce them bit for bit. (This also
    # is the determinism test: the same seed and params give the same bytes.)
    other = train_fresh(prepared_tiny, tmp_path / "elsewhere")
    outputs = ("models/gan", "models/gan-resume", "reports/train", "reports/samples")
    here, there = files_under(default_run.paths.root, outputs), files_under(other.paths.root, outputs)
    assert {"models/gan/last.ckpt", "models/gan-resume/last.ckpt", "reports/train/metrics.json"} <= here.keys()
    assert sorted(here) == sorted(there)
    assert [name for name in here if here[name] != there[name]] == []
    for root in (default_run.paths.root, other.paths.root):
        for needle in {str(root).encode(), str(root.resolve()).encode()}:
            assert [name for name, content in here.items() if needle in content] == []
            assert [name for name, content in there.items() if needle in content] == []


def test_another_seed_gives_other_weights(default_run, prepared_tiny, tmp_path):
    assert train_fresh(prepared_tiny, tmp_path, seed=1).generator_hash != default_run.generator_hash


def test_a_batch_size_larger_than_the_train_split_is_reduced_with_a_note(workspace, capsys):
    train.run(fast_params(batch_size=1000), workspace)
    assert (
        f"train: note: train.batch_size 1000 is larger than the train split ({TRAIN_IMAGES} images); "
        f"using {TRAIN_IMAGES}"
    ) in capsys.readouterr().out
    details = ModelMeta.read(workspace.gan / "generator_ema.json", GeneratorDetails).details
    assert details.batch_size == TRAIN_IMAGES
    assert details.batches == FAST["max_epochs"]  # one batch of the whole split per epoch
    # fewer batches than the usual log interval still log: reports/train/plots is a DVC output
    assert {"loss_d", "loss_g"} <= json.loads((workspace.train_report / "metrics.json").read_text()).keys()
    assert (workspace.train_report / "plots/metrics/loss_d.tsv").is_file()


def test_an_interrupted_run_resumes_from_its_last_checkpoint(workspace, monkeypatch, capsys):
    # 14 batches per epoch: Lightning logs every 5th batch under its 0-based index, so the crashed epoch
    # logs step 14, the first batch after the checkpoint, which the resumed run logs again.
    params = fast_params(max_epochs=2, batch_size=35)
    per_epoch = TRAIN_IMAGES // 35
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
        train.run(params, workspace)
    assert not workspace.gan.exists() and not workspace.train_report.exists()  # an unfinished run publishes nothing
    assert torch.load(workspace.gan_resume / train.CHECKPOINT, weights_only=True)["epoch"] == 0
    crashed_log = pd.read_csv(workspace.gan_resume / "live/plots/metrics/loss_d.tsv", sep="\t")
    assert per_epoch in crashed_log["step"].values

    monkeypatch.delattr(ConditionalGAN, "on_train_epoch_end")
    steps_run.clear()
    train.run(params, workspace)
    assert f"train: resuming from {workspace.gan_resume / train.CHECKPOINT}" in capsys.readouterr().out
    assert len(steps_run) == per_epoch  # the second epoch only
    assert int(checkpoint_state(workspace)["batches_seen"]) == 2 * per_epoch
    assert ModelMeta.read(workspace.gan / "generator_ema.json", GeneratorDetails).details.epochs == 2
    for tsv in metric_tsvs(workspace.train_report):
        steps = pd.read_csv(tsv, sep="\t")["step"].tolist()
        assert steps == sorted(set(steps)), f"{tsv.name}: a step logged twice"
        assert steps[0] < per_epoch <= steps[-1]  # the logs of both runs
    log = read_live_log(workspace.train_report)
    first_epoch = crashed_log[crashed_log["step"] < per_epoch]
    assert log["loss_d"][: len(first_epoch)].tolist() == first_epoch["loss_d"].tolist()  # kept from the first run
    assert set(log["epoch"]) == {0, 1}

    steps_run.clear()
    train.run(fast_params(max_epochs=2, batch_size=35, lr_g=5e-4), workspace)
    assert "was made with other params or data; starting fresh" in capsys.readouterr().out
    assert len(steps_run) == 2 * per_epoch


# --- the train split, decoded once into a scratch file; a cap on batches ---------------------------


def test_the_train_images_are_drawn_from_a_scratch_file_as_from_memory(workspace):
    data = TrainImages(workspace.prepared, 32, 0.75, seed=0)
    data.setup("fit")
    scratch = Path(data.scratch.name)
    assert data.dataset.images.path.parent == scratch and len(data.dataset.images) == TRAIN_IMAGES
    in_memory = DataLoader(
        TensorDataset(*load_split(workspace.prepared, PreparedStats.read(workspace.prepared), "train")),
        batch_size=32,
        sampler=data.train_dataloader().sampler,  # a fresh sampler of the same seed: the same draws
        drop_last=True,
    )
    batches = list(zip(data.train_dataloader(), in_memory, strict=True))
    assert len(batches) == BATCHES_PER_EPOCH
    for (images, labels), (expected_images, expected_labels) in batches:
        assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)
        assert images.is_contiguous() and images.dtype == torch.uint8
    data.teardown("fit")
    assert not scratch.exists()


def test_max_batches_stops_the_training_within_its_first_epoch(prepared_tiny, tmp_path):
    # with d_steps 2, Lightning's step counter advances 3 times every 2 batches: the cap is in batches
    run = train_fresh(prepared_tiny, tmp_path, max_epochs=3, max_batches=5, d_steps=2)
    details = ModelMeta.read(run.paths.gan / "generator_ema.json", GeneratorDetails).details
    assert details.batches == 5 and details.epochs == 1  # the first epoch, cut short (15 batches long)
    assert int(run.state["batches_seen"]) == 5
    assert (run.paths.samples / "samples.png").exists()  # the grid of the shortened epoch


# --- hardware ------------------------------------------------------------------------------------


def test_trainer_settings_follow_the_hardware_params_of_train_and_generate():
    train_cfg, generate_cfg = fast_params().train, tiny_params().generate
    assert trainer_settings(train_cfg, 0, "train") == {
        "accelerator": "cpu",
        "devices": 1,
        "num_nodes": 1,
        "precision": "32-true",
        "strategy": "auto",
    }
    assert trainer_settings(train_cfg, 2, "train") == {
        "accelerator": "gpu",
        "devices": 2,
        "num_nodes": 1,
        "precision": "bf16-mixed",
        "strategy": "ddp_find_unused_parameters_true",
    }
    # generate samples on one device in 32-bit unless told otherwise
    assert trainer_settings(generate_cfg, 2, "generate") == {
        "accelerator": "gpu",
        "devices": 1,
        "num_nodes": 1,
        "precision": "32-true",
        "strategy": "auto",
    }
    two_cpus = tiny_params(generate={"accelerator": "cpu", "devices": 2}).generate
    assert trainer_settings(two_cpus, 2, "generate")["accelerator"] == "cpu"
    assert trainer_settings(two_cpus, 2, "generate")["strategy"] == "ddp_find_unused_parameters_true"
    with pytest.raises(ConfigError, match=r"^generate\.accelerator is gpu but no GPU is available"):
        trainer_settings(tiny_params(generate={"accelerator": "gpu"}).generate, 0, "generate")


# --- each limited-data technique is switchable and has an effect ---------------------------------


def test_class_balanced_sampling_draws_rare_classes_more_often(workspace):
    def rare_share(balance: float) -> float:
        data = TrainImages(workspace.prepared, 32, balance, seed=0)
        data.setup("fit")
        labels = torch.cat([y for _, y in data.train_dataloader()] * 5)
        return (labels == 9).float().mean().item()

    counts = TrainImages(workspace.prepared, 32, 0.0, seed=0).counts
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


@pytest.mark.parametrize(
    "switch", [{"diffaugment": []}, {"lecam_weight": 0.5}, {"loss": "nonsaturating"}, {"mode_seeking_weight": 0.0}]
)
def test_diffaugment_lecam_loss_and_mode_seeking_switches_change_the_training(
    default_run, prepared_tiny, tmp_path, switch
):
    run = train_fresh(prepared_tiny, tmp_path, **switch)
    assert run.generator_hash != default_run.generator_hash
    assert ("lecam" in run.log.columns) == ("lecam_weight" in switch)
    assert ("mode_seeking" in run.log.columns) == ("mode_seeking_weight" not in switch)  # on by default


def test_transitional_conditioning_keeps_the_generator_unconditional_until_it_starts(
    default_run, prepared_tiny, tmp_path
):
    assert any((table != 0).any() for table in default_run.class_tables())
    # GSR off: its (sub)gradient would move the tables even while the class conditioning is off
    run = train_fresh(prepared_tiny, tmp_path, transition_start=BATCHES_PER_EPOCH, gsr_weight=0.0)
    assert all((table == 0).all() for table in run.class_tables())  # no class information reached G yet
    assert run.log["conditioning"].eq(0).all()


def test_group_spectral_regularisation_lowers_the_class_tables_spectral_norms(prepared_tiny, tmp_path):
    def total_spectral_norm(run: Run) -> float:
        return sum(group_spectral_norm(table).item() for table in run.class_tables())

    off = train_fresh(prepared_tiny, tmp_path / "off", gsr_weight=0.0)
    strong = train_fresh(prepared_tiny, tmp_path / "strong", gsr_weight=10.0)
    assert total_spectral_norm(strong) < 0.5 * total_spectral_norm(off)
    assert strong.log["gsr"].notna().all() and "gsr" not in off.log.columns


# --- DDP and the command line --------------------------------------------------------------------


def stage_folder(paths: Paths, **train_overrides) -> Path:
    write_params(paths.root, merge_dicts(TINY_PARAMS, {"train": {**FAST, **train_overrides}}))
    return paths.root


def test_ddp_on_two_cpu_processes_trains_one_epoch(workspace):
    folder = stage_folder(workspace, max_epochs=1, accelerator="cpu", devices=2, strategy="ddp")
    result = run_cli("train", cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    generator, meta = load_generator(workspace.gan)
    with torch.no_grad():
        images = generator(torch.randn(10, meta.z_dim), torch.arange(10))
    assert images.shape == (10, 1, 16, 16) and torch.isfinite(images).all()
    assert meta.details.batches == TRAIN_IMAGES // (32 * 2)  # each process trains on half of every epoch
    assert "loss_d" in json.loads((workspace.train_report / "metrics.json").read_text())


@pytest.fixture
def no_training(monkeypatch):
    """Bad input must be rejected before a Trainer exists (a DDP one would start processes)."""

    def trainer(*args, **kwargs):
        raise AssertionError("the training started")

    monkeypatch.setattr(pl, "Trainer", trainer)


def _one_class_left(paths: Paths):
    manifest = pd.read_csv(paths.prepared / "manifest.csv")
    manifest[manifest.label == 0].to_csv(paths.prepared / "manifest.csv", index=False)
    stats = json.loads((paths.prepared / "stats.json").read_text())
    stats["classes"] = stats["classes"][:1]
    (paths.prepared / "stats.json").write_text(json.dumps(stats))


def _no_train_image_for_class_3(paths: Paths):
    manifest = pd.read_csv(paths.prepared / "manifest.csv")
    manifest[~((manifest.label == 3) & (manifest.split == "train"))].to_csv(
        paths.prepared / "manifest.csv", index=False
    )
    stats = json.loads((paths.prepared / "stats.json").read_text())
    stats["counts"]["train"]["3"] = 0
    (paths.prepared / "stats.json").write_text(json.dumps(stats))


def _image_size_24(paths: Paths):
    stats = json.loads((paths.prepared / "stats.json").read_text())
    stats["image_size"] = 24
    (paths.prepared / "stats.json").write_text(json.dumps(stats))


@pytest.mark.parametrize(
    "damage, error, message",
    [
        (lambda paths: shutil.rmtree(paths.root / "data"), InputError, "data/prepared/stats.json: not found"),
        (_one_class_left, InputError, "1 class(es); a conditional GAN needs at least 2"),
        (_no_train_image_for_class_3, InputError, "class '3' has no training image"),
        (_image_size_24, ConfigError, "image size 24 is not supported"),
    ],
)
def test_bad_input_fails_before_training_with_one_line_naming_the_culprit(
    workspace, no_training, damage, error, message
):
    damage(workspace)
    with pytest.raises(error) as caught:
        train.run(fast_params(), workspace)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not workspace.gan_resume.exists()  # rejected before the training started


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"loss": "wgan"}, "train.loss must be one of hinge, nonsaturating, wgan-gp, got 'wgan'"),
        ({"diffaugment": ["color", "flip"]}, "train.diffaugment[1] must be one of color, translation, cutout"),
        ({"transition_start": 100}, "train.transition_start + train.transition_steps (100 batches) is longer"),
        # two processes draw 249 images each per epoch
        (
            {"batch_size": 300, "accelerator": "cpu", "devices": 2},
            "a batch of 300 leaves no full batch for each of the 2",
        ),
    ],
)
def test_bad_train_params_fail_with_one_line_naming_the_key(workspace, no_training, overrides, message):
    with pytest.raises(ConfigError) as caught:
        train.run(fast_params(**overrides), workspace)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not workspace.gan_resume.exists()


def test_command_line_prints_bad_input_as_one_error_line_and_exits_2(workspace):
    folder = stage_folder(workspace)
    _one_class_left(workspace)
    result = run_cli("train", cwd=folder)
    assert result.returncode == 2
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: ") and "a conditional GAN needs at least 2" in last_line
    assert "Traceback" not in result.stderr
