"""Manifests read a chunk at a time: read_manifest with `keep` (only the kept rows, typed as reading the whole
file types them), manifest_chunks (a few columns), class_rows and class_counts (one class at a time)."""

from __future__ import annotations

import pandas as pd
import pytest

import pipeline.io
from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, ClassInfo, PreparedStats
from pipeline.errors import InputError
from pipeline.io import manifest_chunks, packed_hashes, read_manifest, same_hashes, sha256_bytes, write_manifest
from pipeline.manifests import class_counts, class_rows, first_of_each_class, passed_gate


def candidate_rows(n: int) -> pd.DataFrame:
    """Rows as generate writes them: every candidate judged, every third accepted (with a path and a hash)."""
    accepted = [i % 3 == 0 for i in range(n)]
    return pd.DataFrame(
        {
            "path": [f"Bag/{i:05d}.png" if a else "" for i, a in enumerate(accepted)],
            "label": [i % 2 for i in range(n)],
            "class_name": [["T-shirt", "Bag"][i % 2] for i in range(n)],
            "split": "train",
            "origin": "synthetic",
            "source": "7c17761673",
            "seed": [8206391887579712274 - i for i in range(n)],
            "sha256": [f"{i:064x}" if a else "" for i, a in enumerate(accepted)],
            "accepted": accepted,
            "reject_reason": ["" if a else "not_selected" for a in accepted],
            "judge_confidence": [round(0.1 + i / (2 * n), 6) for i in range(n)],
            "judge_prediction": [i % 2 for i in range(n)],
            "nn_distance": [round(0.4 + i / (3 * n), 6) for i in range(n)],
            "nearest_real": [f"train/Bag/{i:05d}.png" for i in range(n)],
        }
    )


def whole_then_kept(path, keep) -> pd.DataFrame:
    frame = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS)
    return frame[keep(frame)].reset_index(drop=True)


def is_accepted(rows: pd.DataFrame) -> pd.Series:
    return rows["accepted"].astype(bool)


def test_kept_rows_are_read_a_chunk_at_a_time_and_equal_the_whole_file_filtered(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    write_manifest(candidate_rows(25), path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 4)
    seen = []

    def keep(rows):
        seen.append(len(rows))
        return is_accepted(rows)

    kept = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS, keep=keep)
    assert max(seen) == 4 and sum(seen) == 25  # never more than a chunk of rows parsed at once
    pd.testing.assert_frame_equal(kept, whole_then_kept(path, is_accepted))
    assert len(kept) == 9 and kept["path"].str.startswith("Bag/").all()


def test_chunks_that_type_a_column_differently_give_the_whole_files_types(tmp_path, monkeypatch):
    """A column empty in the first chunk and numeric in a later one: by chunks it would be text in one and
    integers in another; the whole file types it as text, and so does the kept read."""
    rows = candidate_rows(12)
    rows["seed"] = ["" if i < 4 else str(100 + i) for i in range(12)]
    path = tmp_path / "manifest.csv"
    write_manifest(rows, path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 4)
    kept = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS, keep=is_accepted)
    pd.testing.assert_frame_equal(kept, whole_then_kept(path, is_accepted))
    assert list(kept["seed"]) == ["", "", "106", "109"]


def test_a_manifest_of_no_rows_keeps_its_columns_and_types(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(candidate_rows(0), path)
    kept = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS, keep=is_accepted)
    assert len(kept) == 0 and list(kept.columns) == MANIFEST_COLUMNS + GATE_COLUMNS
    assert kept["label"].dtype == "int64"


def test_a_missing_column_is_named_before_any_row_is_read(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(candidate_rows(5).drop(columns="accepted"), path)
    with pytest.raises(InputError, match="lacks the columns accepted"):
        read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS, keep=is_accepted)


def test_manifest_chunks_give_only_the_columns_asked_a_chunk_at_a_time(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    write_manifest(candidate_rows(10), path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 4)
    chunks = list(manifest_chunks(path, ["sha256", "label"]))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert all(list(c.columns) == ["sha256", "label"] for c in chunks)
    whole = read_manifest(path, MANIFEST_COLUMNS + GATE_COLUMNS)[["sha256", "label"]]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)


def test_manifest_chunks_refuse_a_column_typed_differently_further_on(tmp_path, monkeypatch):
    rows = candidate_rows(12)
    rows["seed"] = ["" if i < 4 else str(100 + i) for i in range(12)]
    path = tmp_path / "manifest.csv"
    write_manifest(rows, path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 4)
    with pytest.raises(InputError, match="column 'seed' reads as str"):
        list(manifest_chunks(path, ["label", "seed"]))
    assert sum(len(c) for c in manifest_chunks(path, ["label", "path"])) == 12  # the other columns read on


