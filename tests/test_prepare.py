"""The prepare stage on real small data: every source, bad files, bad input, and its output contract."""

import gzip
import hashlib
import io
import multiprocessing
import os
import subprocess
import sys
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from conftest import REPO_ROOT, TINY_PARAMS, merge_dicts, run_cli, tiny_params, write_params
from pipeline import progress, sources
from pipeline.__main__ import main as pipeline_main
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats
from pipeline.errors import InputError
from pipeline.io import class_folder_names, read_manifest, sha256_file
from pipeline.paths import Paths
from pipeline.progress import in_order
from pipeline.stages import prepare
from pipeline.stages.prepare import cap_per_class, carve_val, imbalance_counts, stratified_split

# --- pure functions ------------------------------------------------------------------------------


def test_stratified_split_keeps_one_train_and_one_test_image_per_class():
    labels = np.array([0] * 2 + [1] * 3 + [2] * 50)
    splits = stratified_split(labels, 0.1, 0.2, np.random.default_rng(0), ["a", "b", "c"])
    for label in range(3):
        members = splits[labels == label]
        assert (members == "train").sum() >= 1 and (members == "test").sum() >= 1
    assert (splits[labels == 2] == "test").sum() == 10 and (splits[labels == 2] == "val").sum() == 5


def test_stratified_split_rejects_a_class_too_small_by_name():
    with pytest.raises(InputError, match="class 'rare' has 1 usable image"):
        stratified_split(np.array([0, 0, 0, 1]), 0.1, 0.2, np.random.default_rng(0), ["common", "rare"])


def test_imbalance_profiles():
    counts = [350, 360, 340, 355]
    exponential = imbalance_counts(counts, "exponential", 100)
    assert exponential[0] == 340 and exponential[-1] == round(340 / 100)
    assert exponential == sorted(exponential, reverse=True)
    assert imbalance_counts(counts, "step", 10) == [340, 340, 34, 34]
    assert imbalance_counts(counts, "none", 100) == counts
    assert imbalance_counts([5, 5], "exponential", 1000) == [5, 1]  # never below one image


def test_cap_per_class_keeps_at_most_the_cap_of_each_class_in_each_source_split():
    labels = np.array([0] * 10 + [1] * 3 + [0] * 4)
    groups = np.array(["train"] * 13 + ["test"] * 4)
    keep = cap_per_class(labels, groups, 5, np.random.default_rng(0))
    assert keep[:10].sum() == 5 and keep[10:13].all() and keep[13:].sum() == 4
    assert cap_per_class(labels, groups, None, np.random.default_rng(0)).all()


CAP_IN_A_FRESH_INTERPRETER = """
import numpy as np
from pipeline.stages.prepare import cap_per_class
labels = np.repeat(np.arange(10), 40)
groups = np.tile(np.array(["train", "test"] * 20), 10)
print(np.flatnonzero(cap_per_class(labels, groups, 7, np.random.default_rng(0))).tolist())
"""


def test_cap_per_class_draws_the_same_items_whatever_the_string_hash_seed():
    """Each new Python process salts the hash of strings; the cap's draws must not follow a set's order."""
    kept = {
        subprocess.run(
            [sys.executable, "-c", CAP_IN_A_FRESH_INTERPRETER],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO_ROOT,
            env=os.environ | {"PYTHONHASHSEED": str(hash_seed), "PYTHONPATH": str(REPO_ROOT)},
        ).stdout
        for hash_seed in (1, 2)
    }
    assert len(kept) == 1


def test_carve_val_takes_a_share_of_each_class_and_leaves_one_train_image():
    labels = np.array([0] * 20 + [1] * 2)
    splits = np.array(["train"] * 22, dtype=object)
    carved = carve_val(splits, labels, 0.25, np.random.default_rng(0))
    assert (carved[labels == 0] == "val").sum() == 5
    assert (carved[labels == 1] == "train").sum() >= 1


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


