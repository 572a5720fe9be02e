"""What a downstream classifier costs per update, against the default small CNN: how long evaluate's
arms will take with `evaluate.classifier.arch` set to it.

Each network is built as evaluate builds it (`nets.build_classifier`, for the image size, channels
and classes of data/prepared) and trained for `--updates` timed updates of `batch_size` random
images after an untimed warm-up: the training step of `pipeline/classifier_training.py` (channels-last input,
cross-entropy, AdamW), in this process, with the threads it is given (evaluate gives each worker
one). The networks alternate for several rounds, so a busy machine slows them alike. Prints, per
network, `seconds_per_update[<arch>]=<s>` and `cost_vs_small_cnn[<arch>]=<x>`:

    OMP_NUM_THREADS=1 python benchmarks/classifier_cost.py [--root .] [--arch small_cnn,resnet18] [--updates 5]

after `python -m pipeline prepare` (from the repository root, or `--root` a workspace).

A training takes at most `evaluate.classifier.max_steps` updates (early stopping on val usually ends
it sooner), plus a scoring of the val split every `eval_every` updates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline import nets
from pipeline.classifier_training import channels_last
from pipeline.config import load_params
from pipeline.contracts import PreparedStats
from pipeline.nets.classifiers import SMALL_CNN
from pipeline.paths import Paths


def seconds_per_update(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, updates: int) -> float:
    optimizer = torch.optim.AdamW(net.parameters())
    started = time.perf_counter()
    for _ in range(updates):
        loss = F.cross_entropy(net(channels_last(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - started) / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=".")
    parser.add_argument("--arch", default=f"{SMALL_CNN},resnet18", help="comma-separated networks")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per network and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    paths = Paths(Path(args.root))
    recipe = load_params(paths.root / "params.yaml").evaluate.classifier
    stats = PreparedStats.read(paths.prepared)
    size, channels, num_classes = stats.image_size, stats.channels, stats.num_classes
    generator = torch.Generator().manual_seed(0)
    shape = (recipe.batch_size, channels, size, size)
    images = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (recipe.batch_size,), generator=generator)
    archs = args.arch.split(",")
    networks = {
        arch: nets.build_classifier(arch, size, channels, num_classes, recipe.width).to(
            memory_format=torch.channels_last
        )
        for arch in archs
    }
    for net in networks.values():
        seconds_per_update(net, images, labels, 1)  # warm-up: the first update allocates
    timed = {arch: [] for arch in archs}
    for _ in range(args.rounds):
        for arch, net in networks.items():
            timed[arch].append(seconds_per_update(net, images, labels, args.updates))
    print(
        f"{size}x{size}, {channels} channel(s), {num_classes} classes, batch {recipe.batch_size}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    reference = min(timed[SMALL_CNN]) if SMALL_CNN in timed else None
    for arch in archs:
        best = min(timed[arch])  # the least disturbed round
        print(f"seconds_per_update[{arch}]={best:.4f}")
        if reference:
            print(f"cost_vs_small_cnn[{arch}]={best / reference:.1f}")


if __name__ == "__main__":
    main()
