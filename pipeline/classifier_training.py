"""The one classifier recipe: the judge, and every downstream arm of evaluate, are trained by `train_classifier`.

The network of `arch` (nets.build_classifier: the small CNN nets.SmallCNN by default, a torchvision
model, or your own) learns from uint8 images, in memory or in a scratch file read by row as they are
drawn (pipeline/image_rows.py: the stages' way, so that memory does not grow with the data), each
drawn batch augmented by albumentations (`classifier_augmentation`, `AugmentedBatches`), with AdamW,
under Lightning's Trainer. Every `eval_every` updates it is scored on the real val split; training
stops when the val balanced
accuracy has not improved for `patience` scorings (or at `max_steps`), and the best-on-val weights
are kept; the learning rate is cut by 5 whenever the score has not risen for two scorings. Without
val images it trains for `max_steps` at a constant rate and keeps the last weights.

Seeding makes runs paired: two calls with the same seed start from the same weights and draw the
same augmentation stream, whatever their training data.

The recipe's `accelerator` and `precision` place the training (hardware.classifier_settings): the CPU
as it always was, or a GPU, where loader processes augment the next batches while the GPU trains on
this one (each batch then seeds its augmentation by its number, so the images do not depend on which
process made them) and the val images stay on the GPU. Running a trained network over images
(`predict`, `predict_labels`) is nets/classifiers.py's: the generate stage's gate needs no training code.
"""

from __future__ import annotations

import logging
import math
import tempfile
import warnings
from dataclasses import dataclass

import albumentations as A
import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, WeightedRandomSampler

from pipeline import nets
from pipeline.config import ClassifierParams
from pipeline.hardware import classifier_settings
from pipeline.image_rows import Images, as_rows, image_span
from pipeline.metrics import balanced_accuracy

MONITOR = "val_balanced_accuracy"
VAL_BATCH = 500
# Processes that augment the next batches while a GPU trains: a small network on a GPU outruns one
# process's albumentations calls (on the CPU the training augments its own batches, as it always has).
GPU_LOADER_WORKERS = 2
# Evaluate trains dozens of these: Lightning's start-up notes (GPU available, tips) would bury the results.
logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)


def classifier_augmentation(seed: int) -> A.Compose:
    """Small shifts, zooms and rotations of an H x W x C uint8 array (no flips: they change the
    meaning of digits and text). Seeded: the same seed gives the same stream of random parameters."""
    return A.Compose(
        [A.Affine(translate_percent=(-0.1, 0.1), scale=(0.9, 1.1), rotate=(-10, 10), border_mode=0, p=1.0)],
        seed=seed,
        strict=False,
    )


@dataclass(frozen=True)
class TrainingSet:
    """What one classifier learns from: images, labels, and how often each image is drawn.

    The set's images are `images` itself, or, with `rows`, those row numbers of it (repeats allowed): sets
    that share images (evaluate's arms) refer to one scratch file instead of each holding a copy."""

    images: Images  # uint8 N x C x H x W in memory, or an ImageRows file
    labels: torch.Tensor  # int64, one per image of the set
    num_classes: int  # the network's outputs (labels are below it)
    weights: np.ndarray | None = None  # per-image sampling weights; None: every image equally often
    logit_adjustment: float = 0.0  # tau of the logit-adjusted loss (Menon et al., 2021); 0: plain cross-entropy
    class_frequencies: np.ndarray | None = None  # what the adjustment is relative to; None: the frequencies drawn
    rows: np.ndarray | None = None  # the set's images as row numbers of `images`; None: all of them, in order


class NumberedBatches(Sampler):
    """Batches of the indices `sampler` draws, each index paired with its batch's number in the run:
    [(number, index), ...]. The numbers go on across epochs."""

    def __init__(self, sampler: Sampler, batch_size: int):
        self.sampler, self.batch_size, self.numbered = sampler, batch_size, 0

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        for batch in BatchSampler(self.sampler, self.batch_size, drop_last=False):
            yield [(self.numbered, index) for index in batch]
            self.numbered += 1


