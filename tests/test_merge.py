"""The merge stage and pipeline.dataset: a balanced, versioned augmented dataset that ImageFolder loads."""

import json
import os
import platform
import re
import tarfile
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torchvision.datasets import ImageFolder

import pipeline.io
from conftest import REPO_ROOT, copy_outputs, tiny_params
from pipeline.balancing import class_weights
from pipeline.config import MergeParams
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats, SyntheticSummary
from pipeline.dataset import load_augmented
from pipeline.errors import InputError
from pipeline.io import read_json, read_manifest, sha256_file
from pipeline.paths import Paths
from pipeline.stages import generate, merge
from test_generate import NO_LABEL_CHECK, save_untrained_models

SHARE = MergeParams().synthetic_share  # the default


@pytest.fixture(scope="module")
def generated_tiny(prepared_tiny, tmp_path_factory) -> Path:
    """The tiny data after generate (untrained models, label check off: every class reaches the largest)."""
    paths = Paths(copy_outputs(prepared_tiny, tmp_path_factory.mktemp("generated_tiny")))
    save_untrained_models(paths)
    generate.run(tiny_params(generate=NO_LABEL_CHECK), paths)
    return paths.root


@pytest.fixture
def generated(generated_tiny, tmp_path) -> Paths:
    """The paths of a scratch copy of `generated_tiny`."""
    return Paths(copy_outputs(generated_tiny, tmp_path))


def read_merged(paths: Paths):
    return read_manifest(paths.augmented / "manifest.csv", MANIFEST_COLUMNS + ["weight"])


def test_class_weights_balance_classes_and_split_rare_classes_by_the_share():
    labels = np.array([0] * 8 + [1] * 2 + [1] * 6 + [2] * 4)
    synthetic = np.array([False] * 8 + [False] * 2 + [True] * 6 + [False] * 4)
    weights = class_weights(labels, 3, synthetic=synthetic, synthetic_share=0.25)
    class_mass = np.bincount(labels, weights=weights)
    assert np.allclose(class_mass, class_mass[0])
    assert np.isclose(weights[synthetic].sum(), 0.25 * class_mass[1])
    assert np.allclose(weights[labels == 1][~synthetic[labels == 1]], weights[8])  # equal within an origin
    assert np.allclose(weights[labels == 2], class_mass[2] / 4)
    assert np.isclose(merge.merged_weights(labels, synthetic, 3, 0.25).mean(), 1.0)
    # a share per class: class 1's synthetic images get 0.1 of its mass, the classes stay balanced
    per_class = class_weights(labels, 3, synthetic=synthetic, synthetic_share=np.array([0.25, 0.1, 0.25]))
    assert np.allclose(np.bincount(labels, weights=per_class), class_mass)
    assert np.isclose(per_class[synthetic].sum(), 0.1 * class_mass[1])


@pytest.mark.parametrize("balance, expected", [(0.0, [0.8, 0.2]), (1.0, [0.5, 0.5]), (0.5, [2 / 3, 1 / 3])])
def test_class_weights_interpolate_between_natural_and_uniform_class_frequencies(balance, expected):
    labels = np.array([0] * 16 + [1] * 4)
    mass = np.bincount(labels, weights=class_weights(labels, 2, balance))
    assert np.allclose(mass / mass.sum(), expected)


