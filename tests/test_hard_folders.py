"""Two folders that are not the demo, through `dvc repro` in a temporary copy of the repository, with
the project's params apart from the compute budget (and, for the second, the gate's bar):

- an already balanced folder (three classes of 12 images, RGBA, 16-bit grayscale and palette PNGs of
  mixed sizes, one class named `héllo wörld`): nothing to generate, so the real images are published,
  every class drawn equally often, and every stage says so;
- a folder whose rarest class the GAN cannot serve (the label check's bar set where no candidate
  reaches it): the default `generate.on_short: fill` publishes a balanced dataset and reports the
  short class everywhere a user looks; `on_short: fail` stops at generate with one line.
"""

import json
import platform
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from conftest import REPO_ROOT, dvc, make_repo_copy, merge_dicts
from pipeline.config import MergeParams
from pipeline.io import read_json
from test_end_to_end import BUDGET, STAGES, checked, stages_run
from test_report import Page

BALANCED = {"circles": 0, "héllo wörld": 1, "lines": 7}  # class name: the digit its images show
SHORT = {"zero": (0, 12), "one": (1, 12), "eight rare": (8, 5)}  # class name: (digit, images)
NO_CANDIDATE_REACHES = {"label_pass_rate": 1e-6}  # the bar: the surest real val image's probability


