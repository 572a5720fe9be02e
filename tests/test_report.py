"""The report stage on the tiny config, with synthetic images made by hand so that each verdict has a
known cause: one class of exact copies of training images (memorised), one class of another class's
images (wrong label), and the other rare classes of genuinely new real images (held-out val images).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_PARAMS, copy_outputs, merge_dicts, run_cli, tiny_params, write_params
from PIL import Image

from pipeline import judge, merge, report, utility
from pipeline.config import ConfigError, VerdictParams
from pipeline.generate import GATE_COLUMNS
from pipeline.io import (MANIFEST_COLUMNS, encode_png, load_prepared_split, read_json, read_manifest, sha256_bytes,
                         write_json, write_manifest)

COPIED_CLASS, WRONG_CLASS = "5", "7"  # synthetic images: copies of its train images / images of class 0
FAST = {"judge": {"max_epochs": 3, "width": 8},
        "report": {"seeds": 2, "steps": 40, "batch_size": 32, "width": 8, "kid_subsets": 10}}


def fast_params(**overrides):
    return tiny_params(**merge_dicts(FAST, overrides))


def write_synthetic(images_by_label: dict[int, torch.Tensor], stats: dict) -> None:
    """data/synthetic as generate writes it: accepted images, one rejected candidate, summary.json."""
    root = Path("data/synthetic")
    rows = []
    for label, images in images_by_label.items():
        folder, name = stats["classes"][label]["folder"], stats["classes"][label]["class_name"]
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            png = encode_png(image.permute(1, 2, 0).numpy())
            path = f"{folder}/{i:05d}.png"
            (root / path).write_bytes(png)
            rows.append({"path": path, "label": label, "class_name": name, "split": "train", "origin": "synthetic",
                         "source": "hand-made", "seed": i, "sha256": sha256_bytes(png), "accepted": True,
                         "reject_reason": "", "judge_confidence": 1.0, "judge_prediction": label,
                         "nn_distance": 1.0, "nearest_real": ""})
    rows.append({**rows[0], "path": "", "sha256": "", "accepted": False, "reject_reason": "low_confidence"})
    write_manifest(pd.DataFrame(rows, columns=MANIFEST_COLUMNS + GATE_COLUMNS), root / "manifest.csv")
    write_json(root / "summary.json", {"generator_hash": "hand-made", "judge_hash": "hand-made",
                                       "image_size": stats["image_size"], "channels": stats["channels"],
                                       "params": {"generate": {}}})


def shifted(images: torch.Tensor, pixels: int) -> torch.Tensor:
    return torch.roll(images, shifts=pixels, dims=-1)


@pytest.fixture(scope="session")
def report_inputs(prepared_tiny, tmp_path_factory) -> Path:
    """A workspace with data/prepared, models/judge, data/synthetic and data/augmented (read-only)."""
    root = tmp_path_factory.mktemp("report_inputs")
    shutil.copytree(prepared_tiny / "data", root / "data")
    cwd = Path.cwd()
    os.chdir(root)
    try:
        params = fast_params()
        judge.run(params)
        stats = read_json("data/prepared/stats.json")
        names = [c["class_name"] for c in stats["classes"]]
        train_images, train_labels = load_prepared_split("train")
        val_images, val_labels = load_prepared_split("val")
        synthetic = {}
        for label, name in enumerate(names[1:], start=1):  # class 0 is the largest: it gets none
            if name == COPIED_CLASS:
                synthetic[label] = train_images[train_labels == label].repeat(2, 1, 1, 1)
            elif name == WRONG_CLASS:
                synthetic[label] = val_images[val_labels == 0]
            else:
                new_images = val_images[val_labels == label]
                synthetic[label] = torch.cat([new_images, shifted(new_images, 1)])
        write_synthetic(synthetic, stats)
        merge.run(params)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def inputs_copy(report_inputs, tmp_path, monkeypatch) -> Path:
    copy_outputs(report_inputs, tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def reported(report_inputs, tmp_path_factory) -> tuple[Path, str]:
    """The report stage run once on the inputs: (its folder, what it printed)."""
    root = copy_outputs(report_inputs, tmp_path_factory.mktemp("reported"))
    cwd, printed = Path.cwd(), io.StringIO()
    os.chdir(root)
    try:
        with contextlib.redirect_stdout(printed):
            report.run(fast_params())
    finally:
        os.chdir(cwd)
    return root, printed.getvalue()


# --- pure parts ----------------------------------------------------------------------------------


def test_class_verdict_rules():
    rules = VerdictParams(min_relative_label_agreement=0.9, max_memorised_share=0.05, max_recall_drop=0.05)
    assert report.class_verdict(0.99, 1.0, 0.0, 0.02, rules)[0] == "use"
    assert report.class_verdict(0.99, 1.0, 0.0, 0.0, rules)[0] == "use"
    assert report.class_verdict(0.99, 1.0, 0.0, -0.01, rules)[0] == "use with care"
    assert report.class_verdict(0.55, 0.6, 0.0, 0.0, rules)[0] == "use"  # as well recognised as real images
    verdict, reason = report.class_verdict(0.5, 1.0, 0.2, -0.2, rules)
    assert verdict == "do not use"
    assert "recognises 50% of them, against 100%" in reason and "20.0% look memorised" in reason
    assert "cost 0.200 recall" in reason
    assert report.class_verdict(0.99, 1.0, 0.06, 0.1, rules)[0] == "do not use"


def test_oversample_to_balance_keeps_every_image_and_balances_the_classes():
    labels = np.array([0] * 10 + [1] * 3 + [2])
    indices = utility.oversample_to_balance(labels, np.random.default_rng(0))
    assert set(range(len(labels))) <= set(indices.tolist())
    assert np.bincount(labels[indices]).tolist() == [10, 10, 10]


def test_utility_recipe_is_reproducible_for_a_seed(inputs_copy):
    cfg = fast_params(report={"steps": 5}).report
    test_images, test_labels = load_prepared_split("test")
    names = [c["class_name"] for c in read_json("data/prepared/stats.json")["classes"]]
    first = utility.train_and_score("augmented", 3, test_images, test_labels, names, cfg)
    assert utility.train_and_score("augmented", 3, test_images, test_labels, names, cfg) == first


# --- the stage -----------------------------------------------------------------------------------


def test_metrics_json_holds_utility_and_quality_per_class(reported):
    root, _ = reported
    metrics = json.loads((root / "reports/metrics.json").read_text())
    for arm in utility.ARMS:
        for score in ("accuracy", "balanced_accuracy", "macro_f1"):
            assert set(metrics["utility"][arm][score]) == {"mean", "std"}
        assert 0.0 <= metrics["utility"][arm]["balanced_accuracy"]["mean"] <= 1.0
        assert set(metrics["utility"][arm]["recall"]) == {str(d) for d in range(10)}
    assert metrics["utility"]["classical"]["balanced_accuracy"]["std"] > 0  # two seeds really differ
    quality = metrics["quality"]
    assert "0" not in quality  # the largest class has no synthetic images
    assert quality[COPIED_CLASS]["memorised_share"] == 1.0
    assert quality[WRONG_CLASS]["label_agreement"] < 0.5
    genuine = [quality[name] for name in "1234689"]  # held-out real images: new, not copies
    assert np.mean([q["memorised_share"] for q in genuine]) < 0.2
    assert all({"frechet", "frechet_floor", "kid", "kid_floor", "precision", "recall", "density", "coverage"}
               <= set(q) for q in genuine)
    assert quality[WRONG_CLASS]["frechet"] > 5 * max(q["frechet"] for q in genuine)  # another class is far
    assert sum(metrics["verdicts"].values()) == 10 and metrics["verdicts"]["no_synthetic_images"] == 1


def test_verdicts_name_their_cause_and_the_summary_line_counts_them(reported):
    root, printed = reported
    quality = pd.read_csv(root / "reports/tables/quality.csv", dtype={"class_name": str}).set_index("class_name")
    assert quality.loc[COPIED_CLASS, "verdict"] == "do not use" and "memorised" in quality.loc[COPIED_CLASS, "reason"]
    assert quality.loc[WRONG_CLASS, "verdict"] == "do not use" and "recognises" in quality.loc[WRONG_CLASS, "reason"]
    assert quality.loc["0", "verdict"] == report.NO_SYNTHETIC

    last_line = printed.strip().splitlines()[-1]
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert re.fullmatch(r"report: balanced accuracy of augmented \d\.\d{3} vs (real|classical) \d\.\d{3} "
                        r"\(gain [+-]\d\.\d{3}\); classes: use \d+, use with care \d+, do not use \d+, "
                        r"no synthetic images 1", last_line)
    assert f"gain {metrics['augmented_gain']['balanced_accuracy']:+.3f}" in last_line
    assert f"do not use {metrics['verdicts']['do_not_use']}" in last_line


def test_tables_and_figures_are_written_for_dvc_plots(reported):
    root, _ = reported
    tables, figures_dir = root / "reports/tables", root / "reports/figures"
    for table in ("quality.csv", "recall.csv"):
        classes = pd.read_csv(tables / table, dtype={"class_name": str})["class_name"]
        assert classes.tolist() == [str(d) for d in range(10)]
    assert pd.read_csv(tables / "utility.csv")["arm"].tolist() == list(utility.ARMS)
    stats = read_json(root / "data/prepared/stats.json")
    figures = ["class_counts.png", "class_metrics.png", "closest_pairs.png"]
    figures += [f"samples_{c['folder']}.png" for c in stats["classes"]]
    assert sorted(p.name for p in figures_dir.iterdir()) == sorted(figures)
    for name in figures:
        with Image.open(figures_dir / name) as image:
            image.verify()


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.text = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_data(self, data):
        self.text.append(data)


def test_html_report_is_self_contained_and_every_image_decodes(reported):
    root, _ = reported
    parser = PageParser()
    parser.feed((root / "reports/report.html").read_text(encoding="utf-8"))
    parser.close()
    assert len(parser.images) == 3 + 10  # three figures and one sample grid per class
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,")))) as image:
            image.load()
    text = " ".join(parser.text)
    card = read_json(root / "data/augmented/dataset.json")
    assert card["version"] in text and "judge (models/judge)" in text
    assert "do not use" in text and "min_relative_label_agreement" in text and "balanced accuracy" in text


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="chromium is not installed")
def test_html_report_renders_in_headless_chromium(reported, tmp_path):
    root, _ = reported
    screenshot = tmp_path / "report.png"
    subprocess.run(
        ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1400,3000", f"--screenshot={screenshot}", (root / "reports/report.html").as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    with Image.open(screenshot) as image:
        assert image.size == (1400, 3000) and len(set(image.convert("L").getdata())) > 10  # not a blank page


# --- bad input -----------------------------------------------------------------------------------


def test_no_synthetic_images_is_an_error_naming_the_manifest(inputs_copy):
    manifest = read_manifest("data/synthetic/manifest.csv")
    write_manifest(manifest.assign(accepted=False), "data/synthetic/manifest.csv")
    write_params(inputs_copy, merge_dicts(TINY_PARAMS, FAST))
    result = run_cli("report", cwd=inputs_copy)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: data/synthetic/manifest.csv: no synthetic images passed the gate")
    assert not Path("reports").exists()


def test_seeds_below_one_is_an_error_naming_the_param(tmp_path):
    write_params(tmp_path, merge_dicts(TINY_PARAMS, {"report": {"seeds": 0}}))
    result = run_cli("report", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: report.seeds must be >= 1, got 0"


def test_a_judge_of_other_classes_is_an_error_naming_it(inputs_copy):
    meta = read_json("models/judge/judge.json")
    write_json("models/judge/judge.json", {**meta, "class_names": [*meta["class_names"][:-1], "ten"]})
    with pytest.raises(ConfigError, match=r"models/judge/judge.json: trained for other classes"):
        report.run(fast_params())


def test_synthetic_images_of_an_unknown_class_are_an_error_naming_the_class(inputs_copy):
    manifest = read_manifest("data/synthetic/manifest.csv")
    manifest.loc[manifest["class_name"] == "9", "class_name"] = "nine"
    write_manifest(manifest, "data/synthetic/manifest.csv")
    with pytest.raises(ConfigError, match=r"data/synthetic/manifest.csv: classes that data/prepared does not have: "
                                          r"'nine' \(label 9\)"):
        report.run(fast_params())


def test_an_augmented_dataset_of_other_synthetic_images_is_an_error(inputs_copy):
    manifest = read_manifest("data/augmented/manifest.csv")
    write_manifest(manifest[~((manifest["origin"] == "synthetic") & (manifest["class_name"] == "9"))],
                   "data/augmented/manifest.csv")
    with pytest.raises(ConfigError, match=r"data/augmented/manifest.csv: its synthetic images are not those"):
        report.run(fast_params())
