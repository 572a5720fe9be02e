"""Would training an arm's seeds together as one vectorised model (torch.func) make evaluate faster?

    OMP_NUM_THREADS=1 python benchmarks/vectorised_seeds.py [--seeds 5] [--updates 30] [--blocks 5]
        [--prepared data/prepared] [--profile]

In this process, on one thread (`torch.set_num_threads(1)`), it times an update of evaluate's classifier
recipe (params.yaml's `evaluate.classifier`: the network of its arch and width, batch_size, AdamW with its
lr and weight_decay; channels-last network and input and the loss of ClassifierTraining.training_step)
for `--seeds` networks, each started from its own seed:

- sequential: each network does its own forward, backward and AdamW step on its own batch, one after
  another (what evaluate does today, without Lightning, augmentation and val);
- vectorised: the networks' parameters and buffers stacked (`torch.func.stack_module_state`), one
  `vmap`-ed forward and loss over the seeds' batches, autograd on the sum of the per-seed losses (each
  seed's parameters get its own loss's gradient) and one AdamW step over the stacked parameters (AdamW
  is elementwise, so it is each seed's own step; tests/test_vectorised_seeds.py checks both). Timed with
  each seed's input and convolution weights channels-last, and contiguous.

Each seed's maths is its own training's: vmap runs BatchNorm on each seed's batch alone and updates
each seed's running statistics in its slice of the stacked buffers. What differs: the logit adjustment
of the adjusted arms is left out (a constant added to the logits) in both versions; the images are
random uint8 images of the prepared data's shape (`--prepared`: its stats.json) or of params.yaml's
`data.image_size` with the default source's 1 channel and 10 classes; under vmap Dropout draws each
seed's masks from the same distribution but not the same random numbers (the parameter comparison
below turns Dropout off in both); and vmap computes the convolutions as one grouped convolution, so
the sums round differently.

Timing blocks of `--updates` updates alternate between the versions; each prints the median and
min-max over `--blocks` blocks of milliseconds per update per seed, and `ratio` = vectorised / sequential
(medians). Then the largest absolute difference between the two versions' parameters (and running
statistics) after `--compare-updates` updates from the same start on the same batches, in float32 and
float64: rounding if float64 makes it vanish. Last, the best case for evaluate: if only the forward,
backward and AdamW share of a training changed, by `ratio`, and the Lightning share vanished,

    evaluate_seconds_at_best = EVALUATE_SECONDS * (1 - LIGHTNING_SHARE - COMPUTE_SHARE + COMPUTE_SHARE * ratio)

`--profile` prints each version's most expensive operators (torch.profiler) over a few updates.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.classifier_training import channels_last  # noqa: E402
from pipeline.config import ClassifierParams, load_params  # noqa: E402
from pipeline.contracts import PreparedStats  # noqa: E402
from pipeline.nets import build_classifier, to_unit_range  # noqa: E402

# docs/performance.md, "Where the time goes" (2026-12-07, commits 1ebe4cb and 1da810a): evaluate's wall
# seconds in the default rebuild, and the shares of one of its trainings
EVALUATE_SECONDS = 118.1
COMPUTE_SHARE = 0.63  # forward, backward and AdamW
LIGHTNING_SHARE = 0.25  # Lightning and the rest
DEFAULT_CHANNELS, DEFAULT_CLASSES = 1, 10  # the default source, data/builtin/mnist5k.yaml


def seed_networks(recipe: ClassifierParams, shape: tuple[int, int, int], seeds: int) -> list[nn.Module]:
    """One network of the recipe per seed (0, 1, ...), channels-last, in training mode, as evaluate builds them."""
    image_size, channels, num_classes = shape
    networks = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = build_classifier(recipe.arch, image_size, channels, num_classes, recipe.width)
        networks.append(net.to(memory_format=torch.channels_last).train())
    return networks


def without_dropout(networks: list[nn.Module]) -> list[nn.Module]:
    for net in networks:
        for module in net.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
    return networks


def per_seed_channels_last(stacked: torch.Tensor) -> torch.Tensor:
    """A seeds x N x C x H x W tensor whose every seed's slice is laid out channels-last."""
    return stacked.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)


