"""The class-conditional GAN as a LightningModule, its training images as a LightningDataModule, and
its generator as a LightningModule for Lightning's predict loop (the generate stage's sampler).

`trainer_settings` turns the hardware params of the train and generate sections into Trainer
arguments, so that training and sampling run on the same engine: one CPU process, GPUs, DDP.

One training step (Lightning's manual optimisation, as in its GAN template) updates the
discriminator once and, every `train.d_steps` batches, the generator and then the exponential moving
average (EMA) of the generator, which is the generator every later stage samples from. The losses are
computed by two methods that a plain PyTorch loop can call as well (benchmarks/train_throughput.py
measures Lightning's overhead that way). The generator family (`train.arch`), the loss, and the
limited-data techniques are switched by `TrainParams`: DiffAugment (with adaptive augmentation),
class-balanced sampling, the EMA, LeCam regularisation, transitional conditioning, group spectral
regularisation and mode seeking. The maths is in pipeline/losses.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.environments import SLURMEnvironment, TorchElasticEnvironment
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset, TensorDataset, WeightedRandomSampler
from torchvision.utils import make_grid

from pipeline.augment import diff_augment
from pipeline.config import GenerateParams, TrainParams
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats, load_split
from pipeline.errors import ConfigError, InputError
from pipeline.io import read_manifest, read_png
from pipeline.losses import (
    adapted_probability,
    conditioning_strength,
    discriminator_loss,
    ema_with_warmup,
    generator_loss,
    gradient_penalty,
    group_spectral_norm,
    lecam_penalty,
    mode_seeking_penalty,
)
from pipeline.nets import Discriminator, build_generator, check_image_size, to_uint8, to_unit_range
from pipeline.sampling import class_weights

# --- the Trainer ---------------------------------------------------------------------------------

HARDWARE_PARAMS = ("accelerator", "devices", "num_nodes", "precision", "strategy")  # what trainer_settings reads


def trainer_settings(cfg: TrainParams | GenerateParams, gpu_count: int, section: str, launched: int = 1) -> dict:
    """Trainer arguments from a section's hardware params: "auto" means all GPUs when there are any
    (bf16-mixed where precision is auto), else one CPU process in 32-bit; more than one process means DDP.

    `launched`: the processes a cluster launcher started for the run (`launched_processes`). They must
    be the params' processes: one process in the params would make each of them train alone and write
    the outputs, and Lightning checks other numbers only with a traceback."""
    if cfg.accelerator in ("gpu", "cuda") and gpu_count == 0:
        raise ConfigError(f"{section}.accelerator is {cfg.accelerator} but no GPU is available (use auto or cpu)")
    on_gpu = gpu_count > 0 and cfg.accelerator in ("auto", "gpu", "cuda")
    devices = cfg.devices if cfg.devices != "auto" else (gpu_count if on_gpu else 1)
    if launched > 1 and launched != devices * cfg.num_nodes:
        raise ConfigError(
            f"{section}.num_nodes {cfg.num_nodes} x {section}.devices {devices} make {devices * cfg.num_nodes} "
            f"process(es), but the launcher (torchrun or srun) started {launched}; set {section}.num_nodes to its "
            f"nodes and {section}.devices to its processes per node"
        )
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


def launched_processes() -> int:
    """The processes that torchrun or SLURM's srun started for this run, as Lightning reads them from
    the environment; 1 without a launcher (Lightning's own DDP launcher included)."""
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment().world_size()
    return 1


# --- sample grids ---------------------------------------------------------------------------------


@torch.no_grad()
def sample_grid(generator: torch.nn.Module, num_classes: int, per_class: int, z_dim: int, seed: int) -> torch.Tensor:
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

    def __init__(
        self, prepared_dir: Path, batch_size: int, balance: float, seed: int, memory_budget_mb: int | None = None
    ):
        super().__init__()
        self.prepared_dir = Path(prepared_dir)
        self.stats = PreparedStats.read(self.prepared_dir)
        self.class_names = self.stats.class_names
        self.image_size, self.channels = self.stats.image_size, self.stats.channels
        if len(self.class_names) < 2:
            raise InputError(
                f"{self.prepared_dir}: {len(self.class_names)} class(es); a conditional GAN needs at least 2"
            )
        check_image_size(self.image_size)
        self.counts = self.stats.split_counts("train")
        for name, count in zip(self.class_names, self.counts):
            if count == 0:
                raise InputError(f"{self.prepared_dir}: class {name!r} has no training image")
        self.batch_size = min(batch_size, sum(self.counts))
        self.balance, self.seed = balance, seed
        self.decoded_bytes = sum(self.counts) * self.channels * self.image_size**2
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
        sampler = WeightedRandomSampler(
            weights, num_samples=len(self.labels), replacement=True, generator=torch.Generator().manual_seed(self.seed)
        )
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
        self.generator = build_generator(
            cfg.arch, image_size, channels, num_classes, cfg.z_dim, cfg.g_width, cfg.g_conditioning
        )
        self.discriminator = Discriminator(image_size, channels, num_classes, cfg.d_width)
        # Channels-last convolutions are faster on the CPU (benchmarks/train_throughput.py measures by how much).
        self.memory_format = torch.channels_last
        self.generator.to(memory_format=self.memory_format)
        self.discriminator.to(memory_format=self.memory_format)
        self.generator_ema = AveragedModel(
            self.generator, use_buffers=True, multi_avg_fn=ema_with_warmup(cfg.ema_decay if cfg.ema else 0.0)
        )
        self.generator_ema.requires_grad_(False)
        # Checkpointed state of the schedules and of LeCam's running averages of D's outputs. With two
        # optimisers trainer.global_step counts two per batch, so batches are counted here.
        self.register_buffer("batches_seen", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema_real_logit", torch.zeros(()))
        self.register_buffer("ema_fake_logit", torch.zeros(()))
        # Adaptive augmentation: the probability of each augmentation (1: plain DiffAugment), and the
        # signs of D's outputs on real images since the last adjustment.
        self.register_buffer("augment_probability", torch.tensor(1.0 if cfg.ada_target is None else 0.0))
        self.register_buffer("real_signs", torch.zeros(2))  # sum, count

    def configure_optimizers(self):
        betas = (self.cfg.beta1, self.cfg.beta2)
        return (
            torch.optim.Adam(self.generator.parameters(), lr=self.cfg.lr_g, betas=betas),
            torch.optim.Adam(self.discriminator.parameters(), lr=self.cfg.lr_d, betas=betas),
        )

    def training_step(self, batch, batch_idx):
        images, labels = batch
        real = self.real_images(images)
        strength = self.strength()
        opt_g, opt_d = self.optimizers()
        with self.toggled_optimizer(opt_d):
            loss_d, logged = self.discriminator_step_loss(real, labels, strength)
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(loss_d)
            opt_d.step()
        if self.generator_turn():
            with self.toggled_optimizer(opt_g):
                loss_g, logged_g = self.generator_step_loss(labels, strength)
                opt_g.zero_grad(set_to_none=True)
                self.manual_backward(loss_g)
                opt_g.step()
            self.generator_ema.update_parameters(self.generator)
            logged |= {"loss_g": loss_g, **logged_g}
        self.end_batch()
        if self.cfg.ada_target is not None:
            logged["augment_probability"] = self.augment_probability
        self.log_dict({"loss_d": loss_d, **logged, "conditioning": strength}, prog_bar=True)

    # The work of one batch, in parts that a plain loop can call (benchmarks/train_throughput.py).

    def real_images(self, images: torch.Tensor) -> torch.Tensor:
        return to_unit_range(images).contiguous(memory_format=self.memory_format)

    def strength(self) -> float:
        return conditioning_strength(int(self.batches_seen), self.cfg.transition_start, self.cfg.transition_steps)

    def generator_turn(self) -> bool:
        return (int(self.batches_seen) + 1) % self.cfg.d_steps == 0

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        return diff_augment(images, self.cfg.diffaugment, float(self.augment_probability))

    def discriminator_step_loss(
        self, real: torch.Tensor, labels: torch.Tensor, strength: float
    ) -> tuple[torch.Tensor, dict]:
        """D's loss on real and fake images in one batch, augmented alike; fakes take the real batch's
        labels, so the class-balanced sampler balances them too. Also updates the running averages of
        D's outputs (LeCam, adaptive augmentation)."""
        cfg, n = self.cfg, real.shape[0]
        with torch.no_grad():
            fake = self.generator(self.noise(n), labels, strength)
        both = self.augment(torch.cat([real, fake]))
        logits = self.discriminator(both, torch.cat([labels, labels]), strength).float()
        real_logits, fake_logits = logits[:n], logits[n:]
        loss = discriminator_loss(cfg.loss, real_logits, fake_logits)
        logged = {"d_real": real_logits.mean(), "d_fake": fake_logits.mean()}
        if cfg.loss == "wgan-gp":
            penalty = gradient_penalty(lambda x: self.discriminator(x, labels, strength), both[:n], both[n:])
            loss = loss + cfg.gp_weight * penalty
            logged["gradient_penalty"] = penalty
        if cfg.lecam_weight > 0:
            lecam = lecam_penalty(real_logits, fake_logits, self.ema_real_logit, self.ema_fake_logit)
            loss = loss + cfg.lecam_weight * lecam
            logged["lecam"] = lecam
        self.ema_real_logit.lerp_(real_logits.detach().mean(), 0.01)
        self.ema_fake_logit.lerp_(fake_logits.detach().mean(), 0.01)
        if cfg.ada_target is not None:
            signs = torch.stack([real_logits.detach().sign().sum(), real_logits.new_tensor(float(n))])
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(signs)  # every process adapts the same probability (DDP)
            self.real_signs += signs
        return loss, logged

    def generator_step_loss(self, labels: torch.Tensor, strength: float) -> tuple[torch.Tensor, dict]:
        cfg, n = self.cfg, labels.shape[0]
        if cfg.mode_seeking_weight > 0:  # pairs of latents under one label: the second half repeats the first's
            labels = torch.cat([labels[: n // 2], labels[: n // 2], labels[2 * (n // 2) :]])
        noise = self.noise(n)
        fake = self.generator(noise, labels, strength)
        fake_logits = self.discriminator(self.augment(fake), labels, strength).float()
        loss, logged = generator_loss(cfg.loss, fake_logits), {}
        if cfg.mode_seeking_weight > 0:
            logged["mode_seeking"] = seeking = mode_seeking_penalty(fake, noise)
            loss = loss + cfg.mode_seeking_weight * seeking
        norms = self.generator.conditional_norms()  # per-class tables: none with BigGAN conditioning or stylegan2
        if cfg.gsr_weight > 0 and norms:
            logged["gsr"] = gsr = sum(
                group_spectral_norm(table.weight) for norm in norms for table in (norm.gain, norm.bias)
            )
            loss = loss + cfg.gsr_weight * gsr
        return loss, logged

    def end_batch(self) -> None:
        """Count the batch; every `ada_interval` batches, adapt the augmentation probability."""
        self.batches_seen += 1
        cfg = self.cfg
        if cfg.ada_target is not None and int(self.batches_seen) % cfg.ada_interval == 0:
            total, count = self.real_signs.tolist()
            self.augment_probability.fill_(
                adapted_probability(
                    float(self.augment_probability), total / count, cfg.ada_target, int(count), cfg.ada_kimg
                )
            )
            self.real_signs.zero_()

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
            rows.append(
                torch.nn.init.trunc_normal_(torch.empty(z_dim), a=-truncation, b=truncation, generator=generator)
            )
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

    def __init__(self, generator: torch.nn.Module, z_dim: int, truncation: float | None):
        super().__init__()
        self.generator, self.z_dim, self.truncation = generator, z_dim, truncation
        self.batches: list[tuple[np.ndarray, int]] = []
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer batches than processes

    def predict_dataloader(self) -> DataLoader:
        items = [
            (number, torch.from_numpy(seeds.astype(np.int64)), torch.full((len(seeds),), label))
            for number, (seeds, label) in enumerate(self.batches)
        ]
        return DataLoader(items[self.global_rank :: self.trainer.world_size], batch_size=None)

    def predict_step(self, batch, batch_idx):
        number, seeds, labels = batch
        noise = latents(seeds.cpu().numpy(), self.z_dim, self.truncation).to(self.device)
        return number, to_uint8(self.generator(noise, labels)).cpu()


def sample_batches(
    trainer: pl.Trainer, sampler: CandidateSampler, batches: list[tuple[np.ndarray, int]]
) -> list[torch.Tensor] | None:
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
