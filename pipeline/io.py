"""Files: atomic output folders and files, hashes, stable JSON, PNGs, manifests, class folders and tars.

Stages talk to each other only through files; these helpers read and write them (the contracts
themselves are in contracts.py; docs/ARCHITECTURE.md draws the whole flow).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.errors import InputError

# --- atomic output folders -----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_output(dest: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling of `dest`; on success it replaces `dest`, on error it is removed.

    A killed or failing stage therefore leaves the previous version of `dest` whole.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(f"{dest.name}.old-{os.getpid()}")
    if dest.exists():
        dest.rename(old)
    tmp.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


def write_atomically(path: Path | str, content: str | bytes) -> None:
    """Write one file through a temporary sibling renamed into place: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    if isinstance(content, str):
        temporary.write_text(content, encoding="utf-8")
    else:
        temporary.write_bytes(content)
    temporary.replace(path)


# --- hashing and JSON ----------------------------------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def packed_hashes(hashes: pd.Series) -> tuple[np.ndarray, list[str]]:
    """SHA-256 hex strings held compactly: the 32-byte digests of those in the form sha256_bytes gives (64
    lowercase hex digits) as one numpy 'S32' array, and any other strings as they are (a list; a manifest that
    a stage wrote has none)."""
    canonical = hashes.str.fullmatch("[0-9a-f]{64}").to_numpy(dtype=bool)
    digests = np.frombuffer(bytes.fromhex("".join(hashes[canonical])), dtype="S32")
    return digests, hashes[~canonical].tolist()


def same_hashes(one: list[tuple[np.ndarray, list[str]]], other: list[tuple[np.ndarray, list[str]]]) -> bool:
    """Whether two lists of packed_hashes hold the same strings, each as many times (sorted and compared)."""

    def in_order(packed):
        digests = np.concatenate([np.empty(0, dtype="S32"), *(digests for digests, _ in packed)])
        return np.sort(digests), sorted(text for _, texts in packed for text in texts)

    (one_digests, one_texts), (other_digests, other_texts) = in_order(one), in_order(other)
    return np.array_equal(one_digests, other_digests) and one_texts == other_texts


def json_text(obj) -> str:
    """Stable JSON (sorted keys, fixed indent) so equal content gives equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: Path | str, obj) -> None:
    Path(path).write_text(json_text(obj), encoding="utf-8")


def read_json(path: Path | str):
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (run the stage that makes it first)")
    return json.loads(path.read_text(encoding="utf-8"))


# --- class folders and PNGs ----------------------------------------------------------------------


def natural_sort(names) -> list[str]:
    """Sorted class names; all-integer names sort as numbers (2 before 10)."""
    names = list(names)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def class_folder_names(class_names: list[str]) -> list[str]:
    """Safe folder names for class names given in label order.

    A folder name never contains a path separator, never starts with a dot and is never empty, so
    it cannot escape the output folder. ImageFolder sorts folder names as strings; when the plain
    safe names would sort differently from the label order (or collide), every name gets its label
    as a zero-padded prefix, so ImageFolder's class indices always equal the labels.
    """
    slugs = [_slug(name) for name in class_names]
    if len(set(slugs)) == len(slugs) and sorted(slugs) == slugs:
        return slugs
    width = len(str(len(class_names) - 1))
    return [f"{i:0{width}d}_{slug}" for i, slug in enumerate(slugs)]


def _slug(name: str) -> str:
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_name).strip("._") or "class"
    return slug[:64]


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an HxW (grayscale) or HxWx3 (RGB) uint8 array; deterministic."""
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[-1] == 1 else image).save(
        buffer, format="PNG", optimize=False
    )
    return buffer.getvalue()


def encode_png_tensor(image: torch.Tensor) -> bytes:
    """PNG bytes of a CxHxW uint8 tensor (an image as the networks and make_grid give it)."""
    return encode_png(image.permute(1, 2, 0).numpy())


