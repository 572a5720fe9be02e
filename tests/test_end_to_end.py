"""The whole pipeline through DVC on a user's own folder, in a temporary copy of the repository.

The folder is what a user collects by hand: RGB images of mixed sizes, PNG and JPEG, an imbalanced
set of classes down to one of 3 images, a corrupt file, a stray README and a hidden file. Only
`data.source` is changed in the project's params.yaml, apart from the compute budget (short
trainings, two seeds) that keeps the test fast: the data-related defaults (thinning, batch sizes,
the gate) are the project's. Then: an untouched source is a no-op, a report param reruns only the
report, `dvc exp run -S train.max_epochs=...` then the README's `dvc exp show` (120 columns wide) shows
evaluate's headline, the gain and its interval in full, for the workspace, the commit and the experiment;
committed, the experiment is a second dataset version, and `dvc metrics diff` between the two is a
short table; and adding a file to the source makes `dvc status` name prepare and `dvc repro` rerun it.
"""

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_digits
from torchvision.datasets import ImageFolder

from conftest import REPO_ROOT, TINY_CLASSIFIER, dvc, make_repo_copy, merge_dicts
from pipeline.contracts import MANIFEST_COLUMNS, PreparedStats
from pipeline.io import read_json, read_manifest, sha256_file

CLASSES = {"zero": 40, "one": 25, "two": 12, "three": 6, "four": 3}
USABLE = sum(CLASSES.values())
STAGES = {"prepare", "judge", "train", "generate", "merge", "evaluate", "report"}
BUDGET = {  # compute only: short trainings and two seeds
    "judge": TINY_CLASSIFIER,
    "train": {
        "max_epochs": 3,
        "z_dim": 8,
        "g_width": 4,
        "d_width": 4,
        "sample_every_n_epochs": 1,
        "samples_per_class": 2,
    },
    "evaluate": {"seeds": 2, "workers": 1, "classifier": TINY_CLASSIFIER, "kid_subsets": 2},
}


