"""The scratch file of decoded images: what goes in (written at once or appended) comes back by row, in chunks,
and as network batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.image_rows import (
    DECODE_CHUNK,
    ImageRows,
    append_image_rows,
    as_rows,
    image_batches,
    image_span,
    in_chunks,
    place_image_rows,
    write_image_rows,
)

SHAPE = (4, 3, 2)  # H x W x C, small and not square, so a transposed read would show


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(count, *SHAPE), dtype=np.uint8)


def test_in_chunks_stacks_at_most_a_chunk_at_a_time_in_order():
    images = random_images(2 * DECODE_CHUNK + 7)
    chunks = list(in_chunks(iter(images)))
    assert [len(chunk) for chunk in chunks] == [DECODE_CHUNK, DECODE_CHUNK, 7]
    np.testing.assert_array_equal(np.concatenate(chunks), images)
    assert list(in_chunks(iter([]))) == []


def test_rows_read_back_what_was_written_with_repeats_and_spans(tmp_path):
    images = random_images(25)
    rows = write_image_rows(tmp_path / "rows.u8", SHAPE, [images[:10], images[10:]])
    assert len(rows) == 25 and rows.shape == (25, SHAPE[2], SHAPE[0], SHAPE[1])
    drawn = [3, 3, 24, 0, 11]
    np.testing.assert_array_equal(rows[drawn], images[drawn])
    np.testing.assert_array_equal(rows.span(20, 40), images[20:])  # clipped to the file
    with pytest.raises(IndexError, match=r"rows\.u8"):
        rows[[25]]


def test_a_wrong_chunk_is_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.u8"):
        write_image_rows(tmp_path / "bad.u8", SHAPE, [random_images(2).astype(np.int16)])


def test_a_truncated_file_is_an_error_not_zeros(tmp_path):
    rows = write_image_rows(tmp_path / "rows.u8", SHAPE, [random_images(5)])
    truncated = ImageRows(rows.path, rows.count + 1, rows.image_shape)
    with pytest.raises(OSError, match="shorter than"):
        truncated.span(0, 6)


def test_batches_from_the_file_equal_batches_from_a_tensor(tmp_path):
    images = random_images(23, seed=1)
    rows = write_image_rows(tmp_path / "rows.u8", SHAPE, in_chunks(iter(images)))
    in_memory = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    from_file, from_tensor = list(image_batches(rows, 5)), list(image_batches(in_memory, 5))
    assert [len(batch) for batch in from_file] == [5, 5, 5, 5, 3]
    for a, b in zip(from_file, from_tensor, strict=True):
        assert a.is_contiguous() and torch.equal(a, b)
    assert torch.equal(image_span(rows, 4, 9), in_memory[4:9])
    np.testing.assert_array_equal(as_rows(in_memory)[[2, 7]], rows[[2, 7]])
    assert [len(batch) for batch in image_batches(in_memory[:0], 5)] == [0]  # one empty batch, never none


def test_appended_rows_are_the_file_written_at_once_and_read_back_as_such(tmp_path):
    images = random_images(25, seed=2)
    rows = ImageRows(tmp_path / "rows.u8", 0, SHAPE)  # no file yet: the first append makes it
    for chunk in (images[:10], images[10:10], images[10:]):
        rows = append_image_rows(rows, chunk)
    whole = write_image_rows(tmp_path / "whole.u8", SHAPE, [images])
    assert rows == ImageRows(rows.path, 25, SHAPE) and rows.path.read_bytes() == whole.path.read_bytes()
    np.testing.assert_array_equal(rows[[24, 0, 3]], images[[24, 0, 3]])
    # an append goes after the rows it knows of, over whatever a failed write left beyond them
    with open(rows.path, "ab") as handle:
        handle.write(b"half a row")
    rows = append_image_rows(rows, images[:1])
    assert rows.path.stat().st_size == 26 * rows.row_bytes
    np.testing.assert_array_equal(rows.span(0, 26), np.concatenate([images, images[:1]]))
    with pytest.raises(ValueError, match=r"rows\.u8"):
        append_image_rows(rows, random_images(1).astype(np.int16))


def test_each_reads_the_rows_one_by_one_at_most_a_chunk_at_a_time(tmp_path, monkeypatch):
    images = random_images(2 * DECODE_CHUNK + 7, seed=3)
    rows = write_image_rows(tmp_path / "rows.u8", SHAPE, in_chunks(iter(images)))
    wanted = np.concatenate([[5, 5, 2 * DECODE_CHUNK + 6], np.arange(0, 2 * DECODE_CHUNK + 7, 2)])
    reads, read_rows = [], ImageRows.__getitem__

    def counted_read(self, indices):
        reads.append(len(indices))
        return read_rows(self, indices)

    monkeypatch.setattr(ImageRows, "__getitem__", counted_read)
    each = list(rows.each(wanted))
    assert len(each) == len(wanted) and all(image.shape == SHAPE for image in each)
    np.testing.assert_array_equal(np.stack(each), images[wanted])
    assert max(reads) == DECODE_CHUNK and sum(reads) == len(wanted)
    assert list(rows.each([])) == []


def test_images_placed_at_their_rows_in_any_order_read_back_in_row_order(tmp_path):
    images = random_images(6)
    order = [4, 0, 5, 2, 1, 3]
    rows = place_image_rows(tmp_path / "rows.u8", SHAPE, 6, ((row, images[row]) for row in order))
    assert len(rows) == 6 and np.array_equal(rows[np.arange(6)], images)
    assert (tmp_path / "rows.u8").read_bytes() == images.tobytes()
    with pytest.raises(ValueError, match="row 1 of 6 was never given"):
        place_image_rows(tmp_path / "short.u8", SHAPE, 6, ((row, images[row]) for row in order[:3]))
