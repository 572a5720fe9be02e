"""The memory of the generate stage run alone, on one thread: its peak, and what it holds.

    python benchmarks/generate_memory.py WORKSPACE [--code DIR]

WORKSPACE holds params.yaml, data/prepared, models/judge and models/gan: a repository after `dvc repro`,
or the `repo` folder of a kept `benchmarks/scale.py --keep` run. `--code` is a checkout of the pipeline to
measure (default: this repository), so that two versions can be compared on the same inputs. Each run
happens in a scratch folder holding a copy of params.yaml and links to the three inputs (only read), as
`python -m pipeline generate` in a child process with OMP_NUM_THREADS=1 and the code on PYTHONPATH.

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
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("data/prepared", "models/judge", "models/gan")  # linked, not copied


def scratch_workspace(workspace: Path) -> Path:
    """A new temporary folder holding a copy of WORKSPACE's params.yaml and links to its inputs; exits with
    one line naming the first that is missing."""
    for name in ("params.yaml", *INPUTS):
        if not (workspace / name).exists():
            sys.exit(f"error: {workspace / name} is missing (WORKSPACE needs params.yaml, {', '.join(INPUTS)})")
    scratch = Path(tempfile.mkdtemp(prefix="generate-memory-"))
    for name in INPUTS:
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).symlink_to((workspace / name).resolve(), target_is_directory=True)
    shutil.copyfile(workspace / "params.yaml", scratch / "params.yaml")
    return scratch


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
    scratch = scratch_workspace(workspace)
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    env = os.environ | threads | {"PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "pipeline", "generate"]
    if record:
        command = [sys.executable, __file__, "--child", str(record)]
    started = time.perf_counter()
    with (scratch / "generate.log").open("w") as log:  # the stage's output, for a failure
        process = subprocess.Popen(command, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"error: generate failed (exit {os.waitstatus_to_exitcode(status)}): see {scratch}/generate.log")
    return usage.ru_maxrss / 1024, seconds, scratch  # ru_maxrss is in KiB on Linux


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
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=args.code, capture_output=True, text=True)
    print(f"generate on {args.workspace}, code {args.code} ({commit.stdout.strip() or 'not a git checkout'}),")
    print(f"one thread, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(f"peak_mib={peak:.0f}")
    after_gates = next(mib for point, mib in points if point == "gates")
    print(f"held_mib={max((mib for point, mib in points if point == 'round'), default=after_gates):.0f}")
    print(f"after_gates_mib={after_gates:.0f}")
    print(f"seconds={seconds:.1f}")
    print(f"synthetic_images={images}")


if __name__ == "__main__":
    main()
