"""Stage `report`: are the synthetic images of each class worth using?

Reads data/prepared (the real train and test splits), models/judge (the feature extractor),
data/synthetic (the images the gate accepted) and data/augmented (the merged dataset and its card);
writes reports/metrics.json (DVC metrics), reports/tables/*.csv and reports/figures/*.png (DVC
plots) and reports/report.html (one self-contained page).

1. Quality of each class's synthetic images against the real test split, in the feature space of
   the judge's penultimate layer (not Inception, so nothing here is FID): Fréchet distance and KID,
   each beside its floor (the same metric between the real train and test splits), precision,
   recall, density and coverage, the judge's agreement with the intended labels, and memorisation.
2. Downstream utility: one classifier recipe trained on the arms real, classical, augmented and
   synthetic_only over `report.seeds` seeds (pipeline/utility.py).
3. A verdict per class from the thresholds `report.verdict`, and a one-line summary.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the object API: no pyplot, no GUI backend, no global state
from torchvision.utils import make_grid

from pipeline import nets
from pipeline.config import ConfigError, Params, ReportParams, VerdictParams, params_to_dict
from pipeline.generate import SYNTHETIC_DIR, check_matches_data
from pipeline.io import (
    PREPARED_DIR,
    atomic_output,
    encode_png_tensor,
    load_images,
    load_prepared_split,
    read_json,
    read_manifest,
    write_json,
)
from pipeline.judge import judge_outputs
from pipeline.merge import AUGMENTED_DIR
from pipeline.metrics import (
    frechet_distance,
    kernel_distance,
    mean_std,
    memorised_share,
    nearest_neighbours,
    precision_recall_density_coverage,
)
from pipeline.utility import ARMS, train_and_score

REPORTS_DIR = Path("reports")
TABLES_DIR = REPORTS_DIR / "tables"
FIGURES_DIR = REPORTS_DIR / "figures"
METRICS_FILE = REPORTS_DIR / "metrics.json"
HTML_FILE = REPORTS_DIR / "report.html"

VERDICTS = ("use", "use with care", "do not use")
NO_SYNTHETIC = "no synthetic images"
SCORES = ("accuracy", "balanced_accuracy", "macro_f1")
FEATURE_EXTRACTOR = (
    "the judge (models/judge): the penultimate layer of a small CNN trained on the real train split. "
    "It is not Inception, so none of these numbers is an FID and they compare only with each other."
)


# --- inputs --------------------------------------------------------------------------------------


def check_classes(manifest: pd.DataFrame, class_names: list[str], path: Path, every_class: bool) -> None:
    """Every (label, class_name) of a manifest must be a class of data/prepared (and all be there)."""
    pairs = manifest[["label", "class_name"]].drop_duplicates()
    unknown = [f"{row.class_name!r} (label {row.label})" for row in pairs.itertuples()
               if not 0 <= row.label < len(class_names) or class_names[row.label] != row.class_name]
    if unknown:
        raise ConfigError(f"{path}: classes that data/prepared does not have: {', '.join(unknown)}; "
                          "rerun the stage that makes it")
    missing = sorted(set(class_names) - set(pairs["class_name"]))
    if every_class and missing:
        raise ConfigError(f"{path}: lacks the classes {missing} of data/prepared; rerun the stage that makes it")


def read_accepted_synthetic(class_names: list[str]) -> pd.DataFrame:
    path = Path(SYNTHETIC_DIR) / "manifest.csv"
    manifest = read_manifest(path)
    accepted = manifest[manifest["accepted"].astype(bool)].reset_index(drop=True)
    if accepted.empty:
        raise ConfigError(f"{path}: no synthetic images passed the gate, so there is nothing to report on "
                          "(see data/synthetic/plan.csv; generate.target may ask for none)")
    check_classes(accepted, class_names, path, every_class=False)
    return accepted


def read_augmented_card(class_names: list[str], synthetic: pd.DataFrame) -> dict:
    """The dataset card of data/augmented, once its manifest is checked against the other inputs."""
    path = AUGMENTED_DIR / "manifest.csv"
    manifest = read_manifest(path)
    check_classes(manifest, class_names, path, every_class=True)
    merged_synthetic = manifest.loc[manifest["origin"] == "synthetic", "sha256"]
    if sorted(merged_synthetic) != sorted(synthetic["sha256"]):
        raise ConfigError(f"{path}: its synthetic images are not those of {SYNTHETIC_DIR}; rerun merge")
    card = read_json(AUGMENTED_DIR / "dataset.json")
    if [c["class_name"] for c in card["classes"]] != class_names:
        raise ConfigError(f"{AUGMENTED_DIR}/dataset.json: its classes are not those of data/prepared; rerun merge")
    return card


# --- quality of the synthetic images, per class --------------------------------------------------


def enough(*feature_sets: torch.Tensor) -> bool:
    """Distribution metrics need at least two images on each side."""
    return all(len(features) >= 2 for features in feature_sets)


def class_quality(label: int, train: torch.Tensor, test: torch.Tensor, synthetic: torch.Tensor,
                  test_predictions: torch.Tensor, synthetic_predictions: torch.Tensor, cfg: ReportParams,
                  seed: int) -> dict:
    """Fidelity, diversity and memorisation of one class's synthetic features (absent: no value).

    `*_predictions` are the judge's labels for the class's real test and synthetic images.
    """
    row = {"real_train": len(train), "real_test": len(test), "synthetic": len(synthetic),
           "judge_real_recall": float((test_predictions == label).double().mean())}
    if len(synthetic) == 0:
        return row
    row["label_agreement"] = float((synthetic_predictions == label).double().mean())
    synthetic_to_train, _ = nearest_neighbours(synthetic, train)
    test_to_train, _ = nearest_neighbours(test, train)
    row["synthetic_to_train_median"] = float(synthetic_to_train.median())
    row["test_to_train_median"] = float(test_to_train.median())
    row["closest_real_pair"] = float(test_to_train.min())
    row["memorised_share"] = memorised_share(synthetic_to_train, test_to_train)
    if enough(synthetic, test):
        row["frechet"] = frechet_distance(synthetic, test)
        row["kid"] = kernel_distance(synthetic, test, cfg.kid_subset_size, cfg.kid_subsets, seed)[0]
        row |= precision_recall_density_coverage(test, synthetic, cfg.k)
    if enough(train, test):
        row["frechet_floor"] = frechet_distance(train, test)
        row["kid_floor"] = kernel_distance(train, test, cfg.kid_subset_size, cfg.kid_subsets, seed)[0]
    return row


def closest_pairs(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                  synthetic: torch.Tensor, synthetic_labels: torch.Tensor, count: int) -> pd.DataFrame:
    """The synthetic images nearest to a training image of their class, relative to the class's
    closest real-to-real pair (below 1: closer than any real test image came)."""
    pairs = []
    for label in synthetic_labels.unique().tolist():
        train_rows = torch.nonzero(train_labels == label).squeeze(1)
        synthetic_rows = torch.nonzero(synthetic_labels == label).squeeze(1)
        distances, nearest = nearest_neighbours(synthetic[synthetic_rows], train[train_rows])
        closest_real = nearest_neighbours(test[test_labels == label], train[train_rows])[0].min()
        pairs.append(pd.DataFrame({"label": label, "synthetic_row": synthetic_rows.numpy(),
                                   "train_row": train_rows[nearest].numpy(), "distance": distances.numpy(),
                                   "relative_distance": (distances / closest_real).numpy()}))
    return pd.concat(pairs).sort_values(["relative_distance", "synthetic_row"]).head(count).reset_index(drop=True)


# --- downstream utility and verdicts ------------------------------------------------------------


def run_arms(cfg: ReportParams, seed: int, test_images: torch.Tensor, test_labels: torch.Tensor,
             class_names: list[str]) -> dict[str, list[dict]]:
    """The recipe's scores for every arm and seed."""
    runs = {arm: [] for arm in ARMS}
    for arm in ARMS:
        for arm_seed in range(seed, seed + cfg.seeds):
            started = time.perf_counter()
            scores = train_and_score(arm, arm_seed, test_images, test_labels, class_names, cfg)
            runs[arm].append(scores)
            print(f"report: {arm:<14} seed {arm_seed}: balanced accuracy {scores['balanced_accuracy']:.3f} "
                  f"({time.perf_counter() - started:.0f} s)")
    return runs


