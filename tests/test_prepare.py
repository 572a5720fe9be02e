"""The prepare stage on real small data: every source, bad files, bad input, and its output contract."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from conftest import TINY_PARAMS, merge_dicts, run_cli, tiny_params, write_params
from pipeline import prepare
from pipeline.config import ConfigError
from pipeline.io import MANIFEST_COLUMNS, class_folder_names, read_manifest, sha256_file
from pipeline.prepare import imbalance_counts, stratified_split

PREPARED = Path("data/prepared")


# --- pure functions ------------------------------------------------------------------------------


def test_stratified_split_keeps_one_train_and_one_test_image_per_class():
    labels = np.array([0] * 2 + [1] * 3 + [2] * 50)
    splits = stratified_split(labels, 0.1, 0.2, np.random.default_rng(0), ["a", "b", "c"])
    for label in range(3):
        members = splits[labels == label]
        assert (members == "train").sum() >= 1 and (members == "test").sum() >= 1
    assert (splits[labels == 2] == "test").sum() == 10 and (splits[labels == 2] == "val").sum() == 5


def test_stratified_split_rejects_a_class_too_small_by_name():
    with pytest.raises(ConfigError, match="class 'rare' has 1 usable image"):
        stratified_split(np.array([0, 0, 0, 1]), 0.1, 0.2, np.random.default_rng(0), ["common", "rare"])


def test_imbalance_profiles():
    counts = [350, 360, 340, 355]
    exponential = imbalance_counts(counts, "exponential", 100)
    assert exponential[0] == 340 and exponential[-1] == round(340 / 100)
    assert exponential == sorted(exponential, reverse=True)
    assert imbalance_counts(counts, "step", 10) == [340, 340, 34, 34]
    assert imbalance_counts(counts, "none", 100) == counts
    assert imbalance_counts([5, 5], "exponential", 1000) == [5, 1]  # never below one image


def test_class_folder_names_are_safe_and_keep_the_label_order():
    assert class_folder_names(["0", "1", "2"]) == ["0", "1", "2"]
    names = ["../escape", ".hidden", "a/b", "с кошкой", "z"]
    folders = class_folder_names(names)
    assert len(set(folders)) == len(names)
    assert sorted(folders) == folders  # ImageFolder's string order equals the label order
    for folder in folders:
        assert "/" not in folder and "\\" not in folder and not folder.startswith(".") and folder
    numeric = class_folder_names([str(i) for i in range(12)])  # "10" sorts before "2" as a string
    assert sorted(numeric) == numeric and numeric[10].endswith("_10")


# --- built-in sources ----------------------------------------------------------------------------


def _check_contract(root: Path = PREPARED):
    manifest = read_manifest(root / "manifest.csv")
    stats = json.loads((root / "stats.json").read_text())
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert (manifest.origin == "real").all()
    for row in manifest.itertuples():
        path = root / row.path
        assert sha256_file(path) == row.sha256
        assert stats["classes"][row.label]["class_name"] == row.class_name
        assert row.path.startswith(f"{row.split}/{stats['classes'][row.label]['folder']}/")
    with Image.open(root / manifest.path[0]) as image:
        assert image.size == (stats["image_size"],) * 2 and image.mode == stats["mode"]
    for split, counts in stats["counts"].items():
        assert sum(counts.values()) == (manifest.split == split).sum()
    return manifest, stats


def test_digits_source_is_split_thinned_and_reproducible(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params())
    manifest, stats = _check_contract()
    train = [stats["counts"]["train"][str(d)] for d in range(10)]
    test = [stats["counts"]["test"][str(d)] for d in range(10)]
    assert train == sorted(train, reverse=True) and round(train[0] / train[-1]) == 10  # long tail in train only
    per_class = np.bincount(load_digits().target)
    assert test == [round(0.2 * n) for n in per_class]  # the test split is not thinned
    assert stats["channels"] == 1 and stats["image_size"] == 16
    first = (PREPARED / "manifest.csv").read_bytes()
    prepare.run(tiny_params())
    assert (PREPARED / "manifest.csv").read_bytes() == first  # same seed, same bytes
    prepare.run(tiny_params(seed=1))
    assert (PREPARED / "manifest.csv").read_bytes() != first


def test_mnist5k_default_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params(data={"source": "mnist5k", "image_size": 32, "imbalance": {"ratio": 100}}))
    manifest, stats = _check_contract()
    assert len(manifest[manifest.split == "test"]) == 1000 and stats["image_size"] == 32
    train = stats["counts"]["train"]
    assert 80 <= train["0"] / train["9"] <= 100
    with Image.open(PREPARED / manifest.path[0]) as image:
        assert np.asarray(image).max() > 200  # real ink, not an empty canvas


# --- user folders --------------------------------------------------------------------------------


def _png(size, mode="L", value=128, fmt="PNG") -> bytes:
    rng = np.random.default_rng(value)
    shape = size[::-1] + ((3,) if mode == "RGB" else ())
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(buffer, format=fmt)
    return buffer.getvalue()


def _make_image_folder(root: Path, classes: dict[str, int]) -> None:
    for c, (name, count) in enumerate(classes.items()):
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(count):
            if i % 3 == 0:
                (folder / f"img{i}.jpg").write_bytes(_png((20 + i, 30), "RGB", c * 100 + i, "JPEG"))
            else:
                (folder / f"img{i}.png").write_bytes(_png((10 + i, 12), "L", c * 100 + i))


def _tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_image_folder_with_mixed_and_bad_files(tmp_path, monkeypatch):
    source = tmp_path / "photos"
    _make_image_folder(source, {"black cat": 6, "Ünïcode dög": 5, "zebra": 7})
    (source / "black cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (source / "zebra" / "notes.txt").write_text("not an image")
    (source / "zebra" / ".DS_Store").write_bytes(b"\0\0")
    before = _tree_hash(source)
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params(data={"source": str(source), "imbalance": {"profile": "none"}}))

    manifest, stats = _check_contract()
    assert [c["class_name"] for c in stats["classes"]] == ["black cat", "zebra", "Ünïcode dög"]
    assert stats["channels"] == 3 and stats["mode"] == "RGB"  # auto: some images have colour
    assert manifest.groupby("class_name").size().to_dict() == {"black cat": 6, "zebra": 7, "Ünïcode dög": 5}
    skipped = pd.read_csv(PREPARED / "skipped.csv")
    reasons = dict(zip(skipped.path, skipped.reason))
    assert reasons["black cat/broken.png"].startswith("cannot decode")
    assert reasons["zebra/notes.txt"] == "not an image file"
    assert reasons["zebra/.DS_Store"] == "hidden file"
    assert stats["skipped"] == 3
    assert _tree_hash(source) == before  # the source is never modified


def test_grayscale_is_forced_when_asked(tmp_path, monkeypatch):
    source = tmp_path / "photos"
    _make_image_folder(source, {"a": 4, "b": 4})
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params(data={"source": str(source), "channels": "grayscale", "imbalance": {"profile": "none"}}))
    _, stats = _check_contract()
    assert stats["channels"] == 1


def test_presplit_folder_keeps_the_given_splits(tmp_path, monkeypatch):
    source = tmp_path / "presplit"
    _make_image_folder(source / "train", {"a": 5, "b": 4})
    _make_image_folder(source / "test", {"a": 2, "b": 3})
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params(data={"source": str(source), "imbalance": {"profile": "none"}}))
    _, stats = _check_contract()
    assert stats["presplit"] is True
    assert stats["counts"] == {"train": {"a": 5, "b": 4}, "val": {"a": 0, "b": 0}, "test": {"a": 2, "b": 3}}


def test_csv_manifest_source(tmp_path, monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        (images / f"{i}.png").write_bytes(_png((9, 9), "L", i))
        rows.append({"path": f"images/{i}.png", "label": i % 3})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    monkeypatch.chdir(tmp_path)
    prepare.run(tiny_params(data={"source": str(tmp_path / "labels.csv"), "imbalance": {"profile": "none"}}))
    manifest, stats = _check_contract()
    assert [c["class_name"] for c in stats["classes"]] == ["0", "1", "2"]
    assert set(manifest.source) == {f"images/{i}.png" for i in range(12)}


# --- bad input: one line, exit 2, no traceback, nothing lost -------------------------------------


def _run_prepare(tmp_path, data_overrides) -> tuple[int, str]:
    write_params(tmp_path, merge_dicts(TINY_PARAMS, {"data": data_overrides}))
    result = run_cli("prepare", cwd=tmp_path)
    assert "Traceback" not in result.stderr
    return result.returncode, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""


def test_bad_sources_are_clear_errors_and_keep_the_previous_output(tmp_path):
    write_params(tmp_path, TINY_PARAMS)
    assert run_cli("prepare", cwd=tmp_path).returncode == 0
    previous = (tmp_path / PREPARED / "manifest.csv").read_bytes()

    (tmp_path / "empty").mkdir()
    one_class = tmp_path / "one"
    _make_image_folder(one_class, {"only": 4})
    tiny_class = tmp_path / "tiny"
    _make_image_folder(tiny_class, {"big": 6, "lonely": 1})
    corrupt = tmp_path / "corrupt"
    _make_image_folder(corrupt, {"a": 3, "b": 3})
    (corrupt / "b" / "bad.png").write_bytes(b"garbage")
    bomb = tmp_path / "bomb"
    _make_image_folder(bomb, {"a": 3, "b": 3})
    (bomb / "a" / "huge.png").write_bytes(_png((400, 300)))

    cases = [
        ({"source": "nowhere"}, "data.source 'nowhere' is neither mnist5k, digits nor an existing path"),
        ({"source": str(tmp_path / "empty")}, "no images found"),
        ({"source": str(one_class)}, "found 1 class(es); need at least 2"),
        ({"source": str(tiny_class)}, "class 'lonely' has 1 usable image(s)"),
        ({"source": str(corrupt), "strict": True}, "b/bad.png: cannot decode"),
        ({"source": str(bomb), "max_image_pixels": 100_000}, "a/huge.png: image is over data.max_image_pixels"),
    ]
    for overrides, message in cases:
        code, line = _run_prepare(tmp_path, overrides)
        assert code == 2 and line.startswith("error: ") and message in line, (overrides, line)
        assert (tmp_path / PREPARED / "manifest.csv").read_bytes() == previous
        assert not list(tmp_path.glob("data/prepared.tmp-*"))
