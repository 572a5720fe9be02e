"""Images decoded once into a scratch file and read back by row, so that a stage holds a batch, not the dataset.

A stage that draws the same images many times (the classifiers of judge and evaluate, the GAN) or runs
the judge over whole splits decodes their PNGs once, a chunk at a time, into a file of uint8 H x W x C
arrays back to back (`decode_rows`, `write_image_rows`), and reads the rows a batch needs (`ImageRows`):
one `preadv` per drawn image, or one per span of consecutive rows. Images that arrive a batch at a time
and are read later (generate's passing candidates) are appended to such a file (`append_image_rows`).
The file's pages stay in the kernel's page cache, which the kernel frees under memory pressure and
counts in no process's resident memory. A memory map of the same file (numpy.memmap) reads as fast,
but every page it touches counts in the resident memory of each process that maps it, up to the whole
file after one pass over it.
The scratch files go to the system's temporary folder (TMPDIR): N x H x W x C bytes for N images.

An `ImageRows` pickles as its path and shape, so a worker process opens the file by path.
`Images` is either form of a stage's uint8 images, a tensor in memory or an `ImageRows`; `image_batches`
and `image_span` read both as N x C x H x W tensors, the networks' layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats
from pipeline.io import manifest_chunks, read_png

DECODE_CHUNK = 1000  # images decoded and written at a time


@dataclass(frozen=True)
class ImageRows:
    """`count` uint8 images of `image_shape` (H, W, C) stored back to back in the file at `path`.

    `rows[indices]` reads the images of those row numbers (repeats allowed) as an N x H x W x C array, the
    layout albumentations augments; `shape` is (N, C, H, W), that of the same images as a tensor. The file
    is opened for each read and closed after it, so nothing stays open between batches."""

    path: Path
    count: int
    image_shape: tuple[int, int, int]

    def __len__(self) -> int:
        return self.count

    @property
    def shape(self) -> tuple[int, int, int, int]:
        height, width, channels = self.image_shape
        return self.count, channels, height, width

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.image_shape))

    def __getitem__(self, indices) -> np.ndarray:
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.count):
            raise IndexError(f"{self.path}: rows {rows.min()}..{rows.max()} of {self.count}")
        out = np.empty((len(rows), *self.image_shape), dtype=np.uint8)
        with open(self.path, "rb", buffering=0) as file:
            read = sum(
                os.preadv(file.fileno(), [image], row * self.row_bytes) for image, row in zip(out, rows.tolist())
            )
        self._check(read, out)
        return out

    def each(self, indices) -> Iterator[np.ndarray]:
        """The H x W x C images of those rows one by one, read DECODE_CHUNK rows at a time (so a caller
        that handles one image at a time holds a chunk, not all of them)."""
        rows = np.asarray(indices, dtype=np.int64).reshape(-1)
        for start in range(0, len(rows), DECODE_CHUNK):
            yield from self[rows[start : start + DECODE_CHUNK]]

    def span(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop-1 (clipped to the file), in one read."""
        start, stop = max(0, start), min(stop, self.count)
        out = np.empty((max(0, stop - start), *self.image_shape), dtype=np.uint8)
        if len(out):
            with open(self.path, "rb", buffering=0) as file:
                self._check(os.preadv(file.fileno(), [out], start * self.row_bytes), out)
        return out

    def _check(self, read: int, out: np.ndarray) -> None:
        if read != out.nbytes:
            raise OSError(f"{self.path}: shorter than its {self.count} images (truncated while in use?)")


def write_image_rows(path: Path | str, image_shape: tuple[int, int, int], chunks: Iterable[np.ndarray]) -> ImageRows:
    """Write uint8 N x H x W x C chunks of images of `image_shape` back to back to `path`; their ImageRows."""
    count = 0
    with open(path, "wb") as handle:
        for chunk in chunks:
            count += _write_chunk(handle, path, image_shape, chunk)
    return ImageRows(Path(path), count, tuple(image_shape))


def place_image_rows(
    path: Path | str, image_shape: tuple[int, int, int], count: int, placed: Iterable[tuple[int, np.ndarray]]
) -> ImageRows:
    """Write `count` uint8 H x W x C images of `image_shape` to `path`, each given with its row number, in any
    order (a reader that meets the images in another order than their rows'); every row must be given."""
    rows, written = ImageRows(Path(path), count, tuple(image_shape)), np.zeros(count, dtype=bool)
    with open(path, "wb", buffering=0) as handle:
        handle.truncate(count * rows.row_bytes)
        for row, image in placed:
            _check_images(path, image_shape, image[None])
            os.pwrite(handle.fileno(), np.ascontiguousarray(image).data, row * rows.row_bytes)
            written[row] = True
    if not written.all():
        raise ValueError(f"{path}: row {np.flatnonzero(~written)[0]} of {count} was never given")
    return rows


