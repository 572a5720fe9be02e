"""Stage `train`: data/prepared/train -> models/gan/ (EMA generator + last checkpoint), reports/train/.

Lightning runs the training (pipeline/gan.py): a progress bar, a CSV log of the losses, a
checkpoint after every epoch and a sample grid every `train.sample_every_n_epochs` epochs.

Resuming: the running training lives in models/gan-resume/ (declared `persist: true` in dvc.yaml,
so DVC does not delete it before rerunning the stage): Lightning's `last.ckpt`, the CSV logs, the
grids so far and `fingerprint.json`, a hash of the seed, the train params and the prepared data.
A rerun whose fingerprint matches resumes from `last.ckpt`; any other fingerprint starts fresh and
says so. models/gan/ and reports/train/ are written only when the training has finished.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.utilities import rank_zero_only

from pipeline.config import ConfigError, Params, TrainParams, params_to_dict
from pipeline.gan import ConditionalGAN, TrainImages, sample_grid
from pipeline.io import PREPARED_DIR, atomic_output, encode_png_tensor, read_json, sha256_bytes, sha256_file, write_json
from pipeline.nets import GAN_DIR, save_model

RESUME_DIR = Path("models/gan-resume")
REPORT_DIR = Path("reports/train")
CHECKPOINT = "last.ckpt"
LOSS_COLUMNS = ["step", "epoch", "loss_d", "loss_g", "d_real", "d_fake", "conditioning", "lecam", "gsr"]


# --- pure helpers --------------------------------------------------------------------------------


def trainer_settings(cfg: TrainParams, gpu_count: int) -> dict:
    """Trainer arguments from params: "auto" means all GPUs in bf16-mixed when there are any, else
    one CPU process in 32-bit; more than one process means DDP."""
    if cfg.accelerator in ("gpu", "cuda") and gpu_count == 0:
        raise ConfigError(f"train.accelerator is {cfg.accelerator} but no GPU is available (use auto or cpu)")
    on_gpu = gpu_count > 0 and cfg.accelerator in ("auto", "gpu", "cuda")
    devices = cfg.devices if cfg.devices != "auto" else (gpu_count if on_gpu else 1)
    distributed = cfg.strategy == "ddp" or devices > 1 or cfg.num_nodes > 1
    return {
        "accelerator": "gpu" if on_gpu else ("cpu" if cfg.accelerator == "auto" else cfg.accelerator),
        "devices": devices,
        "num_nodes": cfg.num_nodes,
        "precision": cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true"),
        # One DDP module holds G and D, and each optimiser step leaves the other network's
        # parameters without gradients, so DDP must look for unused parameters.
        "strategy": "ddp_find_unused_parameters_true" if distributed else "auto",
    }


def training_fingerprint(params: Params, prepared_dir: Path) -> str:
    """What a resumable checkpoint must have been made with: seed, train params and prepared data."""
    stats = read_json(prepared_dir / "stats.json")
    made_with = {
        "seed": params.seed,
        "train": params_to_dict(params.train),
        "source_fingerprint": stats["source_fingerprint"],
        "manifest_sha256": sha256_file(prepared_dir / "manifest.csv"),
    }
    return sha256_bytes(json.dumps(made_with, sort_keys=True).encode())


def collect_losses(log_dir: Path) -> pd.DataFrame:
    """The CSV logs of every (resumed) run in order, one row per logged batch; a batch logged twice
    (by a run that was interrupted after its last checkpoint) keeps the later row."""
    runs = sorted(log_dir.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[1]))
    frame = pd.concat([pd.read_csv(p) for p in runs], ignore_index=True)
    frame = frame.drop_duplicates("step", keep="last").sort_values("step")
    return frame[[c for c in LOSS_COLUMNS if c in frame.columns]].reset_index(drop=True)


# --- the stage -----------------------------------------------------------------------------------


class SampleGrids(pl.Callback):
    """Every `every` epochs, a grid of the EMA generator (one row per class) into `folder`."""

    def __init__(self, folder: Path, every: int, num_classes: int, per_class: int, seed: int):
        self.folder, self.every, self.seed = folder, every, seed
        self.num_classes, self.per_class = num_classes, per_class

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ConditionalGAN) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every == 0 and trainer.is_global_zero:
            self.folder.mkdir(parents=True, exist_ok=True)
            grid = sample_grid(module.generator_ema.module, self.num_classes, self.per_class,
                               module.cfg.z_dim, self.seed)
            _write_png(self.folder / f"epoch_{epoch:04d}.png", grid)


def run(params: Params) -> None:
    cfg = params.train
    data = TrainImages(PREPARED_DIR, cfg.batch_size, cfg.balance, params.seed)
    settings = trainer_settings(cfg, torch.cuda.device_count())
    _check_transition_fits(cfg, len(data.labels) // (cfg.batch_size * settings["devices"] * cfg.num_nodes))
    checkpoint = _resume_checkpoint(training_fingerprint(params, PREPARED_DIR))

    # The checkpoint folder is not empty on purpose: it is what a rerun resumes from.
    warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
    pl.seed_everything(params.seed, workers=True, verbose=False)
    module = ConditionalGAN(cfg, data.image_size, data.channels, data.num_classes)
    trainer = pl.Trainer(
        **settings,
        max_epochs=cfg.max_epochs,
        logger=CSVLogger(RESUME_DIR, name="logs"),
        log_every_n_steps=5,
        callbacks=[
            ModelCheckpoint(dirpath=RESUME_DIR, filename=CHECKPOINT.removesuffix(".ckpt"),
                            enable_version_counter=False),
            SampleGrids(RESUME_DIR / "grids", cfg.sample_every_n_epochs, data.num_classes, cfg.samples_per_class,
                        params.seed),
        ],
        enable_progress_bar=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint)
    if not trainer.is_global_zero:
        return

    ema_generator = module.generator_ema.module
    meta = {
        "image_size": data.image_size,
        "channels": data.channels,
        "class_names": data.class_names,
        "z_dim": cfg.z_dim,
        "width": cfg.g_width,
        "train_counts": data.counts,
        "epochs": trainer.current_epoch,
        "batches": int(module.batches_seen),
        "seed": params.seed,
        "train": params_to_dict(cfg),
    }
    with atomic_output(GAN_DIR) as out:
        save_model(ema_generator, out, "generator_ema", meta)
        shutil.copy2(RESUME_DIR / CHECKPOINT, out / CHECKPOINT)
    with atomic_output(REPORT_DIR) as out:
        collect_losses(RESUME_DIR / "logs").to_csv(out / "losses.csv", index=False, lineterminator="\n")
        grid = sample_grid(ema_generator, data.num_classes, cfg.samples_per_class, cfg.z_dim, params.seed)
        _write_png(out / "samples.png", grid)
        if (RESUME_DIR / "grids").is_dir():
            shutil.copytree(RESUME_DIR / "grids", out / "grids")
    _say(f"{meta['batches']} batches in {meta['epochs']} epochs; wrote {GAN_DIR}/generator_ema.pt "
         f"and {REPORT_DIR}/samples.png")


def _write_png(path: Path, grid: torch.Tensor) -> None:
    path.write_bytes(encode_png_tensor(grid))


@rank_zero_only
def _say(message: str) -> None:
    print(f"train: {message}", flush=True)


def _check_transition_fits(cfg: TrainParams, batches_per_epoch: int) -> None:
    total = cfg.max_epochs * batches_per_epoch
    if cfg.transition_start + cfg.transition_steps > total:
        raise ConfigError(
            f"train.transition_start + train.transition_steps ({cfg.transition_start + cfg.transition_steps} "
            f"batches) is longer than the training ({total} batches): the generator would never be fully "
            "class-conditional"
        )


def _resume_checkpoint(fingerprint: str) -> Path | None:
    """The checkpoint to resume from, or None after clearing models/gan-resume for a fresh start.

    Only the first process changes the folder: under DDP the others start inside `trainer.fit`,
    after it has decided, and reach the same decision from the same files.
    """
    checkpoint, stamp = RESUME_DIR / CHECKPOINT, RESUME_DIR / "fingerprint.json"
    if checkpoint.is_file() and stamp.is_file() and read_json(stamp)["fingerprint"] == fingerprint:
        _say(f"resuming from {checkpoint}")
        return checkpoint
    if rank_zero_only.rank == 0:
        if checkpoint.is_file():
            _say(f"{checkpoint} was made with other params or data; starting fresh")
        shutil.rmtree(RESUME_DIR, ignore_errors=True)
        RESUME_DIR.mkdir(parents=True)
        write_json(stamp, {"fingerprint": fingerprint})
    return None
