"""The class-conditional GAN as a LightningModule, its training images as a LightningDataModule, and
its generator as a LightningModule for Lightning's predict loop (the generate stage's sampler).

`trainer_settings` turns the hardware params of the train and generate sections into Trainer
arguments, so that training and sampling run on the same engine: one CPU process, GPUs, DDP.

One training step (Lightning's manual optimisation, as in its GAN template) updates the
discriminator once and the generator once, then the exponential moving average (EMA) of the
generator, which is the generator every later stage samples from. The limited-data techniques are
switched by `TrainParams`: DiffAugment, class-balanced sampling, the EMA, LeCam regularisation,
transitional conditioning and group spectral regularisation.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler
from torchvision.utils import make_grid

from pipeline.augment import diff_augment
from pipeline.config import GenerateParams, TrainParams
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats, load_split
from pipeline.errors import ConfigError, InputError
from pipeline.io import read_manifest, read_png
from pipeline.nets import Discriminator, Generator, check_image_size, to_uint8, to_unit_range
from pipeline.sampling import class_weights

# --- the Trainer ---------------------------------------------------------------------------------

HARDWARE_PARAMS = ("accelerator", "devices", "num_nodes", "precision", "strategy")  # what trainer_settings reads


def trainer_settings(cfg: TrainParams | GenerateParams, gpu_count: int, section: str) -> dict:
    """Trainer arguments from a section's hardware params: "auto" means all GPUs when there are any
    (bf16-mixed where precision is auto), else one CPU process in 32-bit; more than one process means DDP."""
    if cfg.accelerator in ("gpu", "cuda") and gpu_count == 0:
        raise ConfigError(f"{section}.accelerator is {cfg.accelerator} but no GPU is available (use auto or cpu)")
    on_gpu = gpu_count > 0 and cfg.accelerator in ("auto", "gpu", "cuda")
    devices = cfg.devices if cfg.devices != "auto" else (gpu_count if on_gpu else 1)
    distributed = cfg.strategy == "ddp" or devices > 1 or cfg.num_nodes > 1
    return {
        "accelerator": "gpu" if on_gpu else ("cpu" if cfg.accelerator == "auto" else cfg.accelerator),
        "devices": devices,
        "num_nodes": cfg.num_nodes,
        "precision": cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true"),
        # One DDP module holds G and D, and each optimiser step leaves the other network's
        # parameters without gradients, so DDP must look for unused parameters (sampling has no DDP
        # module: only the processes).
        "strategy": "ddp_find_unused_parameters_true" if distributed else "auto",
    }


# --- pure functions: losses, regularisers, schedules ---------------------------------------------


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()  # nonsaturating


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind == "hinge":
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()  # nonsaturating


def lecam_penalty(real_logits: torch.Tensor, fake_logits: torch.Tensor,
                  ema_real: torch.Tensor, ema_fake: torch.Tensor) -> torch.Tensor:
    """LeCam regularisation (Tseng et al., CVPR 2021): keeps D's outputs on real images near its
    recent average output on fakes and vice versa, so D cannot drift apart on a small data set."""
    return F.relu(real_logits - ema_fake).pow(2).mean() + F.relu(ema_real - fake_logits).pow(2).mean()


def group_spectral_norm(class_params: torch.Tensor) -> torch.Tensor:
    """Group spectral regularisation (Rangwani et al., ECCV 2022) of one conditional-norm table.

    `class_params` is num_classes x features (a gain or bias embedding). Each class's vector is
    folded into a near-square matrix and its largest singular value is penalised: the mean over
    classes. Low spectral norms stop tail classes collapsing onto a few modes.
    """
    num_classes, features = class_params.shape
    rows = max(r for r in range(1, math.isqrt(features) + 1) if features % r == 0)
    return torch.linalg.matrix_norm(class_params.float().view(num_classes, rows, -1), ord=2).mean()


def mode_seeking_penalty(images: torch.Tensor, noise: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mode seeking (Mao et al., "Mode Seeking GANs", CVPR 2019): the first and second halves of the
    batch are two latents under the same labels; the penalty is 1 / (mean image distance / mean latent
    distance), so the generator is pushed to make different latents give different images instead of
    collapsing each class onto a few modes."""
    half = images.shape[0] // 2
    image_distance = (images[:half] - images[half:2 * half]).abs().mean()
    noise_distance = (noise[:half] - noise[half:2 * half]).abs().mean()
    return 1.0 / (image_distance / noise_distance + eps)