def test_merge_writes_an_imagefolder_with_prepared_class_indices_and_a_weighted_manifest(generated):
    merge.run(tiny_params(), generated)
    stats = PreparedStats.read(generated.prepared)
    manifest = read_merged(generated)
    folder = ImageFolder(generated.augmented / "train")
    assert folder.class_to_idx == {c.folder: c.label for c in stats.classes}
    # manifest rows are in ImageFolder order, so its weights fit ImageFolder too
    assert [os.path.relpath(path, generated.augmented) for path, _ in folder.samples] == manifest["path"].tolist()
    assert folder.targets == manifest["label"].tolist()

    counts = manifest.groupby(["class_name", "origin"]).size().unstack(fill_value=0)
    assert counts["real"].to_dict() == stats.counts["train"]
    assert counts.sum(axis=1).nunique() == 1  # balanced: every class as large as the largest
    mass = manifest.groupby("label")["weight"].sum()
    assert np.allclose(mass, mass.iloc[0])
    rare = manifest[manifest["class_name"] == "9"]
    assert np.isclose(rare.loc[rare["origin"] == "synthetic", "weight"].sum(), SHARE * mass.iloc[0])
    assert rare.loc[rare["origin"] == "synthetic", "judge_confidence"].notna().all()  # the gate's values

    card = read_json(generated.augmented / "dataset.json")
    assert card["version"] == sha256_file(generated.augmented / "manifest.csv")
    assert card["counts"] == {"real": int(counts["real"].sum()), "synthetic": int(counts["synthetic"].sum())}
    assert card["generator_hash"] == SyntheticSummary.read(generated.synthetic).generator_hash
    assert card["params"]["generate"]["check_label"] is False and card["params"]["merge"]["synthetic_share"] == SHARE
    for row in manifest.sample(20, random_state=0).itertuples():
        assert sha256_file(generated.augmented / row.path) == row.sha256
    real_file = generated.augmented / manifest.loc[manifest["origin"] == "real", "path"].iloc[0]
    assert os.stat(real_file).st_nlink == 2  # a hard link to the prepared image


def test_with_nothing_to_generate_merge_publishes_the_real_images_every_class_drawn_equally(
    prepared_tiny, tmp_path, capsys
):
    paths = Paths(copy_outputs(prepared_tiny, tmp_path))
    save_untrained_models(paths)
    generate.run(tiny_params(generate={"target": 0}), paths)
    printed = capsys.readouterr().out
    assert "generate: nothing to generate: the plan for target 0 asks for no synthetic images" in printed
    assert read_manifest(paths.synthetic / "manifest.csv", MANIFEST_COLUMNS)["label"].dtype == np.int64  # no rows
    merge.run(tiny_params(), paths)
    stats = PreparedStats.read(paths.prepared)
    manifest = read_merged(paths)
    assert (manifest["origin"] == "real").all()
    assert manifest.groupby("class_name").size().to_dict() == stats.counts["train"]
    assert np.allclose(manifest.groupby("label")["weight"].sum(), len(manifest) / stats.num_classes)
    assert len(ImageFolder(paths.augmented / "train")) == len(manifest)
    card = read_json(paths.augmented / "dataset.json")
    assert card["counts"] == {"real": len(manifest), "synthetic": 0}
    assert "0 synthetic images in 10 classes" in capsys.readouterr().out


def test_a_short_class_keeps_its_mass_and_its_real_images_are_drawn_for_the_shortfall(generated, capsys):
    """generate.on_short: fill kept 12 of 24 planned images of class 9 (summary.json says so)."""
    summary = read_json(generated.synthetic / "summary.json")
    passed = summary["planned"]["9"]
    summary["planned"]["9"], summary["short_classes"] = 2 * passed, {"9": {"passed": passed, "planned": 2 * passed}}
    (generated.synthetic / "summary.json").write_text(json.dumps(summary))
    merge.run(tiny_params(), generated)
    manifest = read_merged(generated)
    mass = manifest.groupby("class_name")["weight"].sum()
    assert np.allclose(mass, mass.iloc[0])  # still balanced
    synthetic_mass = manifest[manifest["origin"] == "synthetic"].groupby("class_name")["weight"].sum() / mass
    assert np.isclose(synthetic_mass["9"], SHARE * 0.5)  # half the images: half the share, the rest on real ones
    assert np.isclose(synthetic_mass["8"], SHARE)
    card = read_json(generated.augmented / "dataset.json")
    assert card["short_classes"] == {"9": {"passed": passed, "planned": 2 * passed}}
    shares = {c["class_name"]: (c["synthetic"], c["planned"], c["synthetic_share"]) for c in card["classes"]}
    assert shares["9"] == (passed, 2 * passed, pytest.approx(SHARE * 0.5)) and shares["0"] == (0, 0, 0.0)
    assert (
        f"short classes, their real images drawn for the shortfall: '9' ({passed} of {2 * passed})"
        in capsys.readouterr().out
    )