def digit_image(digit_images: np.ndarray, i: int) -> Image.Image:
    """One of the 8x8 digits as a PNG-ready image: RGBA, 16-bit grayscale or palette in turn, of mixed sizes."""
    gray = (digit_images[i % len(digit_images)] * 15).astype(np.uint8)
    size = (20 + 3 * (i % 5), 18 + 4 * (i % 3))
    kind = i % 3
    if kind == 0:
        rgba = np.stack([gray, 255 - gray, gray // 2, np.full_like(gray, 255)], axis=-1)
        return Image.fromarray(rgba, mode="RGBA").resize(size)
    if kind == 1:
        return Image.fromarray(gray.astype(np.uint16) * 257).resize(size)  # mode I;16
    return Image.fromarray(np.stack([gray, gray // 3, 255 - gray], axis=-1)).resize(size).quantize(16)  # mode P


def make_folder(root: Path, classes: dict[str, tuple[int, int]]) -> None:
    digits = load_digits()
    for name, (digit, count) in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            digit_image(digits.images[digits.target == digit], i).save(root / name / f"{i:02d}.png")


def repo_for(tmp_path: Path, classes: dict[str, tuple[int, int]], generate: dict | None = None) -> tuple[Path, dict]:
    make_folder(tmp_path / "source", classes)
    params = merge_dicts(
        yaml.safe_load((REPO_ROOT / "params.yaml").read_text()),
        {"data": {"source": str(tmp_path / "source")}, **BUDGET, "generate": generate or {}},
    )
    return make_repo_copy(tmp_path / "repo", params), params


def check_environment(card: dict) -> None:
    """Every stage that made the data version recorded what it computed with, as the test runs."""
    assert set(card["environment"]) == {"judge", "train", "generate", "merge"}
    for stage, made in card["environment"].items():
        assert made["python"] == platform.python_version(), stage
        assert made["packages"]["torch"] == version("torch") and made["packages"]["numpy"] == version("numpy")
        assert made["packages"]["albumentations"] == "2.0.8"
        assert made["device"] in ("cpu", "gpu") and made["device_name"] and made["cpu_capability"]
        assert isinstance(made["threads"], int) and made["threads"] >= 1


def verdict_cells(page: str) -> dict[str, str]:
    """class name -> the text of its verdict cell in the report's per-class table."""
    table = [[" ".join(cell.split()) for cell in row] for row in Page(page).table_with("verdict")]
    column = table[0].index("verdict")
    return {row[0]: row[column] for row in table[1:]}


def test_an_already_balanced_folder_publishes_its_real_images_drawn_equally(tmp_path):
    repo, _ = repo_for(tmp_path, {name: (digit, 12) for name, digit in BALANCED.items()})
    with Image.open(tmp_path / "source/héllo wörld/01.png") as sixteen_bit:
        assert sixteen_bit.mode in ("I;16", "I")
    result = dvc("repro", cwd=repo)
    assert stages_run(checked(result)) == STAGES
    assert "generate: nothing to generate: the plan for target 'max' asks for no synthetic images" in result.stdout

    summary = read_json(repo / "data/synthetic/summary.json")
    assert summary["planned"] == dict.fromkeys(BALANCED, 0) and summary["short_classes"] == {}
    card = read_json(repo / "data/augmented/dataset.json")
    assert {c["class_name"] for c in card["classes"]} == set(BALANCED) and card["counts"]["synthetic"] == 0
    assert all(c["planned"] == c["synthetic"] == 0 and c["sampling_mass"] == round(1 / 3, 6) for c in card["classes"])
    assert len(ImageFolder(repo / "data/augmented/train")) == card["counts"]["real"]
    check_environment(card)

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["classes"]["short"] == 0 and metrics["classes"]["no_synthetic_images"] == 3
    assert read_json(repo / "reports/detail.json")["short_classes"] == {}
    assert "synthetic_only" not in pd.read_csv(repo / "reports/tables/utility.csv")["arm"].tolist()
    page = (repo / "reports/report.html").read_text(encoding="utf-8")
    assert "There was nothing to generate" in page and card["version"] in page
    assert verdict_cells(page) == dict.fromkeys(BALANCED, "no synthetic images")
    assert card["environment"]["judge"]["packages"]["torch"] in page


def test_a_class_the_gan_cannot_serve_is_filled_by_its_real_images_and_reported(tmp_path):
    repo, params = repo_for(tmp_path, SHORT, NO_CANDIDATE_REACHES)
    result = dvc("repro", cwd=repo)
    assert stages_run(checked(result)) == STAGES
    warnings = [line for line in (result.stdout + result.stderr).splitlines() if "generate: warning:" in line]
    assert len(warnings) == 1 and "class 'eight rare':" in warnings[0], warnings
    assert warnings[0].endswith("its real images fill the rest of the class (generate.on_short: fill)")

    plan = pd.read_csv(repo / "data/synthetic/plan.csv", dtype={"class_name": str}).set_index("class_name")
    passed, planned = int(plan.loc["eight rare", "generated"]), int(plan.loc["eight rare", "planned"])
    assert planned > 0 and plan.loc["eight rare", "short"] == planned - passed > 0
    assert plan.loc[["zero", "one"], "planned"].eq(0).all()  # the rarest class is the only one that needs images
    short = {"eight rare": {"passed": passed, "planned": planned}}
    assert read_json(repo / "data/synthetic/summary.json")["short_classes"] == short

    card = read_json(repo / "data/augmented/dataset.json")
    assert card["short_classes"] == short
    rare = next(c for c in card["classes"] if c["class_name"] == "eight rare")
    assert (rare["synthetic"], rare["planned"]) == (passed, planned)
    assert rare["synthetic_share"] == round(MergeParams().synthetic_share * passed / planned, 6)
    assert all(c["sampling_mass"] == round(1 / 3, 6) for c in card["classes"])  # balanced all the same
    check_environment(card)
    assert json.loads((repo / "reports/metrics.json").read_text())["classes"]["short"] == 1
    assert read_json(repo / "reports/detail.json")["short_classes"] == short
    page = (repo / "reports/report.html").read_text(encoding="utf-8")
    assert verdict_cells(page)["eight rare"].endswith(f"short: {passed} of {planned}")
    assert "Short classes" in page

    # who wants a hard stop keeps it: one line naming the class
    params["generate"]["on_short"] = "fail"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True))
    failed = dvc("repro", "generate", cwd=repo)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: class")]
    assert len(errors) == 1 and errors[0].startswith(f"error: class 'eight rare': {passed} of {planned} images passed")
    assert errors[0].endswith("or set generate.on_short: fill")
