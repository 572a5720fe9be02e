"""Lightning's overhead on the GAN training: images/second through the LightningModule and Trainer
versus a plain PyTorch loop doing the same work, for every generator family and loss; and what the
channels-last memory format of the networks gains: the same plain loop in the default (contiguous)
layout.

Both loops drive the same ConditionalGAN (pipeline/gan/training.py) on the same prepared data and data
loader, with the same batch size and number of batches: the plain loop calls the module's own
`discriminator_step_loss`, `generator_step_loss` and `end_batch`, with plain optimiser steps and the
same freezing of the other network that Lightning's `toggled_optimizer` does, so every switch of the
train params (mode seeking, group spectral regularisation, the gradient penalty, adaptive
augmentation, `d_steps`, the EMA) is in both. They alternate in one process for several rounds after
an untimed warm-up of each. The plain loop logs nothing; Lightning logs the losses to a CSV file.
Lightning is timed from the start to the end of its training loop; its fixed start-up per fit is
printed apart (a training of thousands of batches amortises it). Run
after `python -m pipeline prepare` (from the repository root, or `--root` a workspace):

    python benchmarks/train_throughput.py [--batches 30] [--rounds 3] [--accelerator cpu|gpu] \
        [--families default,stylegan2]

Families: default (params.yaml's train section) and each option of the train stage beside it
(stylegan2, biggan, wgan-gp, ada). Per family it prints
`lightning_vs_raw_throughput_ratio[<family>]=<x>` (total Lightning images/second over total plain
images/second); last, `channels_last_vs_contiguous_throughput_ratio=<x>` (the plain loop of the
default in channels-last, as train runs, over the same loop in the contiguous layout).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger

from pipeline.config import TrainParams, load_params, params_to_dict
from pipeline.gan.data import TrainImages
from pipeline.gan.training import ConditionalGAN
from pipeline.hardware import trainer_settings
from pipeline.paths import Paths

FAMILIES = {
    "default": {},
    "stylegan2": {"arch": "stylegan2"},
    "biggan": {"g_conditioning": "biggan"},
    "wgan-gp": {"loss": "wgan-gp", "d_steps": 5},
    "ada": {"ada_target": 0.6, "diffaugment": ["color", "translation", "cutout"]},
}


class LoopClock(pl.Callback):
    """Seconds from the start of the training loop to its end: the Trainer's fixed start-up (a fraction of
    a second per fit, which a training of thousands of batches amortises) is timed apart."""

    def on_train_start(self, trainer, module):
        _synchronize()
        self.started = time.perf_counter()

    def on_train_end(self, trainer, module):
        _synchronize()
        self.seconds = time.perf_counter() - self.started


def lightning_seconds(cfg: TrainParams, data: TrainImages, batches: int, settings: dict, log_dir: str) -> float:
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes)
    clock = LoopClock()
    trainer = pl.Trainer(
        **settings,
        max_steps=batches + batches // cfg.d_steps,  # every optimiser step counts
        logger=CSVLogger(log_dir),
        log_every_n_steps=5,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    start = time.perf_counter()
    trainer.fit(module, data.train_dataloader())
    STARTUP.append(time.perf_counter() - start - clock.seconds)
    return clock.seconds


STARTUP: list[float] = []  # the Trainer's seconds outside the loop, per fit


def raw_seconds(
    cfg: TrainParams,
    data: TrainImages,
    batches: int,
    device: torch.device,
    bf16: bool,
    memory_format: torch.memory_format = torch.channels_last,
) -> float:
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes).to(device)
    module.memory_format = memory_format
    module.generator.to(memory_format=memory_format)
    module.discriminator.to(memory_format=memory_format)
    opt_g, opt_d = module.configure_optimizers()
    loader = itertools.chain.from_iterable(data.train_dataloader() for _ in itertools.count())
    start = time.perf_counter()
    for images, labels in itertools.islice(loader, batches):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        strength = module.strength()
        module.generator.requires_grad_(False)  # what toggled_optimizer(opt_d) does
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss_d, _ = module.discriminator_step_loss(module.real_images(images), labels, strength)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        module.generator.requires_grad_(True)
        if module.generator_turn():
            module.discriminator.requires_grad_(False)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss_g, _ = module.generator_step_loss(labels, strength)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            module.discriminator.requires_grad_(True)
            module.generator_ema.update_parameters(module.generator)
        module.end_batch()
    _synchronize()
    return time.perf_counter() - start


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("."), help="a workspace with params.yaml and data/prepared")
    parser.add_argument("--batches", type=int, default=30, help="batches per timed run (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (default 3)")
    parser.add_argument(
        "--accelerator",
        choices=("auto", "cpu", "gpu"),
        default="auto",
        help="auto: the GPU (bf16-mixed) when there is one, else the CPU",
    )
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    args = parser.parse_args()

    params = load_params(args.root / "params.yaml")
    base = dataclasses.replace(params.train, accelerator=args.accelerator)
    data = TrainImages(Paths(args.root).prepared, base.batch_size, base.balance, params.seed)
    data.setup("fit")
    settings = {**trainer_settings(base, torch.cuda.device_count(), "train"), "devices": 1, "strategy": "auto"}
    device = torch.device("cuda" if settings["accelerator"] == "gpu" else "cpu")
    bf16 = settings["precision"] == "bf16-mixed"
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{name}, {settings['precision']}; {data.image_size}x{data.image_size}x{data.channels}, "
        f"batch {base.batch_size}, {args.batches} batches per run, g_width {base.g_width}, d_width {base.d_width}"
    )

    images = base.batch_size * args.batches
    ratios = {}
    with tempfile.TemporaryDirectory() as log_dir:
        for family in args.families.split(","):
            cfg = dataclasses.replace(base, **FAMILIES[family])
            runs = {
                "lightning": functools.partial(lightning_seconds, cfg, data, settings=settings, log_dir=log_dir),
                "raw": functools.partial(raw_seconds, cfg, data, device=device, bf16=bf16),
            }
            if family == "default":
                runs["raw_contiguous"] = functools.partial(
                    raw_seconds, cfg, data, device=device, bf16=bf16, memory_format=torch.contiguous_format
                )
            pl.seed_everything(params.seed, verbose=False)
            for run in runs.values():
                run(2)  # warm-up: first-call costs of each path
            totals = dict.fromkeys(runs, 0.0)
            for round_ in range(1, args.rounds + 1):
                seconds = {key: run(args.batches) for key, run in runs.items()}
                for key, value in seconds.items():
                    totals[key] += value
                print(
                    f"{family} round {round_}: "
                    + ", ".join(f"{key} {images / value:.1f} img/s" for key, value in seconds.items())
                )
            rates = {key: args.rounds * images / total for key, total in totals.items()}
            print(f"{family} total: " + ", ".join(f"{key} {rate:.1f} img/s" for key, rate in rates.items()))
            ratios[f"lightning_vs_raw_throughput_ratio[{family}]"] = rates["lightning"] / rates["raw"]
            if "raw_contiguous" in rates:
                ratios["channels_last_vs_contiguous_throughput_ratio"] = rates["raw"] / rates["raw_contiguous"]
    startup = sum(STARTUP) / len(STARTUP)
    print(f"Lightning's start-up outside the training loop: {startup:.2f} s per fit (not in the ratios)")
    for key, value in ratios.items():
        print(f"{key}={value:.3f}")


if __name__ == "__main__":
    main()