def test_the_card_says_what_made_the_data_version(generated):
    merge.run(tiny_params(), generated)
    environment = read_json(generated.augmented / "dataset.json")["environment"]
    assert set(environment) == {"judge", "train", "generate", "merge"}
    assert environment["judge"] is None and environment["train"] is None  # models saved without a record (by the test)
    for stage in ("generate", "merge"):
        made = environment[stage]
        assert made["python"] == platform.python_version()
        assert made["device"] == ("gpu" if stage == "generate" and torch.cuda.is_available() else "cpu")
        assert {name: made["packages"][name] for name in ("torch", "numpy", "albumentations")} == {
            name: version(name) for name in ("torch", "numpy", "albumentations")
        }
        assert made["threads"] == torch.get_num_threads() and made["cpu_capability"] and made["device_name"]


def test_merge_is_byte_identical_on_rerun_and_keeps_the_old_version_when_it_fails(generated, monkeypatch):
    merge.run(tiny_params(), generated)
    card_bytes, manifest_bytes = (sha256_file(generated.augmented / name) for name in ("dataset.json", "manifest.csv"))
    merge.run(tiny_params(), generated)
    assert sha256_file(generated.augmented / "dataset.json") == card_bytes
    assert sha256_file(generated.augmented / "manifest.csv") == manifest_bytes

    copies = []

    def fail_after_ten(source, dest):
        copies.append(dest)
        if len(copies) > 10:
            raise OSError("disk full")
        dest.write_bytes(Path(source).read_bytes())

    monkeypatch.setattr(merge, "link_or_copy", fail_after_ten)
    with pytest.raises(OSError):
        merge.run(tiny_params(merge={"synthetic_share": 0.3}), generated)
    assert sha256_file(generated.augmented / "dataset.json") == card_bytes  # the previous version stays whole
    assert sorted(os.listdir(generated.root / "data")) == ["augmented", "holdout", "prepared", "synthetic"]


def test_merge_reads_one_class_at_a_time_and_refuses_a_manifest_not_grouped_by_class(generated, monkeypatch):
    merge.run(tiny_params(), generated)
    manifest_bytes = (generated.augmented / "manifest.csv").read_bytes()
    monkeypatch.setattr(pipeline.io, "CHUNK_ROWS", 7)  # classes span chunks
    classes = list(merge.published_classes(generated, PreparedStats.read(generated.prepared)))
    assert [rows["label"].unique().tolist() for rows in classes] == [[y] for y in range(len(classes))]
    merge.run(tiny_params(), generated)  # the same bytes when classes span chunks
    assert (generated.augmented / "manifest.csv").read_bytes() == manifest_bytes

    candidates = generated.synthetic / "manifest.csv"
    rows = pd.read_csv(candidates, dtype=str, keep_default_na=False)
    rows.iloc[::-1].to_csv(candidates, index=False, lineterminator="\n")  # the classes in reverse order
    with pytest.raises(InputError, match=r"manifest\.csv: rows of label \d+ come after rows of label"):
        merge.run(tiny_params(), generated)
    assert (generated.augmented / "manifest.csv").read_bytes() == manifest_bytes


