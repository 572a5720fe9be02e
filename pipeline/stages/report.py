"""Stage `report`: presents what the evaluate stage measured; computes no new number.

Reads reports/metrics.json, reports/detail.json and reports/tables/*.csv (written by evaluate), a
few real train images (data/prepared), the accepted synthetic images (data/synthetic) and the dataset
card (data/augmented/dataset.json); writes reports/figures/*.png (DVC image plots) and reports/report.html,
one self-contained page rendered from pipeline/templates/report.html.j2. The page's wording and
layout live in that template, so editing them reruns this stage only.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API: no pyplot, no GUI backend, no global state
from torchvision.utils import make_grid

from pipeline.config import Params, params_to_dict
from pipeline.contracts import ARMS, HEADLINE_KEYS, NO_SYNTHETIC, VERDICTS, PreparedStats, table_columns
from pipeline.errors import InputError
from pipeline.io import CHUNK_ROWS, atomic_output, encode_png_tensor, json_text, read_json, write_atomically
from pipeline.manifests import first_of_each_class, in_train_split, load_rows, passed_gate
from pipeline.paths import Paths

TEMPLATES = Path(__file__).parents[1] / "templates"  # package data of pipeline/, beside the library
TEMPLATE = "report.html.j2"
QUALITY_BARS = ("label_agreement", "precision", "recall", "coverage", "memorised_share")
DETAIL_COLUMNS = (
    "real_test",
    "frechet",
    "frechet_floor",
    "kid",
    "kid_floor",
    "precision",
    "recall",
    "density",
    "coverage",
    "copy_threshold",
    "synthetic_to_train_median",
    "test_to_train_median",
    "memorised_share",
    "recall_change",
)
VERDICT_STYLE = {"use": "use", "use with care": "care", "do not use": "avoid", NO_SYNTHETIC: "none"}
ENVIRONMENT_STAGES = ("judge", "train", "generate", "merge")  # the stages whose environment the card collects


# --- inputs --------------------------------------------------------------------------------------


TABLE_TYPES = {"class_name": str, "arm": str, "verdict": str, "reason": str, "synthetic_path": str, "train_path": str}


def read_table(folder: Path, file: str, nrows: int | None = None) -> pd.DataFrame:
    """One of evaluate's CSV tables (its first `nrows` rows), which must hold its columns (contracts.table_columns;
    of recall.csv, those of the real and augmented arms)."""
    path = folder / file
    if not path.is_file():
        raise InputError(f"{path}: not found (run the evaluate stage first)")
    table = pd.read_csv(path, dtype=TABLE_TYPES, nrows=nrows)
    missing = [c for c in table_columns(file) if c not in table.columns]
    if missing:
        raise InputError(f"{path}: lacks the columns {', '.join(missing)}; rerun the evaluate stage")
    return table


def read_closest_pairs(folder: Path, count: int) -> pd.DataFrame:
    """The `count` rows of nearest_real.csv whose synthetic image is closest to a real one (relative distance, then
    path), read a chunk at a time: the table has a row per synthetic image."""
    closest = read_table(folder, "nearest_real.csv", nrows=0)
    with pd.read_csv(folder / "nearest_real.csv", dtype=TABLE_TYPES, chunksize=CHUNK_ROWS) as chunks:
        for chunk in chunks:
            rows = pd.concat([closest, chunk]) if len(closest) else chunk
            closest = rows.sort_values(["relative_distance", "synthetic_path"]).head(count)
    return closest.reset_index(drop=True)


def read_evaluation(path: Path, keys: tuple[str, ...]) -> dict:
    """reports/metrics.json or reports/detail.json, which must hold `keys`."""
    document = read_json(path)
    missing = [key for key in keys if key not in document]
    if missing:
        raise InputError(f"{path}: lacks {', '.join(missing)}; rerun the evaluate stage")
    return document


def check_classes(table: pd.DataFrame, stats: PreparedStats, path: Path) -> None:
    if table["class_name"].tolist() != stats.class_names:
        raise InputError(f"{path}: its classes are not those of data/prepared; rerun the evaluate stage")


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage wrote: reports/metrics.json, reports/detail.json and the tables of
    reports/tables."""

    metrics: dict  # the headline
    detail: dict
    arms: pd.DataFrame  # utility.csv
    runs: pd.DataFrame  # utility_runs.csv
    recalls: pd.DataFrame  # recall.csv
    quality: pd.DataFrame  # quality.csv
    closest_pairs: pd.DataFrame  # the rows of nearest_real.csv closest to a real image (report.closest_pairs)

    @classmethod
    def read(cls, paths: Paths, stats: PreparedStats, closest_pairs: int) -> Evaluation:
        """Read and check against the prepared data (the tables' columns: contracts.py)."""
        evaluation = cls(
            metrics=read_evaluation(paths.metrics, HEADLINE_KEYS),
            detail=read_evaluation(paths.reports / "detail.json", ("tail_classes",)),
            arms=read_table(paths.tables, "utility.csv"),
            runs=read_table(paths.tables, "utility_runs.csv"),
            recalls=read_table(paths.tables, "recall.csv"),
            quality=read_table(paths.tables, "quality.csv"),
            closest_pairs=read_closest_pairs(paths.tables, closest_pairs),
        )
        missing_arms = sorted({"augmented", evaluation.metrics["baseline"]} - set(evaluation.arms["arm"]))
        if missing_arms:
            raise InputError(
                f"{paths.tables / 'utility.csv'}: lacks the arm {', '.join(missing_arms)} that {paths.metrics} "
                "names; rerun the evaluate stage"
            )
        check_classes(evaluation.recalls, stats, paths.tables / "recall.csv")
        check_classes(evaluation.quality, stats, paths.tables / "quality.csv")
        return evaluation


