"""The files between stages, as typed objects: what each stage may rely on in another's output.

- data/prepared/stats.json  -> PreparedStats (image size and mode, classes, counts per split)
- models/*/<name>.json      -> ModelMeta (what a saved network is and the data it was made for), with
  JudgeDetails or GeneratorDetails (what the judge or train stage recorded)
- data/synthetic/summary.json -> SyntheticSummary
- manifest.csv columns      -> MANIFEST_COLUMNS (+ GATE_COLUMNS for synthetic rows, `weight` when merged);
  prepare's and generate's rows are grouped by class in label order (manifests.py reads them, a class at a time)
- reports/metrics.json (its keys: HEADLINE_KEYS) and reports/tables/*.csv name the arms (ARMS) and
  verdicts (VERDICTS, NO_SYNTHETIC);
  the columns of reports/tables/*.csv: table_columns

`check_made_for` is the one "was this made for this data?" check every consumer runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipeline.errors import InputError
from pipeline.io import read_json, write_json

SPLITS = ("train", "val", "test")
# what evaluate measures and report presents (reports/metrics.json, reports/tables/*.csv)
ARMS = ("real", "classical", "classical_la", "augmented", "synthetic_only", "oracle")
VERDICTS = ("use", "use with care", "do not use")
NO_SYNTHETIC = "no synthetic images"
MANIFEST_COLUMNS = ["path", "label", "class_name", "split", "origin", "source", "seed", "sha256"]
GATE_COLUMNS = ["accepted", "reject_reason", "judge_confidence", "judge_prediction", "nn_distance", "nearest_real"]

# reports/metrics.json, evaluate's headline (with `gap_closed` when there is an oracle arm)
HEADLINE_KEYS = (
    "gain",
    "gain_low",
    "gain_high",
    "tail_gain",
    "baseline",
    "baseline_score",
    "augmented_score",
    "classifier",
    "classes",
)
# reports/tables/*.csv, written by evaluate and read by report, in the column order of table_columns;
# a value that cannot be measured is left empty
SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "tail_recall")  # a classifier's, on the real test split
# quality.csv's measures of a class's synthetic images in judge features (quality.class_quality)
QUALITY_COLUMNS = (
    "real_train",
    "real_test",
    "synthetic",
    "judge_real_recall",
    "copy_threshold",
    "label_agreement",
    "synthetic_to_train_median",
    "test_to_train_median",
    "memorised_share",
    "frechet",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "frechet_floor",
    "kid_floor",
)
NEAREST_COLUMNS = ["label", "synthetic_path", "train_path", "distance", "relative_distance"]
TABLE_COLUMNS = {
    # per arm and seed
    "utility_runs.csv": ["arm", "seed", "steps", "val_balanced_accuracy", *SCORES],
    # per arm, the mean and standard deviation over the seeds
    "utility.csv": ["arm"]
    + [f"{name}_{stat}" for name in (*SCORES, "val_balanced_accuracy", "steps") for stat in ("mean", "std")],
    # per class
    "quality.csv": ["class_name", "planned", *QUALITY_COLUMNS, "recall_change", "verdict", "reason"],
    # per synthetic image: its nearest real train image
    "nearest_real.csv": NEAREST_COLUMNS,
}


def table_columns(file: str, arms: Iterable[str] = ("real", "augmented")) -> list[str]:
    """The columns of reports/tables/<file>, in order. recall.csv's, per class, are the mean and standard
    deviation of each arm's recall of it, for the arms that ran (real and augmented always do)."""
    if file == "recall.csv":
        return ["class_name"] + [f"{arm}_{stat}" for arm in arms for stat in ("mean", "std")]
    return TABLE_COLUMNS[file]


@dataclass(frozen=True)
class ClassInfo:
    label: int
    class_name: str
    folder: str  # safe folder name on disk; ImageFolder's class index of this folder equals `label`


@dataclass(frozen=True)
class PreparedStats:
    """data/prepared/stats.json: written by prepare, read by every later stage."""

    image_size: int
    channels: int
    mode: str  # "L" or "RGB"
    classes: list[ClassInfo]
    counts: dict[str, dict[str, int]]  # split -> class name -> images
    holdout: dict[str, int]  # class name -> real train images thinning removed (data/holdout)
    presplit: bool
    skipped: int
    source: str
    source_fingerprint: str
    params: dict

    FILE = "stats.json"

    @classmethod
    def read(cls, folder: Path) -> PreparedStats:
        raw = read_json(Path(folder) / cls.FILE)
        raw["classes"] = [ClassInfo(**c) for c in raw["classes"]]
        return cls(**raw)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / self.FILE, dataclasses.asdict(self))

    @property
    def class_names(self) -> list[str]:
        return [c.class_name for c in self.classes]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_counts(self, split: str) -> list[int]:
        """Images per class of one split, in label order."""
        return [self.counts[split].get(name, 0) for name in self.class_names]

    @property
    def thinned(self) -> bool:
        return sum(self.holdout.values()) > 0


@dataclass(frozen=True)
class JudgeDetails:
    """What the judge stage records beside its network (the `details` of models/judge/judge.json)."""

    steps: int  # updates trained
    source_fingerprint: str  # of the prepared data it was trained on
    params: dict  # {"seed": ..., "judge": the judge params it was trained with}
    environment: dict  # what it computed with (pipeline/environment.py)
    val_balanced_accuracy: float | None = None  # None (and left out of the file) without val images
    val_recall_per_class: dict[str, float] | None = None  # class name -> recall on val; likewise

    @property
    def arch(self) -> str:
        return self.params["judge"]["arch"]


