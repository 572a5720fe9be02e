"""Stage dispatcher: `python -m pipeline <stage>` runs one stage with the params in params.yaml.

A PipelineError (bad params, bad input, a gate that cannot be met) is printed as one line naming the
culprit, with exit status 2 and no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import platform
import sys

from pipeline.config import load_params
from pipeline.errors import PipelineError

# stage name -> its module; only the chosen stage is imported (a stage's DVC deps are the code it runs)
STAGES = {
    "prepare": "pipeline.stages.prepare",
    "judge": "pipeline.stages.judge",
    "train": "pipeline.stages.train",
    "generate": "pipeline.stages.generate",
    "merge": "pipeline.stages.merge",
    "evaluate": "pipeline.stages.evaluate",
    "report": "pipeline.stages.report",
}

# glibc's allocator serves a block above its mmap threshold (128 KiB at first) with its own mapping, returned
# to the system when freed, but raises the threshold to the size of each such block freed (up to 32 MiB), so
# later blocks come from its heap, which it may keep. At a million images that made evaluate's peak vary from
# run to run by 600 MiB (docs/performance.md#scale); a fixed threshold of 1 MiB did not.
MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
MMAP_THRESHOLD_BYTES = 1 << 20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h


def fix_mmap_threshold() -> None:
    """Fix glibc's mmap threshold at 1 MiB in this process and, through the environment glibc reads at
    start, in the processes it starts; a threshold the user set in the environment is kept."""
    if platform.libc_ver()[0] != "glibc" or MMAP_THRESHOLD_VARIABLE in os.environ:
        return
    os.environ[MMAP_THRESHOLD_VARIABLE] = str(MMAP_THRESHOLD_BYTES)
    ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    fix_mmap_threshold()
    try:
        params = load_params(args.params)
        importlib.import_module(STAGES[args.stage]).run(params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
