"""Each mechanism of the synthetic images switched off in turn, measured on the val split.

Run from the repository root after a full `dvc repro` (it copies data/prepared, data/holdout and the
models into scratch folders and never touches the workspace):

    python benchmarks/ablation.py [--seeds 5] [--only gate,share] [--keep /tmp/ablation]
    python benchmarks/ablation.py --only "no EMA generator,natural class sampling in the GAN"

For every ablation it reruns the stages the change touches (train onwards for a GAN mechanism,
generate onwards for a gate mechanism, merge for the synthetic share, none for the classifier's
balanced logit adjustment) with params.yaml plus that one change, trains the `augmented` arm over
the paired seeds, and prints its val balanced accuracy beside the default's, with the paired
difference and its 95 % interval; the two classical arms are printed for reference. The test split is
not read. GAN ablations retrain the GAN: on 2 CPU cores they take minutes each.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import merge_dicts
from pipeline.arms import read_arm_inputs, run_arms
from pipeline.config import load_params
from pipeline.contracts import PreparedStats
from pipeline.manifests import load_split
from pipeline.metrics import mean_std, paired_difference, tail_classes
from pipeline.paths import Paths

# name -> (the params change, the first stage it reruns)
ABLATIONS = {
    "no mode seeking": ({"train": {"mode_seeking_weight": 0.0}}, "train"),
    "DiffAugment color+translation+cutout": ({"train": {"diffaugment": ["color", "translation", "cutout"]}}, "train"),
    "no DiffAugment": ({"train": {"diffaugment": []}}, "train"),
    "no EMA generator": ({"train": {"ema": False}}, "train"),
    "no group spectral regularisation": ({"train": {"gsr_weight": 0.0}}, "train"),
    "natural class sampling in the GAN": ({"train": {"balance": 0.0}}, "train"),
    "no label check": ({"generate": {"check_label": False}}, "generate"),
    "label pass rate 0.5 (a stricter label check)": ({"generate": {"label_pass_rate": 0.5}}, "generate"),
    "no copy check": ({"generate": {"check_memorisation": False}}, "generate"),
    "selection first (no pool)": ({"generate": {"selection": "first"}}, "generate"),
    "selection diverse": ({"generate": {"selection": "diverse"}}, "generate"),
    "synthetic share 0.5 (the default until 2026-12-04)": ({"merge": {"synthetic_share": 0.5}}, "merge"),
    "synthetic share 0 (no synthetic draws: the classical arm's data, drawn by weights)": (
        {"merge": {"synthetic_share": 0.0}},
        "merge",
    ),
    "no balanced logit adjustment": ({"evaluate": {"balanced_logit_adjustment": 0.0}}, "evaluate"),
}
STAGES = ("train", "generate", "merge")  # the stages an ablation reruns; "evaluate": only the arms' recipe changes
GROUPS = {"gan": "train", "gate": "generate", "share": "merge", "classifier": "evaluate"}


def workspace_for(source: Paths, folder: Path, params: dict, first_stage: str) -> Paths:
    """A scratch copy of what the stages before `first_stage` made, then those from it on rerun."""
    paths = Paths(folder)
    first = STAGES.index(first_stage) if first_stage in STAGES else len(STAGES)
    for output in (source.prepared, source.holdout, source.judge, source.gan, source.synthetic, source.augmented):
        produced_by = {source.gan: "train", source.synthetic: "generate", source.augmented: "merge"}.get(output)
        if produced_by is None or STAGES.index(produced_by) < first:
            shutil.copytree(output, folder / output.relative_to(source.root))
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in STAGES[first:]:
        subprocess.run([sys.executable, "-m", "pipeline", stage], cwd=folder, check=True, capture_output=True)
    return paths


def val_scores(paths: Paths, seeds: int, arm: str = "augmented") -> list[float]:
    params = load_params(paths.root / "params.yaml")
    cfg = dataclasses.replace(params.evaluate, seeds=seeds)
    stats = PreparedStats.read(paths.prepared)
    val = load_split(paths.prepared, stats, "val")
    with tempfile.TemporaryDirectory(prefix="arms-") as scratch:
        inputs = read_arm_inputs(paths, stats, Path(scratch))
        runs = run_arms(inputs, val, val, tail_classes(stats.split_counts("train")), cfg, params.seed, arms=[arm])
    return runs.sort_values("seed")["val_balanced_accuracy"].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", help=f"comma-separated groups ({', '.join(GROUPS)}) or ablation names")
    parser.add_argument("--keep", type=Path, help="keep the scratch workspaces here")
    args = parser.parse_args()

    root = Paths(Path.cwd())
    defaults = yaml.safe_load((root.root / "params.yaml").read_text())
    chosen = args.only.split(",") if args.only else list(GROUPS)
    unknown = [name for name in chosen if name not in GROUPS and name not in ABLATIONS]
    if unknown:
        parser.error(f"--only: unknown group or ablation {unknown[0]!r}")
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="ablation-"))
    scratch.mkdir(parents=True, exist_ok=True)
    default_scores = val_scores(root, args.seeds)
    rows = [("default (params.yaml)", *mean_std(default_scores), None, None, None)]
    for arm in ("classical", "classical_la"):  # the references the synthetic images must beat
        scores = val_scores(root, args.seeds, arm)
        rows.append((f"{arm} arm, for reference", *mean_std(scores), *paired_difference(scores, default_scores)))
    for number, (name, (change, first_stage)) in enumerate(ABLATIONS.items()):
        params = merge_dicts(defaults, change)
        wanted = name in chosen or any(GROUPS.get(group) == first_stage for group in chosen)
        if not wanted or params == defaults:
            continue
        paths = workspace_for(root, scratch / f"ablation-{number}", params, first_stage)
        scores = val_scores(paths, args.seeds)
        rows.append((name, *mean_std(scores), *paired_difference(scores, default_scores)))
        print(f"{name}: {rows[-1][1]:.4f} (difference {rows[-1][3]:+.4f})", flush=True)

    print(f"\naugmented arm, val balanced accuracy over {args.seeds} paired seeds (scratch: {scratch})")
    print(f"{'setting':<45} {'mean':>7} {'std':>7} {'diff':>8} {'95 % interval':>20}")
    for name, mean, std, difference, low, high in rows:
        interval = "" if difference is None else f"{low:+.4f} to {high:+.4f}"
        shown = "" if difference is None else f"{difference:+.4f}"
        print(f"{name:<45} {mean:>7.4f} {std:>7.4f} {shown:>8} {interval:>20}")


if __name__ == "__main__":
    main()