def test_load_augmented_draws_classes_equally_and_filters_by_origin(generated):
    merge.run(tiny_params(), generated)
    dataset, manifest, sampler = load_augmented(
        generated.augmented, transform=lambda image: torch.from_numpy(np.array(image))
    )
    assert len(dataset) == len(manifest) == sampler.num_samples
    image, label = dataset[len(dataset) - 1]
    assert image.shape == (16, 16) and label == manifest["label"].iloc[-1]

    sampler.generator, sampler.num_samples = torch.Generator().manual_seed(0), 20_000
    drawn = manifest.iloc[list(sampler)]
    assert drawn["label"].value_counts(normalize=True).between(0.09, 0.11).all()  # 10 classes: 0.1 each
    rare = drawn[drawn["class_name"] == "9"]
    assert SHARE - 0.05 < (rare["origin"] == "synthetic").mean() < SHARE + 0.05  # merge.synthetic_share

    real, real_manifest, real_sampler = load_augmented(generated.augmented, origin="real")
    assert (real_manifest["origin"] == "real").all() and len(real) == (manifest["origin"] == "real").sum()
    real_sampler.generator, real_sampler.num_samples = torch.Generator().manual_seed(0), 20_000
    counts = real_manifest.iloc[list(real_sampler)]["label"].value_counts(normalize=True)
    assert counts.between(0.09, 0.11).all()  # still class-balanced over the real images alone
    _, synthetic_manifest, _ = load_augmented(generated.augmented, origin="synthetic")
    assert set(synthetic_manifest["origin"]) == {"synthetic"} and "0" not in set(synthetic_manifest["class_name"])
    confident = synthetic_manifest[synthetic_manifest["judge_confidence"] > 0.5]  # gate values are numbers
    assert len(confident) < len(synthetic_manifest) and real_manifest["judge_confidence"].isna().all()


# --- shards: the same dataset as WebDataset tar files ---------------------------------------------

SHARDS = {"format": "shards", "shard_size": 300}


def test_shard_names_cut_the_shuffled_places_into_shards_of_the_size():
    shards, keys = merge.shard_names([9, 0, 4, 3], 4)
    assert shards == [f"shards/train-{s:06d}.tar" for s in (2, 0, 1, 0)]
    assert keys == ["sample-00000009", "sample-00000000", "sample-00000004", "sample-00000003"]


