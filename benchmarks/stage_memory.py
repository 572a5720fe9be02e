"""One stage run alone, on one thread, without DVC: its peak resident memory and its seconds.

    python benchmarks/stage_memory.py STAGE WORKSPACE [--code DIR]

WORKSPACE is a repository after `dvc repro`, or the `repo` folder of a kept `benchmarks/scale.py --keep`
run. `--code` is a checkout of the pipeline to measure (default: this repository), so that two versions can
be compared on the same inputs. The stage runs as `python -m pipeline STAGE` in a child process with
OMP_NUM_THREADS=1 and the code on PYTHONPATH, in a scratch folder holding a copy of params.yaml and links to
the stage's inputs: its deps in WORKSPACE's dvc.yaml other than the pipeline's code, only read. The stage
writes its outputs in the scratch folder, which is then removed. `scale.py` times `dvc repro STAGE`, whose
peak is DVC's process where that is larger; this is the stage's own process (the child's maxrss, from
os.wait4), so the two together split a step's memory between DVC and the stage.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}


def stage_inputs(workspace: Path, stage: str) -> list[str]:
    """The deps of `stage` in WORKSPACE's dvc.yaml that are data, not the pipeline's code, with a `${key.path}`
    read from WORKSPACE's params.yaml as DVC reads it (prepare's `${data.source}`)."""
    stages = yaml.safe_load((workspace / "dvc.yaml").read_text())["stages"]
    if stage not in stages:
        sys.exit(f"error: {workspace}/dvc.yaml has no stage {stage!r} (it has {', '.join(stages)})")
    deps = [dep for dep in stages[stage].get("deps", []) if not dep.startswith("pipeline/")]
    if not any("${" in dep for dep in deps):  # params.yaml is read only when needed; scratch_workspace checks it
        return deps
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    return [
        re.sub(r"\$\{([\w.]+)\}", lambda key: str(functools.reduce(dict.get, key[1].split("."), params)), dep)
        for dep in deps
    ]


def scratch_workspace(workspace: Path, inputs: list[str] | tuple[str, ...]) -> Path:
    """A new temporary folder holding a copy of WORKSPACE's params.yaml and links to its `inputs` (an absolute
    path, such as a data.source outside the workspace, is read where it is); exits with one line naming the
    first that is missing."""
    for name in ("params.yaml", *inputs):
        if not (workspace / name).exists():
            sys.exit(f"error: {workspace / name} is missing (WORKSPACE needs params.yaml, {', '.join(inputs)})")
    scratch = Path(tempfile.mkdtemp(prefix="stage-memory-"))
    for name in (name for name in inputs if not Path(name).is_absolute()):
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / name).symlink_to((workspace / name).resolve(), target_is_directory=(workspace / name).is_dir())
    shutil.copyfile(workspace / "params.yaml", scratch / "params.yaml")
    return scratch


def run_in(scratch: Path, code: Path, command: list[str], name: str, one_thread: bool = True) -> tuple[float, float]:
    """(peak MiB, seconds) of `command` run in `scratch` with one thread (or the environment's thread count)
    and `code` on PYTHONPATH; exits with one line pointing to its log where it fails."""
    env = os.environ | (ONE_THREAD if one_thread else {}) | {"PYTHONPATH": str(code)}
    started = time.perf_counter()
    with (scratch / f"{name}.log").open("w") as log:  # the stage's output, for a failure
        process = subprocess.Popen(command, cwd=scratch, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"error: {name} failed (exit {os.waitstatus_to_exitcode(status)}): see {scratch}/{name}.log")
    return usage.ru_maxrss / 1024, seconds  # ru_maxrss is in KiB on Linux


def refuse_bad_arguments(workspace: Path, checkouts: dict[str, Path]) -> None:
    """Exit with one line where a checkout (named by its key in the message) holds no pipeline, or WORKSPACE
    is not a repository of the pipeline."""
    for name, checkout in checkouts.items():
        if not (checkout / "pipeline/__main__.py").is_file():
            sys.exit(f"error: {name} holds no pipeline/__main__.py")
    if not (workspace / "dvc.yaml").is_file():
        sys.exit(f"error: {workspace}/dvc.yaml is missing (WORKSPACE is a repository of the pipeline)")


def code_version(code: Path) -> str:
    """The short commit of the checkout `code`, and whether its pipeline/ differs from that commit; not the
    commit of a repository that merely holds the folder."""
    asked = ["git", "rev-parse", "--show-toplevel", "--short", "HEAD"]
    answer = subprocess.run(asked, cwd=code, capture_output=True, text=True)
    top, commit = (answer.stdout.split() + ["", ""])[:2] if answer.returncode == 0 else ("", "")
    if not top or Path(top) != code.resolve():
        return "not a git checkout"
    changed = subprocess.run(["git", "status", "--porcelain", "pipeline"], cwd=code, capture_output=True, text=True)
    return f"{commit} with pipeline/ changed" if changed.stdout.strip() else commit


def run_description(what: str, workspace: Path, code: Path) -> str:
    """The two lines a measurement starts with: what ran on which inputs and code, and the machine's load."""
    return (
        f"{what} on {workspace}, code {code} ({code_version(code)}),\n"
        f"one thread, {os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", help="a stage of WORKSPACE's dvc.yaml")
    parser.add_argument("workspace", type=Path, help="a repository after dvc repro, with the stage's inputs")
    parser.add_argument("--code", type=Path, default=REPO_ROOT, help="the pipeline checkout to run")
    args = parser.parse_args()
    refuse_bad_arguments(args.workspace, {f"--code {args.code}": args.code})

    scratch = scratch_workspace(args.workspace, stage_inputs(args.workspace, args.stage))
    command = [sys.executable, "-m", "pipeline", args.stage]
    peak, seconds = run_in(scratch, args.code.resolve(), command, args.stage)
    shutil.rmtree(scratch)
    print(run_description(f"{args.stage} alone", args.workspace, args.code))
    print(f"peak_mib={peak:.0f}")
    print(f"seconds={seconds:.1f}")


if __name__ == "__main__":
    main()
