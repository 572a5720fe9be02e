"""Stage `judge`: data/prepared/{train,val} -> models/judge/judge.pt + judge.json.

The judge is a classifier of the real data, trained once. The generate stage's quality gate asks
it whether a synthetic image shows its intended class and measures memorisation in its feature
space (`Classifier.features`); the report stage uses the same features. It trains on the train
split only, with class-balanced sampling and random shifts, so that it knows the rare classes as
well as their few images allow, and is measured on the val split. Val is never trained on: the
judge must not know more about a rare class than the generator and the downstream classifiers do.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from torch.nn import functional as F

from pipeline import nets
from pipeline.config import JudgeParams, Params, params_to_dict
from pipeline.io import PREPARED_DIR, atomic_output, load_prepared_split, read_json


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by its own random offset of up to `max_shift` pixels (edges replicated)."""
    if max_shift == 0:
        return images
    n, _, height, width = images.shape
    padded = F.pad(images, [max_shift] * 4, mode="replicate")
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, n, 1, 1), generator=generator)
    rows = dy + torch.arange(height)[None, :, None]  # n x H x 1
    cols = dx + torch.arange(width)[None, None, :]  # n x 1 x W
    return padded[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # indexing puts C last


def balanced_sample_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-sample weights that draw every class equally often."""
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


@torch.inference_mode()
def judge_outputs(model: nets.Classifier, images: torch.Tensor, batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(class probabilities, penultimate features) of uint8 images, computed in batches."""
    model.eval()
    probabilities, features = [], []
    for batch in images.split(batch_size):
        batch_features = model.features(nets.to_unit_range(batch))
        probabilities.append(model.head(batch_features).softmax(dim=1))
        features.append(batch_features)
    return torch.cat(probabilities), torch.cat(features)


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: JudgeParams,
                     seed: int) -> nets.Classifier:
    """A Classifier trained on uint8 images with class-balanced sampling and random shifts."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = nets.Classifier(images.shape[-1], images.shape[1], num_classes, cfg.width)
    samples_per_epoch = num_classes * int(torch.bincount(labels).max())
    steps = cfg.max_epochs * math.ceil(samples_per_epoch / cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=steps)
    weights = balanced_sample_weights(labels)
    model.train()
    for _ in range(steps):
        batch = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=generator)
        x = random_shift(nets.to_unit_range(images[batch]), cfg.max_shift, generator)
        loss = F.cross_entropy(model(x), labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    return model.eval()


def run(params: Params) -> None:
    cfg = params.judge
    stats = read_json(PREPARED_DIR / "stats.json")
    class_names = [c["class_name"] for c in stats["classes"]]
    train_images, train_labels = load_prepared_split("train")
    model = train_classifier(train_images, train_labels, len(class_names), cfg, params.seed)

    meta = {
        "image_size": stats["image_size"],
        "channels": stats["channels"],
        "class_names": class_names,
        "width": cfg.width,
        "source_fingerprint": stats["source_fingerprint"],
        "params": {"seed": params.seed, "judge": params_to_dict(cfg)},
    }
    if sum(stats["counts"]["val"].values()) > 0:
        val_images, val_labels = load_prepared_split("val")
        predicted = judge_outputs(model, val_images)[0].argmax(dim=1).numpy()
        truth = val_labels.numpy()
        meta["val_accuracy"] = round(float(accuracy_score(truth, predicted)), 6)
        meta["val_balanced_accuracy"] = round(float(balanced_accuracy_score(truth, predicted)), 6)
        meta["val_accuracy_per_class"] = {
            name: round(float(np.mean(predicted[truth == label] == label)), 6)
            for label, name in enumerate(class_names) if (truth == label).any()
        }
        print(f"judge: val accuracy {meta['val_accuracy']:.3f}, balanced accuracy {meta['val_balanced_accuracy']:.3f}")
    with atomic_output(nets.JUDGE_DIR) as out:
        nets.save_model(model, out, "judge", meta)
