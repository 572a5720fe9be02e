"""Write constraints.txt, the lock that `make test`, `make repro` and .ci/run install from, out of pip's
installation report (`pip install --dry-run --report REPORT -e '.[dev]'`, which `make lock` runs in a
throwaway venv): every package the project's install resolves to, at its exact version.

usage: python .ci/lock.py REPORT [OUTPUT]   (OUTPUT: constraints.txt)
"""

import json
import sys
from pathlib import Path

PROJECT = "gan-rebalance"


def main(report: str, output: str = "constraints.txt") -> None:
    resolved = json.loads(Path(report).read_text(encoding="utf-8"))
    marker = resolved["environment"]
    pins = sorted(
        (item["metadata"]["name"], item["metadata"]["version"])
        for item in resolved["install"]
        if item["metadata"]["name"] != PROJECT
    )
    lines = [
        "# The exact versions that `make test`, `make repro` and .ci/run install",
        "# (pip install -c constraints.txt -e '.[dev]'); pyproject.toml keeps the ranges for other environments.",
        f"# Written by `make lock` for Python {marker['python_full_version']} on {marker['sys_platform']} "
        f"{marker['platform_machine']}; do not edit by hand.",
        *(f"{name}=={version}" for name, version in pins),
    ]
    temporary = Path(output).with_suffix(".tmp")
    temporary.write_text("\n".join(lines) + "\n", encoding="utf-8")
    temporary.replace(output)
    print(f"{output}: {len(pins)} packages")


if __name__ == "__main__":
    main(*sys.argv[1:])
