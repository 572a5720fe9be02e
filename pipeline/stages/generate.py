"""Stage `generate`: EMA generator + judge + class counts -> data/synthetic/<class>/*.png, manifest.csv.

Three steps (`run`):
1. Plan: how many synthetic images each class needs to reach `generate.target` (printed, and saved
   as plan.csv together with what the gate let through).
2. Draw and gate. Candidates are sampled from the EMA generator in batches, through Lightning's
   predict loop (pipeline/sampler.py), so `generate.accelerator`, `devices` and `num_nodes` place it
   as they place the training. Every candidate has its own latent seed, drawn from a stream that
   belongs to its class, so changing one class's count never changes the images of another class,
   and neither does the number of processes (each batch goes through the generator whole, in one
   process; on the CPU, at the same number of threads per process). Every candidate is gated in the
   judge's feature space (pipeline/gate.py): the label check and the memorisation check. Candidates
   are drawn in rounds, one batch per class that still needs some, until the class's target is met,
   or until it has drawn `max_attempts` candidates per image it needs. A class that falls short (the
   gate never lowers its bar) keeps what passed with `on_short: fill`: a warning names it, plan.csv
   and summary.json record it, and merge fills the rest of its sampling mass with its real images;
   `on_short: fail` stops the stage naming the class.
3. Write, each class as soon as it is done drawing, after selecting (gate.py): `selection: first`
   keeps the first candidates that pass; `diverse` lets `pool` times as many pass and keeps a
   spread-out subset of them, so that the synthetic images add what the few real ones do not show;
   `informative` keeps the passing candidates the judge labels correctly but is least sure of (the
   hard cases near the class boundary rather than the easy ones oversampling already gives).

The manifest holds one row per candidate judged, accepted or not, with the gate's verdict; rejected
rows have no file (`path` is empty) but keep their seed, so they can be regenerated and inspected.
Under DDP every process runs the stage: all of them sample; the first gates, decides the next round
and writes the outputs.

Memory: the images of the candidates that pass are not held. They are appended, batch by batch, to a
scratch file per class in the system's temporary folder (TMPDIR; pipeline/image_rows.py), and
`write_class` reads back only the selected ones, a chunk at a time; with `diverse` their judge features
wait in a file beside them, and one class's are read into memory when it is selected. A class's files
are deleted once it is written; at most they take its planned count x `pool` (x 1 with `first`) x H x W
x C bytes (and 4 bytes per feature). What stays in memory while the classes draw is the gate's row of
every candidate judged (a few numbers and references per candidate: the manifest-to-be).
"""

from __future__ import annotations

import contextlib
import math
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_only

from pipeline import nets
from pipeline.config import GenerateParams, Params, params_to_dict
from pipeline.contracts import (
    GATE_COLUMNS,
    MANIFEST_COLUMNS,
    ModelMeta,
    PreparedStats,
    SyntheticSummary,
    check_made_for,
)
from pipeline.environment import environment
from pipeline.errors import GateError
from pipeline.gate import ClassDraws, ClassGate, build_gates
from pipeline.hardware import HARDWARE_PARAMS, launched_processes, trainer_settings
from pipeline.image_rows import ImageRows
from pipeline.io import atomic_output, encode_png, sha256_bytes, write_manifest
from pipeline.paths import Paths
from pipeline.progress import Progress
from pipeline.sampler import CandidateSampler, sample_batches

_say = rank_zero_only(print)  # under DDP every process runs the stage: the first one speaks


# --- pure functions: plan, seeds -----------------------------------------------------------------


def plan_counts(real_counts: list[int], target: str | int | float, max_synthetic_per_real: float | None) -> list[int]:
    """How many synthetic images each class needs (classes at or above the target get none).

    target: "max" (the largest class's count), an integer count, or a fraction of the largest class.
    """
    largest = max(real_counts)
    if target == "max":
        goal = largest
    elif isinstance(target, float):
        goal = round(target * largest)
    else:
        goal = target
    wanted = [max(0, goal - n) for n in real_counts]
    if max_synthetic_per_real is not None:
        wanted = [min(w, math.floor(max_synthetic_per_real * n)) for w, n in zip(wanted, real_counts)]
    return wanted


