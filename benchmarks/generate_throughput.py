"""How fast the generate stage makes images: about 10,000 of 32x32 sampled, gated and written as PNG.

    python benchmarks/generate_throughput.py            # on all CPU cores torch sees
    taskset -c 0,1 python benchmarks/generate_throughput.py

Runs in a temporary folder: prepares the default dataset (mnist5k, 32x32; not timed), saves an
untrained generator and judge of the default sizes (speed does not depend on the weights), and
times `generate.run` with the gate on. An untrained judge is sure of nothing, so the label check
is computed and recorded for every image but not applied (`check_label: false`); the memorisation
check is applied as usual.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline import generate, nets, prepare  # noqa: E402
from pipeline.config import JudgeParams, TrainParams, params_from_dict  # noqa: E402
from pipeline.io import read_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="synthetic images to make (about)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        prepare.run(params_from_dict({"seed": 0}))
        stats = read_json("data/prepared/stats.json")
        class_names = [c["class_name"] for c in stats["classes"]]
        real = [stats["counts"]["train"][name] for name in class_names]
        target = math.ceil((args.images + sum(real)) / len(real))  # every class raised to this count

        train, judge = TrainParams(), JudgeParams()
        size, channels = stats["image_size"], stats["channels"]
        generator = nets.Generator(size, channels, len(class_names), train.z_dim, train.g_width)
        nets.save_model(generator.eval(), nets.GAN_DIR, "generator_ema", {
            "image_size": size, "channels": channels, "class_names": class_names, "z_dim": train.z_dim, "width": train.g_width,
        })
        classifier = nets.Classifier(size, channels, len(class_names), judge.width)
        nets.save_model(classifier.eval(), nets.JUDGE_DIR, "judge", {
            "image_size": size, "channels": channels, "class_names": class_names, "width": judge.width,
        })

        params = params_from_dict({"seed": 0, "generate": {"target": target, "check_label": False}})
        start, start_cpu = time.perf_counter(), time.process_time()
        generate.run(params)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
        made = read_json("data/synthetic/summary.json")["generated"]
        # CPU time next to wall time: on a machine shared with other jobs the wall time says little
        print(f"\n{made} images of {size}x{size} generated, gated and written in {seconds:.1f} s "
              f"({cpu_seconds:.1f} s of CPU) on {torch.get_num_threads()} thread(s): {made / seconds:.0f} images/s "
              f"(generator width {train.g_width}, judge width {judge.width}, batch {params.generate.batch_size})")


if __name__ == "__main__":
    main()
