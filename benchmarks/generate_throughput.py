"""How fast the generate stage makes images: about 10,000 of 32x32 sampled, gated and written as PNG.

    python benchmarks/generate_throughput.py            # on all CPU cores torch sees
    taskset -c 0,1 python benchmarks/generate_throughput.py

Runs in a temporary folder: prepares the default dataset (params.yaml's source; not timed), saves an
untrained generator and judge of the default sizes (speed does not depend on the weights), and
times `generate.run` with the gate on. An untrained judge is sure of nothing, so the label check
is computed and recorded for every image but not applied (`check_label: false`); the memorisation
check is applied as usual.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pipeline import nets
from pipeline.config import load_params, params_from_dict
from pipeline.contracts import ModelMeta, PreparedStats, SyntheticSummary
from pipeline.paths import Paths
from pipeline.stages import generate, prepare

REPO_ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="synthetic images to make (about)")
    args = parser.parse_args()

    defaults = load_params(REPO_ROOT / "params.yaml")
    with tempfile.TemporaryDirectory() as folder:
        paths = Paths(Path(folder))
        source = str(REPO_ROOT / defaults.data.source)
        prepare.run(params_from_dict({"seed": 0, "data": {"source": source}}), paths)
        stats = PreparedStats.read(paths.prepared)
        real = stats.split_counts("train")
        target = math.ceil((args.images + sum(real)) / len(real))  # every class raised to this count

        train, judge = defaults.train, defaults.judge
        size, channels = stats.image_size, stats.channels
        generator = nets.Generator(size, channels, stats.num_classes, train.z_dim, train.g_width)
        nets.save_model(
            generator.eval(),
            paths.gan,
            "generator_ema",
            ModelMeta(size, channels, stats.class_names, train.g_width, z_dim=train.z_dim),
        )
        classifier = nets.SmallCNN(size, channels, stats.num_classes, judge.width)
        nets.save_model(
            classifier.eval(), paths.judge, "judge", ModelMeta(size, channels, stats.class_names, judge.width)
        )

        params = params_from_dict(
            {"seed": 0, "data": {"source": source}, "generate": {"target": target, "check_label": False}}
        )
        start, start_cpu = time.perf_counter(), time.process_time()
        generate.run(params, paths)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        made = SyntheticSummary.read(paths.synthetic).generated
        # CPU time next to wall time: on a machine shared with other jobs the wall time says little
        print(
            f"\n{made} images of {size}x{size} generated, gated and written in {seconds:.1f} s "
            f"({cpu_seconds:.1f} s of CPU) on {torch.get_num_threads()} thread(s): {made / seconds:.0f} images/s "
            f"(generator width {train.g_width}, judge width {judge.width}, batch {params.generate.batch_size})"
        )


if __name__ == "__main__":
    main()
