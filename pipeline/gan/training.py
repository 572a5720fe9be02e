"""The class-conditional GAN as a LightningModule, and the sample grids of its generator.

One training step (Lightning's manual optimisation, as in its GAN template) updates the
discriminator once and, every `train.d_steps` batches, the generator and then the exponential moving
average (EMA) of the generator, which is the generator every later stage samples from. The losses are
computed by two methods that a plain PyTorch loop can call as well (benchmarks/train_throughput.py
measures Lightning's overhead that way). The generator family (`train.arch`), the loss, and the
limited-data techniques are switched by `TrainParams`: DiffAugment (with adaptive augmentation),
class-balanced sampling, the EMA, LeCam regularisation, transitional conditioning, group spectral
regularisation and mode seeking. The maths is in losses.py, the training images in data.py.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.optim.swa_utils import AveragedModel
from torchvision.utils import make_grid

from pipeline.config import TrainParams
from pipeline.gan.augment import diff_augment
from pipeline.gan.losses import (
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
from pipeline.nets import Discriminator, build_generator, to_uint8, to_unit_range


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
