"""benchmarks/stage_memory.py: the inputs it links from dvc.yaml, its scratch folder, its one-line refusals,
and its figures for a stage run alone on the tiny data."""

import re
import shutil
import subprocess
import sys

from conftest import REPO_ROOT, TINY_PARAMS, copy_outputs, write_params

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import stage_memory

SCRIPT = str(REPO_ROOT / "benchmarks/stage_memory.py")


def test_the_inputs_are_the_stages_data_deps_in_dvc_yaml():
    assert stage_memory.stage_inputs(REPO_ROOT, "merge") == ["data/prepared", "data/synthetic"]
    assert stage_memory.stage_inputs(REPO_ROOT, "prepare") == ["data/builtin/mnist5k.yaml"]  # ${data.source}
    report = stage_memory.stage_inputs(REPO_ROOT, "report")
    assert "data/augmented/dataset.json" in report and "reports/metrics.json" in report
    assert not [dep for dep in report if dep.startswith("pipeline/")]


def test_the_scratch_folder_copies_the_params_and_links_folders_and_files(tmp_path):
    source = tmp_path / "elsewhere/source"  # an absolute data.source, read where it is
    source.mkdir(parents=True)
    inputs = ["data/prepared", "data/augmented/dataset.json", str(source)]
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/augmented").mkdir()
    (tmp_path / "data/augmented/dataset.json").write_text("{}")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    scratch = stage_memory.scratch_workspace(tmp_path, inputs)
    try:
        assert not (scratch / "params.yaml").is_symlink() and (scratch / "params.yaml").read_text() == "seed: 0\n"
        for name in inputs[:2]:
            assert (scratch / name).is_symlink() and (scratch / name).resolve() == (tmp_path / name).resolve()
        assert not (scratch / "data/augmented").is_symlink()  # a real folder: the stage writes beside the link
        assert sorted(path.relative_to(scratch).as_posix() for path in scratch.rglob("*")) == sorted(
            ["data", "data/augmented", "params.yaml", *inputs[:2]]
        )
        assert source.is_dir() and not source.is_symlink()
    finally:
        shutil.rmtree(scratch)


def test_an_unknown_stage_and_a_missing_input_are_refused_in_one_line(tmp_path):
    shutil.copyfile(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    unknown = subprocess.run([sys.executable, SCRIPT, "merj", str(tmp_path)], capture_output=True, text=True)
    assert unknown.returncode == 1 and unknown.stderr.splitlines() == [
        f"error: {tmp_path}/dvc.yaml has no stage 'merj' (it has prepare, judge, train, generate, merge, evaluate, "
        "report)"
    ]
    (tmp_path / "data/prepared").mkdir(parents=True)
    missing = subprocess.run([sys.executable, SCRIPT, "merge", str(tmp_path)], capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stderr.splitlines() == [
        f"error: {tmp_path}/data/synthetic is missing (WORKSPACE needs params.yaml, data/prepared, data/synthetic)"
    ]


def test_the_figures_of_merge_alone_on_the_tiny_data(evaluate_inputs, tmp_path):
    workspace = copy_outputs(evaluate_inputs, tmp_path / "workspace", folders=("data",))
    shutil.copyfile(REPO_ROOT / "dvc.yaml", workspace / "dvc.yaml")
    write_params(workspace, TINY_PARAMS)
    shutil.rmtree(workspace / "data/augmented")  # merge's output: it must appear in the scratch folder only
    shown = subprocess.run([sys.executable, SCRIPT, "merge", str(workspace)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    figures = dict(line.split("=") for line in shown.stdout.splitlines() if "=" in line)
    assert list(figures) == ["peak_mib", "seconds"]
    assert float(figures["peak_mib"]) > 50 and float(figures["seconds"]) > 0  # a Python with pandas and torch
    assert shown.stdout.startswith(f"merge alone on {workspace}, code {REPO_ROOT}")
    assert not (workspace / "data/augmented").exists()


def test_the_code_version_is_the_checkouts_own_commit_not_that_of_a_repository_holding_it(tmp_path):
    git = ["git", "-C", str(tmp_path), "-c", "user.email=t@example.org", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "a commit"], check=True)
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
    (tmp_path / "a-copied-pipeline").mkdir()
    assert stage_memory.code_version(tmp_path) == commit.stdout.strip()
    assert stage_memory.code_version(tmp_path / "a-copied-pipeline") == "not a git checkout"
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "pipeline/stage.py").write_text("")  # a file of the pipeline that the commit lacks
    assert stage_memory.code_version(tmp_path) == f"{commit.stdout.strip()} with pipeline/ changed"


def test_the_ratios_of_two_checkouts_on_merge_and_a_checkout_without_the_pipeline_refused(evaluate_inputs, tmp_path):
    workspace = copy_outputs(evaluate_inputs, tmp_path / "workspace", folders=("data",))
    shutil.copyfile(REPO_ROOT / "dvc.yaml", workspace / "dvc.yaml")
    write_params(workspace, TINY_PARAMS)
    shutil.rmtree(workspace / "data/augmented")
    speed = str(REPO_ROOT / "benchmarks/stage_speed.py")
    command = [sys.executable, speed, str(workspace), "--code", str(REPO_ROOT), "--stages", "merge", "--pairs", "2"]
    refused = subprocess.run([*command, "--reference", str(tmp_path)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.splitlines() == [
        f"error: {tmp_path} holds no pipeline/__main__.py"
    ]
    shown = subprocess.run([*command, "--reference", str(REPO_ROOT)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    line = shown.stdout.splitlines()[-1]
    ratio = r"([\d.]+) \(([\d.]+) to ([\d.]+)\)"  # median (min to max)
    match = re.fullmatch(rf"merge: ([\d.]+) / ([\d.]+) s; seconds {ratio}; peak {ratio}", line)
    assert match, line
    seconds, peaks = [float(x) for x in match.groups()[2:5]], [float(x) for x in match.groups()[5:]]
    assert all(float(value) > 0 for value in match.groups())
    assert seconds[1] <= seconds[0] <= seconds[2] and peaks[1] <= peaks[0] <= peaks[2]
    assert 0.5 < peaks[0] < 2  # the same code twice: about the same peak
    assert not (workspace / "data/augmented").exists()
