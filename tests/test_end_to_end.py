"""The whole pipeline: `dvc repro` of all six stages on the tiny config in a temporary copy of the
repository. Every contract file of DESIGN.md is there and well-formed; then changing one `report`
param reruns only `report`, and `dvc metrics diff` shows what changed.
"""

import json
import re
import subprocess
from pathlib import Path

import yaml
from conftest import REPO_ROOT, TINY_PARAMS, dvc, make_repo_copy, merge_dicts
from torchvision.datasets import ImageFolder

from pipeline.io import MANIFEST_COLUMNS, read_json, read_manifest, sha256_file

# the project's params.yaml, every section of it, with the tiny data and short trainings
END_TO_END_PARAMS = merge_dicts(merge_dicts(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), TINY_PARAMS), {
    "judge": {"max_epochs": 1, "width": 4},
    "train": {"max_epochs": 1, "z_dim": 8, "g_width": 4, "d_width": 4, "sample_every_n_epochs": 1,
              "samples_per_class": 2},
    # a one-epoch judge and GAN: the label check must accept anything, or nothing would pass
    "generate": {"target": 20, "min_confidence": 0.0, "allow_short": True},
    "report": {"seeds": 1, "steps": 5, "width": 4, "kid_subset_size": 10, "kid_subsets": 2},
})
STAGES = {"prepare", "judge", "train", "generate", "merge", "report"}


def checked(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages_run(repro_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", repro_output))


def check_contracts(repo: Path) -> None:
    stats = read_json(repo / "data/prepared/stats.json")
    class_names = [c["class_name"] for c in stats["classes"]]
    assert list(read_manifest(repo / "data/prepared/manifest.csv").columns) == MANIFEST_COLUMNS
    for model in ("models/judge/judge", "models/gan/generator_ema"):
        assert read_json(repo / f"{model}.json")["class_names"] == class_names
        assert (repo / f"{model}.pt").is_file()

    synthetic = read_manifest(repo / "data/synthetic/manifest.csv")
    accepted = synthetic[synthetic["accepted"]]
    assert len(accepted) > 0 and set(accepted["origin"]) == {"synthetic"}
    assert all((repo / "data/synthetic" / path).is_file() for path in accepted["path"])

    augmented = read_manifest(repo / "data/augmented/manifest.csv")
    assert list(augmented.columns[:len(MANIFEST_COLUMNS) + 1]) == MANIFEST_COLUMNS + ["weight"]
    card = read_json(repo / "data/augmented/dataset.json")
    assert card["version"] == sha256_file(repo / "data/augmented/manifest.csv")
    folder = ImageFolder(repo / "data/augmented/train")
    assert len(folder) == len(augmented) and len(folder.classes) == len(class_names)

    metrics = json.loads((repo / "reports/metrics.json").read_text())
    for arm in ("real", "classical", "augmented"):
        assert set(metrics["utility"][arm]["balanced_accuracy"]) == {"mean", "std"}
    assert (repo / "reports/report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_dvc_repro_runs_every_stage_then_a_report_param_reruns_only_report(tmp_path):
    repo = make_repo_copy(tmp_path / "repo", END_TO_END_PARAMS)
    assert stages_run(checked(dvc("repro", cwd=repo))) == STAGES
    check_contracts(repo)
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "first version"], cwd=repo, check=True)

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["report"] |= {"seeds": 2, "kid_subsets": 3}  # other KID subsets: the KID values must change
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(checked(dvc("repro", cwd=repo))) == {"report"}
    assert "quality_mean_over_classes.kid" in checked(dvc("metrics", "diff", cwd=repo))