class Keys:
    """A dataset whose items are their own keys: the loader hands NumberedBatches' pairs to the collate function."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        return key


class AugmentedBatches:
    """The DataLoader's `collate_fn`: a numbered batch of drawn indices -> (uint8 B x C x H x W tensor, labels),
    augmented by albumentations in groups of `group` images that share one random affine. Drawn index i is
    image `rows[i]` (None: image i) with label `labels[i]`; only the drawn images are read.

    Albumentations spends about 0.3 ms of Python per call whatever the image's size, which made it
    most of a classifier's training time at one call per image; one call per group (its `images=`
    batch form) costs about as much as one image, and every image still sees a new random affine
    each time it is drawn. In the training's own process the k-th group of the run takes the k-th
    parameters of the seed's stream; with `seed_each_batch` (loader processes, each holding its own
    copy of the stream) a batch's groups take the stream of (seed, the batch's number) instead.
    """

    def __init__(
        self,
        images: Images,
        labels: torch.Tensor,
        seed: int,
        group: int,
        seed_each_batch: bool,
        rows: np.ndarray | None = None,
    ):
        self.images = as_rows(images)  # albumentations works on (N x) H x W x C arrays
        self.labels, self.rows, self.group = labels, rows, group
        self.seed, self.seed_each_batch = seed, seed_each_batch
        self.transform = classifier_augmentation(seed)

    def __call__(self, numbered: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        indices = [index for _, index in numbered]
        if self.seed_each_batch:
            self.transform.set_random_seed(
                int(np.random.SeedSequence([self.seed, numbered[0][0]]).generate_state(1)[0])
            )
        drawn = self.images[indices if self.rows is None else self.rows[indices]]
        augmented = np.concatenate(
            [
                self.transform(images=drawn[start : start + self.group])["images"]
                for start in range(0, len(indices), self.group)
            ]
        )
        return torch.from_numpy(augmented).permute(0, 3, 1, 2), self.labels[indices]


class LabelledBatches(Dataset):
    """Batch k of labelled images: (images k * size onwards, uint8 N x C x H x W; their labels), read when asked."""

    def __init__(self, images: Images, labels: torch.Tensor, size: int):
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return math.ceil(len(self.labels) / self.size)

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        start, stop = k * self.size, (k + 1) * self.size
        return image_span(self.images, start, stop), self.labels[start:stop]


class ClassifierTraining(pl.LightningModule):
    """The network of `recipe.arch` under training: cross-entropy (plus `log_prior`: the logit adjustment),
    AdamW, and the balanced accuracy on the val split every epoch (`eval_every` updates)."""

    def __init__(
        self,
        image_size: int,
        channels: int,
        num_classes: int,
        recipe: ClassifierParams,
        log_prior: torch.Tensor | None = None,
        validated: bool = True,
    ):
        super().__init__()
        self.net = nets.build_classifier(recipe.arch, image_size, channels, num_classes, recipe.width)
        self.recipe, self.validated = recipe, validated
        self.register_buffer("log_prior", log_prior if log_prior is not None else torch.zeros(num_classes))
        self.val_predictions, self.val_labels = [], []

    def training_step(self, batch, batch_idx):
        images, labels = batch
        # the loss in float32 under bf16-mixed; log_prior is zero unless logit-adjusted
        logits = self.net(channels_last(images)).float() + self.log_prior
        loss = F.cross_entropy(logits, labels)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        images, labels = batch
        self.val_predictions.append(self.net(channels_last(images)).argmax(dim=1))
        self.val_labels.append(labels)

    def on_validation_epoch_end(self):
        labels, predictions = torch.cat(self.val_labels).cpu(), torch.cat(self.val_predictions).cpu()
        score = balanced_accuracy(labels.numpy(), predictions.numpy())
        self.log(MONITOR, score)
        self.val_predictions, self.val_labels = [], []

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.recipe.lr, weight_decay=self.recipe.weight_decay)
        if not self.validated:
            return optimizer
        # the val score is noisy at a constant learning rate: cut it when the score stops rising (two scorings)
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.2, patience=1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "monitor": MONITOR}}


def channels_last(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as the network's input, in the channels-last layout (about three times faster on the CPU)."""
    return nets.to_unit_range(images).contiguous(memory_format=torch.channels_last)


def drawn_frequencies(labels: torch.Tensor, weights: np.ndarray | None, num_classes: int) -> np.ndarray:
    """The class frequencies a sampler with these per-image weights draws (None: every image equally often)."""
    draws = np.ones(len(labels)) if weights is None else weights
    mass = np.bincount(labels.numpy(), weights=draws, minlength=num_classes)
    return mass / mass.sum()


