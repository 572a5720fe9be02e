"""Stage `train`: data/prepared/train -> models/gan/ (EMA generator + last checkpoint), reports/train/
(DVCLive's log of the losses) and reports/samples/ (sample grids).

Lightning runs the training (pipeline/gan/: the LightningModule in training.py, the images in
data.py): a progress bar, DVCLive's Lightning logger for the losses (reports/train/metrics.json and
plots/, which `dvc exp show` and `dvc plots show` read), a checkpoint after every epoch and a sample
grid every `train.sample_every_n_epochs` epochs.

Resuming: the running training lives in models/gan-resume/ (declared `persist: true` in dvc.yaml,
so DVC does not delete it before rerunning the stage): Lightning's `last.ckpt`, the DVCLive log, the
grids so far and `fingerprint.json`, a hash of the seed, the train params and the prepared data.
A rerun whose fingerprint matches resumes from `last.ckpt`; any other fingerprint starts fresh and
says so. models/gan/ and reports/ are written only when the training has finished.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from dvclive.lightning import DVCLiveLogger
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config import Params, TrainParams, params_to_dict
from pipeline.contracts import GeneratorDetails, ModelMeta
from pipeline.environment import environment
from pipeline.errors import ConfigError
from pipeline.gan.data import TrainImages
from pipeline.gan.training import ConditionalGAN, sample_grid
from pipeline.hardware import launched_processes, trainer_settings
from pipeline.io import atomic_output, encode_png_tensor, json_text, sha256_bytes, sha256_file, write_atomically
from pipeline.nets import save_model
from pipeline.paths import Paths

CHECKPOINT = "last.ckpt"


# --- pure helpers --------------------------------------------------------------------------------


def training_fingerprint(params: Params, data: TrainImages) -> str:
    """What a resumable checkpoint must have been made with: seed, train params and prepared data."""
    made_with = {
        "seed": params.seed,
        "train": params_to_dict(params.train),
        "source_fingerprint": data.stats.source_fingerprint,
        "manifest_sha256": sha256_file(data.prepared_dir / "manifest.csv"),
    }
    return sha256_bytes(json.dumps(made_with, sort_keys=True).encode())


def forget_steps_after(live_dir: Path, batches_done: int) -> None:
    """Drop the DVCLive rows logged after the checkpoint a run resumes from: the resumed run logs
    those batches again. Lightning logs a batch under its 0-based index, so a checkpoint taken after
    `batches_done` batches holds the steps below `batches_done`, and step `batches_done` is the
    first batch it does not hold."""
    for tsv in sorted((live_dir / "plots").rglob("*.tsv")):
        frame = pd.read_csv(tsv, sep="\t")
        frame[frame["step"] < batches_done].to_csv(tsv, sep="\t", index=False, lineterminator="\n")


# --- callbacks -----------------------------------------------------------------------------------


class LastCheckpoint(ModelCheckpoint):
    """ModelCheckpoint that keeps its own state out of the checkpoint: that state holds absolute
    paths, which would make the same training give other bytes in another checkout."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass


class SampleGrids(pl.Callback):
    """Every `every` epochs, a grid of the EMA generator (one row per class) into `folder`."""

    def __init__(self, folder: Path, every: int, num_classes: int, per_class: int, seed: int):
        self.folder, self.every, self.seed = folder, every, seed
        self.num_classes, self.per_class = num_classes, per_class

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ConditionalGAN) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 and trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            grid = sample_grid(
                module.generator_ema.module, self.num_classes, self.per_class, module.cfg.z_dim, self.seed
            )
            (self.folder / f"epoch_{epoch:04d}.png").write_bytes(encode_png_tensor(grid))


