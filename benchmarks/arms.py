"""Train the downstream arms on an existing workspace, without DVC: for choosing settings on val,
and for checking that the ranking of the arms holds with a larger training budget.

Run from the repository root after `dvc repro merge` (it reads data/prepared, data/holdout and
data/augmented, like the evaluate stage, with the evaluate params of params.yaml):

    python benchmarks/arms.py [--seeds 3] [--arms classical,augmented] [--budget 2] [--set KEY=VALUE ...]

`--budget 2` doubles the classifier's patience and step cap. `--set` overrides any params key with
dotted names (e.g. `--set evaluate.classifier.lr=0.005 --set merge.synthetic_share=0.7`; a merge
share re-weights the merged images here, without rerunning merge). By default only val scores are
printed (settings are chosen on val); `--test` adds the test scores, for the budget check. With the
augmented arm and a classical one among the arms, it ends with the paired difference of augmented
minus the best classical arm (on val), balanced accuracy and tail recall, on val (on test with `--test`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from pipeline.arms import CLASSICAL_ARMS, arm_training_sets, best_classical, read_arm_inputs, run_arms
from pipeline.config import load_params, params_from_dict, params_to_dict
from pipeline.contracts import PreparedStats
from pipeline.manifests import load_split
from pipeline.metrics import paired_difference, tail_classes
from pipeline.paths import Paths
from pipeline.stages.merge import merged_weights


def with_overrides(params, pairs: list[str], budget: float):
    raw = params_to_dict(params)
    for pair in pairs:
        key, value = pair.split("=", 1)
        *parents, leaf = key.split(".")
        node = raw
        for parent in parents:
            node = node[parent]
        node[leaf] = yaml.safe_load(value)
    recipe = raw["evaluate"]["classifier"]
    recipe["patience"] = round(recipe["patience"] * budget)
    recipe["max_steps"] = round(recipe["max_steps"] * budget)
    return params_from_dict(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--arms", help="comma-separated arms (default: all)")
    parser.add_argument("--budget", type=float, default=1.0, help="multiplies patience and max_steps")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--test", action="store_true", help="also print test scores")
    args = parser.parse_args()

    paths = Paths(Path(args.root))
    params = with_overrides(load_params(paths.root / "params.yaml"), args.set, args.budget)
    cfg = params.evaluate if args.seeds is None else dataclasses.replace(params.evaluate, seeds=args.seeds)
    stats = PreparedStats.read(paths.prepared)
    scratch = tempfile.TemporaryDirectory(prefix="arms-")  # the arms' images, deleted on exit
    inputs = read_arm_inputs(paths, stats, Path(scratch.name))
    inputs = dataclasses.replace(
        inputs,
        merged_weights=merged_weights(
            inputs.merged_labels.numpy(), inputs.merged_synthetic, stats.num_classes, params.merge.synthetic_share
        ),
    )
    arms = (
        args.arms.split(",")
        if args.arms
        else list(arm_training_sets(inputs, cfg.logit_adjustment, cfg.balanced_logit_adjustment, params.seed))
    )
    val = load_split(paths.prepared, stats, "val")
    # Without --test the test split is never read: the runs are scored on val twice (their per-run lines
    # then say "test" of what is val).
    test = load_split(paths.prepared, stats, "test") if args.test else val
    started = time.perf_counter()
    runs = run_arms(inputs, val, test, tail_classes(stats.split_counts("train")), cfg, params.seed, arms=arms)
    scores = ["val_balanced_accuracy", "steps"] + (["balanced_accuracy", "tail_recall"] if args.test else [])
    table = runs.groupby("arm", sort=False)[scores].agg(["mean", "std"])
    print(
        f"{len(runs)} runs in {time.perf_counter() - started:.0f} s; overrides {args.set or 'none'}, "
        f"budget x{args.budget:g}"
    )
    print(table.round(4).to_string())
    if args.test:
        ranking = table[("balanced_accuracy", "mean")].sort_values(ascending=False)
        print("ranking on test balanced accuracy: " + " > ".join(ranking.index))
    if "augmented" in arms and set(CLASSICAL_ARMS) & set(arms):
        baseline, split = best_classical(runs), "test" if args.test else "val"
        by_seed = {arm: rows.sort_values("seed") for arm, rows in runs.groupby("arm")}
        for score in ("balanced_accuracy", "tail_recall"):
            difference, low, high = paired_difference(by_seed["augmented"][score], by_seed[baseline][score])
            print(
                f"augmented minus {baseline} (best classical on val), {split} {score}: {difference:+.4f} "
                f"(95 % interval {low:+.4f} to {high:+.4f}, {len(by_seed[baseline])} paired seeds)"
            )


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