def log_prior(frequencies: np.ndarray, tau: float) -> torch.Tensor:
    """tau * log of class frequencies: the logit adjustment added to the logits in the training loss."""
    return torch.tensor(tau * np.log(np.maximum(frequencies, 1e-12)), dtype=torch.float32)


def train_classifier(
    data: TrainingSet,
    val: tuple[Images, torch.Tensor],
    recipe: ClassifierParams,
    seed: int,
    logger=False,
    initial_weights: dict[str, torch.Tensor] | None = None,
    section: str = "evaluate.classifier",
    loader_workers: int | None = None,
) -> tuple[nn.Module, dict]:
    """Train the recipe on `data`, scored on `val` (uint8 images, in memory or a file; labels; may be empty);
    returns the best-on-val network (eval mode, on the CPU) and how training went. `initial_weights` (a network's
    state_dict) replaces the seed's initial weights: fine-tuning. `section` names the recipe in an error.
    `loader_workers`: processes that augment the batches (None: GPU_LOADER_WORKERS on a GPU, none on the CPU)."""
    settings = classifier_settings(recipe, torch.cuda.device_count(), section)
    on_gpu = settings["accelerator"] == "gpu"
    val_images, val_labels = val
    pl.seed_everything(seed, verbose=False)
    prior = None
    if data.logit_adjustment:
        frequencies = data.class_frequencies
        if frequencies is None:
            frequencies = drawn_frequencies(data.labels, data.weights, data.num_classes)
        prior = log_prior(frequencies, data.logit_adjustment)
    validate = len(val_labels) > 0
    module = ClassifierTraining(data.images.shape[-1], data.images.shape[1], data.num_classes, recipe, prior, validate)
    if initial_weights is not None:
        module.net.load_state_dict(initial_weights)
    module.to(memory_format=torch.channels_last)
    draws, generator = recipe.eval_every * recipe.batch_size, torch.Generator().manual_seed(seed)
    if data.weights is None:
        sampler = RandomSampler(range(len(data.labels)), replacement=True, num_samples=draws, generator=generator)
    else:
        sampler = WeightedRandomSampler(torch.tensor(data.weights, dtype=torch.double), draws, generator=generator)
    workers = (GPU_LOADER_WORKERS if on_gpu else 0) if loader_workers is None else loader_workers
    train_loader = DataLoader(  # an epoch: eval_every updates; AugmentedBatches gathers and augments the drawn indices
        Keys(len(data.labels)),
        batch_sampler=NumberedBatches(sampler, recipe.batch_size),
        collate_fn=AugmentedBatches(
            data.images, data.labels, seed, recipe.augment_group, seed_each_batch=workers > 0, rows=data.rows
        ),
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=on_gpu,
    )
    # val in whole batches (no per-image indexing): on a GPU moved there once; on the CPU read anew for each
    # scoring, so that val in a scratch file costs the memory of one batch
    val_batches = LabelledBatches(val_images, val_labels, VAL_BATCH)
    if on_gpu:
        val_batches = [(x.cuda(), y.cuda()) for x, y in (val_batches[k] for k in range(len(val_batches)))]
    val_loader = DataLoader(val_batches, batch_size=None) if validate else None
    with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")  # a batch is a few reads and a copy
        warnings.filterwarnings("ignore", ".*but have no `val_dataloader`.*")  # no val split: no early stopping
        best = ModelCheckpoint(
            dirpath=scratch, monitor=MONITOR, mode="max", save_weights_only=True, enable_version_counter=False
        )
        trainer = pl.Trainer(
            **settings,
            max_epochs=max(1, recipe.max_steps // recipe.eval_every),
            logger=logger,
            log_every_n_steps=min(50, recipe.eval_every),
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            enable_checkpointing=validate,
            limit_val_batches=None if validate else 0,
            callbacks=[best, EarlyStopping(MONITOR, mode="max", patience=recipe.patience)] if validate else [],
        )
        trainer.fit(module, train_loader, val_loader)
        if validate:
            module.load_state_dict(
                torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
            )
    history = {
        "steps": trainer.global_step,
        "best_val_balanced_accuracy": float(best.best_model_score) if validate else None,
    }
    return module.net.cpu().eval(), history