def _tar_samples(shard: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} of a shard, checking WebDataset's layout: a sample's files next to each other."""
    samples = {}
    with tarfile.open(shard) as tar:
        for info in tar:
            assert (info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode) == (0, 0, 0, "", "", 0o644)
            key, extension = info.name.split(".", 1)
            assert key in samples or not samples or len(next(reversed(samples.values()))) == 2
            samples.setdefault(key, {})[extension] = tar.extractfile(info).read()
    return samples


def test_shards_hold_the_image_folder_images_and_rows_and_are_byte_identical_on_rerun(generated, tmp_path):
    merge.run(tiny_params(), generated)
    folder_manifest = (generated.augmented / "manifest.csv").read_text()
    sharded = Paths(copy_outputs(generated.root, tmp_path / "sharded"))
    merge.run(tiny_params(merge=SHARDS), sharded)

    manifest = read_merged(sharded)
    shard_files = sorted((sharded.augmented / "shards").iterdir())
    assert sorted(os.listdir(sharded.augmented)) == ["dataset.json", "manifest.csv", "shards"]
    assert len(shard_files) == -(-len(manifest) // 300) and set(manifest["shard"]) == {
        f"shards/{f.name}" for f in shard_files
    }
    samples = {key: sample for f in shard_files for key, sample in _tar_samples(f).items()}
    assert len(samples) == len(manifest)
    for f in shard_files:  # shuffled: every shard holds several classes, each shard's samples in key order
        in_shard = manifest[manifest["shard"] == f"shards/{f.name}"]
        assert in_shard["label"].nunique() > 1 and list(_tar_samples(f)) == sorted(in_shard["key"])
    records = []
    for row in manifest.itertuples():
        png = samples[row.key]["png"]
        assert png == (generated.augmented / row.path).read_bytes()  # the ImageFolder form's bytes
        records.append(json.loads(samples[row.key]["json"]))
    as_csv = pd.DataFrame(records, dtype=object)[merge.ROW_COLUMNS].to_csv(index=False, lineterminator="\n")
    assert as_csv == folder_manifest
    assert manifest.drop(columns=merge.SHARD_COLUMNS).to_csv(index=False, lineterminator="\n") == folder_manifest

    card = read_json(sharded.augmented / "dataset.json")
    assert card["format"] == "shards" and card["version"] == sha256_file(sharded.augmented / "manifest.csv")
    assert card["version"] != read_json(generated.augmented / "dataset.json")["version"]  # the version covers the form
    tar_hashes = [sha256_file(f) for f in shard_files]
    merge.run(tiny_params(merge=SHARDS), sharded)
    assert [sha256_file(f) for f in shard_files] == tar_hashes
    assert sha256_file(sharded.augmented / "manifest.csv") == card["version"]

    merge.run(tiny_params(merge={**SHARDS, "format": "both"}), sharded)  # both: the same shards beside train/
    assert [sha256_file(f) for f in shard_files] == tar_hashes and (sharded.augmented / "train").is_dir()
    assert sha256_file(sharded.augmented / "manifest.csv") == card["version"]


def test_load_augmented_reads_shards_as_it_reads_the_image_folder(generated, tmp_path):
    merge.run(tiny_params(), generated)
    sharded = Paths(copy_outputs(generated.root, tmp_path / "sharded"))
    merge.run(tiny_params(merge=SHARDS), sharded)
    for origin in (None, "synthetic"):
        from_folder, folder_manifest, _ = load_augmented(generated.augmented, origin)
        from_shards, shard_manifest, _ = load_augmented(sharded.augmented, origin)
        pd.testing.assert_frame_equal(shard_manifest.drop(columns=merge.SHARD_COLUMNS), folder_manifest)
        assert len(from_shards) == len(from_folder)
        for index in range(len(from_folder)):
            (folder_image, folder_label), (shard_image, shard_label) = from_folder[index], from_shards[index]
            assert shard_label == folder_label and shard_image.mode == folder_image.mode
            assert np.array_equal(np.asarray(shard_image), np.asarray(folder_image))

    shard = sharded.augmented / shard_manifest["shard"].iloc[0]
    shard.write_bytes(shard.read_bytes()[:4096])  # cut short on the way
    with pytest.raises(InputError, match=r"has no sample-.*png, which manifest\.csv lists"):
        load_augmented(sharded.augmented)
    shard.write_bytes(b"")
    with pytest.raises(InputError, match="not a readable tar file"):
        load_augmented(sharded.augmented)


def webdataset_snippet() -> str:
    """The code block of docs/dataset.md's WebDataset section, as the page shows it."""
    section = (REPO_ROOT / "docs/dataset.md").read_text(encoding="utf-8").split("## With WebDataset", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_webdataset_reads_the_shards_as_the_image_folder_holds_them(generated, monkeypatch):
    merge.run(tiny_params(merge={**SHARDS, "format": "both"}), generated)
    monkeypatch.chdir(generated.root)  # the snippet's paths are the repository's
    snippet = {}
    exec(webdataset_snippet(), snippet)
    assert len(snippet["shards"]) > 1

    folder = ImageFolder(str(generated.augmented / "train"))  # its class index of each file is the label
    label_of = {Path(path).relative_to(generated.augmented).as_posix(): label for path, label in folder.samples}
    mode = read_json(generated.augmented / "dataset.json")["mode"]
    read = []
    for image, row in snippet["dataset"]:
        assert row["label"] == label_of[row["path"]], row["path"]
        with Image.open(generated.augmented / row["path"]) as file:
            assert image.mode == file.mode == mode and np.array_equal(np.asarray(image), np.asarray(file))
        read.append(row["path"])
    assert sorted(read) == sorted(label_of)  # every image once
    assert snippet["row"]["path"] == read[0] and snippet["image"].size == image.size


def test_a_long_manifest_reads_with_one_type_per_column(tmp_path):
    # As in a merged manifest: the gate's columns are empty on the real rows, which come first, and
    # numbers on the synthetic ones. pandas reads a long file in chunks (of about 2**18 fields) and
    # would type the chunks apart: strings in the first, floats in the last.
    rows = 40_000
    frame = pd.DataFrame(
        {
            "path": [f"train/a/{i:06d}.png" for i in range(rows)],
            **{f"column_{j}": ["x"] * rows for j in range(14)},
            "nn_distance": [""] * (rows // 2) + ["0.25"] * (rows - rows // 2),
        }
    )
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pandas' DtypeWarning about mixed types
        read = read_manifest(tmp_path / "manifest.csv", ["path", "nn_distance"])
    assert {type(value) for value in read["nn_distance"]} == {str}
    assert pd.to_numeric(read["nn_distance"], errors="coerce").notna().sum() == rows - rows // 2
