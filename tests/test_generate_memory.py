"""benchmarks/generate_memory.py: its one-line refusal of an incomplete workspace, and its figures on the tiny
data with an untrained generator and judge (its scratch folder: tests/test_stage_memory.py)."""

import subprocess
import sys

from conftest import REPO_ROOT, TINY_PARAMS, merge_dicts, write_params
from test_generate import NO_LABEL_CHECK, save_untrained_models

SCRIPT = str(REPO_ROOT / "benchmarks/generate_memory.py")


def test_a_workspace_without_an_input_is_refused_in_one_line(tmp_path):
    for name in ("data/prepared", "models/judge"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    refused = subprocess.run([sys.executable, SCRIPT, str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: {tmp_path}/models/gan is missing (WORKSPACE needs params.yaml, data/prepared, models/judge, "
        "models/gan)"
    ]


def test_the_figures_of_generate_on_the_tiny_data(workspace):
    save_untrained_models(workspace)
    write_params(workspace.root, merge_dicts(TINY_PARAMS, {"generate": {**NO_LABEL_CHECK, "target": 40}}))
    shown = subprocess.run([sys.executable, SCRIPT, str(workspace.root)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    figures = dict(line.split("=") for line in shown.stdout.splitlines() if "=" in line)
    assert list(figures) == ["peak_mib", "held_mib", "after_gates_mib", "seconds", "synthetic_images"]
    assert figures["synthetic_images"] == "92"  # the plan's images, as tests/test_generate.py writes them
    assert float(figures["peak_mib"]) >= float(figures["held_mib"]) > 0 and float(figures["after_gates_mib"]) > 0
    assert not (workspace.root / "data/synthetic").exists()  # generate ran in the scratch folders only