def seed_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """ClassifierTraining.training_step's loss, less the logit adjustment."""
    return F.cross_entropy(net(images).float(), labels)


class SequentialSeeds:
    """The seeds' networks, each updated on its own batch in turn."""

    def __init__(self, networks: list[nn.Module], recipe: ClassifierParams):
        self.networks = networks
        self.optimizers = [
            torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay) for net in networks
        ]

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        """images: uint8 seeds x batch x C x H x W; labels: seeds x batch."""
        for net, optimizer, seed_images, seed_labels in zip(self.networks, self.optimizers, images, labels):
            dtype = next(net.parameters()).dtype
            loss = seed_loss(net, channels_last(seed_images).to(dtype), seed_labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def state(self) -> dict[str, torch.Tensor]:
        """Every parameter and buffer, stacked over the seeds (as VectorisedSeeds holds them)."""
        states = [net.state_dict() for net in self.networks]
        return {name: torch.stack([state[name] for state in states]) for name in states[0]}


class VectorisedSeeds:
    """The seeds' networks stacked into one: a vmap-ed forward, one backward and one AdamW step for all."""

    def __init__(self, networks: list[nn.Module], recipe: ClassifierParams, layout_channels_last: bool = True):
        params, self.buffers = stack_module_state(networks)
        if layout_channels_last:  # stacking makes them contiguous: give each seed's weights its layout back
            params = {
                name: per_seed_channels_last(p).detach().requires_grad_() if p.dim() == 5 else p
                for name, p in params.items()
            }
        self.params, self.layout_channels_last = params, layout_channels_last
        self.skeleton = copy.deepcopy(networks[0]).to("meta")  # the modules, without storage
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        self.losses = vmap(self.loss_of_one_seed, randomness="different")

    def loss_of_one_seed(self, params, buffers, images, labels) -> torch.Tensor:
        return seed_loss(lambda x: functional_call(self.skeleton, (params, buffers), (x,)), images, labels)

    def update(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        inputs = to_unit_range(images).to(next(iter(self.params.values())).dtype)
        inputs = per_seed_channels_last(inputs) if self.layout_channels_last else inputs.contiguous()
        loss = self.losses(self.params, self.buffers, inputs, labels).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def state(self) -> dict[str, torch.Tensor]:
        return {name: tensor.detach() for name, tensor in (self.params | self.buffers).items()}


def random_batches(count: int, seeds: int, batch: int, shape: tuple[int, int, int], generator: torch.Generator):
    """`count` (uint8 images, labels) pairs, each holding a batch for every seed."""
    image_size, channels, num_classes = shape
    return [
        (
            torch.randint(
                0, 256, (seeds, batch, channels, image_size, image_size), dtype=torch.uint8, generator=generator
            ),
            torch.randint(0, num_classes, (seeds, batch), generator=generator),
        )
        for _ in range(count)
    ]


def largest_differences(recipe, shape, seeds, updates, dtype) -> tuple[float, float, float]:
    """The largest absolute difference between the two versions' parameters, and running statistics, after
    `updates` updates from the same start on the same batches, in `dtype`, Dropout off; and the largest
    change of a parameter over those updates (the sequential version's), for scale."""
    networks = [net.to(dtype) for net in without_dropout(seed_networks(recipe, shape, seeds))]
    sequential = SequentialSeeds(copy.deepcopy(networks), recipe)
    vectorised = VectorisedSeeds(networks, recipe)
    start = sequential.state()
    for images, labels in random_batches(updates, seeds, recipe.batch_size, shape, torch.Generator().manual_seed(1)):
        sequential.update(images, labels)
        vectorised.update(images, labels)
    ours, theirs = sequential.state(), vectorised.state()

    def largest(first, second, parameters: bool) -> float:
        names = [name for name in first if (name in vectorised.params) == parameters]
        return max((first[name].double() - second[name].double()).abs().max().item() for name in names)

    return largest(ours, theirs, True), largest(ours, theirs, False), largest(ours, start, True)


def evaluate_seconds_at_best(ratio: float) -> float:
    """evaluate's seconds if only its trainings' forward, backward and AdamW changed, by `ratio`, and Lightning
    cost nothing: the most the vectorised seeds could give."""
    return EVALUATE_SECONDS * (1 - LIGHTNING_SHARE - COMPUTE_SHARE + COMPUTE_SHARE * ratio)


def image_shape(args: argparse.Namespace, params) -> tuple[tuple[int, int, int], str]:
    if args.prepared:
        stats = PreparedStats.read(args.prepared)
        return (stats.image_size, stats.channels, stats.num_classes), f"{args.prepared}/stats.json"
    shape = (params.data.image_size, DEFAULT_CHANNELS, DEFAULT_CLASSES)
    return shape, "params.yaml's data.image_size, the default source's channels and classes"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--prepared", type=Path, help="a prepared data folder: its image shape and classes")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--updates", type=int, default=30, help="updates per timing block")
    parser.add_argument("--blocks", type=int, default=5, help="timing blocks of each version (at least 3)")
    parser.add_argument("--compare-updates", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="print each version's most expensive operators")
    args = parser.parse_args()
    torch.set_num_threads(1)
    params = load_params(args.params)
    recipe = params.evaluate.classifier
    shape, source = image_shape(args, params)
    print(f"one thread; {args.seeds} seeds of {recipe.arch} (width {recipe.width}), batch {recipe.batch_size}")
    print(f"random uint8 images {shape[0]}x{shape[0]}x{shape[1]}, {shape[2]} classes ({source})")

    versions = {
        "sequential": SequentialSeeds(seed_networks(recipe, shape, args.seeds), recipe),
        "vectorised": VectorisedSeeds(seed_networks(recipe, shape, args.seeds), recipe),
        "vectorised, contiguous": VectorisedSeeds(seed_networks(recipe, shape, args.seeds), recipe, False),
    }
    batches = random_batches(10, args.seeds, recipe.batch_size, shape, torch.Generator().manual_seed(0))
    milliseconds = {name: [] for name in versions}
    for block in range(args.blocks + 1):  # block 0 warms up
        for name, version in versions.items():
            started = time.perf_counter()
            for step in range(args.updates):
                version.update(*batches[step % len(batches)])
            seconds = time.perf_counter() - started
            if block > 0:
                milliseconds[name].append(seconds * 1e3 / args.updates / args.seeds)
    print("\nms per update per seed: median (min-max) of", args.blocks, "blocks of", args.updates, "updates")
    for name, values in milliseconds.items():
        print(f"  {name}: {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
    sequential = statistics.median(milliseconds["sequential"])
    ratio = statistics.median(milliseconds["vectorised"]) / sequential
    contiguous_ratio = statistics.median(milliseconds["vectorised, contiguous"]) / sequential

    if args.profile:
        from torch.profiler import profile

        for name, version in versions.items():
            with profile() as profiled:
                for step in range(5):
                    version.update(*batches[step])
            print(f"\n{name}, 5 updates:")
            print(profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))

    print(f"\nlargest difference after {args.compare_updates} updates from the same start (Dropout off):")
    differences = {}
    for dtype in (torch.float32, torch.float64):
        differences[dtype] = largest_differences(recipe, shape, args.seeds, args.compare_updates, dtype)
        parameters, running, moved = differences[dtype]
        print(f"  {dtype}: parameters {parameters:.3g} (moved up to {moved:.3g}), running statistics {running:.3g}")
    at_best = evaluate_seconds_at_best(ratio)
    print(f"\nevaluate ({EVALUATE_SECONDS} s now) with the vectorised compute and no Lightning: {at_best:.1f} s")

    print(f"\nsequential_ms_per_update_per_seed={sequential:.2f}")
    print(f"vectorised_ms_per_update_per_seed={statistics.median(milliseconds['vectorised']):.2f}")
    print(f"ratio_vectorised_over_sequential={ratio:.2f}")
    print(f"ratio_vectorised_contiguous_over_sequential={contiguous_ratio:.2f}")
    print(f"max_parameter_difference_float32={differences[torch.float32][0]:.3g}")
    print(f"max_parameter_difference_float64={differences[torch.float64][0]:.3g}")
    print(f"evaluate_seconds_at_best={at_best:.1f}")


if __name__ == "__main__":
    main()
