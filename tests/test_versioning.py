"""Dataset versions with git + DVC, as the README describes them, in a temporary copy of the repository.

One tiny `dvc repro merge` (digits at 16x16, one epoch of everything) makes version v1, pushed to a
local-folder remote. Then: a fresh clone, with no outputs and no cache, pulls v1 back file for file;
and changing only `generate.label_pass_rate` reruns generate and merge but not prepare, judge or
train, after which `git checkout v1 && dvc checkout` brings the v1 dataset back. The evaluate and
report stages are left out (`merge` as the target) to keep the test short; they sit after merge and
follow the same rules.
"""

import hashlib
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import TINY_PARAMS, dvc, make_repo_copy, merge_dicts

VERSIONING_PARAMS = merge_dicts(
    TINY_PARAMS,
    {
        "data": {"source": "data/builtin/digits.yaml"},  # inside the repository, as a user's clone has it
        "train": {
            "max_epochs": 1,
            "z_dim": 8,
            "g_width": 4,
            "d_width": 4,
            "sample_every_n_epochs": 1,
            "samples_per_class": 2,
        },
        # a one-epoch judge and GAN: the label check must accept nearly anything, or nothing would pass
        "generate": {"target": 20, "label_pass_rate": 1.0},
        "merge": {"synthetic_share": 0.5},
    },
)
OUTPUTS = ("data", "models")


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def checked(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def file_hashes(repo: Path, folder: str) -> dict[str, str]:
    """sha256 of every file under `folder`, by path relative to the repository."""
    return {
        str(p.relative_to(repo)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((repo / folder).rglob("*"))
        if p.is_file() and p.name != ".gitignore" and "builtin" not in p.parts
    }


def stages_run(repro_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", repro_output))


@pytest.fixture(scope="module")
def versioned_repo(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(repository at tag v1, its DVC remote, the v1 output files' hashes)."""
    root = tmp_path_factory.mktemp("versioning")
    repo = make_repo_copy(root / "repo", VERSIONING_PARAMS)
    git("config", "user.email", "test@example.com", cwd=repo)
    git("config", "user.name", "test", cwd=repo)
    checked(dvc("repro", "merge", cwd=repo))
    checked(dvc("remote", "add", "-d", "local", str(root / "remote"), cwd=repo))
    git("add", "-A", cwd=repo)
    git("commit", "-qm", "dataset v1", cwd=repo)
    git("tag", "v1", cwd=repo)
    checked(dvc("push", cwd=repo))
    hashes = {k: v for folder in OUTPUTS for k, v in file_hashes(repo, folder).items()}
    return repo, root / "remote", hashes


def test_a_fresh_clone_pulls_the_same_files_from_the_remote(versioned_repo, tmp_path):
    repo, _, v1 = versioned_repo
    assert "data/augmented/dataset.json" in v1 and "models/judge/judge.pt" in v1
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git("checkout", "-q", "v1", cwd=clone)
    assert not (clone / "data/augmented").exists() and not (clone / ".dvc/cache").exists()  # no outputs, no cache
    checked(dvc("pull", "--with-deps", "merge", cwd=clone))
    assert {k: v for folder in OUTPUTS for k, v in file_hashes(clone, folder).items()} == v1
    assert "up to date" in checked(dvc("status", "merge", cwd=clone))


def test_a_gate_param_reruns_generate_and_merge_only_and_checkout_restores_v1(versioned_repo, tmp_path):
    repo, _, v1 = versioned_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generate"]["label_pass_rate"] = 0.9
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    status = checked(dvc("status", cwd=repo))
    assert re.search(r"^generate:\n\s+changed deps:\n\s+params.yaml:\n\s+modified:\s+generate", status, re.M), status
    assert not re.search(r"^(prepare|judge|train):", status, re.M)
    output = checked(dvc("repro", "merge", cwd=repo))
    assert stages_run(output) == {"generate", "merge"}
    for stage in ("prepare", "judge", "train"):
        assert f"Stage '{stage}' didn't change, skipping" in output
    v2_card = (repo / "data/augmented/dataset.json").read_text()
    assert yaml.safe_load(v2_card)["params"]["generate"]["label_pass_rate"] == 0.9
    git("commit", "-qam", "dataset v2", cwd=repo)
    git("tag", "v2", cwd=repo)

    # back to v1 with git + dvc checkout (from the local cache), and v2 fetched without checking it out
    git("checkout", "-q", "v1", cwd=repo)
    checked(dvc("checkout", "--with-deps", "merge", cwd=repo))
    assert dict(file_hashes(repo, "data")) == {k: v for k, v in v1.items() if k.startswith("data/")}
    checked(
        dvc("get", str(repo), "data/augmented/dataset.json", "--rev", "v2", "-o", str(tmp_path / "v2.json"), cwd=repo)
    )
    assert (tmp_path / "v2.json").read_text() == v2_card
    git("checkout", "-q", "v2", cwd=repo)  # leave the repository at its newest version
