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

from stage_memory import code_version, run_in, scratch_workspace, stage_inputs

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")


def timed_pairs(workspace: Path, stage: str, code: Path, reference: Path, pairs: int) -> list[tuple[float, ...]]:
    """(seconds, peak MiB) of `code` then of `reference`, for each pair, on `stage`."""
    inputs = stage_inputs(workspace, stage)
    command = [sys.executable, "-m", "pipeline", stage]
    measured = []
    for _ in range(pairs):
        row = []
        for checkout in (code, reference):
            scratch = scratch_workspace(workspace, inputs)
            peak, seconds = run_in(scratch, checkout, command, stage, one_thread=False)
            shutil.rmtree(scratch)
            row += [seconds, peak]
        measured.append(tuple(row))
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
    for checkout in (args.code, args.reference):
        if not (checkout / "pipeline/__main__.py").is_file():
            sys.exit(f"error: {checkout} holds no pipeline/__main__.py")
    if not (args.workspace / "dvc.yaml").is_file():
        sys.exit(f"error: {args.workspace}/dvc.yaml is missing (WORKSPACE is a repository of the pipeline)")

    code, reference = args.code.resolve(), args.reference.resolve()
    print(f"code {code} ({code_version(code)}) against reference {reference} ({code_version(reference)})")
    print(f"on {args.workspace}, {args.pairs} pairs, the environment's threads")
    print("stage: seconds code / reference; ratio of seconds, median (range); ratio of peak MiB, median (range)")
    for stage in args.stages:
        pairs = timed_pairs(args.workspace, stage, code, reference, args.pairs)
        seconds = [row[0] / row[2] for row in pairs]
        peaks = [row[1] / row[3] for row in pairs]
        median_code = statistics.median(row[0] for row in pairs)
        median_reference = statistics.median(row[2] for row in pairs)
        print(
            f"{stage}: {median_code:.1f} / {median_reference:.1f} s; seconds {summary(seconds)}; peak {summary(peaks)}",
            flush=True,
        )


if __name__ == "__main__":
    main()
