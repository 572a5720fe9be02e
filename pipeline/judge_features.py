"""The judge's features of a set of images, computed a batch at a time into a scratch file and read back one
class at a time (the evaluate stage's quality tables), so that a stage holds one class's features, not those
of every image. The file holds the float32 features row after row, in the images' order."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline import nets
from pipeline.image_rows import Images

FEATURE_BLOCK = 65_536  # rows read at a time while a class's rows are gathered


@dataclass(frozen=True)
class FeatureRows:
    """The judge's `dim` features of `len(labels)` images in the file at `path`, with the images' labels and
    the judge's label for each (the argmax of its probabilities)."""

    path: Path
    dim: int
    labels: torch.Tensor
    predictions: torch.Tensor

    def of_class(self, label: int) -> torch.Tensor:
        """The features of the images of class `label`, in order: the rows `features[labels == label]` of the
        whole tensor, read a block of rows at a time."""
        rows = np.flatnonzero(self.labels.numpy() == label)
        out = torch.empty((len(rows), self.dim), dtype=torch.float32)  # torch's allocation, as a mask's is
        filled = out.numpy()
        with open(self.path, "rb") as handle:
            for start in range(0, len(self.labels), FEATURE_BLOCK):
                first, stop = np.searchsorted(rows, [start, start + FEATURE_BLOCK])
                block = np.fromfile(handle, dtype=np.float32, count=FEATURE_BLOCK * self.dim)
                filled[first:stop] = block.reshape(-1, self.dim)[rows[first:stop] - start]
        return out


def judge_features(judge: torch.nn.Module, images: Images, labels: torch.Tensor, path: Path) -> FeatureRows:
    """The judge's features of `images` (labels: theirs) written to the file `path`, in nets.predict's batches,
    so they are the numbers nets.predict gives."""
    predictions, dim = [], 0
    with open(path, "wb") as handle:
        for probabilities, features in nets.predict_batches(judge, images):
            handle.write(features.to(torch.float32).contiguous().numpy().tobytes())
            predictions.append(probabilities.argmax(dim=1))
            dim = features.shape[1]
    return FeatureRows(Path(path), dim, labels, torch.cat(predictions))
