"""The augmented gain over several realisations of the whole pipeline, read from DVC experiments.

One `dvc repro` is one realisation: its `seed` thins the source, draws the val and test splits, and
seeds the judge, the GAN and the classifiers. The interval in `reports/metrics.json` covers the
classifiers' paired seeds within that one realisation; it does not cover another draw of the val
and test images, another judge or another GAN. To see whether a gain survives those, run the same
params with other seeds as DVC experiments, then this script, from the repository root:

    dvc exp run -S seed=1
    dvc exp run -S seed=2
    python benchmarks/realisations.py

It lists the current commit's own run (its committed `reports/metrics.json`) and each experiment
of that commit whose params differ from the commit's only in `seed` (the others are named and left
out): its best classical arm, the gain of augmented over it in test balanced accuracy with the
within-realisation interval, and the tail recall gain. Then the mean gain over the realisations,
with a Student-t 95 % interval over them: the realisations are the independent units, so this
interval is the one that answers "would the gain hold on another draw of the data".
"""

from __future__ import annotations

import math

import dvc.api
import yaml

from pipeline.metrics import paired_difference

GAIN = "gain"  # reports/metrics.json's headline keys: gain, gain_low, gain_high, tail_gain, baseline


def flat(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}, the way `dvc exp show` names params."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flat(value, f"{name}.") if isinstance(value, dict) else {name: value})
    return out


def differing_params(row: dict, reference: dict, keys) -> list[str]:
    """The params (other than seed) whose value in this row differs from the reference row's."""
    return [key for key in keys if key != "seed" and row.get(key) != reference.get(key)]


def main() -> None:
    with open("params.yaml") as f:
        keys = list(flat(yaml.safe_load(f)))
    rows = dvc.api.exp_show()
    # The workspace row repeats the last experiment run in it; the commit's row is the committed run.
    commit = next(row for row in rows if row["typ"] == "baseline" and row["rev"] != "workspace")
    rows = [commit] + [row for row in rows if row["typ"] != "baseline"]
    realisations, name_of_seed = [], {}
    print(f"{'realisation':<28} {'seed':>4} {'best classical':<14} {'gain':>7} {'95 % interval':>18} {'tail':>7}")
    for row in rows:
        name = row.get("Experiment") or row.get("rev")
        if row.get("State"):  # Running, Queued or Failed: its metrics are not (yet) its own
            print(f"{name:<28} {row['State'].lower()}: left out")
            continue
        if row.get(GAIN) is None:
            print(f"{name:<28} no {GAIN} (evaluate did not run): left out")
            continue
        differs = differing_params(row, commit, keys)
        if differs:
            print(f"{name:<28} differs in {', '.join(differs[:3])}: left out")
            continue
        seed = int(row["seed"])
        if seed in name_of_seed:
            print(f"{name:<28} seed {seed} again (as {name_of_seed[seed]}): left out")
            continue
        name_of_seed[seed] = name
        low, high = row["gain_low"], row["gain_high"]
        print(
            f"{name:<28} {seed:>4} {row['baseline']:<14} {row[GAIN]:>+7.3f} "
            f"{low:>+8.3f} to {high:>+6.3f} {row['tail_gain']:>+7.3f}"
        )
        realisations.append((row[GAIN], row["tail_gain"]))
    if not realisations:
        print("no realisation has evaluate's metrics: run `dvc repro`, then `dvc exp run -S seed=N`")
        return
    gains, tails = zip(*realisations)
    mean, low, high = paired_difference(list(gains), [0.0] * len(gains))
    tail_mean, tail_low, tail_high = paired_difference(list(tails), [0.0] * len(tails))
    interval = "(one realisation: no interval)" if math.isinf(low) else f"{low:+.3f} to {high:+.3f}"
    tail_interval = "" if math.isinf(tail_low) else f" ({tail_low:+.3f} to {tail_high:+.3f})"
    print(
        f"realisations={len(gains)} mean_gain={mean:+.4f} interval_over_realisations={interval} "
        f"ahead_in={sum(g > 0 for g in gains)} mean_tail_gain={tail_mean:+.4f}{tail_interval}"
    )


if __name__ == "__main__":
    main()
