"""Two versions of the pipeline's code, stage by stage on the same inputs: the ratio of their seconds and peaks.

    python benchmarks/stage_speed.py WORKSPACE --code DIR --reference DIR [--stages S ...] [--pairs N]

WORKSPACE is a repository after `dvc repro` (or a kept `benchmarks/scale.py --keep` run's `repo`). Each stage
runs as `python -m pipeline STAGE` in a child process, in a scratch folder holding a copy of WORKSPACE's
params.yaml and links to the stage's inputs (benchmarks/stage_memory.py), once with each checkout's code on
PYTHONPATH, in turn: code, reference, code, reference, ... `--pairs` times. The environment's thread count is
kept (the default run's: every core), so the seconds are those of `dvc repro` without DVC's bookkeeping.
Each pair's ratio, code over reference, cancels most of the machine's drift; the median of the ratios is
the figure to quote, with their range.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

from stage_memory import code_version, refuse_bad_arguments, run_in, scratch_workspace, stage_inputs

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")


def timed_runs(workspace: Path, stage: str, checkouts: list[Path]) -> list[tuple[float, float]]:
    """(seconds, peak MiB) of `stage` run with each checkout in turn."""
    inputs = stage_inputs(workspace, stage)
    command = [sys.executable, "-m", "pipeline", stage]
    measured = []
    for checkout in checkouts:
        scratch = scratch_workspace(workspace, inputs)
        peak, seconds = run_in(scratch, checkout, command, stage, one_thread=False)
        shutil.rmtree(scratch)
        measured.append((seconds, peak))
    return measured


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f} to {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, help="a repository after dvc repro")
    parser.add_argument("--code", type=Path, required=True, help="the checkout measured")
    parser.add_argument("--reference", type=Path, required=True, help="the checkout it is compared with")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--pairs", type=int, default=3, help="runs of each checkout, in turn (default 3)")
    args = parser.parse_args()
    refuse_bad_arguments(args.workspace, {str(checkout): checkout for checkout in (args.code, args.reference)})

    code, reference = args.code.resolve(), args.reference.resolve()
    print(f"code {code} ({code_version(code)}) against reference {reference} ({code_version(reference)})")
    print(f"on {args.workspace}, {args.pairs} pairs, the environment's threads")
    print("stage: seconds code / reference; ratio of seconds, median (range); ratio of peak MiB, median (range)")
    for stage in args.stages:
        runs = timed_runs(args.workspace, stage, [code, reference] * args.pairs)
        ours, theirs = runs[0::2], runs[1::2]  # (seconds, peak) of each pair's code run, and of its reference run
        seconds = [mine[0] / other[0] for mine, other in zip(ours, theirs)]
        peaks = [mine[1] / other[1] for mine, other in zip(ours, theirs)]
        median_code = statistics.median(run[0] for run in ours)
        median_reference = statistics.median(run[0] for run in theirs)
        print(
            f"{stage}: {median_code:.1f} / {median_reference:.1f} s; seconds {summary(seconds)}; peak {summary(peaks)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
