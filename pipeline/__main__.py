"""Stage dispatcher: `python -m pipeline <stage>` runs one stage with the params in params.yaml."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations must not phone home

from pipeline.config import ConfigError, load_params  # noqa: E402

STAGES = ("prepare", "judge", "train", "generate", "merge", "report")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    args = parser.parse_args(argv)
    try:
        params = load_params(args.params)
        importlib.import_module(f"pipeline.{args.stage}").run(params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