def conditioning_strength(batches_seen: int, start: int, steps: int) -> float:
    """Transitional conditioning (Shahbazi et al., ICLR 2022): 0 (unconditional) for the first
    `start` batches, then a linear ramp to 1 (fully class-conditional) over `steps` batches."""
    if batches_seen < start:
        return 0.0
    return 1.0 if steps == 0 else min(1.0, (batches_seen - start) / steps)


def ema_with_warmup(decay: float):
    """`multi_avg_fn` for AveragedModel: EMA whose decay grows as min(decay, (1 + n) / (10 + n)),
    so the average is not dominated by the random initial weights in a short run."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged) -> None:
        if not averaged[0].is_floating_point():  # AveragedModel groups by dtype: BatchNorm's counters
            torch._foreach_copy_(averaged, current)
            return
        n = int(num_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return update


@torch.no_grad()
def sample_grid(generator: Generator, num_classes: int, per_class: int, z_dim: int, seed: int) -> torch.Tensor:
    """A uint8 CxHxW grid, one row per class (label order), from fixed noise of `seed`."""
    device = next(generator.parameters()).device
    noise = torch.randn(num_classes * per_class, z_dim, generator=torch.Generator().manual_seed(seed)).to(device)
    labels = torch.arange(num_classes, device=device).repeat_interleave(per_class)
    was_training = generator.training
    images = generator.eval()(noise, labels).float().cpu()
    generator.train(was_training)
    return to_uint8(make_grid(images, nrow=per_class, padding=2, pad_value=-1.0))


# --- data ----------------------------------------------------------------------------------------


class PreparedImages(Dataset):
    """Images of the prepared data read from their PNG files when drawn: (uint8 CxHxW image, label)."""

    def __init__(self, prepared_dir: Path, paths: list[str], labels: torch.Tensor, channels: int):
        self.prepared_dir, self.paths, self.labels, self.channels = prepared_dir, paths, labels, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = read_png(self.prepared_dir / self.paths[index], self.channels)
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), self.labels[index]


class TrainImages(pl.LightningDataModule):
    """The prepared train split, drawn class-balanced: decoded once into a uint8 tensor (in `setup`),
    or, when that tensor would exceed `memory_budget_mb` (None: no limit), read from the PNG files
    as drawn (`streams`). Both give the same batches in the same order.

    The constructor reads only stats.json, so that input a conditional GAN cannot train on is
    rejected before the Trainer starts. A batch size larger than the train split is reduced to it.
    """

    def __init__(self, prepared_dir: Path, batch_size: int, balance: float, seed: int,
                 memory_budget_mb: int | None = None):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.stats = PreparedStats.read(self.prepared_dir)
        self.class_names = self.stats.class_names
        self.image_size, self.channels = self.stats.image_size, self.stats.channels
        if len(self.class_names) < 2:
            raise InputError(f"{self.prepared_dir}: {len(self.class_names)} class(es); a conditional GAN needs at least 2")
        check_image_size(self.image_size)
        self.counts = self.stats.split_counts("train")
        for name, count in zip(self.class_names, self.counts):
            if count == 0:
                raise InputError(f"{self.prepared_dir}: class {name!r} has no training image")
        self.batch_size = min(batch_size, sum(self.counts))
        self.balance, self.seed = balance, seed
        self.decoded_bytes = sum(self.counts) * self.channels * self.image_size ** 2
        self.streams = memory_budget_mb is not None and self.decoded_bytes > memory_budget_mb * 2**20

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def setup(self, stage: str) -> None:
        if self.streams:
            manifest = read_manifest(self.prepared_dir / "manifest.csv", MANIFEST_COLUMNS)
            rows = manifest[manifest["split"] == "train"]
            self.labels = torch.tensor(rows["label"].to_numpy(), dtype=torch.int64)
            self.dataset = PreparedImages(self.prepared_dir, rows["path"].tolist(), self.labels, self.channels)
        else:
            images, self.labels = load_split(self.prepared_dir, self.stats, "train")
            self.dataset = TensorDataset(images, self.labels)

    def train_dataloader(self) -> DataLoader:
        weights = torch.from_numpy(class_weights(self.labels.numpy(), self.num_classes, self.balance))
        sampler = WeightedRandomSampler(weights, num_samples=len(self.labels), replacement=True,
                                        generator=torch.Generator().manual_seed(self.seed))
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)


# --- model ---------------------------------------------------------------------------------------


class ConditionalGAN(pl.LightningModule):
    """`train` is the params' train section as a dict (saved in checkpoints as hyperparameters, so
    `ConditionalGAN.load_from_checkpoint(path)` rebuilds the module)."""

    def __init__(self, train: dict, image_size: int, channels: int, num_classes: int):
        super().__init__()
        self.save_hyperparameters(logger=False)  # in the checkpoint, not in DVCLive's params file
        self.cfg = cfg = TrainParams(**train)
        self.automatic_optimization = False
        self.generator = Generator(image_size, channels, num_classes, cfg.z_dim, cfg.g_width)
        self.discriminator = Discriminator(image_size, channels, num_classes, cfg.d_width)
        # Channels-last convolutions are faster on the CPU (benchmarks/train_throughput.py measures by how much).
        self.generator.to(memory_format=torch.channels_last)
        self.discriminator.to(memory_format=torch.channels_last)
        self.generator_ema = AveragedModel(self.generator, use_buffers=True,
                                           multi_avg_fn=ema_with_warmup(cfg.ema_decay if cfg.ema else 0.0))
        self.generator_ema.requires_grad_(False)
        # Checkpointed state of the schedules and of LeCam's running averages of D's outputs. With two
        # optimisers trainer.global_step counts two per batch, so batches are counted here.
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_real_logit", torch.zeros(()))
        self.register_buffer("ema_fake_logit", torch.zeros(()))

    def configure_optimizers(self):
        betas = (self.cfg.beta1, self.cfg.beta2)
        return (torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g, betas=betas),
                torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=betas))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        real = to_unit_range(images).contiguous(memory_format=torch.channels_last)
        n = real.shape[0]
        cfg = self.cfg
        strength = conditioning_strength(int(self.batches_seen), cfg.transition_start, cfg.transition_steps)
        opt_g, opt_d = self.optimizers()

        # Discriminator: real and fake images in one batch, augmented alike. Fakes take the real
        # batch's labels, so the class-balanced sampler balances them too.
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():
                fake = self.generator(self.noise(n), labels, strength)
            logits = self.discriminator(diff_augment(torch.cat([real, fake]), cfg.diffaugment),
                                        torch.cat([labels, labels]), strength).float()
            real_logits, fake_logits = logits[:n], logits[n:]
            loss_d = discriminator_loss(cfg.loss, real_logits, fake_logits)
            if cfg.lecam_weight > 0:
                lecam = lecam_penalty(real_logits, fake_logits, self.ema_real_logit, self.ema_fake_logit)
                loss_d = loss_d + cfg.lecam_weight * lecam
                self.log("lecam", lecam)
            self.ema_real_logit.lerp_(real_logits.detach().mean(), 0.01)
            self.ema_fake_logit.lerp_(fake_logits.detach().mean(), 0.01)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()

        with self.toggled_optimizer(opt_g):
            if cfg.mode_seeking_weight > 0:  # pairs of latents under one label: the second half repeats the first's
                labels = torch.cat([labels[: n // 2], labels[: n // 2], labels[2 * (n // 2):]])
            noise = self.noise(n)
            fake = self.generator(noise, labels, strength)
            fake_logits_g = self.discriminator(diff_augment(fake, cfg.diffaugment), labels, strength).float()
            loss_g = generator_loss(cfg.loss, fake_logits_g)
            if cfg.mode_seeking_weight > 0:
                seeking = mode_seeking_penalty(fake, noise)
                loss_g = loss_g + cfg.mode_seeking_weight * seeking
                self.log("mode_seeking", seeking)
            if cfg.gsr_weight > 0:
                gsr = sum(group_spectral_norm(table.weight) for norm in self.generator.conditional_norms()
                          for table in (norm.gain, norm.bias))
                loss_g = loss_g + cfg.gsr_weight * gsr
                self.log("gsr", gsr)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()

        self.generator_ema.update_parameters(self.generator)
        self.batches_seen += 1
        self.log_dict({"loss_d": loss_d, "loss_g": loss_g, "d_real": real_logits.mean(),
                       "d_fake": fake_logits.mean(), "conditioning": strength}, prog_bar=True)

    def noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.z_dim, device=self.device)


# --- sampling (the generate stage) ---------------------------------------------------------------


def latents(seeds: np.ndarray, z_dim: int, truncation: float | None) -> torch.Tensor:
    """One latent vector per seed: standard normal, or normal truncated to [-truncation, truncation]."""
    generator = torch.Generator()
    rows = []
    for seed in seeds.tolist():
        generator.manual_seed(seed)
        if truncation is None:
            rows.append(torch.randn(z_dim, generator=generator))
        else:
            rows.append(torch.nn.init.trunc_normal_(torch.empty(z_dim), a=-truncation, b=truncation, generator=generator))
    return torch.stack(rows)


class CandidateSampler(pl.LightningModule):
    """The generator for Lightning's predict loop. `batches` are batches of candidates, (latent seeds,
    label); a predicted batch is (its number, uint8 images on the CPU). A candidate's image depends only
    on its seed and label.

    Each process takes whole batches, round robin (so the Trainer must not shard them again:
    `use_distributed_sampler=False`): on the CPU PyTorch picks its convolution and matrix kernels by
    batch shape and thread count, so a batch split differently (or run on another number of threads
    per process) could change the last bit of a pixel.
    """

    def __init__(self, generator: Generator, z_dim: int, truncation: float | None):
        super().__init__()
        self.generator, self.z_dim, self.truncation = generator, z_dim, truncation
        self.batches: list[tuple[np.ndarray, int]] = []
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer batches than processes

    def predict_dataloader(self) -> DataLoader:
        items = [(number, torch.from_numpy(seeds.astype(np.int64)), torch.full((len(seeds),), label))
                 for number, (seeds, label) in enumerate(self.batches)]
        return DataLoader(items[self.global_rank::self.trainer.world_size], batch_size=None)

    def predict_step(self, batch, batch_idx):
        number, seeds, labels = batch
        noise = latents(seeds.cpu().numpy(), self.z_dim, self.truncation).to(self.device)
        return number, to_uint8(self.generator(noise, labels)).cpu()


def sample_batches(trainer: pl.Trainer, sampler: CandidateSampler,
                   batches: list[tuple[np.ndarray, int]]) -> list[torch.Tensor] | None:
    """The uint8 images of each batch of candidates (latent seeds, label), in order, on the first
    process; None on the others. Under DDP every process must call it with the same batches."""
    sampler.batches = batches
    predictions = trainer.predict(sampler, return_predictions=True) or []  # None where a process had no batch
    if trainer.world_size > 1:
        shares = [None] * trainer.world_size
        torch.distributed.all_gather_object(shares, predictions)
        predictions = [prediction for share in shares for prediction in share]
    if not trainer.is_global_zero:
        return None
    images = dict(predictions)
    return [images[number] for number in range(len(batches))]