def candidate_seeds(seed: int, label: int, count: int) -> np.ndarray:
    """Latent seeds of a class's candidates, in the order they are tried: a stream per class."""
    return np.random.default_rng([seed, label]).integers(2**63, size=count)


# --- the stage: plan, draw and gate, write --------------------------------------------------------


def run(params: Params, paths: Paths = Paths()) -> None:
    with tempfile.TemporaryDirectory(prefix="generate-") as scratch:  # each class's passing candidates' images
        run_with_scratch(params, paths, Path(scratch))


def run_with_scratch(params: Params, paths: Paths, scratch: Path) -> None:
    """The stage; `scratch` holds the passing candidates' images of each class until it is written."""
    cfg = params.generate
    stats = PreparedStats.read(paths.prepared)
    models = Models.load(paths, stats)

    # 1. Plan: how many images each class needs, and the candidates each one may draw.
    plan = plan_table(stats, cfg)
    _say(f"generate: plan for target {cfg.target!r}, {plan['planned'].sum()} synthetic images:")
    _say(plan[["class_name", "real", "planned"]].to_string(index=False))
    image_shape = (stats.image_size, stats.image_size, stats.channels)
    draws = [
        ClassDraws(
            row.label,
            candidate_seeds(params.seed, row.label, row.planned * cfg.max_attempts),
            row.planned * (1 if cfg.selection == "first" else cfg.pool),
            cfg,
            passing=ImageRows(scratch / f"{row.label}.u8", 0, image_shape),
        )
        for row in plan.itertuples()
    ]

    # 2. Draw and gate, in rounds. Under DDP every process samples its share of a round; the first
    # gates the candidates, decides the next round and writes; the others only sample.
    settings = trainer_settings(cfg, torch.cuda.device_count(), "generate", launched_processes())
    trainer = pl.Trainer(
        **settings,
        use_distributed_sampler=False,  # the CandidateSampler shares the batches out itself
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    sampler = CandidateSampler(models.generator, models.generator_meta.z_dim, cfg.truncation)
    if not trainer.is_global_zero:
        follow_rounds(trainer, sampler, next_round(draws))  # the first round depends on the plan only
        return
    gates = build_gates(models.judge, stats, paths, cfg)

    # 3. Write each class once it is done (its gate rows and scratch files are then dropped), then the records.
    plan_rows, manifests = list(plan.itertuples()), {}
    with (
        atomic_output(paths.synthetic) as out,
        contextlib.closing(draw_and_gate(trainer, sampler, draws, gates)) as done,
    ):
        for draw in done:
            manifests[draw.label] = write_class(plan_rows[draw.label], draw, out)
            draw.discard()
        plan = with_outcome(plan, manifests, gates, cfg)
        manifest = pd.concat([manifests[label] for label in plan["label"]], ignore_index=True)
        manifest = manifest.reindex(columns=MANIFEST_COLUMNS + GATE_COLUMNS).assign(source=models.generator_hash)
        write_manifest(manifest, out / "manifest.csv")
        write_manifest(plan, out / "plan.csv")
        synthetic_summary(plan, stats, models, settings["accelerator"], params).write(out)
    if plan["planned"].sum() == 0:
        print(
            f"generate: nothing to generate: the plan for target {cfg.target!r} asks for no synthetic images; "
            "merge publishes the real images, every class drawn equally often"
        )
    else:
        print(
            f"generate: accepted {plan['generated'].sum()} of {plan['candidates'].sum()} candidates; "
            f"{plan['short'].sum()} short"
        )


@dataclass(frozen=True)
class Models:
    """The EMA generator and the judge, checked against the prepared data."""

    generator: torch.nn.Module
    generator_meta: ModelMeta
    judge: torch.nn.Module
    judge_meta: ModelMeta

    @classmethod
    def load(cls, paths: Paths, stats: PreparedStats) -> Models:
        generator, generator_meta = nets.load_generator(paths.gan)
        meta, path = generator_meta, f"{paths.gan}/generator_ema.json"
        check_made_for(meta.image_size, meta.channels, meta.class_names, stats, path)
        judge, judge_meta = nets.load_judge(paths.judge)
        meta, path = judge_meta, f"{paths.judge}/judge.json"
        check_made_for(meta.image_size, meta.channels, meta.class_names, stats, path)
        for model in (generator, judge):
            model.to(memory_format=torch.channels_last)  # about a third faster on the CPU
        return cls(generator, generator_meta, judge, judge_meta)

    @property
    def generator_hash(self) -> str:
        return nets.weights_hash(self.generator)


def plan_table(stats: PreparedStats, cfg: GenerateParams) -> pd.DataFrame:
    """One row per class, in label order: label, class_name, folder, real (train images) and planned."""
    real_counts = stats.split_counts("train")
    return pd.DataFrame(
        {
            "label": [c.label for c in stats.classes],
            "class_name": stats.class_names,
            "folder": [c.folder for c in stats.classes],
            "real": real_counts,
            "planned": plan_counts(real_counts, cfg.target, cfg.max_synthetic_per_real),
        }
    )


# --- 2. draw and gate ----------------------------------------------------------------------------


def draw_and_gate(
    trainer: pl.Trainer, sampler: CandidateSampler, draws: list[ClassDraws], gates: list[ClassGate]
) -> Iterator[ClassDraws]:
    """The first process's rounds: each samples one batch of every class that still draws (with the other
    processes under DDP), gates them and decides the next round. Yields each class once it is done: first
    those that need no image, then each as its last round ends."""
    yield from (draw for draw in draws if not len(draw.next_seeds()))
    batches = next_round(draws)
    progress = Progress("generate", sum(draw.wanted for draw in draws), "passing images settled")
    while batches:
        images = sample_batches(trainer, sampler, batches)
        try:
            for (seeds, label), batch in zip(batches, images):
                draws[label].take(seeds, batch, gates[label])
            upcoming = next_round(draws)
            report_round(progress, draws, upcoming)
            for label in sorted({label for _, label in batches} - {label for _, label in upcoming}):
                yield draws[label]
        except BaseException:  # an error here or where a yielded class is written
            trainer.strategy.broadcast([], src=0)  # the others stop instead of waiting for a round forever
            raise
        batches = trainer.strategy.broadcast(upcoming, src=0)


def report_round(progress: Progress, draws: list[ClassDraws], upcoming: list[tuple[np.ndarray, int]]) -> None:
    """A class's images are settled as they pass, and all of them once it stops drawing (short or not)."""
    drawing = {label for _, label in upcoming}
    settled = sum(min(d.passed, d.wanted) if d.label in drawing else d.wanted for d in draws)
    candidates = sum(d.drawn for d in draws)
    progress.done(settled - progress.finished, f"{candidates} candidates drawn, {len(drawing)} classes still drawing")


def follow_rounds(trainer: pl.Trainer, sampler: CandidateSampler, batches: list[tuple[np.ndarray, int]]) -> None:
    """Under DDP, every process but the first: sample its share of each round the first process decides,
    until it decides none."""
    while batches:
        sample_batches(trainer, sampler, batches)
        batches = trainer.strategy.broadcast(None, src=0)


def next_round(draws: list[ClassDraws]) -> list[tuple[np.ndarray, int]]:
    """(seeds, label) of the next batch of every class that still draws."""
    return [(seeds, draw.label) for draw in draws if len(seeds := draw.next_seeds())]


# --- 3. write ------------------------------------------------------------------------------------


def write_class(plan_row, draw: ClassDraws, out: Path) -> pd.DataFrame:
    """Select among a class's passing candidates and write the selected images to `out/<folder>/`, read
    back from the class's scratch file a chunk at a time.

    Returns one manifest row per candidate judged; `accepted` marks the selected ones.
    """
    label, planned = plan_row.label, plan_row.planned
    if not draw.verdicts:
        return pd.DataFrame(columns=GATE_COLUMNS + ["path", "sha256", "seed"]).assign(
            label=label, class_name=plan_row.class_name, split="train", origin="synthetic"
        )
    rows, passing_rows, chosen = draw.select(planned)
    rows.loc[passing_rows, "accepted"] = False
    rows.loc[passing_rows, "reject_reason"] = "not_selected"
    rows["path"], rows["sha256"] = "", ""
    (out / plan_row.folder).mkdir(exist_ok=True)
    for number, (row, image) in enumerate(zip(passing_rows[chosen], draw.passing.each(chosen))):
        png = encode_png(image)
        path = f"{plan_row.folder}/{number:05d}.png"
        (out / path).write_bytes(png)
        rows.loc[row, ["accepted", "reject_reason", "path", "sha256"]] = [True, "", path, sha256_bytes(png)]
    return rows.assign(label=label, class_name=plan_row.class_name, split="train", origin="synthetic")


def with_outcome(
    plan: pd.DataFrame, manifests: dict[int, pd.DataFrame], gates: list[ClassGate], cfg: GenerateParams
) -> pd.DataFrame:
    """The plan with what each class got (generated, candidates, acceptance_rate, short) and its gate's
    thresholds. A short class stops the stage (`on_short: fail`) or is named in a warning (`fill`)."""
    outcome = []
    for row in plan.itertuples():
        rows = manifests[row.label]
        accepted, candidates = int(rows["accepted"].sum()), len(rows)
        outcome.append((accepted, candidates, round(accepted / candidates, 6) if candidates else None))
        if accepted < row.planned:
            message = (
                f"class {row.class_name!r}: {accepted} of {row.planned} images passed the gate after "
                f"{candidates} candidates (acceptance rate {accepted / candidates:.1%}, "
                f"generate.max_attempts {cfg.max_attempts})"
            )
            if cfg.on_short == "fail":
                raise GateError(
                    message + "; lower generate.label_pass_rate, train the GAN longer, raise "
                    "generate.max_attempts or set generate.on_short: fill"
                )
            print(
                f"generate: warning: {message}; kept what passed, and its real images fill the rest of "
                "the class (generate.on_short: fill)",
                file=sys.stderr,
            )
    plan = plan.copy()
    plan["generated"], plan["candidates"], plan["acceptance_rate"] = zip(*outcome)
    plan["short"] = plan["planned"] - plan["generated"]
    plan["label_threshold"] = [round(g.label_threshold, 6) for g in gates]
    plan["copy_threshold"] = [round(g.copy_threshold, 6) for g in gates]
    return plan


def synthetic_summary(
    plan: pd.DataFrame, stats: PreparedStats, models: Models, accelerator: str, params: Params
) -> SyntheticSummary:
    """summary.json: what was made, by which networks and params, on what."""
    return SyntheticSummary(
        generator_hash=models.generator_hash,
        judge_hash=nets.weights_hash(models.judge),
        image_size=stats.image_size,
        channels=stats.channels,
        class_names=stats.class_names,
        generated=int(plan["generated"].sum()),
        candidates=int(plan["candidates"].sum()),
        short=int(plan["short"].sum()),
        label_thresholds=dict(zip(plan["class_name"], plan["label_threshold"])),
        copy_thresholds=dict(zip(plan["class_name"], plan["copy_threshold"])),
        planned={row.class_name: int(row.planned) for row in plan.itertuples()},
        short_classes={
            row.class_name: {"passed": int(row.generated), "planned": int(row.planned)}
            for row in plan.itertuples()
            if row.short > 0
        },
        environment={
            "judge": models.judge_meta.environment,
            "train": models.generator_meta.environment,
            "generate": environment(accelerator),
        },
        # where the images were sampled does not change them, so the hardware is no part of their record
        params={
            "seed": params.seed,
            "generate": {
                key: value for key, value in params_to_dict(params.generate).items() if key not in HARDWARE_PARAMS
            },
        },
    )
