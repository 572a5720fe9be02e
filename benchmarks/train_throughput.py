"""Lightning's overhead on the GAN training: images/second through the LightningModule and Trainer
versus a plain PyTorch loop doing the same work; and what the channels-last memory format of the
networks gains: the same plain loop in the default (contiguous) layout.

Both train the same generator and discriminator (the `train:` params of params.yaml), on the same
prepared data and data loader, with the same batch size and number of batches: one discriminator
step and one generator step per batch, DiffAugment, the EMA update (the raw loop covers the default
switches: no mode seeking). They alternate in one process for several rounds after an untimed
warm-up of each. The raw loop logs nothing; Lightning logs the losses to a CSV file. Run from the
repository root after `python -m pipeline prepare`:

    python benchmarks/train_throughput.py [--batches 30] [--rounds 3] [--accelerator cpu|gpu]

The last two lines printed are `lightning_vs_raw_throughput_ratio=<x>` (total Lightning images/second
over total raw images/second) and `channels_last_vs_contiguous_throughput_ratio=<x>` (the raw loop in
channels-last, as train runs, over the raw loop in the contiguous layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import tempfile
import time

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger
from torch.optim.swa_utils import AveragedModel

from pipeline.augment import diff_augment
from pipeline.config import TrainParams, load_params, params_to_dict
from pipeline.gan import (
    ConditionalGAN,
    TrainImages,
    conditioning_strength,
    discriminator_loss,
    ema_with_warmup,
    generator_loss,
    group_spectral_norm,
    lecam_penalty,
    trainer_settings,
)
from pipeline.nets import Discriminator, Generator, to_unit_range
from pipeline.paths import Paths


def lightning_seconds(cfg: TrainParams, data: TrainImages, batches: int, settings: dict, log_dir: str) -> float:
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes)
    trainer = pl.Trainer(**settings, max_steps=2 * batches,  # two optimiser steps per batch
                         logger=CSVLogger(log_dir), log_every_n_steps=5, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(module, data.train_dataloader())
    _synchronize()
    return time.perf_counter() - start


def raw_seconds(cfg: TrainParams, data: TrainImages, batches: int, device: torch.device, bf16: bool,
                memory_format: torch.memory_format = torch.channels_last) -> float:
    generator = Generator(data.image_size, data.channels, data.num_classes, cfg.z_dim, cfg.g_width).to(device)
    discriminator = Discriminator(data.image_size, data.channels, data.num_classes, cfg.d_width).to(device)
    generator.to(memory_format=memory_format)
    discriminator.to(memory_format=memory_format)
    ema = AveragedModel(generator, multi_avg_fn=ema_with_warmup(cfg.ema_decay), use_buffers=True)
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=cfg.lr_d, betas=betas)
    ema_real, ema_fake = torch.zeros((), device=device), torch.zeros((), device=device)
    loader = itertools.chain.from_iterable(data.train_dataloader() for _ in itertools.count())
    start = time.perf_counter()
    for batch, (images, labels) in enumerate(itertools.islice(loader, batches)):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        n = len(labels)
        strength = conditioning_strength(batch, cfg.transition_start, cfg.transition_steps)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            real = to_unit_range(images).contiguous(memory_format=memory_format)
            with torch.no_grad():
                fake = generator(torch.randn(n, cfg.z_dim, device=device), labels, strength)
            logits = discriminator(diff_augment(torch.cat([real, fake]), cfg.diffaugment),
                                   torch.cat([labels, labels]), strength).float()
            loss_d = discriminator_loss(cfg.loss, logits[:n], logits[n:])
            if cfg.lecam_weight > 0:
                loss_d = loss_d + cfg.lecam_weight * lecam_penalty(logits[:n], logits[n:], ema_real, ema_fake)
            ema_real.lerp_(logits[:n].detach().mean(), 0.01)
            ema_fake.lerp_(logits[n:].detach().mean(), 0.01)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()

        discriminator.requires_grad_(False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            fake = generator(torch.randn(n, cfg.z_dim, device=device), labels, strength)
            logits = discriminator(diff_augment(fake, cfg.diffaugment), labels, strength).float()
            loss_g = generator_loss(cfg.loss, logits)
            if cfg.gsr_weight > 0:
                loss_g = loss_g + cfg.gsr_weight * sum(group_spectral_norm(table.weight)
                                                       for norm in generator.conditional_norms()
                                                       for table in (norm.gain, norm.bias))
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        discriminator.requires_grad_(True)
        ema.update_parameters(generator)
    _synchronize()
    return time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="batches per timed run (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (default 3)")
    parser.add_argument("--accelerator", choices=("auto", "cpu", "gpu"), default="auto",
                        help="auto: the GPU (bf16-mixed) when there is one, else the CPU")
    args = parser.parse_args()

    params = load_params()
    cfg = dataclasses.replace(params.train, accelerator=args.accelerator)
    data = TrainImages(Paths().prepared, cfg.batch_size, cfg.balance, params.seed, cfg.memory_budget_mb)
    data.setup("fit")
    settings = {**trainer_settings(cfg, torch.cuda.device_count(), "train"), "devices": 1, "strategy": "auto"}
    device = torch.device("cuda" if settings["accelerator"] == "gpu" else "cpu")
    bf16 = settings["precision"] == "bf16-mixed"
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{name}, {settings['precision']}; {data.image_size}x{data.image_size}x{data.channels}, "
          f"batch {cfg.batch_size}, {args.batches} batches per run, g_width {cfg.g_width}, d_width {cfg.d_width}")

    pl.seed_everything(params.seed, verbose=False)
    images = cfg.batch_size * args.batches
    totals = {"lightning": 0.0, "raw": 0.0, "raw_contiguous": 0.0}
    with tempfile.TemporaryDirectory() as log_dir:
        lightning_seconds(cfg, data, 2, settings, log_dir)  # warm-up: first-call costs of both paths
        raw_seconds(cfg, data, 2, device, bf16)
        raw_seconds(cfg, data, 2, device, bf16, torch.contiguous_format)
        for round_ in range(1, args.rounds + 1):
            seconds = {"lightning": lightning_seconds(cfg, data, args.batches, settings, log_dir),
                       "raw": raw_seconds(cfg, data, args.batches, device, bf16),
                       "raw_contiguous": raw_seconds(cfg, data, args.batches, device, bf16, torch.contiguous_format)}
            for key, value in seconds.items():
                totals[key] += value
            print(f"round {round_}: lightning {images / seconds['lightning']:.1f} img/s, "
                  f"raw {images / seconds['raw']:.1f} img/s, raw contiguous {images / seconds['raw_contiguous']:.1f} img/s")
    lightning_rate, raw_rate, contiguous_rate = (args.rounds * images / totals[k] for k in totals)
    print(f"total: lightning {lightning_rate:.1f} img/s, raw {raw_rate:.1f} img/s, raw contiguous {contiguous_rate:.1f} img/s")
    print(f"lightning_vs_raw_throughput_ratio={lightning_rate / raw_rate:.3f}")
    print(f"channels_last_vs_contiguous_throughput_ratio={raw_rate / contiguous_rate:.3f}")


if __name__ == "__main__":
    main()