class SeedPerProcess(pl.Callback):
    """Under DDP every process seeds itself with `seed` (pl.seed_everything) and would draw the same
    latents and augmentations as the others; once the ranks are known, each process gets a stream of
    its own (seeded by `seed` and its rank). One process keeps the stream `seed` started."""

    def __init__(self, seed: int):
        self.seed = seed

    def setup(self, trainer: pl.Trainer, module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            torch.manual_seed(int(np.random.default_rng([self.seed, trainer.global_rank]).integers(2**63)))


# --- the stage -----------------------------------------------------------------------------------


def run(params: Params, paths: Paths = Paths()) -> None:
    cfg = params.train
    data = TrainImages(paths.prepared, cfg.batch_size, cfg.balance, params.seed)
    if data.batch_size < cfg.batch_size:
        _say(
            f"note: train.batch_size {cfg.batch_size} is larger than the train split "
            f"({sum(data.counts)} images); using {data.batch_size}"
        )
    settings = trainer_settings(cfg, torch.cuda.device_count(), "train", launched_processes())
    batches_per_epoch = _batches_per_epoch(sum(data.counts), data.batch_size, settings["devices"] * cfg.num_nodes)
    batches = _batches_to_train(cfg, batches_per_epoch)
    _check_transition_fits(cfg, batches)
    resume_dir = paths.gan_resume
    checkpoint = _resume_checkpoint(resume_dir, training_fingerprint(params, data))

    # The checkpoint folder is not empty on purpose: it is what a rerun resumes from.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    pl.seed_everything(params.seed, workers=True, verbose=False)
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes)
    trainer = pl.Trainer(
        **settings,
        max_epochs=cfg.max_epochs,
        # Lightning counts every optimiser step: a discriminator step each batch, a generator step every d_steps
        max_steps=-1 if cfg.max_batches is None else cfg.max_batches + cfg.max_batches // cfg.d_steps,
        logger=DVCLiveLogger(
            dir=str(resume_dir / "live"), resume=checkpoint is not None, save_dvc_exp=False, dvcyaml=False
        ),
        # Every 5th batch, or every batch of a training shorter than 5: an empty log would leave
        # reports/train/plots, a DVC output, missing.
        log_every_n_steps=min(5, batches),
        callbacks=[
            LastCheckpoint(dirpath=resume_dir, filename=CHECKPOINT.removesuffix(".ckpt"), enable_version_counter=False),
            SampleGrids(
                resume_dir / "grids", cfg.sample_every_n_epochs, data.num_classes, cfg.samples_per_class, params.seed
            ),
            SeedPerProcess(params.seed),
        ],
        enable_progress_bar=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint)
    if not trainer.is_global_zero:
        return

    ema_generator = module.generator_ema.module
    details = GeneratorDetails(
        train_counts=data.counts,
        epochs=trainer.current_epoch,
        batches=int(module.batches_seen),
        batch_size=data.batch_size,
        seed=params.seed,
        train=params_to_dict(cfg),
        environment=environment(settings["accelerator"]),
    )
    meta = ModelMeta(data.image_size, data.channels, data.class_names, cfg.g_width, z_dim=cfg.z_dim, details=details)
    with atomic_output(paths.gan) as out:
        save_model(ema_generator, out, "generator_ema", meta)
        shutil.copy2(resume_dir / CHECKPOINT, out / CHECKPOINT)
    with atomic_output(paths.train_report) as out:
        shutil.copytree(resume_dir / "live", out, dirs_exist_ok=True)
    with atomic_output(paths.samples) as out:
        grid = sample_grid(ema_generator, data.num_classes, cfg.samples_per_class, cfg.z_dim, params.seed)
        (out / "samples.png").write_bytes(encode_png_tensor(grid))
        if (resume_dir / "grids").is_dir():
            shutil.copytree(resume_dir / "grids", out / "grids")
    _say(
        f"{details.batches} batches in {details.epochs} epochs; wrote {paths.gan}/generator_ema.pt "
        f"and {paths.samples}/samples.png"
    )


@rank_zero_only
def _say(message: str) -> None:
    print(f"train: {message}", flush=True)


def _batches_per_epoch(images: int, batch_size: int, processes: int) -> int:
    """Full batches each training process draws per epoch (DDP gives each ceil(images / processes))."""
    batches = math.ceil(images / processes) // batch_size
    if batches == 0:
        raise ConfigError(
            f"train.batch_size: a batch of {batch_size} leaves no full batch for each of the {processes} training "
            f"processes (the train split has {images} images); lower train.batch_size"
        )
    return batches


def _batches_to_train(cfg: TrainParams, batches_per_epoch: int) -> int:
    """The batches each training process trains: max_epochs of them, or max_batches if fewer."""
    return min(cfg.max_epochs * batches_per_epoch, cfg.max_batches or math.inf)


def _check_transition_fits(cfg: TrainParams, total: int) -> None:
    if cfg.transition_start + cfg.transition_steps > total:
        raise ConfigError(
            f"train.transition_start + train.transition_steps ({cfg.transition_start + cfg.transition_steps} "
            f"batches) is longer than the training ({total} batches): the generator would never be fully "
            "class-conditional"
        )


def _resume_checkpoint(resume_dir: Path, fingerprint: str) -> Path | None:
    """The checkpoint to resume from, or None after clearing the resume folder for a fresh start.

    Only the first process changes the folder. The others reach the same decision from the same
    files, even while it clears them (under torchrun or srun every process runs this at once): they
    read the fingerprint before the checkpoint, and a fresh start deletes the checkpoint before it
    writes the new fingerprint, whole, so no process finds a matching fingerprint beside a checkpoint
    that is being deleted.
    """
    checkpoint, stamp = resume_dir / CHECKPOINT, resume_dir / "fingerprint.json"
    if _stamped_fingerprint(stamp) == fingerprint and checkpoint.is_file():
        _say(f"resuming from {checkpoint}")
        if rank_zero_only.rank == 0:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
            forget_steps_after(resume_dir / "live", int(state["state_dict"]["batches_seen"]))
        return checkpoint
    if rank_zero_only.rank == 0:
        if checkpoint.is_file():
            _say(f"{checkpoint} was made with other params or data; starting fresh")
        shutil.rmtree(resume_dir, ignore_errors=True)
        resume_dir.mkdir(parents=True)
        write_atomically(stamp, json_text({"fingerprint": fingerprint}))
    return None


def _stamped_fingerprint(stamp: Path) -> str | None:
    """The fingerprint a resume folder was made for; None when it has none (yet, or no longer)."""
    try:
        return json.loads(stamp.read_text(encoding="utf-8"))["fingerprint"]
    except FileNotFoundError:
        return None
