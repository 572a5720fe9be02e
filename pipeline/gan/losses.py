"""The GAN's maths as pure functions: losses, penalties and regularisers, and the schedules of the
class conditioning, the generator's EMA and the adaptive augmentation probability.

Nothing here holds state or reads files; pipeline/gan/training.py's ConditionalGAN calls these.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional as F

# --- losses --------------------------------------------------------------------------------------


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """hinge, nonsaturating, or wgan-gp's critic loss D(fake) - D(real) (its penalty is added apart)."""
    if kind == "hinge":
        return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()  # nonsaturating


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    return F.softplus(-fake_logits).mean()  # nonsaturating


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor], real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """WGAN-GP's penalty (Gulrajani et al., 2017): mean of (||grad_x critic(x_hat)||_2 - 1)^2 at
    x_hat = eps * real + (1 - eps) * fake, eps ~ U(0, 1) per image. Computed in float32 even under
    mixed precision, with the graph kept (double backward) so the critic's weights learn from it."""
    with torch.autocast(real.device.type, enabled=False):
        eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
        mixed = (eps * real.float() + (1.0 - eps) * fake.float().detach()).requires_grad_(True)
        (gradient,) = torch.autograd.grad(critic(mixed).float().sum(), mixed, create_graph=True)
        return (gradient.flatten(1).norm(dim=1) - 1.0).square().mean()


# --- regularisers --------------------------------------------------------------------------------


def lecam_penalty(
    real_logits: torch.Tensor, fake_logits: torch.Tensor, ema_real: torch.Tensor, ema_fake: torch.Tensor
) -> torch.Tensor:
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
    image_distance = (images[:half] - images[half : 2 * half]).abs().mean()
    noise_distance = (noise[:half] - noise[half : 2 * half]).abs().mean()
    return 1.0 / (image_distance / noise_distance + eps)


# --- schedules -----------------------------------------------------------------------------------


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


def adapted_probability(
    probability: float, real_sign_mean: float, target: float, images: int, ada_kimg: float
) -> float:
    """Adaptive discriminator augmentation (Karras et al., "Training Generative Adversarial Networks
    with Limited Data", 2020): the overfitting heuristic r_t = E[sign(D(real))] over the last images
    above `target` means D is too sure of the real images, so the augmentation probability rises;
    below, it falls. It moves by images / (ada_kimg * 1000), so 0 -> 1 takes `ada_kimg` thousand
    images; clamped to [0, 1]."""
    step = math.copysign(images / (ada_kimg * 1000.0), real_sign_mean - target) if real_sign_mean != target else 0.0
    return min(max(probability + step, 0.0), 1.0)
