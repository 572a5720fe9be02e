"""`python tests/record_draws.py FOLDER STAGE`: runs `python -m pipeline STAGE` in this process and
records what the stage's Lightning modules drew, into FOLDER/rank<RANK>.pt (RANK: the global rank
that torchrun gives the process, 0 without it), a dict of tensors:

- "images", "labels": the batches of real images the GAN trained on, in order (train);
- "noise": the latent vectors the GAN drew for its fakes (train);
- "seeds": the latent seeds of the batches of candidates the generator sampled (generate).

tests/test_nodes.py launches it under torchrun to see what each node rank drew. It only wraps the
modules' methods: what they compute is unchanged.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from pipeline.__main__ import main
from pipeline.gan.training import ConditionalGAN
from pipeline.sampler import CandidateSampler

drawn: dict[str, list[torch.Tensor]] = {"images": [], "labels": [], "noise": [], "seeds": []}
training_step, noise, predict_step = ConditionalGAN.training_step, ConditionalGAN.noise, CandidateSampler.predict_step


def recording_training_step(self, batch, batch_idx):
    drawn["images"].append(batch[0].cpu())
    drawn["labels"].append(batch[1].cpu())
    return training_step(self, batch, batch_idx)


def recording_noise(self, n):
    latents = noise(self, n)
    drawn["noise"].append(latents.cpu())
    return latents


def recording_predict_step(self, batch, batch_idx):
    drawn["seeds"].append(batch[1].cpu())
    return predict_step(self, batch, batch_idx)


if __name__ == "__main__":
    folder, stage_args = Path(sys.argv[1]), sys.argv[2:]
    ConditionalGAN.training_step = recording_training_step
    ConditionalGAN.noise = recording_noise
    CandidateSampler.predict_step = recording_predict_step
    status = main(stage_args)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(
        {name: torch.cat(tensors) if tensors else torch.empty(0) for name, tensors in drawn.items()},
        folder / f"rank{os.environ.get('RANK', '0')}.pt",
    )
    sys.exit(status)