def summarise_utility(runs: dict[str, list[dict]], class_names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per arm: mean and std of each score; one row per class: mean and std of each arm's recall)."""
    arms, recalls = [], {"class_name": class_names}
    for arm, scores in runs.items():
        row = {"arm": arm}
        for name in SCORES:
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std([s[name] for s in scores])
        arms.append(row)
        per_class = np.array([s["recall"] for s in scores])  # seeds x classes
        recalls[f"{arm}_mean"], recalls[f"{arm}_std"] = zip(*(mean_std(column) for column in per_class.T))
    return pd.DataFrame(arms), pd.DataFrame(recalls)


def class_verdict(label_agreement: float, judge_real_recall: float, memorised: float, recall_change: float,
                  rules: VerdictParams) -> tuple[str, str]:
    """(verdict, reason) for one class's synthetic images; see VerdictParams for the rules."""
    failures = []
    if label_agreement < rules.min_relative_label_agreement * judge_real_recall:
        failures.append(f"the judge recognises {label_agreement:.0%} of them, against {judge_real_recall:.0%} "
                        f"of the real test images (< {rules.min_relative_label_agreement:.0%} of that)")
    if memorised > rules.max_memorised_share:
        failures.append(f"{memorised:.1%} look memorised (> {rules.max_memorised_share:.1%})")
    if recall_change < -rules.max_recall_drop:
        failures.append(f"they cost {-recall_change:.3f} recall against the better baseline "
                        f"(> {rules.max_recall_drop:.3f})")
    if failures:
        return "do not use", "; ".join(failures)
    if recall_change < 0:
        return "use with care", f"faithful, but recall {recall_change:+.3f} against the better baseline"
    return "use", f"faithful, and recall {recall_change:+.3f} against the better baseline"


def add_verdicts(quality: pd.DataFrame, recalls: pd.DataFrame, rules: VerdictParams) -> pd.DataFrame:
    quality = quality.copy()
    baseline = np.maximum(recalls["real_mean"], recalls["classical_mean"])
    quality["recall_change"] = (recalls["augmented_mean"] - baseline).to_numpy()
    verdicts = [
        class_verdict(row.label_agreement, row.judge_real_recall, row.memorised_share, row.recall_change, rules)
        if row.synthetic > 0 else (NO_SYNTHETIC, "the class is at or above the target")
        for row in quality.itertuples()
    ]
    quality["verdict"], quality["reason"] = zip(*verdicts)
    return quality


def summary_line(arms: pd.DataFrame, quality: pd.DataFrame) -> str:
    score = arms.set_index("arm")["balanced_accuracy_mean"]
    best_baseline = "real" if score["real"] >= score["classical"] else "classical"
    counts = quality["verdict"].value_counts()
    verdicts = ", ".join(f"{verdict} {counts.get(verdict, 0)}" for verdict in VERDICTS)
    line = (f"report: balanced accuracy of augmented {score['augmented']:.3f} vs {best_baseline} "
            f"{score[best_baseline]:.3f} (gain {score['augmented'] - score[best_baseline]:+.3f}); "
            f"classes: {verdicts}")
    if counts.get(NO_SYNTHETIC, 0):
        line += f", {NO_SYNTHETIC} {counts[NO_SYNTHETIC]}"
    return line


def metrics_document(quality: pd.DataFrame, arms: pd.DataFrame, recalls: pd.DataFrame) -> dict:
    """reports/metrics.json: nested only by name, so `dvc metrics show/diff` list every number."""
    def number(value) -> float:
        return round(float(value), 6)

    utility = {}
    for row in arms.itertuples():
        utility[row.arm] = {name: {"mean": number(getattr(row, f"{name}_mean")),
                                   "std": number(getattr(row, f"{name}_std"))} for name in SCORES}
        utility[row.arm]["recall"] = {r.class_name: {"mean": number(getattr(r, f"{row.arm}_mean")),
                                                     "std": number(getattr(r, f"{row.arm}_std"))}
                                      for r in recalls.itertuples()}
    score = arms.set_index("arm")["balanced_accuracy_mean"]
    measured = (quality[quality["synthetic"] > 0].drop(columns=["verdict", "reason", "real_train", "real_test"])
                .set_index("class_name"))
    return {
        "utility": utility,
        "augmented_gain": {"balanced_accuracy": number(score["augmented"] - max(score["real"], score["classical"]))},
        "quality": {name: {key: number(value) for key, value in row.items() if pd.notna(value)}
                    for name, row in measured.iterrows()},
        "quality_mean_over_classes": {key: number(value) for key, value in measured.mean().items() if pd.notna(value)},
        "verdicts": {verdict.replace(" ", "_"): int((quality["verdict"] == verdict).sum())
                     for verdict in (*VERDICTS, NO_SYNTHETIC)},
    }


# --- figures -------------------------------------------------------------------------------------


def png_of(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def grid_png(images: torch.Tensor, per_row: int) -> bytes:
    grid = make_grid(images, nrow=per_row, padding=2, pad_value=255)
    return encode_png_tensor(grid)


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


def grouped_bars(axes: Axes, frame: pd.DataFrame, columns: list[str], labels: list[str], errors=None) -> None:
    positions = np.arange(len(frame))
    width = 0.8 / len(columns)
    for i, (column, label) in enumerate(zip(columns, labels)):
        axes.bar(positions + (i - (len(columns) - 1) / 2) * width, frame[column].fillna(0.0), width, label=label,
                 yerr=None if errors is None else frame[errors[i]], capsize=2)
    axes.set_ylim(0, 1.25)  # room for the legend above the bars
    axes.legend(fontsize=8, ncol=len(columns), loc="upper center")


def class_metrics_figure(quality: pd.DataFrame, recalls: pd.DataFrame) -> bytes:
    """Top: quality of each class's synthetic images. Bottom: each arm's recall of the class."""
    figure = Figure(figsize=(max(8.0, 0.9 * len(quality)), 7), layout="tight")
    top, bottom = figure.subplots(2, 1, sharex=True)
    measures = [c for c in ("label_agreement", "precision", "recall", "coverage", "memorised_share") if c in quality]
    grouped_bars(top, quality, measures, measures)
    top.set_title("synthetic images against the real test split (judge features)")
    grouped_bars(bottom, recalls, [f"{arm}_mean" for arm in ARMS], list(ARMS), errors=[f"{arm}_std" for arm in ARMS])
    bottom.set_title("downstream recall per class on the real test split (mean and std over seeds)")
    bottom.set_xticks(np.arange(len(quality)), quality["class_name"], rotation=45, ha="right")
    return png_of(figure)


def closest_pairs_figure(pairs: pd.DataFrame, synthetic_images: torch.Tensor, train_images: torch.Tensor,
                         class_names: list[str]) -> bytes:
    """Top row: the synthetic images nearest to a training image; bottom row: that training image."""
    grid = make_grid(torch.cat([synthetic_images[pairs["synthetic_row"].to_numpy()],
                                train_images[pairs["train_row"].to_numpy()]]),
                     nrow=len(pairs), padding=2, pad_value=255)
    figure = Figure(figsize=(max(6.0, 1.0 * len(pairs)), 3.2), layout="tight")
    axes = figure.subplots()
    axes.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    cell = grid.shape[2] / len(pairs)
    captions = [f"{class_names[row.label]}\n{row.relative_distance:.2f}" for row in pairs.itertuples()]
    axes.set_xticks((np.arange(len(pairs)) + 0.5) * cell, captions, fontsize=8)
    axes.set_yticks([grid.shape[1] / 4, 3 * grid.shape[1] / 4], ["synthetic", "nearest\nreal train"])
    axes.set_title("closest synthetic-to-real pairs (distance / the class's closest real-to-real pair; "
                   "below 1: a likely copy)", fontsize=9)
    return png_of(figure)


def sample_grids(train_images, train_labels, synthetic_images, synthetic_labels, classes: list[dict],
                 per_class: int) -> dict[str, bytes]:
    """Per class: a row of real train images over a row of synthetic ones (grey: none to show)."""
    grids, blank = {}, torch.full_like(train_images[0], 128)
    for c in classes:
        rows = []
        for images in (train_images[train_labels == c["label"]], synthetic_images[synthetic_labels == c["label"]]):
            shown = list(images[:per_class])
            rows += shown + [blank] * (per_class - len(shown))
        grids[f"samples_{c['folder']}.png"] = grid_png(torch.stack(rows), per_class)
    return grids


# --- the page ------------------------------------------------------------------------------------


def image_tag(png: bytes, alt: str, css_class: str = "figure") -> str:
    data = base64.b64encode(png).decode()
    return f'<img class="{css_class}" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def fmt(value, digits: int = 3) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}f}"


CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 80em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; vertical-align: middle; }
th { background: #f0f0f0; } td.text { text-align: left; }
tr.use td.verdict { background: #c8f0c8; } tr.care td.verdict { background: #fbe7a6; }
tr.avoid td.verdict { background: #f6b8b8; } tr.none td.verdict { background: #eee; }
img.samples { height: 7em; image-rendering: pixelated; } img.figure { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.summary { font-size: 1.1em; font-weight: bold; }
"""
ROW_CLASS = {"use": "use", "use with care": "care", "do not use": "avoid", NO_SYNTHETIC: "none"}


def verdict_table(quality: pd.DataFrame, recalls: pd.DataFrame, grids: dict[str, bytes], classes: list[dict]) -> str:
    head = ("<tr><th>class</th><th>verdict</th><th>why</th><th>real train</th><th>synthetic</th>"
            "<th>judge agrees (synthetic)</th><th>judge agrees (real test)</th><th>memorised</th>"
            "<th>recall real</th><th>recall classical</th><th>recall augmented</th>"
            "<th>real (top) and synthetic (bottom) images</th></tr>")
    rows = []
    for row, recall, c in zip(quality.itertuples(), recalls.itertuples(), classes):
        grid = grids[f"samples_{c['folder']}.png"]
        rows.append(
            f'<tr class="{ROW_CLASS[row.verdict]}"><td class="text">{html.escape(row.class_name)}</td>'
            f'<td class="verdict text">{row.verdict}</td><td class="text">{html.escape(row.reason)}</td>'
            f"<td>{row.real_train}</td><td>{row.synthetic}</td><td>{fmt(row.label_agreement)}</td>"
            f"<td>{fmt(row.judge_real_recall)}</td>"
            f"<td>{fmt(row.memorised_share)}</td><td>{fmt(recall.real_mean)}</td>"
            f"<td>{fmt(recall.classical_mean)}</td><td>{fmt(recall.augmented_mean)}</td>"
            f"<td>{image_tag(grid, 'samples of ' + row.class_name, css_class='samples')}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def utility_table(arms: pd.DataFrame) -> str:
    head = "<tr><th>arm</th>" + "".join(f"<th>{name.replace('_', ' ')}</th>" for name in SCORES) + "</tr>"
    rows = "".join(
        f'<tr><td class="text">{row["arm"]}</td>'
        + "".join(f"<td>{row[name + '_mean']:.3f} &plusmn; {row[name + '_std']:.3f}</td>" for name in SCORES)
        + "</tr>"
        for _, row in arms.iterrows()
    )
    return f"<table>{head}{rows}</table>"


def render_html(params: Params, card: dict, quality: pd.DataFrame, arms: pd.DataFrame, recalls: pd.DataFrame,
                figures: dict[str, bytes], classes: list[dict], summary: str) -> str:
    cfg, rules = params.report, params.report.verdict
    detail_columns = ["class_name", "synthetic", "frechet", "frechet_floor", "kid", "kid_floor", "precision",
                      "recall", "density", "coverage", "label_agreement", "judge_real_recall",
                      "synthetic_to_train_median", "test_to_train_median", "closest_real_pair", "memorised_share",
                      "recall_change"]
    details = quality.reindex(columns=detail_columns).to_html(index=False, na_rep="", float_format="{:.4f}".format)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Synthetic data report</title><style>{CSS}</style></head>
<body>
<h1>Are the synthetic images worth using?</h1>
<p>Dataset version <code>{html.escape(str(card["version"]))}</code> (data/augmented/dataset.json).
Feature extractor of every distribution metric: {html.escape(FEATURE_EXTRACTOR)}</p>
<p class="summary">{html.escape(summary.removeprefix("report: "))}</p>

<h2>Verdict per class</h2>
<p>Rules (report.verdict in params.yaml): <b>do not use</b> when the judge recognises fewer of a class's
synthetic images than {rules.min_relative_label_agreement:.0%} of the share of its real test images it recognises
(min_relative_label_agreement: a judge that learnt a rare class from a few images misses real ones too), when
more than {rules.max_memorised_share:.1%} of them are closer to a training image than the closest real-to-real
pair (a real test image and its nearest training image; max_memorised_share), or when the augmented classifier's
recall of the class is more than {rules.max_recall_drop:.3f} below the better of real and classical
(max_recall_drop); <b>use</b> when none of these holds and the recall does not fall at all; <b>use with care</b>
otherwise. The judge is also the gate's, so with the gate's label check on, the synthetic images' label
agreement is high by construction; the downstream recall is the independent test. Recalls are means over
{cfg.seeds} seed(s); with about
{int(quality["real_test"].median())} test images per class a recall moves in steps of about
{1 / max(1, quality["real_test"].median()):.3f}, so small differences are noise.</p>
{verdict_table(quality, recalls, figures, classes)}

<h2>Downstream utility</h2>
<p>One recipe, identical for every arm but its training data: nets.Classifier (width {cfg.width}),
albumentations shifts, zooms and rotations, AdamW with a one-cycle schedule (lr {cfg.lr}), {cfg.steps} updates
of batch {cfg.batch_size}, {cfg.seeds} seed(s), scored on the real test split. <i>real</i>: the imbalanced real
train split; <i>classical</i>: the same with the rare classes randomly oversampled to balance; <i>augmented</i>:
the merged dataset drawn with its manifest's weight column (pipeline.dataset.load_augmented);
<i>synthetic_only</i>: the synthetic images alone (a class without synthetic images is never learnt).</p>
{utility_table(arms)}

<h2>Fidelity, diversity and memorisation per class</h2>
<p>Synthetic images against the real test split of their class in judge features. <i>floor</i>: the same
metric between the real train and test splits. The Fréchet distance is biased upwards for small sets, so the floor
of a class with few training images is inflated; KID is unbiased and the fairer comparison. Precision, recall,
density and coverage use k = {cfg.k} nearest neighbours (fewer for a class with fewer images).
Memorisation: distances to the nearest training image of the class.</p>
{details}

<h2>Figures</h2>
<h3>Training images per class, before and after</h3>{image_tag(figures["class_counts.png"], "class counts")}
<h3>Per-class metrics</h3>{image_tag(figures["class_metrics.png"], "per-class metrics")}
<h3>Closest synthetic-to-real pairs</h3>{image_tag(figures["closest_pairs.png"], "closest pairs")}

<h2>What this report describes</h2>
<h3>Dataset card</h3><pre>{html.escape(json.dumps(card, indent=2, sort_keys=True))}</pre>
<h3>Params</h3><pre>{html.escape(json.dumps(params_to_dict(params), indent=2))}</pre>
</body></html>
"""


# --- the stage -----------------------------------------------------------------------------------


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary sibling)`, then rename it to `path`, so a killed stage never leaves half a file."""
    temporary = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    write(temporary)
    temporary.replace(path)


def run(params: Params) -> None:
    cfg = params.report
    stats = read_json(PREPARED_DIR / "stats.json")
    classes = stats["classes"]
    class_names = [c["class_name"] for c in classes]
    judge, judge_meta = nets.load_judge()
    check_matches_data(judge_meta, stats, f"{nets.JUDGE_DIR}/judge.json")
    synthetic_manifest = read_accepted_synthetic(class_names)
    card = read_augmented_card(class_names, synthetic_manifest)

    train_images, train_labels = load_prepared_split("train")
    test_images, test_labels = load_prepared_split("test")
    synthetic_images, synthetic_labels = load_images(SYNTHETIC_DIR, synthetic_manifest, stats["channels"])
    _, train_features = judge_outputs(judge, train_images)
    test_probabilities, test_features = judge_outputs(judge, test_images)
    synthetic_probabilities, synthetic_features = judge_outputs(judge, synthetic_images)
    test_predictions, synthetic_predictions = test_probabilities.argmax(dim=1), synthetic_probabilities.argmax(dim=1)

    quality = pd.DataFrame([
        {"class_name": name} | class_quality(
            label, train_features[train_labels == label], test_features[test_labels == label],
            synthetic_features[synthetic_labels == label], test_predictions[test_labels == label],
            synthetic_predictions[synthetic_labels == label], cfg, params.seed)
        for label, name in enumerate(class_names)
    ])
    pairs = closest_pairs(train_features, train_labels, test_features, test_labels, synthetic_features,
                          synthetic_labels, cfg.closest_pairs)

    started = time.perf_counter()
    runs = run_arms(cfg, params.seed, test_images, test_labels, class_names)
    print(f"report: {len(ARMS)} arms x {cfg.seeds} seed(s) trained in {time.perf_counter() - started:.0f} s")
    arms, recalls = summarise_utility(runs, class_names)
    quality = add_verdicts(quality, recalls, cfg.verdict)
    summary = summary_line(arms, quality)

    figures = {
        "class_counts.png": counts_figure(quality),
        "class_metrics.png": class_metrics_figure(quality, recalls),
        "closest_pairs.png": closest_pairs_figure(pairs, synthetic_images, train_images, class_names),
        **sample_grids(train_images, train_labels, synthetic_images, synthetic_labels, classes, cfg.images_per_class),
    }
    page = render_html(params, card, quality, arms, recalls, figures, classes, summary)
    metrics = metrics_document(quality, arms, recalls)

    with atomic_output(TABLES_DIR) as tables, atomic_output(FIGURES_DIR) as figures_dir:
        for name, table in (("quality.csv", quality), ("recall.csv", recalls), ("utility.csv", arms)):
            table.to_csv(tables / name, index=False, lineterminator="\n", float_format="%.6f")
        for name, png in figures.items():
            (figures_dir / name).write_bytes(png)
    write_atomically(METRICS_FILE, lambda path: write_json(path, metrics))
    write_atomically(HTML_FILE, lambda path: path.write_text(page, encoding="utf-8"))
    print(summary)