def make_user_folder(root: Path) -> None:
    """Real handwritten digits (sklearn's) as coloured images of mixed sizes and formats, plus junk."""
    digits = load_digits()
    rng = np.random.default_rng(0)
    for digit, (name, count) in enumerate(CLASSES.items()):
        (root / name).mkdir(parents=True)
        for i, index in enumerate(rng.choice(np.flatnonzero(digits.target == digit), count, replace=False)):
            gray = (digits.images[index] * 15).astype(np.uint8)
            colour = np.stack([gray, gray // 2, 255 - gray], axis=-1)
            image = Image.fromarray(colour).resize((24 + 4 * (i % 5), 24 + 3 * (i % 4)))
            image.save(root / name / (f"{i}.jpg" if i % 3 == 0 else f"{i}.png"))
    (root / "zero" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    (root / "README.txt").write_text("my digits\n")
    (root / "one" / ".hidden.png").write_bytes(b"x")


def checked(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def stages_run(repro_output: str) -> set[str]:
    return set(re.findall(r"Running stage '([\w@-]+)'", repro_output))


def check_a_gpu_asked_for_stops_its_stage(repo: Path, params: dict) -> None:
    """On a machine without a GPU, `accelerator: gpu` for the judge, or for evaluate's classifier, stops
    `dvc repro` at that stage with one line naming the key; the stages before it finish (here merge, rerun
    for a new share). Each time the committed version is restored after (DVC removed the failed stage's
    outputs before running it: `dvc checkout` brings back the cached ones, git the rest)."""
    for section, stale in (("judge", {}), ("evaluate.classifier", {"merge": {"synthetic_share": 0.3}})):
        asked = copy.deepcopy(merge_dicts(params, stale))
        node = asked
        for key in section.split("."):
            node = node[key]
        node["accelerator"] = "gpu"
        (repo / "params.yaml").write_text(yaml.safe_dump(asked, sort_keys=False))
        result = dvc("repro", cwd=repo)
        assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
        assert f"error: {section}.accelerator is gpu but no GPU is available (use auto or cpu)" in result.stderr
        assert stages_run(result.stdout) == set(stale) | {section.split(".")[0]}
        assert "up to date" in checked(dvc("status", *stale, "prepare", cwd=repo))
        subprocess.run(["git", "checkout", "params.yaml", "dvc.lock", "reports"], cwd=repo, check=True)
        checked(dvc("checkout", cwd=repo))
    assert stages_run(checked(dvc("repro", cwd=repo))) == set()


def commit(repo: Path, message: str) -> None:
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", message], cwd=repo, check=True)


def only_experiment(shown: list) -> dict:
    """The data of the one experiment in `dvc exp show --json` output."""
    experiments = [exp for commit in shown for exp in (commit.get("experiments") or [])]
    assert len(experiments) == 1, shown
    return experiments[0]["revs"][0]["data"]


def check_the_users_data_survived(repo: Path) -> None:
    stats = PreparedStats.read(repo / "data/prepared")
    assert sorted(stats.class_names) == sorted(CLASSES) and stats.mode == "RGB" and stats.image_size == 32
    assert not stats.thinned  # a user's data is kept as it is
    assert {n: sum(stats.counts[s][n] for s in ("train", "val", "test")) for n in CLASSES} == CLASSES
    assert stats.skipped == 3

    card = read_json(repo / "data/augmented/dataset.json")
    assert card["mode"] == "RGB" and [c["class_name"] for c in card["classes"]] == stats.class_names
    folder = ImageFolder(repo / "data/augmented/train")
    assert len(folder) == card["counts"]["real"] + card["counts"]["synthetic"]
    image, _ = folder[-1]
    assert image.size == (32, 32) and image.mode == "RGB"
    assert card["counts"]["synthetic"] > 0  # the gate let the rare classes through with the defaults
    merged = read_manifest(repo / "data/augmented/manifest.csv", MANIFEST_COLUMNS)
    assert set(merged["class_name"]) == set(CLASSES)
    assert card["version"] == sha256_file(repo / "data/augmented/manifest.csv")

    assert "gap_closed" not in json.loads((repo / "reports/metrics.json").read_text())  # nothing was thinned: no oracle
    assert "oracle" not in pd.read_csv(repo / "reports/tables/utility.csv")["arm"].tolist()
    page = (repo / "reports/report.html").read_text(encoding="utf-8")
    assert all(name in page for name in CLASSES) and card["version"] in page


def readme_exp_show() -> list[str]:
    """The README's `dvc exp show` command, as a user copies it."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("dvc exp show "))
    return shlex.split(line.split(" #")[0])[1:]


def check_the_readmes_exp_show(repo: Path, expected: dict[str, dict]) -> None:
    """The README's `dvc exp show`, 120 columns wide, shows the gain and its interval in full in the
    workspace's, the commit's and the experiment's rows, and the param the experiment changed."""
    table = checked(dvc(*readme_exp_show(), cwd=repo, columns=120))
    lines = [line.rstrip() for line in table.splitlines() if line.strip()]
    assert max(map(len, lines)) <= 120 and "…" not in table, table  # nothing collapsed or cut
    header = next(line for line in lines if line.strip().startswith("Experiment"))
    names = re.split(r"\s{2,}", header.strip())
    rows = {}
    for line in lines[lines.index(header) + 1 :]:
        if set(line.strip()) == {"─"}:  # a rule
            continue
        cells = dict(zip(names, re.split(r"\s{2,}", line.strip())))
        kind = cells["Experiment"].split()[0]
        rows[{"workspace": "workspace", "├──": "experiment", "└──": "experiment"}.get(kind, "baseline")] = cells
    assert set(rows) == set(expected), table
    for row, headline in expected.items():
        for key in ("gain", "gain_low", "gain_high"):
            assert float(rows[row][key]) == pytest.approx(headline[key], rel=1e-4, abs=1e-6), table
    assert (rows["baseline"]["train.max_epochs"], rows["experiment"]["train.max_epochs"]) == ("3", "2"), table


def test_a_users_folder_through_dvc_repro_rerun_rules_and_experiments(tmp_path):
    source = tmp_path / "my digits"
    make_user_folder(source)
    params = merge_dicts(
        yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), {"data": {"source": str(source)}, **BUDGET}
    )
    repo = make_repo_copy(tmp_path / "repo", params)

    assert stages_run(checked(dvc("repro", cwd=repo))) == STAGES
    check_the_users_data_survived(repo)
    commit(repo, "first version")
    assert stages_run(checked(dvc("repro", cwd=repo))) == set()  # an untouched source: nothing to do

    # presentation only: a report param reruns the report and nothing else
    params["report"]["images_per_class"] = 3
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stages_run(checked(dvc("repro", cwd=repo))) == {"report"}
    commit(repo, "smaller grids")
    if not torch.cuda.is_available():
        check_a_gpu_asked_for_stops_its_stage(repo, params)

    # an experiment: `dvc exp show` lists evaluate's headline, and no other metrics (DVCLive's logs are plots)
    first_version = read_json(repo / "data/augmented/dataset.json")["version"]
    committed = json.loads((repo / "reports/metrics.json").read_text())
    checked(dvc("exp", "run", "-S", "train.max_epochs=2", cwd=repo))
    experiment = only_experiment(json.loads(checked(dvc("exp", "show", "--json", cwd=repo))))
    assert experiment["params"]["params.yaml"]["data"]["train"]["max_epochs"] == 2
    assert set(experiment["metrics"]) == {"reports/metrics.json"}
    headline = experiment["metrics"]["reports/metrics.json"]["data"]
    assert headline == json.loads((repo / "reports/metrics.json").read_text())  # the workspace holds the experiment
    check_the_readmes_exp_show(repo, {"workspace": headline, "baseline": committed, "experiment": headline})

    # the experiment is the second dataset version: `dvc metrics diff` compares the two by their headline
    assert read_json(repo / "data/augmented/dataset.json")["version"] != first_version
    commit(repo, "second version")
    rows = checked(dvc("metrics", "diff", "--all", "HEAD~1", "HEAD", cwd=repo, columns=120)).splitlines()[1:]
    assert len(rows) <= 20, rows
    assert {"gain", "gain_low", "gain_high", "tail_gain", "baseline", "classifier"} <= {row.split()[1] for row in rows}

    # the source is a dependency: a new image makes prepare stale, and repro rebuilds it
    Image.fromarray(np.full((30, 30, 3), 200, dtype=np.uint8)).save(source / "four" / "new.png")
    status = checked(dvc("status", "prepare", cwd=repo))
    assert re.search(r"^prepare:\n\s+changed deps:\n\s+modified:\s+.*my digits", status, re.M), status
    assert stages_run(checked(dvc("repro", "prepare", cwd=repo))) == {"prepare"}
    stats = PreparedStats.read(repo / "data/prepared")
    assert sum(stats.counts[s]["four"] for s in ("train", "val", "test")) == CLASSES["four"] + 1
