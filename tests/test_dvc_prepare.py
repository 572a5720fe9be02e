"""`dvc repro prepare` in a fresh copy of the repository: it runs once, then is up to date."""

import subprocess

from conftest import TINY_PARAMS, dvc, make_repo_copy


def test_dvc_repro_prepare_then_nothing_to_do(tmp_path):
    repo = make_repo_copy(tmp_path / "repo", TINY_PARAMS)
    first = dvc("repro", "prepare", cwd=repo)
    assert first.returncode == 0, first.stderr
    assert "Running stage 'prepare'" in first.stdout
    assert (repo / "data/prepared/manifest.csv").is_file()
    ignored = subprocess.run(["git", "check-ignore", "data/prepared/manifest.csv"], cwd=repo)
    assert ignored.returncode == 0  # tracked by DVC (dvc.lock), ignored by git

    second = dvc("repro", "prepare", cwd=repo)
    assert second.returncode == 0 and "Running stage" not in second.stdout
    status = dvc("status", "prepare", cwd=repo)
    assert "up to date" in status.stdout, status.stdout