def read_png(path: Path | str, channels: int) -> np.ndarray:
    """HxWxC uint8 array of a PNG written by a stage."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    return array[..., None] if channels == 1 else array


# --- manifests -----------------------------------------------------------------------------------


def write_manifest(frame: pd.DataFrame, path: Path | str | IO[str], header: bool = True) -> None:
    """A manifest CSV; to an open file, part by part, with the header on the first part only."""
    frame.to_csv(path, index=False, header=header, lineterminator="\n")


MANIFEST_TYPES = {"label": "int64", "class_name": str, "source": str, "sha256": str, "path": str}
CHUNK_ROWS = 100_000  # rows parsed at a time where only some of a manifest is kept


def read_manifest(
    path: Path | str, columns: list[str], keep: Callable[[pd.DataFrame], pd.Series] | None = None
) -> pd.DataFrame:
    """A manifest CSV, which must hold `columns` (class names, sources and hashes stay strings, labels
    are integers even in a manifest with no rows). With `keep`, a row mask of a frame, only the rows it
    keeps, read a chunk at a time, so that the rows left out are never all held: most of generate's
    manifest, which lists every candidate judged (1.65 million rows at a million source images)."""
    path = _checked_manifest(path, columns)
    frame = _kept_rows(path, keep) if keep is not None else None
    if frame is None:
        # low_memory=False: pandas otherwise infers a column's type chunk by chunk in a long file, so a
        # column that is empty on real rows and numeric on synthetic ones could come back with mixed types
        frame = pd.read_csv(path, dtype=MANIFEST_TYPES, keep_default_na=False, low_memory=False)
        if keep is not None:
            frame = frame[keep(frame)].reset_index(drop=True)
    return frame


def manifest_chunks(path: Path | str, columns: list[str], required: list[str] = ()) -> Iterator[pd.DataFrame]:
    """Only `columns` of a manifest CSV, CHUNK_ROWS rows at a time and typed as read_manifest types them, for a
    reader that needs a few columns or one class at a time. The manifest must hold `columns` and `required`
    (the columns of its contract, read or not). Every chunk must type a column as the first one does: a column
    empty in some chunks and numeric in others is an InputError (read_manifest reads it whole)."""
    path = _checked_manifest(path, list(required) + [c for c in columns if c not in required])
    first = None
    with pd.read_csv(
        path, usecols=columns, dtype=MANIFEST_TYPES, keep_default_na=False, chunksize=CHUNK_ROWS
    ) as chunks:
        for chunk in chunks:
            chunk = chunk[columns]  # usecols keeps the file's column order
            first = chunk.dtypes if first is None else first
            changed = [c for c in columns if chunk[c].dtype != first[c]]
            if changed:
                raise InputError(
                    f"{path}: column {changed[0]!r} reads as {first[changed[0]]} in its first rows and as "
                    f"{chunk[changed[0]].dtype} further on (empty in some rows?); rerun the stage that makes it"
                )
            yield chunk


def _checked_manifest(path: Path | str, columns: list[str]) -> Path:
    """`path`, a manifest CSV that exists and has `columns` (an InputError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (run the stage that makes it first)")
    missing = [c for c in columns if c not in pd.read_csv(path, nrows=0).columns]
    if missing:
        raise InputError(f"{path}: manifest lacks the columns {', '.join(missing)}")
    return path


def _kept_rows(path: Path, keep: Callable[[pd.DataFrame], pd.Series]) -> pd.DataFrame | None:
    """The rows of a manifest that `keep` keeps, read by chunks; None where the chunks' column types differ
    (a column empty in some chunks and numeric in others), since only a whole read gives the types that
    reading the whole file gives. Where every chunk agrees, the whole file has those types too."""
    kept, types = [], set()
    with pd.read_csv(path, dtype=MANIFEST_TYPES, keep_default_na=False, chunksize=CHUNK_ROWS) as chunks:
        for chunk in chunks:
            types.add(tuple(chunk.dtypes.astype(str)))
            kept.append(chunk[keep(chunk)])
    return pd.concat(kept, ignore_index=True) if len(types) == 1 else None


def load_images(root: Path | str, manifest: pd.DataFrame, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a manifest as one uint8 tensor NxCxHxW, and their int64 labels."""
    root = Path(root)
    arrays = [read_png(root / rel, channels) for rel in manifest["path"]]
    if not arrays:
        raise InputError(f"{root}: the manifest lists no images")
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(manifest["label"].to_numpy(), dtype=torch.int64)
    return images, labels


# --- tar files (shards) --------------------------------------------------------------------------


def write_tar(path: Path | str, members: Iterable[tuple[str, bytes]]) -> None:
    """An uncompressed tar of (name, bytes) members in the given order. Every member has the same
    metadata (mtime 0, uid and gid 0, no user or group names, mode 0644), so equal members give equal bytes."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = (
                len(data),
                0,
                0o644,
                0,
                0,
                "",
                "",
            )
            tar.addfile(info, io.BytesIO(data))


def tar_spans(path: Path | str) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of each file's bytes in an uncompressed tar, to read one by seeking (read_span)."""
    try:
        with tarfile.open(path, "r:") as tar:
            return {info.name: (info.offset_data, info.size) for info in tar if info.isfile()}
    except (OSError, tarfile.TarError) as err:
        raise InputError(f"{path}: not a readable tar file ({err})") from None


def read_span(path: Path | str, offset: int = 0, size: int = -1) -> bytes:
    """`size` bytes of a file from `offset` (by default the whole file)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        return handle.read(size)
