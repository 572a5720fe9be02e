"""The GAN's training budget against what its synthetic images are worth, measured on the val split.

    python benchmarks/gan_budget.py run WORKSPACE [--budgets 1 4 16] [--seeds 10] [--set KEY=VALUE ...]
    python benchmarks/gan_budget.py table WORKSPACE ...
    python benchmarks/gan_budget.py figure OUT.png WORKSPACE ...

`run` makes WORKSPACE (params.yaml of the repository plus the `--set` overrides, e.g.
`--set data.source=data/builtin/fashion-mnist.yaml --set data.max_per_class=1111`), runs prepare and
judge there once, then trains the GAN of those params for the largest budget: budget xK is K times
`train.max_epochs`. Nothing in the training depends on its length (no learning-rate schedule, the EMA's
warm-up counts updates), so the EMA generator saved at the epoch of budget x1 is the default training
itself, and every larger budget is the same training continued. After each budget's epoch the training
pauses while a subprocess measures that generator (`measure`): the generate and merge stages in
WORKSPACE/budgets/xK (sharing the workspace's prepared data and judge), then on val:

- cas: the synthetic_only arm (the Classification Accuracy Score), mean over the paired seeds;
- the augmented arm, the better classical arm on val, and augmented minus it (balanced accuracy and
  tail recall) with the paired 95 % interval over `--seeds` seeds; the classical arms do not depend
  on the GAN and are trained once per workspace;
- per class, in the judge's features against the real val images: recall and coverage of the
  synthetic images (precision/recall/density/coverage), the Fréchet distance, the memorised share
  (copies by the copy rule), the judge's label agreement; and the generate stage's acceptance rate.

The test split is never read. Everything runs on one thread (set OMP_NUM_THREADS=1 too), so that two
workspaces can run side by side on two cores. Killed, `run` resumes from the last epoch's checkpoint
(Lightning restarts the interrupted epoch's draws, so a resumed training is another realisation of the
same budget) and skips budgets already measured. `--seconds-of REF` makes budget xK last K times the
training seconds that REF's budget x1 took instead (a generator family compared at matched wall time;
on a machine shared with other jobs the seconds vary, so docs/results.md gives a family the fraction
of x1's epochs that its throughput relative to the default's allows, e.g. `--budgets 0.436`).
`table` prints a markdown table of one or more workspaces; `figure` draws each measure against the
GAN's batches (log scale), one line per workspace.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
os.environ.update(ONE_THREAD)

import pytorch_lightning as pl  # noqa: E402  (after the thread settings)
import torch  # noqa: E402

from pipeline.arms import CLASSICAL_ARMS, read_arm_inputs, run_arms  # noqa: E402
from pipeline.config import load_params, params_to_dict  # noqa: E402
from pipeline.contracts import GeneratorDetails, ModelMeta, PreparedStats  # noqa: E402
from pipeline.environment import environment  # noqa: E402
from pipeline.gan.data import TrainImages  # noqa: E402
from pipeline.gan.training import ConditionalGAN  # noqa: E402
from pipeline.io import json_text, load_images, read_json, sha256_bytes, write_atomically, write_json  # noqa: E402
from pipeline.manifests import load_split, read_accepted_synthetic  # noqa: E402
from pipeline.metrics import copy_thresholds, paired_difference, tail_classes  # noqa: E402
from pipeline.nets import (  # noqa: E402
    load_judge,
    predict,
    save_model,
)
from pipeline.paths import Paths  # noqa: E402
from pipeline.quality import ClassFeatures, class_quality  # noqa: E402
from pipeline.stages.train import LastCheckpoint  # noqa: E402

SHARED = ("data/prepared", "data/holdout", "models/judge")  # made once per workspace, read by every budget


# --- the workspace -------------------------------------------------------------------------------


def overridden(raw: dict, pairs: list[str]) -> dict:
    for pair in pairs:
        key, value = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = yaml.safe_load(value)
    return raw


def stage(name: str, cwd: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", name],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise SystemExit(f"{cwd}: {name} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def make_workspace(workspace: Path, overrides: list[str]) -> None:
    params_file = workspace / "params.yaml"
    raw = overridden(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    # measured one thread at a time; a class the GAN cannot fill is a result here, not a stop
    raw = overridden(raw, ["evaluate.workers=1", "generate.on_short=fill"])
    if params_file.is_file():
        if yaml.safe_load(params_file.read_text()) != raw:
            raise SystemExit(f"{params_file}: made with other params; use another workspace")
    else:
        # a new workspace, or one given another's data/prepared, data/holdout and models/judge (and
        # classical_runs_*.pkl) to compare on the same prepared data, judge and classical arms
        workspace.mkdir(parents=True, exist_ok=True)
        shutil.copytree(REPO / "data/builtin", workspace / "data/builtin", dirs_exist_ok=True)
        params_file.write_text(yaml.safe_dump(raw, sort_keys=False))
    for name in ("prepare", "judge"):
        if not (workspace / SHARED[0 if name == "prepare" else 2]).exists():
            print(f"{workspace}: {name}", flush=True)
            stage(name, workspace)


# --- training with snapshots ---------------------------------------------------------------------


class Snapshots(pl.Callback):
    """At the end of each budget's epoch (or the first epoch past its seconds), save the EMA generator
    to `budgets/xK/models/gan` and measure it in a subprocess; the training waits, so one thing runs at a time."""

    def __init__(
        self,
        workspace: Path,
        budgets: list[float],
        epochs: dict[float, int] | None,
        seconds: dict[float, float] | None,
        meta: dict,
        seeds: int,
    ):
        self.workspace, self.budgets, self.epochs, self.seconds = workspace, budgets, epochs, seconds
        self.meta, self.seeds = meta, seeds
        self.clock = workspace / "gan-resume/seconds.json"  # training seconds at the end of each epoch
        self.started, self.before = time.perf_counter(), 0.0

    def on_train_start(self, trainer: pl.Trainer, module: ConditionalGAN) -> None:
        """The clock starts from the seconds of the epoch a resumed training starts after."""
        done = read_json(self.clock) if self.clock.is_file() else {}
        self.started, self.before = time.perf_counter(), done.get(str(trainer.current_epoch), 0.0)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: ConditionalGAN) -> None:
        epoch = trainer.current_epoch + 1
        seconds = self.before + time.perf_counter() - self.started
        done = read_json(self.clock) if self.clock.is_file() else {}
        write_json(self.clock, done | {str(epoch): round(seconds, 1)})
        for budget in self.budgets:
            folder = self.workspace / f"budgets/x{budget:g}"
            due = (epoch >= self.epochs[budget]) if self.epochs else (seconds >= self.seconds[budget])
            if due and not (folder / "result.json").is_file():
                if not (
                    folder / "models/gan/generator_ema.pt"
                ).is_file():  # else saved before a kill: measured as saved
                    write_atomically(folder / "train_seconds.json", json_text({"train_seconds": round(seconds, 1)}))
                    details = GeneratorDetails(**self.meta["details"], epochs=epoch, batches=int(module.batches_seen))
                    save_model(
                        module.generator_ema.module,
                        folder / "models/gan",
                        "generator_ema",
                        ModelMeta(**(self.meta | {"details": details})),
                    )
                    print(
                        f"x{budget:g}: {epoch} epochs, {int(module.batches_seen)} batches, {seconds:.0f} s", flush=True
                    )
                paused = time.perf_counter()
                subprocess.run(
                    [sys.executable, __file__, "measure", str(folder), "--seeds", str(self.seeds)],
                    check=True,
                    env=os.environ | {"PYTHONPATH": str(REPO)},
                )
                self.started += time.perf_counter() - paused  # measuring is not training time
        if all((self.workspace / f"budgets/x{b:g}/result.json").is_file() for b in self.budgets):
            trainer.should_stop = True  # a seconds budget has no fixed last epoch


def train_with_snapshots(workspace: Path, budgets: list[float], seconds_of: Path | None, seeds: int) -> None:
    params = load_params(workspace / "params.yaml")
    cfg = params.train
    paths = Paths(workspace)
    data = TrainImages(paths.prepared, cfg.batch_size, cfg.balance, params.seed)
    if seconds_of is None:
        epochs, seconds = {b: round(b * cfg.max_epochs) for b in budgets}, None
        max_epochs = max(epochs.values())
    else:
        reference = json.loads((seconds_of / "budgets/x1/result.json").read_text())["train_seconds"]
        epochs, seconds, max_epochs = None, {b: b * reference for b in budgets}, 1_000_000
    resume_dir = workspace / "gan-resume"
    made_with = sha256_bytes(
        json.dumps(
            {"train": params_to_dict(cfg), "seed": params.seed, "budgets": budgets, "seconds": seconds}, sort_keys=True
        ).encode()
    )
    checkpoint = resume_dir / "last.ckpt"
    stamp = resume_dir / "fingerprint.json"
    if not (checkpoint.is_file() and stamp.is_file() and read_json(stamp)["fingerprint"] == made_with):
        shutil.rmtree(resume_dir, ignore_errors=True)
        resume_dir.mkdir(parents=True)
        write_json(stamp, {"fingerprint": made_with})
        checkpoint = None
    meta = {
        "image_size": data.image_size,
        "channels": data.channels,
        "class_names": data.class_names,
        "width": cfg.g_width,
        "z_dim": cfg.z_dim,
        "details": {
            "train_counts": data.counts,
            "batch_size": data.batch_size,
            "seed": params.seed,
            "train": params_to_dict(cfg),
            "environment": environment("cpu"),
        },
    }
    pl.seed_everything(params.seed, workers=True, verbose=False)
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision=cfg.precision if cfg.precision != "auto" else "32-true",
        max_epochs=max_epochs,
        logger=pl.loggers.CSVLogger(resume_dir, name="log"),
        log_every_n_steps=25,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[
            LastCheckpoint(dirpath=resume_dir, filename="last", enable_version_counter=False),
            Snapshots(workspace, budgets, epochs, seconds, meta, seeds),
        ],
    )
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint)


# --- measuring one budget ------------------------------------------------------------------------


def measure(folder: Path, seeds: int) -> None:
    """generate + merge in `folder`, then the val measures; writes folder/result.json."""
    workspace = folder.parents[1]
    for shared in SHARED:
        link = folder / shared
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(workspace / shared, link.parent))
    shutil.copy2(workspace / "params.yaml", folder / "params.yaml")
    started = time.perf_counter()
    for name in ("generate", "merge"):
        stage(name, folder)
    generate_seconds = time.perf_counter() - started
    torch.set_num_threads(1)
    params = load_params(folder / "params.yaml")
    paths = Paths(folder)
    stats = PreparedStats.read(paths.prepared)
    val = load_split(paths.prepared, stats, "val")
    tail = tail_classes(stats.split_counts("train"))
    cfg = dataclasses.replace(params.evaluate, seeds=seeds, workers=1)
    scratch = tempfile.TemporaryDirectory(prefix="arms-")  # the arms' images, deleted on exit
    inputs = read_arm_inputs(paths, stats, Path(scratch.name))

    classical_file = workspace / f"classical_runs_{seeds}.pkl"
    if not classical_file.is_file():
        runs = run_arms(inputs, val, val, tail, cfg, params.seed, arms=list(CLASSICAL_ARMS))
        runs.to_pickle(classical_file)
    runs = pd.concat(
        [
            pd.read_pickle(classical_file),
            run_arms(inputs, val, val, tail, cfg, params.seed, arms=["augmented", "synthetic_only"]),
        ]
    )
    by_arm = {arm: rows.sort_values("seed") for arm, rows in runs.groupby("arm")}
    baseline = max(CLASSICAL_ARMS, key=lambda arm: by_arm[arm]["val_balanced_accuracy"].mean())
    gain, low, high = paired_difference(by_arm["augmented"]["balanced_accuracy"], by_arm[baseline]["balanced_accuracy"])
    tail_gain, tail_low, tail_high = paired_difference(
        by_arm["augmented"]["tail_recall"], by_arm[baseline]["tail_recall"]
    )

    judge, _ = load_judge(paths.judge)
    train = load_split(paths.prepared, stats, "train")
    synthetic_rows = read_accepted_synthetic(paths.synthetic, stats)
    synthetic = load_images(paths.synthetic, synthetic_rows, stats.channels)
    train_features, (val_probabilities, val_features) = predict(judge, train[0])[1], predict(judge, val[0])
    synthetic_probabilities, synthetic_features = predict(judge, synthetic[0])
    bars = copy_thresholds(train_features, train[1], val_features, val[1], stats.num_classes)
    plan = pd.read_csv(paths.synthetic / "plan.csv")
    classes = []
    for label, name in enumerate(stats.class_names):
        features = ClassFeatures(
            label,
            train_features[train[1] == label],
            val_features[val[1] == label],
            synthetic_features[synthetic[1] == label],
            val_probabilities.argmax(1)[val[1] == label],
            synthetic_probabilities.argmax(1)[synthetic[1] == label],
            bars[label],
        )
        row = class_quality(features, cfg, params.seed)
        recall = np.mean([r[label] for r in by_arm["synthetic_only"]["recall"]])
        classes.append(
            {"class_name": name, "cas_recall": float(recall), "acceptance_rate": plan.loc[label, "acceptance_rate"]}
            | row
        )
    per_class = pd.DataFrame(classes)
    with_synthetic = per_class[per_class["synthetic"] > 0]
    meta = read_json(paths.gan / "generator_ema.json")["details"]
    result = {
        "budget": folder.name,
        "epochs": meta["epochs"],
        "batches": meta["batches"],
        "train_seconds": read_json(folder / "train_seconds.json")["train_seconds"],
        "generate_seconds": round(generate_seconds, 1),
        "seeds": seeds,
        "synthetic": int(plan["generated"].sum()),
        "short": int(plan["short"].sum()),
        "acceptance_rate": float(plan["generated"].sum() / max(plan["candidates"].sum(), 1)),
        "cas": float(by_arm["synthetic_only"]["val_balanced_accuracy"].mean()),
        "augmented": float(by_arm["augmented"]["val_balanced_accuracy"].mean()),
        "best_classical": baseline,
        "classical": float(by_arm[baseline]["val_balanced_accuracy"].mean()),
        "gain": gain,
        "gain_low": low,
        "gain_high": high,
        "tail_gain": tail_gain,
        "tail_gain_low": tail_low,
        "tail_gain_high": tail_high,
        **{
            key: float(with_synthetic[key].mean())
            for key in ("recall", "coverage", "frechet", "memorised_share", "label_agreement")
        },
        "classes": per_class.drop(columns=["real_train", "real_test"]).to_dict("records"),
    }
    write_json(folder / "result.json", result)
    print(row_text(result), flush=True)


# --- presenting ----------------------------------------------------------------------------------

COLUMNS = (
    "batches",
    "train_seconds",
    "cas",
    "augmented",
    "classical",
    "gain",
    "tail_gain",
    "recall",
    "coverage",
    "frechet",
    "memorised_share",
    "acceptance_rate",
)


def results(workspace: Path) -> pd.DataFrame:
    rows = [json.loads(path.read_text()) for path in sorted((workspace / "budgets").glob("x*/result.json"))]
    return pd.DataFrame(rows).sort_values("batches") if rows else pd.DataFrame(columns=COLUMNS)


def row_text(result: dict) -> str:
    return (
        f"{result['budget']}: {result['batches']} batches ({result['train_seconds']:.0f} s): CAS {result['cas']:.3f}, "
        f"augmented {result['augmented']:.3f} vs {result['best_classical']} {result['classical']:.3f}: "
        f"{result['gain']:+.4f} ({result['gain_low']:+.4f} to {result['gain_high']:+.4f}), tail "
        f"{result['tail_gain']:+.4f}; recall {result['recall']:.3f}, coverage {result['coverage']:.3f}, "
        f"Fréchet {result['frechet']:.2f}, memorised {result['memorised_share']:.3f}"
    )


def table(workspaces: list[Path]) -> None:
    print(
        "| workspace | budget | batches | train s | CAS | augmented | best classical | gain (95 % interval) | "
        "tail gain (95 % interval) | recall | coverage | Fréchet | memorised | acceptance |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for workspace in workspaces:
        for r in results(workspace).to_dict("records"):
            print(
                f"| {workspace.name} | {r['budget']} | {r['batches']} | {r['train_seconds']:.0f} | {r['cas']:.3f} | "
                f"{r['augmented']:.3f} | {r['best_classical']} {r['classical']:.3f} | {r['gain']:+.3f} "
                f"({r['gain_low']:+.3f} to {r['gain_high']:+.3f}) | {r['tail_gain']:+.3f} ({r['tail_gain_low']:+.3f} "
                f"to {r['tail_gain_high']:+.3f}) | {r['recall']:.3f} | {r['coverage']:.3f} | {r['frechet']:.2f} | "
                f"{r['memorised_share']:.3f} | {r['acceptance_rate']:.2f} |"
            )


# How a workspace is drawn, by the end of its name: a curve of the adaptive augmentation dashed, a generator
# family at one budget as a marker of its own; the colour is the dataset (the name before that suffix).
STYLES = {
    "-ada": {"linestyle": "--", "marker": "o"},
    "-stylegan2": {"marker": "s"},
    "-biggan": {"marker": "^"},
    "-wgan-gp": {"marker": "D"},
}


def figure(out: Path, workspaces: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    panels = [
        ("cas", "CAS (synthetic only), val"),
        ("gain", "augmented − best classical, val (95 % interval)"),
        ("recall", "recall of the synthetic images (judge features)"),
        ("coverage", "coverage of the synthetic images"),
        ("frechet", "Fréchet distance to real val (judge features)"),
        ("memorised_share", "memorised share"),
    ]
    colours = {}
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), layout="constrained")
    for workspace in workspaces:
        frame = results(workspace)
        if frame.empty:
            continue
        suffix = next((end for end in STYLES if workspace.name.endswith(end)), "")
        dataset = workspace.name.removesuffix(suffix)
        colour = colours.setdefault(dataset, f"C{len(colours)}")
        style = {"linestyle": "-", "marker": "o"} | STYLES.get(suffix, {})
        for ax, (key, _) in zip(axes.flat, panels):
            ax.plot(frame["batches"], frame[key], color=colour, label=workspace.name, **style)
            if key == "gain" and len(frame) > 1:
                ax.fill_between(frame["batches"], frame["gain_low"], frame["gain_high"], alpha=0.1, color=colour)
            elif key == "gain":
                low, high = frame["gain"] - frame["gain_low"], frame["gain_high"] - frame["gain"]
                ax.errorbar(frame["batches"], frame["gain"], yerr=[low, high], color=colour, linestyle="none")
    for ax, (key, title) in zip(axes.flat, panels):
        ax.set_xscale("log")
        low, high = ax.get_xlim()
        ticks = [t for t in (1000 * k for k in (1, 2, 5, 10, 20, 50, 100)) if low <= t <= high]
        ax.set_xticks(ticks, [f"{t // 1000}k" for t in ticks])
        ax.set_xlim(low, high)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GAN batches (log scale)")
        if key == "gain":
            ax.axhline(0.0, color="grey", linewidth=0.8)
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run")
    run.add_argument("workspace", type=Path)
    run.add_argument("--budgets", type=float, nargs="+", default=[1, 4, 16])
    run.add_argument("--seeds", type=int, default=10)
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--seconds-of", type=Path, help="a workspace whose budget x1 sets the seconds of x1 here")
    one = commands.add_parser("measure")
    one.add_argument("folder", type=Path)
    one.add_argument("--seeds", type=int, default=10)
    show = commands.add_parser("table")
    show.add_argument("workspaces", type=Path, nargs="+")
    draw = commands.add_parser("figure")
    draw.add_argument("out", type=Path)
    draw.add_argument("workspaces", type=Path, nargs="+")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "run":
        workspace = args.workspace.resolve()
        make_workspace(workspace, args.set)
        train_with_snapshots(workspace, sorted(args.budgets), args.seconds_of and args.seconds_of.resolve(), args.seeds)
        table([workspace])
    elif args.command == "measure":
        measure(args.folder.resolve(), args.seeds)
    elif args.command == "table":
        table(args.workspaces)
    else:
        figure(args.out, args.workspaces)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