def _check_contract(root: Path):
    """The prepared folder's files agree with each other; returns (manifest, stats)."""
    manifest = read_manifest(root / "manifest.csv", MANIFEST_COLUMNS)
    stats = PreparedStats.read(root)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert (manifest.origin == "real").all()
    for row in manifest.itertuples():
        assert sha256_file(root / row.path) == row.sha256
        assert stats.classes[row.label].class_name == row.class_name
        assert row.path.startswith(f"{row.split}/{stats.classes[row.label].folder}/")
    with Image.open(root / manifest.path[0]) as image:
        assert image.size == (stats.image_size,) * 2 and image.mode == stats.mode
    for split, counts in stats.counts.items():
        assert sum(counts.values()) == (manifest.split == split).sum()
    return manifest, stats


def test_digits_source_is_split_thinned_into_the_holdout_and_reproducible(tmp_path, capsys):
    paths = Paths(tmp_path)
    prepare.run(tiny_params(), paths)
    manifest, stats = _check_contract(paths.prepared)
    train, test = stats.split_counts("train"), stats.split_counts("test")
    assert train == sorted(train, reverse=True) and round(train[0] / train[-1]) == 10  # long tail in train only
    per_class = np.bincount(load_digits().target)
    assert test == [round(0.2 * n) for n in per_class]  # the test split is not thinned
    assert stats.channels == 1 and stats.image_size == 16 and stats.thinned
    # every thinned-away train image is in data/holdout, and only there
    holdout = read_manifest(paths.holdout / "manifest.csv", MANIFEST_COLUMNS)
    assert set(holdout.split) == {"holdout"} and holdout.groupby("class_name").size().to_dict() == {
        name: count for name, count in stats.holdout.items() if count
    }
    assert not set(holdout.source) & set(manifest.source)
    assert [sum(c) for c in zip(train, [stats.holdout[n] for n in stats.class_names])] == [
        n - round(0.2 * n) - round(0.1 * n) for n in per_class
    ]
    printed = capsys.readouterr().out
    assert "prepare: thinned the train split (exponential, ratio 10)" in printed
    assert f"  9: {train[9]} of {train[9] + stats.holdout['9']}" in printed

    first = (paths.prepared / "manifest.csv").read_bytes()
    prepare.run(tiny_params(), paths)
    assert (paths.prepared / "manifest.csv").read_bytes() == first  # same seed, same bytes
    prepare.run(tiny_params(seed=1), paths)
    assert (paths.prepared / "manifest.csv").read_bytes() != first


def test_mnist5k_default_source(tmp_path):
    paths = Paths(tmp_path)
    prepare.run(
        tiny_params(
            data={"source": str(REPO_ROOT / "data/builtin/mnist5k.yaml"), "image_size": 32, "imbalance": {"ratio": 100}}
        ),
        paths,
    )
    manifest, stats = _check_contract(paths.prepared)
    assert len(manifest[manifest.split == "test"]) == 1000 and stats.image_size == 32
    train = stats.counts["train"]
    assert 80 <= train["0"] / train["9"] <= 100
    with Image.open(paths.prepared / manifest.path[0]) as image:
        assert np.asarray(image).max() > 200  # real ink, not an empty canvas


