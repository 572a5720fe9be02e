"""The memory of the generate stage run alone, on one thread: its peak, and what it holds.

    python benchmarks/generate_memory.py WORKSPACE [--code DIR]

WORKSPACE holds params.yaml, data/prepared, models/judge and models/gan: a repository after `dvc repro`,
or the `repo` folder of a kept `benchmarks/scale.py --keep` run. `--code` is a checkout of the pipeline to
measure (default: this repository), so that two versions can be compared on the same inputs. Each run
happens in a scratch folder holding a copy of params.yaml and links to the three inputs (only read), as
`python -m pipeline generate` in a child process with OMP_NUM_THREADS=1 and the code on PYTHONPATH
(benchmarks/stage_memory.py, which measures any stage's peak this way).

generate runs twice. The first run is the stage as it is: its peak resident memory (the child's maxrss,
from os.wait4) and its wall seconds. Single peaks vary by about 100 MiB between runs, because glibc's
allocator keeps memory that was freed and the peak is a forward pass on top of it. So the second run wraps
`build_gates` and `sample_batches` (monkeypatched in `pipeline.stages.generate`, inside the child) to call
glibc's `malloc_trim(0)` after each and read the resident set (VmRSS, /proc/self/status): after the gates
are built, and after each round's sampling. The largest of the latter, "held", is what the stage holds
(the round's sampled images included). The images written are summary.json's `generated`.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import shutil
import sys
import tempfile
from pathlib import Path

from stage_memory import REPO_ROOT, run_description, run_in, scratch_workspace

INPUTS = ("data/prepared", "models/judge", "models/gan")  # linked, not copied


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def child(record: Path) -> int:
    """In the child: generate, with a trimmed resident set appended to `record` after the gates are built
    and after each round's sampling."""
    import pipeline.__main__ as cli
    from pipeline.stages import generate

    trim = ctypes.CDLL("libc.so.6").malloc_trim

    def reporting(point: str, function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            trim(0)
            with record.open("a") as handle:
                handle.write(json.dumps([point, resident_mib()]) + "\n")
            return result

        return wrapped

    generate.build_gates = reporting("gates", generate.build_gates)
    generate.sample_batches = reporting("round", generate.sample_batches)
    return cli.main(["generate"])


def run_generate(workspace: Path, code: Path, record: Path | None) -> tuple[float, float, Path]:
    """(peak MiB, seconds, scratch folder) of generate in a child process; with `record`, the wrapped run."""
    scratch = scratch_workspace(workspace, INPUTS)
    command = [sys.executable, "-m", "pipeline", "generate"]
    if record:
        command = [sys.executable, __file__, "--child", str(record)]
    return (*run_in(scratch, code, command, "generate"), scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workspace", type=Path, nargs="?", help="params.yaml, data/prepared, models/judge, models/gan")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the pipeline checkout to run")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        sys.exit(child(args.child))
    if args.workspace is None:
        parser.error("WORKSPACE is required")
    if not (args.code / "pipeline/stages/generate.py").is_file():
        sys.exit(f"error: --code {args.code} holds no pipeline/stages/generate.py")

    peak, seconds, plain = run_generate(args.workspace, args.code.resolve(), None)
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "resident.jsonl"
        _, _, wrapped = run_generate(args.workspace, args.code.resolve(), record)
        points = [json.loads(line) for line in record.read_text().splitlines()]
    images = json.loads((plain / "data/synthetic/summary.json").read_text())["generated"]
    for scratch in (plain, wrapped):
        shutil.rmtree(scratch)
    print(run_description("generate", args.workspace, args.code))
    print(f"peak_mib={peak:.0f}")
    after_gates = next(mib for point, mib in points if point == "gates")
    print(f"held_mib={max((mib for point, mib in points if point == 'round'), default=after_gates):.0f}")
    print(f"after_gates_mib={after_gates:.0f}")
    print(f"seconds={seconds:.1f}")
    print(f"synthetic_images={images}")


if __name__ == "__main__":
    main()
