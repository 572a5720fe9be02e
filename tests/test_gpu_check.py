"""benchmarks/gpu_check.py, the one command that checks the GPU path, in what runs without a GPU: its steps,
the params it gives them, its figures, and its refusal on a machine without one."""

import json
import subprocess
import sys

import pytest
import torch
import yaml

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import gpu_check

PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_the_plan_runs_the_cuda_tests_then_every_stage_on_the_gpu_then_evaluate_with_resnet18():
    steps = gpu_check.plan(PARAMS, resnet_seeds=2)
    assert [step.name for step in steps] == ["CUDA tests", *gpu_check.STAGES, "evaluate resnet18"]
    assert steps[0].command[-1] == "tests/test_gpu.py"
    assert all(step.command[-1] == step.name.split()[0] for step in steps[1:])

    on_gpu = steps[1].params  # written before prepare, kept by the stages after it
    for section in (on_gpu["judge"], on_gpu["train"], on_gpu["generate"], on_gpu["evaluate"]["classifier"]):
        assert section["accelerator"] == "gpu"
    unchanged = yaml.safe_load(yaml.safe_dump(on_gpu))  # every other param is the committed default
    for section in (unchanged["judge"], unchanged["train"], unchanged["generate"], unchanged["evaluate"]["classifier"]):
        section["accelerator"] = "auto"
    assert unchanged == PARAMS
    assert all(step.params is None for step in steps[2:-1])

    resnet = steps[-1].params
    assert resnet["evaluate"]["classifier"]["arch"] == "resnet18" and resnet["evaluate"]["seeds"] == 2
    assert resnet["evaluate"]["classifier"]["accelerator"] == "gpu" and PARAMS["evaluate"]["seeds"] == 5


def test_the_gans_images_per_second_and_the_table(tmp_path):
    (tmp_path / "models/gan").mkdir(parents=True)
    meta = {"details": {"batches": 1620, "batch_size": 32}}
    (tmp_path / "models/gan/generator_ema.json").write_text(json.dumps(meta))
    assert gpu_check.gan_images_per_second(tmp_path, 51.84) == pytest.approx(1000.0)
    rows = [{"step": "train", "seconds": 51.84, "result": "1620 batches"}]
    assert gpu_check.table(rows).splitlines()[-1] == "| train | 51.8 | 1620 batches |"


def test_plan_prints_the_steps_and_without_a_gpu_the_check_stops_with_one_line(tmp_path):
    script = str(REPO_ROOT / "benchmarks/gpu_check.py")
    shown = subprocess.run([sys.executable, script, "--plan"], capture_output=True, text=True, check=True)
    assert shown.stdout.splitlines()[0] == "CUDA tests: -m pytest -q tests/test_gpu.py"
    assert len(shown.stdout.splitlines()) == len(gpu_check.STAGES) + 2
    if torch.cuda.is_available():
        return
    out = tmp_path / "figures.json"
    refused = subprocess.run([sys.executable, script, "--out", str(out)], capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stdout == "" and not out.exists()
    assert refused.stderr == "error: gpu_check needs a CUDA GPU and PyTorch sees none\n"