# --- figures -------------------------------------------------------------------------------------


def png_of(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def counts_figure(quality: pd.DataFrame) -> bytes:
    figure = Figure(figsize=(max(6.0, 0.6 * len(quality)), 3.5), layout="tight")
    axes = figure.subplots()
    positions = np.arange(len(quality))
    axes.bar(positions, quality["real_train"], label="real train (before)")
    axes.bar(positions, quality["synthetic"], bottom=quality["real_train"], label="+ synthetic (after)")
    axes.set_xticks(positions, quality["class_name"], rotation=45, ha="right")
    axes.set_ylabel("training images")
    axes.set_ylim(0, 1.3 * (quality["real_train"] + quality["synthetic"]).max())  # room for the legend
    axes.legend(loc="upper center", ncol=2)
    return png_of(figure)


def grouped_bars(
    axes: Axes, frame: pd.DataFrame, columns: list[str], labels: list[str], errors: list[str] | None = None
) -> None:
    positions = np.arange(len(frame))
    width = 0.8 / len(columns)
    for i, (column, label) in enumerate(zip(columns, labels)):
        axes.bar(
            positions + (i - (len(columns) - 1) / 2) * width,
            frame[column].fillna(0.0),
            width,
            label=label,
            yerr=None if errors is None else frame[errors[i]].fillna(0.0),
            capsize=2,
        )
    axes.set_ylim(0, 1.25)  # room for the legend above the bars
    axes.legend(fontsize=8, ncol=len(columns), loc="upper center")


def class_metrics_figure(quality: pd.DataFrame, recalls: pd.DataFrame, arms: list[str]) -> bytes:
    """Top: quality of each class's synthetic images. Bottom: each arm's recall of the class."""
    figure = Figure(figsize=(max(8.0, 0.9 * len(quality)), 7), layout="tight")
    top, bottom = figure.subplots(2, 1, sharex=True)
    measures = [c for c in QUALITY_BARS if c in quality]
    grouped_bars(top, quality, measures, measures)
    top.set_title("synthetic images against the real test split (judge features)")
    grouped_bars(bottom, recalls, [f"{arm}_mean" for arm in arms], arms, errors=[f"{arm}_std" for arm in arms])
    bottom.set_title("recall per class on the real test split (mean and std over paired seeds)")
    bottom.set_xticks(np.arange(len(quality)), quality["class_name"], rotation=45, ha="right")
    return png_of(figure)


def closest_pairs_figure(
    pairs: pd.DataFrame, synthetic: torch.Tensor, train: torch.Tensor, class_names: list[str]
) -> bytes:
    """Top row: the synthetic images nearest to a real train image; bottom row: that train image."""
    grid = make_grid(torch.cat([synthetic, train]), nrow=len(pairs), padding=2, pad_value=255)
    figure = Figure(figsize=(max(6.0, 1.0 * len(pairs)), 3.2), layout="tight")
    axes = figure.subplots()
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    cell = grid.shape[2] / len(pairs)
    captions = [f"{class_names[row.label]}\n{row.relative_distance:.2f}" for row in pairs.itertuples()]
    axes.set_xticks((np.arange(len(pairs)) + 0.5) * cell, captions, fontsize=8)
    axes.set_yticks([grid.shape[1] / 4, 3 * grid.shape[1] / 4], ["synthetic", "nearest\nreal train"])
    axes.set_title(
        "closest synthetic-to-real pairs (distance / the class's copy threshold; below 1: a copy)", fontsize=9
    )
    return png_of(figure)


def sample_grid(real: torch.Tensor, synthetic: torch.Tensor, per_class: int, blank: torch.Tensor) -> bytes:
    """A row of real train images over a row of synthetic ones (grey cells: none to show)."""
    cells = []
    for images in (real[:per_class], synthetic[:per_class]):
        cells += list(images) + [blank] * (per_class - len(images))
    return encode_png_tensor(make_grid(torch.stack(cells), nrow=per_class, padding=2, pad_value=255))


def make_figures(params: Params, paths: Paths, stats: PreparedStats, evaluation: Evaluation) -> dict[str, bytes]:
    """Every figure, by file name; only the images shown are read."""
    quality, recalls, pairs = evaluation.quality, evaluation.recalls, evaluation.closest_pairs
    per_class = params.report.images_per_class
    train_rows = first_of_each_class(paths.prepared / "manifest.csv", "split", in_train_split, stats, per_class)
    real, real_labels = load_rows(paths.prepared, train_rows, stats)
    synthetic_rows = first_of_each_class(paths.synthetic / "manifest.csv", "accepted", passed_gate, stats, per_class)
    synthetic, synthetic_labels = load_rows(paths.synthetic, synthetic_rows, stats)
    pair_images = [
        load_rows(root, pairs.assign(path=pairs[column]), stats)[0]
        for root, column in ((paths.synthetic, "synthetic_path"), (paths.prepared, "train_path"))
    ]
    arms = [arm for arm in ARMS if f"{arm}_mean" in recalls]
    blank = torch.full((stats.channels, stats.image_size, stats.image_size), 128, dtype=torch.uint8)
    figures = {
        "class_counts.png": counts_figure(quality),
        "class_metrics.png": class_metrics_figure(quality, recalls, arms),
    }
    if len(pairs):
        figures["closest_pairs.png"] = closest_pairs_figure(pairs, *pair_images, stats.class_names)
    for c in stats.classes:
        figures[f"samples_{c.folder}.png"] = sample_grid(
            real[real_labels == c.label], synthetic[synthetic_labels == c.label], per_class, blank
        )
    return figures


# --- the page ------------------------------------------------------------------------------------


def number(value, digits: int = 3, signed: bool = False) -> str:
    """A number for the page; blank when there is none."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:{'+' if signed else ''}.{digits}f}"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def page_environment() -> jinja2.Environment:
    # autoescape=True rather than select_autoescape(): the latter keys on the extension, and ".j2" is not ".html"
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["num"] = number
    return environment


def environment_rows(environment: dict) -> list[list[str]]:
    """The card's environment block as table rows: what (python, each package, device, ...), then its
    value in each of ENVIRONMENT_STAGES ("not recorded" for a stage whose output predates the record)."""
    flat = {
        stage: {
            "python": env["python"],
            **env["packages"],
            **{k: v for k, v in env.items() if k not in ("python", "packages")},
        }
        for stage in ENVIRONMENT_STAGES
        if (env := environment.get(stage))
    }
    keys = list(next(iter(flat.values()), {}))
    return [
        [key]
        + [
            ("" if flat[stage][key] is None else str(flat[stage][key])) if stage in flat else "not recorded"
            for stage in ENVIRONMENT_STAGES
        ]
        for key in keys
    ]


def paired_runs(runs: pd.DataFrame, baseline: str) -> list[dict]:
    """Per seed: augmented and the best classical arm's test balanced accuracy, and their difference."""
    by_arm = runs.pivot_table(index="seed", columns="arm", values="balanced_accuracy")
    return [
        {
            "seed": seed,
            "augmented": row["augmented"],
            "baseline": row[baseline],
            "difference": row["augmented"] - row[baseline],
        }
        for seed, row in by_arm.iterrows()
    ]


def render_page(
    params: Params, stats: PreparedStats, evaluation: Evaluation, card: dict, figures: dict[str, bytes]
) -> str:
    metrics, quality, recalls = evaluation.metrics, evaluation.quality, evaluation.recalls
    baseline = metrics["baseline"]
    order = {arm: i for i, arm in enumerate(ARMS)}
    arms = evaluation.arms.sort_values("arm", key=lambda names: names.map(lambda arm: order.get(arm, len(ARMS))))
    classes = [
        {
            **row,
            "style": VERDICT_STYLE.get(row["verdict"], "none"),
            "grid": data_uri(figures[f"samples_{c.folder}.png"]),
            "arm_recall": {arm: recall[f"{arm}_mean"] for arm in ARMS if f"{arm}_mean" in recall},
        }
        for c, row, recall in zip(stats.classes, quality.to_dict("records"), recalls.to_dict("records"))
    ]
    return (
        page_environment()
        .get_template(TEMPLATE)
        .render(
            metrics=metrics,
            detail=evaluation.detail,
            baseline=baseline,
            card=card,
            arms=arms.to_dict("records"),
            by_arm=arms.set_index("arm", drop=False).to_dict("index"),
            runs=paired_runs(evaluation.runs, baseline),
            classes=classes,
            recall_arms=("real", baseline, "augmented"),
            verdict_counts={
                verdict: metrics["classes"].get(verdict.replace(" ", "_"), 0) for verdict in (*VERDICTS, NO_SYNTHETIC)
            },
            detail_columns=[c for c in DETAIL_COLUMNS if quality[c].notna().any()],
            evaluate=params.evaluate,
            rules=params.evaluate.verdict,
            report=params.report,
            figures={name: data_uri(png) for name, png in figures.items() if not name.startswith("samples_")},
            environment_stages=ENVIRONMENT_STAGES,
            environment=environment_rows(card["environment"]),
            card_json=json_text(card),
            params_json=json_text(params_to_dict(params)),
        )
    )


# --- the stage -----------------------------------------------------------------------------------


def run(params: Params, paths: Paths = Paths()) -> None:
    stats = PreparedStats.read(paths.prepared)
    evaluation = Evaluation.read(paths, stats, params.report.closest_pairs)
    card = read_json(paths.augmented / "dataset.json")
    if "environment" not in card:
        raise InputError(
            f"{paths.augmented}/dataset.json: has no environment block (an older merge wrote it); rerun merge"
        )

    figures = make_figures(params, paths, stats, evaluation)
    page = render_page(params, stats, evaluation, card, figures)
    with atomic_output(paths.figures) as folder:
        for name, png in figures.items():
            (folder / name).write_bytes(png)
    write_atomically(paths.html, page)
    print(f"report: {paths.html} and {len(figures)} figures in {paths.figures}")