def append_image_rows(rows: ImageRows, images: np.ndarray) -> ImageRows:
    """`rows` with uint8 N x H x W x C `images` written after them, in the same file (made where there is
    none: `ImageRows(path, 0, image_shape)` starts one). The file is opened for the write and closed after
    it, as for a read, so a caller may keep many such files without keeping any open."""
    with open(os.open(rows.path, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as handle:  # "wb" alone would empty it
        handle.seek(rows.count * rows.row_bytes)  # after the rows it has, whatever an earlier failed write left
        count = _write_chunk(handle, rows.path, rows.image_shape, images)
    return ImageRows(rows.path, rows.count + count, rows.image_shape)


def _write_chunk(handle, path: Path | str, image_shape: tuple[int, int, int], chunk: np.ndarray) -> int:
    """Write one uint8 N x H x W x C chunk at the handle's position; N."""
    _check_images(path, image_shape, chunk)
    handle.write(np.ascontiguousarray(chunk).data)
    return len(chunk)


def _check_images(path: Path | str, image_shape: tuple[int, int, int], chunk: np.ndarray) -> None:
    if chunk.shape[1:] != tuple(image_shape) or chunk.dtype != np.uint8:
        raise ValueError(f"{path}: a chunk of {chunk.dtype} {chunk.shape[1:]}, not uint8 {tuple(image_shape)}")


def in_chunks(images: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """H x W x C uint8 images stacked DECODE_CHUNK at a time into N x H x W x C arrays (the last one shorter)."""
    chunk = []
    for image in images:
        chunk.append(image)
        if len(chunk) == DECODE_CHUNK:
            yield np.stack(chunk)
            chunk = []
    if chunk:
        yield np.stack(chunk)


def decoded_pngs(root: Path, relative_paths: Iterable[str], channels: int) -> Iterator[np.ndarray]:
    """The PNGs under `root`, decoded DECODE_CHUNK at a time into N x H x W x C uint8 arrays."""
    return in_chunks(read_png(root / relative, channels) for relative in relative_paths)


def decode_rows(
    root: Path, rows: pd.DataFrame | Iterable[pd.DataFrame], stats: PreparedStats, path: Path
) -> tuple[ImageRows, torch.Tensor]:
    """The images of some manifest rows (paths relative to `root`) decoded, a chunk at a time, into the
    scratch file `path`, and their int64 labels. `rows`: a frame, or its chunks as they are read (only a
    chunk's paths are then held)."""
    labels = []

    def paths(chunks):  # each chunk's labels kept as its images are decoded
        for chunk in chunks:
            labels.append(chunk["label"].to_numpy(dtype=np.int64))
            yield from chunk["path"]

    shape = (stats.image_size, stats.image_size, stats.channels)
    chunks = [rows] if isinstance(rows, pd.DataFrame) else rows
    images = write_image_rows(path, shape, decoded_pngs(Path(root), paths(chunks), stats.channels))
    return images, torch.from_numpy(np.concatenate([np.empty(0, np.int64), *labels]))


def split_chunks(prepared: Path, split: str) -> Iterator[pd.DataFrame]:
    """The path and label of the rows of data/prepared/manifest.csv in one split, a chunk at a time."""
    for chunk in manifest_chunks(Path(prepared) / "manifest.csv", ["path", "label", "split"], MANIFEST_COLUMNS):
        yield chunk.loc[chunk["split"] == split, ["path", "label"]]


def decode_split(
    prepared: Path, stats: PreparedStats, split: str, scratch: Path, manifest: pd.DataFrame | None = None
) -> tuple[ImageRows, torch.Tensor]:
    """One split of the prepared data decoded into the file <scratch>/<split>.u8 (decode_rows). `manifest` is
    the prepared manifest where the caller has read it already; otherwise it is read a chunk at a time."""
    rows = split_chunks(prepared, split) if manifest is None else manifest[manifest["split"] == split]
    return decode_rows(prepared, rows, stats, Path(scratch) / f"{split}.u8")


Images = torch.Tensor | ImageRows  # a stage's uint8 images: N x C x H x W in memory, or rows of a scratch file


def as_rows(images: Images) -> np.ndarray | ImageRows:
    """The images indexable by row number as N x H x W x C arrays (a tensor's view, no copy; a file as it is)."""
    return images.permute(0, 2, 3, 1).numpy() if isinstance(images, torch.Tensor) else images


def image_span(images: Images, start: int, stop: int) -> torch.Tensor:
    """Images start..stop-1 as a uint8 N x C x H x W tensor (contiguous in that layout, as a tensor of them
    in memory is: a network's kernels, and so its last bits, depend on the layout of its input)."""
    if isinstance(images, torch.Tensor):
        return images[start:stop]
    return torch.from_numpy(images.span(start, stop)).permute(0, 3, 1, 2).contiguous()


def image_batches(images: Images, size: int) -> Iterator[torch.Tensor]:
    """All the images in order, `size` at a time, as uint8 N x C x H x W tensors; one empty batch when
    there are none (so that results can always be concatenated)."""
    size = max(1, size)
    for start in range(0, max(1, len(images)), size):
        yield image_span(images, start, start + size)