def test_prepare_streams_the_images_instead_of_holding_them(tmp_path):
    prepare.run(tiny_params(), Paths(tmp_path / "warm"))  # imports and caches that load on first use
    size = 128
    tracemalloc.start()
    try:
        prepare.run(tiny_params(data={"image_size": size}), Paths(tmp_path / "work"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    all_pixels = len(load_digits().target) * size * size  # what holding every fitted grayscale image would take
    assert peak < all_pixels / 4


def test_a_source_file_that_changes_between_the_two_passes_is_an_error(tmp_path, monkeypatch):
    source = tmp_path / "photos"
    _make_image_folder(source, {"a": 4, "b": 4})
    check_all = prepare._check_all

    def check_then_change(*args):
        checked = check_all(*args)
        (source / "a" / "img1.png").write_bytes(_png((10, 12), "L", 999))
        return checked

    monkeypatch.setattr(prepare, "_check_all", check_then_change)
    with pytest.raises(InputError, match=r"a/img1\.png: changed while prepare was reading the source"):
        prepare.run(tiny_params(data={"source": str(source)}), Paths(tmp_path / "work"))
    assert not (tmp_path / "work/data/prepared").exists()


# --- IDX files (MNIST, KMNIST, Fashion-MNIST) ----------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped when the name ends in .gz (as torchvision downloads them)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _make_idx_folder(folder: Path, per_class: dict[str, int], gz: bool = True) -> None:
    """The four IDX files of a tiny MNIST-like dataset: real sklearn digits, 28x28, labels 0..9."""
    folder.mkdir(parents=True)
    digits = load_digits()
    rng = np.random.default_rng(0)
    for split, stem in (("train", "train"), ("test", "t10k")):
        count = per_class[split]
        picks = np.concatenate([rng.choice(np.flatnonzero(digits.target == d), count) for d in range(10)])
        images = np.array(
            [np.asarray(Image.fromarray((digits.images[i] * 16).astype(np.uint8)).resize((28, 28))) for i in picks]
        )
        suffix = ".gz" if gz else ""
        _write_idx(folder / f"{stem}-images-idx3-ubyte{suffix}", images)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte{suffix}", digits.target[picks])


# --- decoding in worker processes ----------------------------------------------------------------


def item_and_process(item):  # what a worker process runs must be importable by name
    return item, os.getpid()


def test_in_order_gives_the_results_in_order_from_worker_processes():
    items = list(range(3 * progress.WINDOW + 5))  # more than two windows in flight
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(in_order(item_and_process, items, pool))
    assert [item for item, _ in results] == items
    processes = {pid for _, pid in results}
    assert os.getpid() not in processes and 1 <= len(processes) <= 2
    assert list(in_order(item_and_process, items[:3], None)) == [(i, os.getpid()) for i in items[:3]]


def test_decode_workers_are_one_per_core_from_a_few_thousand_images_or_as_given():
    assert prepare.decode_workers("auto", prepare.POOL_MIN_ITEMS, cores=16) == 16
    assert prepare.decode_workers("auto", prepare.POOL_MIN_ITEMS - 1, cores=16) == 1
    assert prepare.decode_workers(3, 10, cores=16) == 3


def test_one_and_two_worker_processes_write_the_same_bytes(tmp_path, monkeypatch):
    source = tmp_path / "photos"
    _make_image_folder(source, {"a": 30, "b": 20, "c": 12})  # grey PNGs and colour JPEGs of several sizes
    (source / "b" / "broken.png").write_bytes(b"not an image")
    monkeypatch.setattr(progress, "WINDOW", 16)  # the images go to the processes in several windows
    outputs = []
    for workers in (1, 2):
        paths = Paths(tmp_path / f"workers-{workers}")
        data = {"source": str(source), "workers": workers, "imbalance": {"profile": "exponential", "ratio": 4}}
        prepare.run(tiny_params(data=data), paths)
        outputs.append((_tree_hash(paths.prepared), _tree_hash(paths.holdout)))
    stats = PreparedStats.read(paths.prepared)
    assert stats.skipped == 1 and stats.channels == 3 and stats.thinned and "workers" not in stats.params["data"]
    assert outputs[0] == outputs[1]


def test_read_idx_reads_what_was_written_and_rejects_other_files(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", array)
    assert (sources.read_idx(tmp_path / "a-idx3-ubyte.gz") == array).all()
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    with pytest.raises(InputError, match="not an IDX file of unsigned bytes"):
        sources.read_idx(tmp_path / "bad")


def test_torchvision_style_idx_folder_keeps_the_official_test_split_and_class_names(tmp_path):
    source = tmp_path / "FashionMNIST"  # torchvision's folder name: its class names apply
    _make_idx_folder(source / "raw", {"train": 30, "test": 6})
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(source), "imbalance": {"profile": "none"}}), paths)
    manifest, stats = _check_contract(paths.prepared)
    assert stats.class_names == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]  # the dataset's own label order, not sorted names
    assert stats.presplit and set(stats.counts["test"].values()) == {6}
    assert set(manifest.loc[manifest.split == "test", "source"].str.split(":").str[0]) == {"t10k-images-idx3-ubyte"}
    assert {stats.counts["train"][n] + stats.counts["val"][n] for n in stats.class_names} == {30}
    assert set(stats.counts["val"].values()) == {3}  # val carved from train: the test split stays official


