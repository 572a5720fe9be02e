"""One command that checks the whole GPU path on a machine with a CUDA GPU, and writes its figures.

    python benchmarks/gpu_check.py [--out gpu-check.json] [--resnet-seeds 2] [--plan]

1. the CUDA tests (`tests/test_gpu.py`, which skip without a GPU: here they must pass);
2. the default pipeline end to end, in a scratch folder holding params.yaml as committed with every
   `accelerator` set to `gpu` (so that no stage falls back to the CPU unseen): each stage as
   `python -m pipeline <stage>`, timed as a whole process;
3. evaluate again with `evaluate.classifier.arch: resnet18` and `--resnet-seeds` paired seeds;
4. a table of each step's seconds and the GAN's images per second (the train stage's batches times its
   batch size, over the stage's seconds, start-up included), printed and written to `--out` as JSON with
   the GPU's name, the versions and the default run's headline (reports/metrics.json) of both classifiers.

Sized to finish in under 8 minutes on one H100 (docs/performance.md has its figures once one has run);
`--plan` prints the steps without running them. Without a CUDA GPU it stops at once with one line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")
# the params sections whose hardware a GPU run sets, as (section path, key)
ACCELERATORS = (("judge",), ("train",), ("generate",), ("evaluate", "classifier"))


@dataclass(frozen=True)
class Step:
    name: str
    command: list[str]
    params: dict | None = None  # params.yaml written into the scratch folder before the step (None: as it is)


def on_gpu(params: dict) -> dict:
    """The params with every section that trains or samples on `accelerator: gpu`."""
    params = copy.deepcopy(params)
    for path in ACCELERATORS:
        section = params
        for key in path:
            section = section.setdefault(key, {})
        section["accelerator"] = "gpu"
    return params


def with_resnet(params: dict, seeds: int) -> dict:
    params = copy.deepcopy(params)
    params["evaluate"]["classifier"]["arch"] = "resnet18"
    params["evaluate"]["seeds"] = seeds
    return params


def plan(params: dict, resnet_seeds: int) -> list[Step]:
    """The steps of the check, in order; the stages run in the scratch folder, the tests in the repository."""
    python = sys.executable
    gpu = on_gpu(params)
    steps = [Step("CUDA tests", [python, "-m", "pytest", "-q", "tests/test_gpu.py"])]
    steps += [Step(stage, [python, "-m", "pipeline", stage], gpu if stage == "prepare" else None) for stage in STAGES]
    steps.append(Step("evaluate resnet18", [python, "-m", "pipeline", "evaluate"], with_resnet(gpu, resnet_seeds)))
    return steps


def gan_images_per_second(scratch: Path, train_seconds: float) -> float:
    """The train stage's images per second: its batches times its batch size over its seconds."""
    details = json.loads((scratch / "models/gan/generator_ema.json").read_text())["details"]
    return details["batches"] * details["batch_size"] / train_seconds


def table(rows: list[dict]) -> str:
    lines = ["| step | seconds | result |", "|---|---|---|"]
    lines += [f"| {row['step']} | {row['seconds']:.1f} | {row['result']} |" for row in rows]
    return "\n".join(lines)


def run_step(step: Step, cwd: Path) -> dict:
    if step.params is not None:
        (cwd / "params.yaml").write_text(yaml.safe_dump(step.params, sort_keys=False), encoding="utf-8")
    env = os.environ | {"PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    started = time.perf_counter()
    done = subprocess.run(step.command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    last = (done.stdout.strip().splitlines() or [""])[-1]
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
    return {"step": step.name, "seconds": seconds, "returncode": done.returncode, "result": last[:150]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--resnet-seeds", type=int, default=2, help="paired seeds of the resnet18 evaluate")
    parser.add_argument("--plan", action="store_true", help="print the steps and stop")
    args = parser.parse_args()
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    steps = plan(params, args.resnet_seeds)
    if args.plan:
        for step in steps:
            print(f"{step.name}: {' '.join(step.command[1:])}")
        return 0

    import torch  # only once the steps are known: --plan needs no torch

    if not torch.cuda.is_available():
        print("error: gpu_check needs a CUDA GPU and PyTorch sees none", file=sys.stderr)
        return 2
    rows, headlines = [], {}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as folder:
        scratch = Path(folder)
        shutil.copytree(REPO / "data/builtin", scratch / "data/builtin")
        for step in steps:
            row = run_step(step, REPO if step.name == "CUDA tests" else scratch)
            if step.name == "train" and row["returncode"] == 0:
                row["gan_images_per_second"] = round(gan_images_per_second(scratch, row["seconds"]), 1)
            if step.name.startswith("evaluate") and row["returncode"] == 0:
                headlines[step.name] = json.loads((scratch / "reports/metrics.json").read_text())
            rows.append(row)
            print(f"{row['step']}: {row['seconds']:.1f} s, exit {row['returncode']}: {row['result']}", flush=True)
            if row["returncode"] != 0 and step.name != "CUDA tests":
                break  # a stage that failed leaves nothing for the next
    figures = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "steps": rows,
        "headlines": headlines,
    }
    args.out.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    print(table(rows))
    train = next((row for row in rows if "gan_images_per_second" in row), None)
    if train:
        print(f"GAN: {train['gan_images_per_second']} images/s")
    print(f"wrote {args.out}")
    return 0 if all(row["returncode"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
