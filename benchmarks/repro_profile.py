"""Where the default rebuild's time goes: each stage's share, then inside train and evaluate where a step's
time goes, and the GAN step's efficiency against the same process's matrix multiplication.

    python benchmarks/repro_profile.py [--root WORKSPACE] [--steps-only] [--bf16]

1. Stages: the seven stages as `python -m pipeline <stage>`, from an empty workspace (a scratch folder
   holding params.yaml as committed, or `--root`), each timed as a whole process (start-up and imports
   included, DVC's own bookkeeping not): wall seconds, CPU seconds (which other work on the machine
   hardly moves) and each stage's share of the CPU seconds.
2. A GAN step (the default train params, one batch of 32, in this process, with the thread count of the
   environment), over `--gan-steps` steps after a warm-up: drawing the batch, the discriminator's and
   the generator's forward, backward and optimiser step, and the EMA update; the step's FLOPs (torch's
   FlopCounterMode) per second as a share of a 1024x1024 matmul's FLOP/s measured in the same process:
   `gan_step_share_of_matmul=<x>`. `--bf16` times the step under bf16 autocast too (the matmul then
   in bf16 as well).
3. A classifier update of evaluate's recipe (the small CNN, batch 64): the augmentation of a drawn batch
   (albumentations, in the training's process), forward + backward + AdamW, one scoring of the val split,
   and Lightning's share: a whole train_classifier of `--classifier-steps` updates minus those parts.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.balancing import class_weights  # noqa: E402
from pipeline.classifier_training import AugmentedBatches, TrainingSet, channels_last, train_classifier  # noqa: E402
from pipeline.config import load_params, params_to_dict  # noqa: E402
from pipeline.contracts import PreparedStats  # noqa: E402
from pipeline.gan.data import TrainImages  # noqa: E402
from pipeline.gan.training import ConditionalGAN  # noqa: E402
from pipeline.manifests import load_split  # noqa: E402
from pipeline.nets import build_classifier, predict_labels  # noqa: E402
from pipeline.paths import Paths  # noqa: E402

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")


def time_stages(workspace: Path) -> dict[str, tuple[float, float]]:
    """(wall seconds, CPU seconds) of each stage. The CPU seconds (user + system of the stage's process
    and the processes it waited for) hardly move with other work on the machine; the wall seconds do."""
    env = os.environ | {"PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}
    seconds = {}
    for stage in STAGES:
        started, cpu_before = time.perf_counter(), children_cpu_seconds()
        subprocess.run(
            [sys.executable, "-m", "pipeline", stage], cwd=workspace, env=env, check=True, capture_output=True
        )
        seconds[stage] = (time.perf_counter() - started, children_cpu_seconds() - cpu_before)
        print(f"{stage}: {seconds[stage][0]:.1f} s, {seconds[stage][1]:.1f} CPU s", flush=True)
    return seconds


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def clock(function, repeats: int) -> float:
    """Seconds per call of `function`, after one untimed call."""
    function()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def matmul_flops_per_second(dtype: torch.dtype, size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / clock(lambda: a @ b, repeats)


def gan_step_parts(workspace: Path, steps: int, bf16: bool) -> tuple[dict[str, float], float]:
    """(seconds per step of each part, FLOPs of one step) of the default GAN on the workspace's train split."""
    params = load_params(workspace / "params.yaml")
    cfg = params.train
    data = TrainImages(Paths(workspace).prepared, cfg.batch_size, cfg.balance, params.seed)
    data.setup("fit")
    module = ConditionalGAN(params_to_dict(cfg), data.image_size, data.channels, data.num_classes)
    opt_g, opt_d = module.configure_optimizers()
    batches = itertools.chain.from_iterable(data.train_dataloader() for _ in itertools.count())
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    images, labels = next(batches)

    def draw():
        nonlocal images, labels
        images, labels = next(batches)

    def discriminator():
        with autocast:
            loss, _ = module.discriminator_step_loss(module.real_images(images), labels, 1.0)
        opt_d.zero_grad(set_to_none=True)
        loss.backward()
        opt_d.step()

    def generator():
        with autocast:
            loss, _ = module.generator_step_loss(labels, 1.0)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        opt_g.step()

    def ema():
        module.generator_ema.update_parameters(module.generator)

    parts = {"draw the batch": draw, "discriminator": discriminator, "generator": generator, "EMA": ema}
    seconds = {name: clock(part, steps) for name, part in parts.items()}
    with FlopCounterMode(display=False) as counter:
        discriminator()
        generator()
    return seconds, counter.get_total_flops()