def test_idx_folder_without_known_names_uses_classes_txt_or_the_labels(tmp_path):
    plain = tmp_path / "plain"
    _make_idx_folder(plain, {"train": 8, "test": 2}, gz=False)
    paths = Paths(tmp_path / "a")
    prepare.run(tiny_params(data={"source": str(plain), "imbalance": {"profile": "none"}}), paths)
    assert PreparedStats.read(paths.prepared).class_names == [str(d) for d in range(10)]
    (plain / "classes.txt").write_text("\n".join(f"digit {d}" for d in range(10)) + "\n")
    prepare.run(tiny_params(data={"source": str(plain), "imbalance": {"profile": "none"}}), paths)
    assert PreparedStats.read(paths.prepared).class_names[3] == "digit 3"


def test_max_per_class_caps_each_class_before_thinning(tmp_path):
    source = tmp_path / "idx"
    _make_idx_folder(source, {"train": 40, "test": 10})
    paths = Paths(tmp_path / "work")
    prepare.run(
        tiny_params(
            data={"source": str(source), "max_per_class": 20, "imbalance": {"profile": "exponential", "ratio": 10}}
        ),
        paths,
    )
    stats = PreparedStats.read(paths.prepared)
    kept = [stats.counts["train"][n] + stats.counts["val"][n] + stats.holdout[n] for n in stats.class_names]
    assert kept == [20] * 10  # the cap, then val carved, then thinning moved train images to the holdout
    assert set(stats.counts["test"].values()) == {10}  # under the cap
    assert stats.split_counts("train")[0] / stats.split_counts("train")[-1] == pytest.approx(10, rel=0.3)


def test_fashion_mnist_without_the_debian_package_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        prepare.run(tiny_params(data={"source": str(REPO_ROOT / "data/builtin/fashion-mnist.yaml")}), Paths(tmp_path))


def test_fashion_mnist_built_in_source_reads_the_debian_files(tmp_path, monkeypatch):
    fake = tmp_path / "fashion"
    _make_idx_folder(fake, {"train": 12, "test": 3})
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", fake)
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(REPO_ROOT / "data/builtin/fashion-mnist.yaml")}), paths)
    stats = PreparedStats.read(paths.prepared)
    assert stats.class_names[0] == "T-shirt/top" and stats.thinned  # built in: auto thins it


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


def test_a_users_folder_is_kept_as_it_is_by_default(tmp_path, capsys):
    source = tmp_path / "photos"
    _make_image_folder(source, {"many": 40, "some": 12, "few": 5})
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(source), "imbalance": {"profile": "auto", "ratio": 100}}), paths)
    stats = PreparedStats.read(paths.prepared)
    assert not stats.thinned and "thinned" not in capsys.readouterr().out
    assert {n: sum(stats.counts[s][n] for s in ("train", "val", "test")) for n in stats.class_names} == {
        "few": 5,
        "many": 40,
        "some": 12,
    }


def test_image_folder_with_mixed_and_bad_files(tmp_path):
    source = tmp_path / "photos"
    _make_image_folder(source, {"black cat": 6, "Ünïcode dög": 5, "zebra": 7})
    (source / "black cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (source / "zebra" / "notes.txt").write_text("not an image")
    (source / "zebra" / ".DS_Store").write_bytes(b"\0\0")
    before = _tree_hash(source)
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(source)}), paths)

    manifest, stats = _check_contract(paths.prepared)
    assert stats.class_names == ["black cat", "zebra", "Ünïcode dög"]
    assert stats.channels == 3 and stats.mode == "RGB"  # auto: some images have colour
    assert manifest.groupby("class_name").size().to_dict() == {"black cat": 6, "zebra": 7, "Ünïcode dög": 5}
    skipped = pd.read_csv(paths.prepared / "skipped.csv")
    reasons = dict(zip(skipped.path, skipped.reason))
    assert reasons["black cat/broken.png"] == "cannot decode: cannot identify image file"  # no memory address
    assert reasons["zebra/notes.txt"] == "not an image file"
    assert reasons["zebra/.DS_Store"] == "hidden file"
    assert stats.skipped == 3
    assert _tree_hash(source) == before  # the source is never modified


