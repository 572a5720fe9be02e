"""The report stage: figures and one self-contained page from what evaluate wrote, on real tiny data.

The inputs are conftest's `evaluated` run: the real stages on the tiny config (prepare, judge, merge,
evaluate) with hand-chosen "synthetic" images (copies, another class's images, held-out real
images), so no GAN is trained.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from PIL import Image

from conftest import REPO_ROOT, TINY_PARAMS, run_cli, tiny_params, write_params
from pipeline.contracts import PreparedStats
from pipeline.errors import InputError
from pipeline.io import read_json
from pipeline.paths import Paths
from pipeline.stages import report

sys.path.insert(0, str(REPO_ROOT / "tools"))
from example_report import CHROMIUM_FLAGS  # the flags the committed example is rendered with

EXAMPLE = REPO_ROOT / "docs" / "example-report"  # the default run's page, committed by `make example-report`

# What the report stage reads; a workspace holding only these proves it needs nothing else.
REPORT_INPUTS = (
    "data/prepared",
    "data/synthetic",
    "data/augmented/dataset.json",
    "reports/metrics.json",
    "reports/detail.json",
    "reports/tables",
)


def report_workspace(evaluated: tuple[Path, str], dest: Path, leave_out: tuple[str, ...] = ()) -> Path:
    """A copy of only what the report stage reads (less `leave_out`) from conftest's `evaluated` run."""
    evaluated = evaluated[0]
    for rel in REPORT_INPUTS:
        if rel in leave_out:
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        copy = shutil.copytree if (evaluated / rel).is_dir() else shutil.copyfile
        copy(evaluated / rel, dest / rel)
    return dest


@pytest.fixture(scope="session")
def reported(evaluated, tmp_path_factory) -> Path:
    """The report stage run once, in a workspace holding nothing but its inputs."""
    root = report_workspace(evaluated, tmp_path_factory.mktemp("reported"))
    with contextlib.redirect_stdout(io.StringIO()):
        report.run(tiny_params(), Paths(root))
    return root


