"""Where every stage reads and writes, relative to one root (the repository, or a test's scratch folder).

dvc.yaml names the same paths; `Paths()` is the repository root when a stage runs as
`python -m pipeline <stage>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    def source(self, source: str) -> Path:
        """`data.source` as a path: absolute as given, relative to the root otherwise."""
        return Path(source) if Path(source).is_absolute() else self.root / source

    # data (DVC outputs)
    @property
    def prepared(self) -> Path:
        return self.root / "data/prepared"

    @property
    def holdout(self) -> Path:
        """Real train images that thinning removed: read only by the oracle arm of evaluate."""
        return self.root / "data/holdout"

    @property
    def synthetic(self) -> Path:
        return self.root / "data/synthetic"

    @property
    def augmented(self) -> Path:
        return self.root / "data/augmented"

    # models (DVC outputs)
    @property
    def judge(self) -> Path:
        return self.root / "models/judge"

    @property
    def gan(self) -> Path:
        return self.root / "models/gan"

    @property
    def gan_resume(self) -> Path:
        return self.root / "models/gan-resume"

    # reports (metrics and plots for DVC; the page)
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def judge_report(self) -> Path:
        """DVCLive's log of the judge's training: metrics.json and plots/metrics/*.tsv."""
        return self.reports / "judge"

    @property
    def train_report(self) -> Path:
        """DVCLive's log of the GAN training: metrics.json and plots/metrics/*.tsv."""
        return self.reports / "train"

    @property
    def samples(self) -> Path:
        """Sample grids of the EMA generator: samples.png and grids/epoch_NNNN.png."""
        return self.reports / "samples"

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def html(self) -> Path:
        return self.reports / "report.html"