def test_grayscale_is_forced_when_asked(tmp_path):
    source = tmp_path / "photos"
    _make_image_folder(source, {"a": 4, "b": 4})
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(source), "channels": "grayscale"}), paths)
    assert _check_contract(paths.prepared)[1].channels == 1


def test_presplit_folder_keeps_the_given_splits_and_carves_val_from_train(tmp_path):
    source = tmp_path / "presplit"
    _make_image_folder(source / "train", {"a": 10, "b": 4})
    _make_image_folder(source / "test", {"a": 2, "b": 3})
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(source), "val_fraction": 0.2}), paths)
    stats = _check_contract(paths.prepared)[1]
    assert stats.presplit is True
    assert stats.counts == {"train": {"a": 8, "b": 3}, "val": {"a": 2, "b": 1}, "test": {"a": 2, "b": 3}}


def test_csv_manifest_source(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(12):
        (images / f"{i}.png").write_bytes(_png((9, 9), "L", i))
        rows.append({"path": f"images/{i}.png", "label": i % 3})
    pd.DataFrame(rows).to_csv(tmp_path / "labels.csv", index=False)
    paths = Paths(tmp_path / "work")
    prepare.run(tiny_params(data={"source": str(tmp_path / "labels.csv")}), paths)
    manifest, stats = _check_contract(paths.prepared)
    assert stats.class_names == ["0", "1", "2"]
    assert set(manifest.source) == {f"images/{i}.png" for i in range(12)}


# --- bad input: one line, exit 2, no traceback, nothing lost -------------------------------------


def _run_prepare(tmp_path, data_overrides, capsys, own_process: bool) -> tuple[int, str]:
    """`python -m pipeline prepare` in `tmp_path`: in a process of its own, as DVC runs it, or through the
    same entry point in this process (a new process costs seconds)."""
    write_params(tmp_path, merge_dicts(TINY_PARAMS, {"data": data_overrides}))
    if own_process:
        result = run_cli("prepare", cwd=tmp_path)
        code, stderr = result.returncode, result.stderr
    else:
        capsys.readouterr()
        code, stderr = pipeline_main(["prepare"]), capsys.readouterr().err
    assert "Traceback" not in stderr
    return code, stderr.strip().splitlines()[-1] if stderr.strip() else ""


def test_bad_sources_are_clear_errors_and_keep_the_previous_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pil_limit = Image.MAX_IMAGE_PIXELS
    write_params(tmp_path, TINY_PARAMS)
    assert pipeline_main(["prepare"]) == 0
    prepared = Paths(tmp_path).prepared
    previous = (prepared / "manifest.csv").read_bytes()

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
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("builtin: cifar\n")

    cases = [
        ({"source": "nowhere"}, "data.source nowhere: no such file or folder"),
        ({"source": str(unknown)}, "names built-in source 'cifar'; known: mnist5k, digits, fashion-mnist"),
        ({"source": str(tmp_path / "empty")}, "no images found"),
        ({"source": str(one_class)}, "found 1 class(es); need at least 2"),
        ({"source": str(tiny_class)}, "class 'lonely' has 1 usable image(s)"),
        ({"source": str(corrupt), "strict": True}, "b/bad.png: cannot decode"),
        ({"source": str(bomb), "max_image_pixels": 100_000}, "a/huge.png: image is over data.max_image_pixels"),
    ]
    for i, (overrides, message) in enumerate(cases):
        code, line = _run_prepare(tmp_path, overrides, capsys, own_process=i == 0)
        assert code == 2 and line.startswith("error: ") and message in line, (overrides, line)
        assert (prepared / "manifest.csv").read_bytes() == previous
        assert not list(tmp_path.glob("data/prepared.tmp-*"))
    assert pil_limit == Image.MAX_IMAGE_PIXELS  # data.max_image_pixels set PIL's limit for prepare's images only