def classifier_parts(workspace: Path, updates: int) -> dict[str, float]:
    """Seconds of each part of evaluate's classifier training on the workspace's train split (class-balanced)."""
    params = load_params(workspace / "params.yaml")
    recipe = params.evaluate.classifier
    stats = PreparedStats.read(Paths(workspace).prepared)
    images, labels = load_split(Paths(workspace).prepared, stats, "train")
    val = load_split(Paths(workspace).prepared, stats, "val")
    augment = AugmentedBatches(images, labels, params.seed, recipe.augment_group, seed_each_batch=False)
    rng = np.random.default_rng(0)
    drawn = [[(0, int(i)) for i in rng.integers(len(labels), size=recipe.batch_size)] for _ in range(50)]
    net = build_classifier(recipe.arch, stats.image_size, stats.channels, stats.num_classes, recipe.width)
    net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    batch, batch_labels = augment(drawn[0])
    augmenting = iter(itertools.cycle(drawn))

    def update():
        loss = F.cross_entropy(net(channels_last(batch)), batch_labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    per_update = {
        "augmenting the drawn batches": clock(lambda: augment(next(augmenting)), 50),
        "forward, backward and AdamW": clock(update, 50),
    }
    per_scoring = clock(lambda: predict_labels(net, val[0]), 3)
    fixed = dataclasses.replace(recipe, max_steps=updates, patience=updates)  # no early stop: a known length
    data = TrainingSet(images, labels, stats.num_classes, class_weights(labels.numpy(), stats.num_classes))
    started = time.perf_counter()
    train_classifier(data, val, fixed, params.seed)
    whole = time.perf_counter() - started
    totals = {part: value * updates for part, value in per_update.items()}
    totals["scoring the val split"] = per_scoring * (updates // recipe.eval_every)
    totals["Lightning and the rest"] = whole - sum(totals.values())
    return totals | {"whole": whole}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--root", type=Path, help="a workspace whose stages ran (default: run them in a scratch folder)"
    )
    parser.add_argument("--steps-only", action="store_true", help="skip the stage timings (needs --root)")
    parser.add_argument("--bf16", action="store_true", help="also time the GAN step under bf16 autocast")
    parser.add_argument("--gan-steps", type=int, default=30)
    parser.add_argument("--classifier-steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="repro-profile-") as scratch:
        workspace = args.root or Path(scratch)
        if args.root is None:
            shutil.copytree(REPO / "data/builtin", workspace / "data/builtin")
            params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
            (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        if not args.steps_only:
            seconds = time_stages(workspace)
            wall, cpu = (sum(value[i] for value in seconds.values()) for i in (0, 1))
            print("\n| stage | seconds | CPU seconds | share of the CPU seconds |\n|---|---|---|---|")
            for stage, (stage_wall, stage_cpu) in seconds.items():
                print(f"| {stage} | {stage_wall:.1f} | {stage_cpu:.1f} | {stage_cpu / cpu:.0%} |")
            print(f"| all | {wall:.1f} | {cpu:.1f} | |")

        print(f"\nthreads {torch.get_num_threads()}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
        for bf16 in (False, True) if args.bf16 else (False,):
            parts, flops = gan_step_parts(workspace, args.gan_steps, bf16)
            step = sum(parts.values())
            matmul = matmul_flops_per_second(torch.bfloat16 if bf16 else torch.float32)
            name = "bf16 autocast" if bf16 else "fp32"
            print(f"\nGAN step ({name}): {step * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP")
            for part, value in parts.items():
                print(f"  {part}: {value * 1e3:.1f} ms ({value / step:.0%})")
            print(f"  {flops / step / 1e9:.1f} GFLOP/s against a 1024x1024 matmul's {matmul / 1e9:.1f}")
            print(f"gan_step_share_of_matmul[{name}]={flops / step / matmul:.3f}")

        parts = classifier_parts(workspace, args.classifier_steps)
        whole = parts.pop("whole")
        print(f"\nclassifier training of {args.classifier_steps} updates: {whole:.2f} s")
        for part, value in parts.items():
            print(f"  {part}: {value:.2f} s ({value / whole:.0%})")


if __name__ == "__main__":
    main()