@dataclass(frozen=True)
class GeneratorDetails:
    """What the train stage records beside the EMA generator (the `details` of models/gan/generator_ema.json)."""

    train_counts: list[int]  # real train images per class, in label order
    epochs: int
    batches: int  # batches trained (each one discriminator update)
    batch_size: int  # the batch size used (train.batch_size, reduced to the train split's size)
    seed: int
    train: dict  # the train params it was trained with
    environment: dict  # what it computed with (pipeline/environment.py)

    @property
    def arch(self) -> str:
        return self.train["arch"]

    @property
    def g_conditioning(self) -> str:
        return self.train["g_conditioning"]


@dataclass(frozen=True)
class ModelMeta:
    """`<name>.json` beside a saved network `<name>.pt`: how to rebuild it, what data it was made for and,
    for a network a stage trained, that stage's record (`details`: JudgeDetails or GeneratorDetails)."""

    image_size: int
    channels: int
    class_names: list[str]
    width: int
    z_dim: int | None = None  # generators only
    details: JudgeDetails | GeneratorDetails | None = None  # None: a network no stage trained (written as {})

    @classmethod
    def read(cls, path: Path, details: type[JudgeDetails] | type[GeneratorDetails]) -> ModelMeta:
        """Read a file whose record, if it has one, is of the type `details`."""
        raw = read_json(path)
        record = raw.pop("details", {})
        if record:
            names = [f.name for f in dataclasses.fields(details)]
            required = {f.name for f in dataclasses.fields(details) if f.default is dataclasses.MISSING}
            if not required <= set(record) <= set(names):
                raise InputError(f"{path}: written by another version of the stage that makes it; rerun that stage")
            raw["details"] = details(**record)
        return cls(**raw)

    def write(self, path: Path) -> None:
        record = dataclasses.asdict(self)
        # an optional value that is None is left out of the record, not written as null
        record["details"] = {key: value for key, value in (record["details"] or {}).items() if value is not None}
        write_json(path, record)

    @property
    def environment(self) -> dict | None:
        """What the stage that trained the network computed with; None for a network no stage trained."""
        return self.details.environment if self.details else None


@dataclass(frozen=True)
class SyntheticSummary:
    """data/synthetic/summary.json: written by generate, read by merge and evaluate."""

    generator_hash: str
    judge_hash: str
    image_size: int
    channels: int
    class_names: list[str]
    generated: int
    candidates: int
    short: int
    label_thresholds: dict[str, float]  # class name -> minimum judge probability of the intended class
    copy_thresholds: dict[str, float]  # class name -> judge-feature distance below which an image is a copy
    planned: dict[str, int]  # class name -> synthetic images the plan asked for (0: none needed)
    # class name -> {"passed": n, "planned": m} for each class that fewer images than planned passed
    # (generate.on_short: fill): its real images fill the rest of its sampling mass (merge)
    short_classes: dict[str, dict[str, int]]
    environment: dict  # "judge", "train", "generate": what each computed with (pipeline/environment.py)
    params: dict

    FILE = "summary.json"

    @classmethod
    def read(cls, folder: Path) -> SyntheticSummary:
        path = Path(folder) / cls.FILE
        raw = read_json(path)
        if set(raw) != {f.name for f in dataclasses.fields(cls)}:
            raise InputError(f"{path}: written by another version of the generate stage; rerun it")
        return cls(**raw)

    def write(self, folder: Path) -> None:
        write_json(Path(folder) / self.FILE, dataclasses.asdict(self))


def check_made_for(image_size: int, channels: int, class_names: list[str], stats: PreparedStats, what: str) -> None:
    """An upstream output must have been made for the prepared data's image size, channels and classes."""
    if (image_size, channels) != (stats.image_size, stats.channels):
        raise InputError(
            f"{what}: made for {image_size}x{image_size} images with {channels} channel(s), but data/prepared holds "
            f"{stats.image_size}x{stats.image_size} with {stats.channels}; rerun the stage that makes it"
        )
    if list(class_names) != stats.class_names:
        extra = [n for n in class_names if n not in stats.class_names]
        missing = [n for n in stats.class_names if n not in class_names]
        detail = "; ".join(
            filter(
                None,
                [
                    f"classes not in data/prepared: {extra}" if extra else "",
                    f"classes it lacks: {missing}" if missing else "",
                ],
            )
        )
        raise InputError(
            f"{what}: made for other classes than data/prepared ({detail or 'same classes, other order'}); "
            "rerun the stage that makes it"
        )


def check_manifest_classes(manifest: pd.DataFrame, stats: PreparedStats, what: str) -> None:
    """Every (label, class_name) pair of a manifest must be a class of data/prepared."""
    pairs = manifest[["label", "class_name"]].drop_duplicates()
    names = stats.class_names
    unknown = [
        f"{row.class_name!r} (label {row.label})"
        for row in pairs.itertuples()
        if not 0 <= row.label < len(names) or names[row.label] != row.class_name
    ]
    if unknown:
        raise InputError(
            f"{what}: classes that data/prepared does not have: {', '.join(unknown)}; rerun the stage that makes it"
        )
