"""On a CUDA GPU: the train stage runs a few steps of the GAN in bf16-mixed (the default and every
generator family and loss), and the generate stage samples its candidates through Lightning's predict
loop on the GPU. Skipped where there is no GPU."""

from __future__ import annotations

import shutil

import pytest
import torch

from conftest import FAST_GAN, tiny_params
from pipeline import nets
from pipeline.contracts import GATE_COLUMNS, MANIFEST_COLUMNS, ModelMeta, PreparedStats
from pipeline.hardware import trainer_settings
from pipeline.io import read_manifest, sha256_file
from pipeline.paths import Paths
from pipeline.stages import generate, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

# One device: more would start DDP, which launches this command (pytest) again in other processes.
ON_GPU = {"accelerator": "gpu", "devices": 1}
TRAIN = {**ON_GPU, **FAST_GAN, "max_epochs": 1}


@pytest.fixture(scope="module")
def trained_on_gpu(prepared_tiny, tmp_path_factory) -> Paths:
    """The train stage on the GPU (an epoch of the tiny data: 15 batches), and an untrained judge."""
    paths = Paths(tmp_path_factory.mktemp("gpu"))
    shutil.copytree(prepared_tiny / "data", paths.root / "data")
    train.run(tiny_params(train=TRAIN), paths)
    stats = PreparedStats.read(paths.prepared)
    judge = nets.SmallCNN(stats.image_size, stats.channels, stats.num_classes, width=4)
    nets.save_model(
        judge.eval(), paths.judge, "judge", ModelMeta(stats.image_size, stats.channels, stats.class_names, width=4)
    )
    return paths


def test_the_train_stage_trains_in_bf16_mixed_on_the_gpu(trained_on_gpu):
    assert (
        trainer_settings(tiny_params(train=TRAIN).train, torch.cuda.device_count(), "train")["precision"]
        == "bf16-mixed"
    )
    generator, meta = nets.load_generator(trained_on_gpu.gan)
    assert meta.details.batches == 498 // 32
    assert all(torch.isfinite(v).all() for v in generator.state_dict().values() if v.is_floating_point())
    checkpoint = torch.load(trained_on_gpu.gan / "last.ckpt", map_location="cpu", weights_only=True)
    assert int(checkpoint["state_dict"]["batches_seen"]) == 498 // 32
    assert (trained_on_gpu.samples / "samples.png").is_file()


def test_the_generate_stage_samples_on_the_gpu_reproducibly(trained_on_gpu):
    # batches of 16: several rounds of the predict loop
    params = tiny_params(generate={**ON_GPU, "check_label": False, "target": 40, "batch_size": 16})
    generate.run(params, trained_on_gpu)
    manifest = read_manifest(trained_on_gpu.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    accepted = manifest[manifest["accepted"]]
    assert len(accepted) == 92  # the tiny plan for target 40
    hashes = [sha256_file(trained_on_gpu.synthetic / path) for path in accepted["path"]]
    assert hashes == accepted["sha256"].tolist()
    generate.run(params, trained_on_gpu)
    again = read_manifest(trained_on_gpu.synthetic / "manifest.csv", MANIFEST_COLUMNS + GATE_COLUMNS)
    assert again.equals(manifest)  # the same images (their hashes), verdicts and seeds


@pytest.mark.parametrize("family", ["stylegan2", "biggan", "wgan-gp", "ada"])
def test_each_generator_family_trains_in_bf16_mixed_on_the_gpu(family, prepared_tiny, tmp_path):
    from test_gan_families import FAMILIES

    paths = Paths(tmp_path)
    shutil.copytree(prepared_tiny / "data", paths.root / "data")
    train.run(tiny_params(train={**TRAIN, **FAMILIES[family]}), paths)
    generator, meta = nets.load_generator(paths.gan)
    assert meta.details.batches == 498 // 32
    assert all(torch.isfinite(v).all() for v in generator.state_dict().values() if v.is_floating_point())
    with torch.no_grad():
        images = generator.cuda()(torch.randn(4, TRAIN["z_dim"], device="cuda"), torch.arange(4, device="cuda"))
    assert images.shape[0] == 4 and torch.isfinite(images).all() and images.abs().max() <= 1
