"""`dvc repro prepare` in a fresh copy of the repository on a built-in source: it runs once, thins
the train split as the README says, and is then up to date; its code is a dependency."""

import subprocess

from conftest import TINY_PARAMS, dvc, make_repo_copy, merge_dicts
from pipeline.contracts import PreparedStats


def test_dvc_repro_prepare_thins_a_built_in_source_then_has_nothing_to_do(tmp_path):
    params = merge_dicts(TINY_PARAMS, {"data": {"source": "data/builtin/digits.yaml"}})
    repo = make_repo_copy(tmp_path / "repo", params)
    first = dvc("repro", "prepare", cwd=repo)
    assert first.returncode == 0, first.stderr
    assert "Running stage 'prepare'" in first.stdout
    ignored = subprocess.run(
        ["git", "check-ignore", "data/prepared/manifest.csv", "data/holdout/manifest.csv"], cwd=repo
    )
    assert ignored.returncode == 0  # tracked by DVC (dvc.lock), ignored by git

    # auto thins the built-in source exponentially: class k of 10 keeps ratio**(-k/9) of the smallest class
    stats = PreparedStats.read(repo / "data/prepared")
    train, holdout = stats.split_counts("train"), [stats.holdout[name] for name in stats.class_names]
    smallest = min(t + h for t, h in zip(train, holdout))
    assert train == [max(1, round(smallest * 10 ** (-k / 9))) for k in range(10)]

    second = dvc("repro", "prepare", cwd=repo)
    assert second.returncode == 0 and "Running stage" not in second.stdout
    assert "up to date" in dvc("status", "prepare", cwd=repo).stdout

    with open(repo / "pipeline/sources.py", "a") as code:  # the code it runs is a dependency too
        code.write("\n")
    assert "modified:           pipeline/sources.py" in dvc("status", "prepare", cwd=repo).stdout
