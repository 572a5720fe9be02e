"""Stage dispatcher: `python -m pipeline <stage>` runs one stage with the params in params.yaml.

A PipelineError (bad params, bad input, a gate that cannot be met) is printed as one line naming the
culprit, with exit status 2 and no traceback; anything else is a bug and keeps its traceback. SIGTERM (`kill`,
a scheduler's time limit) stops a stage as Ctrl-C does, with exit status 143.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import signal
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


def stop_on_sigterm(signum: int, frame) -> None:
    """Stop the stage's worker processes (prepare's and evaluate's pools), which SIGTERM does not reach and which
    would otherwise run on, then unwind as Ctrl-C does: the scratch folders and the unfinished outputs' temporary
    siblings are removed on the way out, and the previous outputs stay."""
    for worker in multiprocessing.active_children():
        worker.terminate()
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        importlib.import_module(STAGES[args.stage]).run(params)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop_on_sigterm)  # here, not in main(): a test calling main() keeps its own
    sys.exit(main())
