"""The report's downstream classifier recipe: is a classifier better off with the synthetic images?

One recipe (a small nets.Classifier, an albumentations augmentation, AdamW with a one-cycle schedule,
the same number of updates) is trained on each arm, identical in everything but the training data
and how it is drawn:
- real: the imbalanced real train images, drawn uniformly;
- classical: the same images with the rare classes randomly oversampled to the size of the largest;
- augmented: the merged dataset drawn with its manifest's `weight` column (load_augmented's sampler);
- synthetic_only: the synthetic images alone, drawn with their weights (the Classification
  Accuracy Score; a class without synthetic images is never seen and scores a recall of 0).
Every arm reads its images through pipeline.dataset.load_augmented, as a user would, and is scored
on the real test split.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, RandomSampler, Subset

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from pipeline import nets  # noqa: E402
from pipeline.config import ReportParams  # noqa: E402
from pipeline.dataset import load_augmented  # noqa: E402
from pipeline.judge import judge_outputs  # noqa: E402
from pipeline.metrics import classification_scores  # noqa: E402

ARMS = ("real", "classical", "augmented", "synthetic_only")


def augmentation(seed: int) -> A.Compose:
    """Small shifts, zooms and rotations (no flips: they change the meaning of digits and text)."""
    return A.Compose(
        [A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-10, 10), p=1.0), ToTensorV2()],
        seed=seed,
    )


def oversample_to_balance(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices holding every item once plus random repeats of each smaller class up to the largest."""
    counts = np.bincount(labels)
    extra = [rng.choice(np.flatnonzero(labels == label), counts.max() - count, replace=True)
             for label, count in enumerate(counts) if count > 0]
    return np.concatenate([np.arange(len(labels)), *extra])


def arm_data(arm: str, seed: int) -> tuple[torch.utils.data.Dataset, torch.utils.data.Sampler]:
    """The training set of one arm and the sampler that draws it, seeded."""
    generator = torch.Generator().manual_seed(seed)
    transform = augmentation(seed)
    origin = {"real": "real", "classical": "real", "augmented": None, "synthetic_only": "synthetic"}[arm]
    dataset, manifest, sampler = load_augmented(origin=origin, transform=_albumentations(transform))
    if arm == "real":
        return dataset, RandomSampler(dataset, generator=generator)
    if arm == "classical":
        indices = oversample_to_balance(manifest["label"].to_numpy(), np.random.default_rng(seed))
        subset = Subset(dataset, indices.tolist())
        return subset, RandomSampler(subset, generator=generator)
    sampler.generator = generator
    return dataset, sampler


def _albumentations(transform: A.Compose):
    def apply(image) -> torch.Tensor:
        array = np.asarray(image)
        return transform(image=array[..., None] if array.ndim == 2 else array)["image"]

    return apply


def train_and_score(arm: str, seed: int, test_images: torch.Tensor, test_labels: torch.Tensor,
                    class_names: list[str], cfg: ReportParams) -> dict:
    """Train the recipe on one arm with one seed; its scores on the real test split."""
    torch.manual_seed(seed)
    dataset, sampler = arm_data(arm, seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler)
    model = nets.Classifier(test_images.shape[-1], test_images.shape[1], len(class_names), cfg.width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.steps)
    model.train()
    endless_batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for images, labels in itertools.islice(endless_batches, cfg.steps):
        loss = F.cross_entropy(model(nets.to_unit_range(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    predicted = judge_outputs(model, test_images)[0].argmax(dim=1).numpy()
    return classification_scores(test_labels.numpy(), predicted, len(class_names))