def grouped_rows(labels: list[int]) -> pd.DataFrame:
    """Candidate rows with these labels (class names as the tiny stats name them), every other one accepted."""
    rows = candidate_rows(len(labels))
    rows["label"], rows["class_name"] = labels, [f"class{y}" for y in labels]
    rows["accepted"] = [i % 2 == 0 for i in range(len(labels))]
    return rows


def tiny_stats(num_classes: int) -> PreparedStats:
    classes = [ClassInfo(y, f"class{y}", f"class{y}") for y in range(num_classes)]
    return PreparedStats(32, 1, "L", classes, {}, {}, False, 0, "source", "fingerprint", {})


def test_class_rows_give_each_class_once_in_label_order_across_chunks(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    write_manifest(grouped_rows([0, 0, 0, 0, 2, 2, 2, 2, 2, 3, 3]), path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 3)  # classes 0 and 2 span chunks
    classes = list(class_rows(path, MANIFEST_COLUMNS + GATE_COLUMNS, passed_gate, num_classes=5))
    assert [list(rows["label"]) for rows in classes] == [[0, 0], [], [2, 2, 2], [3], []]
    whole = whole_then_kept(path, passed_gate)
    pd.testing.assert_frame_equal(pd.concat(classes, ignore_index=True), whole)
    assert all(list(rows.columns) == MANIFEST_COLUMNS + GATE_COLUMNS for rows in classes)


def test_class_rows_refuse_a_manifest_not_grouped_by_class(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    write_manifest(grouped_rows([0, 0, 1, 1, 0, 0]), path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 4)
    with pytest.raises(InputError, match="rows of label 0 come after rows of label 1"):
        list(class_rows(path, ["label", "accepted"], passed_gate, num_classes=2))


def test_class_counts_count_the_kept_rows_and_check_the_classes(tmp_path, monkeypatch):
    path = tmp_path / "manifest.csv"
    write_manifest(grouped_rows([0, 0, 0, 2, 2, 2, 2]), path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 2)
    assert list(class_counts(path, "accepted", passed_gate, tiny_stats(3))) == [2, 0, 2]
    with pytest.raises(InputError, match="classes that data/prepared does not have: 'class2' \\(label 2\\)"):
        class_counts(path, "accepted", passed_gate, tiny_stats(2))


def test_first_of_each_class_keeps_the_first_rows_of_each_class_across_chunks(tmp_path, monkeypatch):
    rows = grouped_rows([0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 1, 1])  # accepted: every other row
    rows["path"] = [f"image{i}.png" for i in range(len(rows))]
    path = tmp_path / "manifest.csv"
    write_manifest(rows, path)
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 3)
    first = first_of_each_class(path, "accepted", passed_gate, tiny_stats(3), count=2)
    assert first.to_dict("list") == {
        "path": ["image0.png", "image2.png", "image6.png", "image8.png", "image10.png"],
        "label": [0, 0, 2, 2, 1],
    }


def test_manifest_chunks_check_the_columns_required_beside_those_read(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(candidate_rows(5).drop(columns=["accepted", "seed"]), path)
    with pytest.raises(InputError, match=r"lacks the columns seed, accepted$"):
        next(manifest_chunks(path, ["label"], MANIFEST_COLUMNS + GATE_COLUMNS))
    assert list(next(manifest_chunks(path, ["label"], MANIFEST_COLUMNS[:2])).columns) == ["label"]


def test_packed_hashes_are_equal_exactly_when_the_hex_strings_are_as_many_times_each():
    digests = [sha256_bytes(bytes([i])) for i in range(5)]

    def packed(*chunks):
        return [packed_hashes(pd.Series(chunk, dtype=str)) for chunk in chunks]

    assert packed(digests[:1])[0][0].dtype == "S32" and packed(digests[:1])[0][1] == []
    assert same_hashes(packed(digests[:2], digests[2:]), packed(digests[::-1]))
    assert not same_hashes(packed(digests), packed(digests[:4]))
    assert not same_hashes(packed(digests + digests[:1]), packed(digests + digests[1:2]))  # counts matter
    odd = ["", "not a hash", digests[0].upper()]  # kept as they are: not the lowercase digest's equal
    assert same_hashes(packed(digests[:2] + odd), packed(odd[::-1], digests[:2]))
    assert not same_hashes(packed(digests[1:2] + odd[2:]), packed(digests[:2]))
    assert same_hashes(packed([]), [])
