"""Stage dispatcher: `python -m pipeline <stage>` runs one stage with the params in params.yaml.

A PipelineError (bad params, bad input, a gate that cannot be met) is printed as one line naming the
culprit, with exit status 2 and no traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
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
    sys.exit(main())