class Page(HTMLParser):
    """The page's image sources, every src/href, its text, and its tables as rows of cell texts."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.text, self.tables, self.wrapped = [], [], [], [], 0
        self._divs: list[str] = []  # the classes of the open <div>s
        self._in_cell = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.links += [attrs[key] for key in ("src", "href") if key in attrs]
        if tag == "img":
            self.images.append(attrs["src"])
        elif tag == "table":
            self.tables.append([])
            self.wrapped += self._divs[-1:] == ["table-wrap"]
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._in_cell = True
        elif tag == "br" and self._in_cell:
            self.tables[-1][-1][-1] += " "
        elif tag == "div":
            self._divs.append(attrs.get("class", ""))

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_cell = False
        elif tag == "div":
            self._divs.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_cell:
            self.tables[-1][-1][-1] += data

    def table_with(self, header: str) -> list[list[str]]:
        return next(table for table in self.tables if header in [" ".join(cell.split()) for cell in table[0]])


def decoded(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,")
    image = Image.open(io.BytesIO(base64.b64decode(src.removeprefix("data:image/png;base64,"))))
    image.load()
    return image


# --- figures and page ----------------------------------------------------------------------------


def test_figures_are_written_for_dvc_plots_and_each_decodes(reported):
    stats = PreparedStats.read(Paths(reported).prepared)
    expected = ["class_counts.png", "class_metrics.png", "closest_pairs.png"]
    expected += [f"samples_{c.folder}.png" for c in stats.classes]
    figures = Paths(reported).figures
    assert sorted(p.name for p in figures.iterdir()) == sorted(expected)
    for name in expected:
        with Image.open(figures / name) as image:
            image.verify()
    with Image.open(figures / "samples_0.png") as grid:  # class 0 has no synthetic images: a grey bottom row
        assert grid.convert("L").getpixel((2 + stats.image_size // 2, 3 * grid.height // 4)) == 128


def test_the_closest_pairs_are_read_a_chunk_at_a_time_as_sorting_the_whole_table_gives(
    evaluated, tmp_path, monkeypatch
):
    nearest = pd.read_csv(evaluated[0] / "reports/tables/nearest_real.csv", dtype=report.TABLE_TYPES)
    assert len(nearest) > 12
    nearest.sample(frac=1, random_state=0).to_csv(tmp_path / "nearest_real.csv", index=False)  # out of order
    monkeypatch.setattr(report, "CHUNK_ROWS", 4)
    closest = report.read_closest_pairs(tmp_path, 6)
    expected = nearest.sort_values(["relative_distance", "synthetic_path"]).head(6).reset_index(drop=True)
    pd.testing.assert_frame_equal(closest, expected)


def test_the_page_is_self_contained_and_every_image_decodes(reported):
    page = Page(Paths(reported).html.read_text(encoding="utf-8"))
    assert all(link.startswith("data:image/png;base64,") for link in page.links)  # nothing fetched from elsewhere
    assert len(page.images) == 3 + 10  # three figures and one sample grid per class
    for src in page.images:
        assert decoded(src).size[0] > 0
    assert page.wrapped == len(page.tables)  # every table scrolls inside its own box


def test_the_page_holds_the_version_the_gain_every_arm_and_each_class_verdict(reported):
    paths = Paths(reported)
    metrics = json.loads(paths.metrics.read_text())
    page = Page(paths.html.read_text(encoding="utf-8"))
    text = " ".join(" ".join(page.text).split())
    assert read_json(paths.augmented / "dataset.json")["version"] in text
    assert (
        f"{metrics['gain']:+.3f} balanced accuracy, 95 % interval "
        f"{metrics['gain_low']:+.3f} to {metrics['gain_high']:+.3f}" in text
    )
    assert f"tail recall {metrics['tail_gain']:+.3f}" in text
    assert "interval includes zero" in text or "interval lies" in text
    tail = read_json(paths.reports / "detail.json")["tail_classes"]
    assert "not of Inception" in text and f"rarest classes: {', '.join(tail)})" in text

    utility = pd.read_csv(paths.tables / "utility.csv").set_index("arm")
    augmented, baseline = utility.loc["augmented"], utility.loc[metrics["baseline"]]
    assert (
        f"augmented {augmented['balanced_accuracy_mean']:.3f} ± {augmented['balanced_accuracy_std']:.3f} against "
        f"{metrics['baseline']} {baseline['balanced_accuracy_mean']:.3f} ± {baseline['balanced_accuracy_std']:.3f}"
    ) in text
    arms = [row[0] for row in page.table_with("tail recall")[1:]]
    assert arms == [
        f"{arm} (best classical)" if arm == metrics["baseline"] else arm
        for arm in ("real", "classical", "classical_la", "augmented", "synthetic_only", "oracle")
    ]
    assert set(utility.index) == {arm.removesuffix(" (best classical)") for arm in arms}

    verdicts = page.table_with("verdict")
    column = [" ".join(cell.split()) for cell in verdicts[0]].index("verdict")
    quality = pd.read_csv(paths.tables / "quality.csv", dtype={"class_name": str})
    assert [(row[0], row[column]) for row in verdicts[1:]] == list(zip(quality["class_name"], quality["verdict"]))


def test_with_no_synthetic_images_the_page_renders_with_its_synthetic_columns_empty(
    evaluated_without_synthetic, tmp_path
):
    root = report_workspace(evaluated_without_synthetic, tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        report.run(tiny_params(), Paths(root))
    stats = PreparedStats.read(Paths(root).prepared)
    assert sorted(p.name for p in Paths(root).figures.iterdir()) == sorted(
        ["class_counts.png", "class_metrics.png"] + [f"samples_{c.folder}.png" for c in stats.classes]
    )  # no pairs
    page = Page(Paths(root).html.read_text(encoding="utf-8"))
    verdicts = page.table_with("verdict")
    header = [" ".join(cell.split()) for cell in verdicts[0]]
    rows = [dict(zip(header, row)) for row in verdicts[1:]]
    assert [row["class"] for row in rows] == stats.class_names
    assert all(row["verdict"] == "no synthetic images" and row["synthetic"] == "0" for row in rows)
    assert all(row["judge agrees synthetic"] == row["copies"] == "" for row in rows)  # empty, not an error
    assert "0 synthetic training images" in " ".join(" ".join(page.text).split())


def test_the_page_shows_what_made_the_data_version(reported):
    card = read_json(Paths(reported).augmented / "dataset.json")
    table = Page(Paths(reported).html.read_text(encoding="utf-8")).table_with("what")
    assert table[0] == ["what", "judge", "train", "generate", "merge"]
    rows = {row[0]: row[1:] for row in table[1:]}
    merge_made = card["environment"]["merge"]
    assert rows["torch"][3] == merge_made["packages"]["torch"] and rows["python"][3] == merge_made["python"]
    assert rows["threads"][3] == str(merge_made["threads"])
    assert rows["cpu_capability"][3] == merge_made["cpu_capability"]
    assert {"numpy", "albumentations", "device", "device_name"} <= set(rows)
    assert rows["torch"][:3] == ["not recorded"] * 3  # conftest's hand-made synthetic images: no stage before merge


def test_editing_the_template_changes_only_the_page(evaluated, reported, tmp_path, monkeypatch):
    templates = shutil.copytree(report.TEMPLATES, tmp_path / "templates")
    template = templates / report.TEMPLATE
    template.write_text(
        template.read_text(encoding="utf-8").replace(
            "<title>Synthetic data report</title>", "<title>Edited title</title>"
        ),
        encoding="utf-8",
    )
    monkeypatch.setattr(report, "TEMPLATES", templates)
    root = report_workspace(evaluated, tmp_path / "workspace")
    with contextlib.redirect_stdout(io.StringIO()):
        report.run(tiny_params(), Paths(root))
    edited, original = Paths(root).html.read_text(encoding="utf-8"), Paths(reported).html.read_text(encoding="utf-8")
    assert "<title>Edited title</title>" in edited
    assert edited.replace("Edited title", "Synthetic data report") == original
    for figure in Paths(reported).figures.iterdir():
        assert (Paths(root).figures / figure.name).read_bytes() == figure.read_bytes()


def test_a_missing_metrics_file_is_a_one_line_error_and_writes_nothing(evaluated, tmp_path):
    root = report_workspace(evaluated, tmp_path, leave_out=("reports/metrics.json",))
    write_params(root, TINY_PARAMS)
    result = run_cli("report", cwd=root)
    assert result.returncode == 2, result.stderr
    assert re.fullmatch(r"error: reports/metrics\.json: [^\n]+\n", result.stderr)
    assert not (root / "reports/report.html").exists() and not (root / "reports/figures").exists()


def test_a_headline_of_an_older_evaluate_is_a_one_line_error_naming_what_it_lacks(evaluated, tmp_path):
    root = report_workspace(evaluated, tmp_path)
    older = {"best_classical": "classical", "augmented_gain": {"balanced_accuracy": 0.01}}  # before the flat headline
    Paths(root).metrics.write_text(json.dumps(older))
    with pytest.raises(InputError, match=r"metrics\.json: lacks gain, gain_low, .*; rerun the evaluate stage$"):
        report.run(tiny_params(), Paths(root))
    assert not (root / "reports/report.html").exists()


# --- the page in a browser -----------------------------------------------------------------------


def chromium(profile: Path, *args: str) -> str:
    """Headless Chromium's stdout; a failure in CI (where .ci/run installs it), a skip elsewhere."""
    binary = shutil.which("chromium")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed (set CI to make this a failure)")
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout


def page_widths(page: Path, width: int, tmp_path: Path) -> tuple[int, int]:
    """(the document's scroll width, the window's inner width) of `page` laid out `width` pixels wide."""
    probe = tmp_path / f"probe-{page.name}"
    script = (
        "<script>document.title = 'widths ' + document.documentElement.scrollWidth + ' ' "
        "+ window.innerWidth;</script></body>"
    )
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", script), encoding="utf-8")
    dom = chromium(tmp_path / "profile", f"--window-size={width},2000", "--dump-dom", probe.as_uri())
    scroll_width, inner_width = re.search(r"<title>widths (\d+) (\d+)</title>", dom).groups()
    return int(scroll_width), int(inner_width)


@pytest.mark.parametrize("width", [1280, 800])
def test_the_page_renders_in_chromium_without_running_off_the_right_edge(reported, tmp_path, width):
    screenshot = tmp_path / "page.png"
    chromium(
        tmp_path / "profile", f"--window-size={width},2000", f"--screenshot={screenshot}", Paths(reported).html.as_uri()
    )
    with Image.open(screenshot) as image:
        assert image.size == (width, 2000) and len(set(image.convert("L").getdata())) > 10  # not blank
    scroll_width, inner_width = page_widths(Paths(reported).html, width, tmp_path)
    assert scroll_width <= inner_width


