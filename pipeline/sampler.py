"""Drawing images from a trained generator: the generate stage's candidates, through Lightning's predict
loop, so that the hardware params place sampling as they place training (pipeline/hardware.py).

A candidate is a latent seed and a label; its image depends on nothing else (not on the batch it is
drawn in, the process that draws it or the number of processes). Nothing here trains.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from pipeline.nets import to_uint8


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
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the seeds are in memory
        warnings.filterwarnings("ignore", ".*local rank has zero length.*")  # fewer batches than processes
        predictions = trainer.predict(sampler, return_predictions=True) or []  # None where a process had no batch
    if trainer.world_size > 1:
        shares = [None] * trainer.world_size
        torch.distributed.all_gather_object(shares, predictions)
        predictions = [prediction for share in shares for prediction in share]
    if not trainer.is_global_zero:
        return None
    images = dict(predictions)
    return [images[number] for number in range(len(batches))]