def test_the_width_probe_sees_a_page_that_runs_off_the_edge(tmp_path):
    page = tmp_path / "wide.html"
    page.write_text("<html><body><div style='width: 3000px'>wide</div></body></html>", encoding="utf-8")
    scroll_width, inner_width = page_widths(page, 800, tmp_path)
    assert scroll_width > inner_width


# --- the committed example of the default run ----------------------------------------------------


def shows_the_run(page: Page, metrics: dict, arms: list[str], quality: pd.DataFrame) -> None:
    """The page shows the gain, its interval, the tail recall, every arm (of utility.csv) and each class's verdict
    of a run."""
    text = " ".join(" ".join(page.text).split())
    assert (
        f"{metrics['gain']:+.3f} balanced accuracy, 95 % interval "
        f"{metrics['gain_low']:+.3f} to {metrics['gain_high']:+.3f}" in text
    )
    assert f"tail recall {metrics['tail_gain']:+.3f}" in text
    shown = [row[0] for row in page.table_with("tail recall")[1:]]
    assert {arm.removesuffix(" (best classical)") for arm in shown} == set(arms)
    assert f"{metrics['baseline']} (best classical)" in shown
    verdicts = page.table_with("verdict")
    column = [" ".join(cell.split()) for cell in verdicts[0]].index("verdict")
    assert [(row[0], row[column]) for row in verdicts[1:]] == list(zip(quality["class_name"], quality["verdict"]))


def test_the_committed_example_report_is_the_default_runs_page(tmp_path):
    """docs/example-report/report.html is the page dvc.lock records and shows reports/metrics.json; in Chromium too."""
    example = EXAMPLE / "report.html"
    if not example.is_file():
        pytest.skip("docs/example-report/report.html is not committed: run `make repro` and `make example-report`")
    lock = yaml.safe_load((REPO_ROOT / "dvc.lock").read_text(encoding="utf-8"))
    recorded = next(out for out in lock["stages"]["report"]["outs"] if out["path"] == "reports/report.html")
    assert hashlib.md5(example.read_bytes()).hexdigest() == recorded["md5"], (
        "docs/example-report/report.html is not the page dvc.lock records: run `make example-report`"
    )
    metrics = json.loads((REPO_ROOT / "reports" / "metrics.json").read_text(encoding="utf-8"))
    arms = pd.read_csv(REPO_ROOT / "reports" / "tables" / "utility.csv")["arm"].tolist()
    quality = pd.read_csv(REPO_ROOT / "reports" / "tables" / "quality.csv", dtype={"class_name": str})
    shows_the_run(Page(example.read_text(encoding="utf-8")), metrics, arms, quality)
    rendered = chromium(tmp_path / "profile", "--window-size=1280,2000", "--dump-dom", example.as_uri())
    shows_the_run(Page(rendered), metrics, arms, quality)  # what a reader's browser shows, not only the file
    with Image.open(EXAMPLE / "report.png") as picture:  # the full-page picture GitHub shows
        assert picture.size[0] == 1280 and picture.size[1] > 2000


def test_the_example_check_sees_a_page_of_another_run(reported):
    """shows_the_run fails on a page whose numbers are not those of the metrics it is given."""
    paths = Paths(reported)
    metrics = json.loads(paths.metrics.read_text())
    arms = pd.read_csv(paths.tables / "utility.csv")["arm"].tolist()
    quality = pd.read_csv(paths.tables / "quality.csv", dtype={"class_name": str})
    page = Page(paths.html.read_text(encoding="utf-8"))
    shows_the_run(page, metrics, arms, quality)
    with pytest.raises(AssertionError):
        shows_the_run(page, metrics | {"gain": metrics["gain"] + 0.5}, arms, quality)
