"""The generator families and the options of the train stage beside the defaults: the Wasserstein loss
with gradient penalty, adaptive augmentation, the style-based generator and BigGAN's conditioning.

The default (resnet, per-class tables, hinge, fixed DiffAugment) is tested in test_train.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import FAST_GAN, TINY_PARAMS, copy_outputs, merge_dicts, run_cli, tiny_params, write_params
from pipeline.config import params_to_dict
from pipeline.errors import ConfigError
from pipeline.gan.augment import diff_augment
from pipeline.gan.losses import adapted_probability, discriminator_loss, generator_loss, gradient_penalty
from pipeline.gan.training import ConditionalGAN
from pipeline.nets import build_generator, load_generator
from pipeline.paths import Paths
from pipeline.stages import generate, judge, train

FAST = {**FAST_GAN, "max_epochs": 1}
# every generator family and conditioning, each with the loss or augmentation it is most often paired with
FAMILIES = {
    "stylegan2": {"arch": "stylegan2"},
    "biggan": {"g_conditioning": "biggan"},
    "wgan-gp": {"loss": "wgan-gp", "d_steps": 2},
    "ada": {"ada_target": 0.6, "diffaugment": ["color", "translation", "cutout"], "ada_interval": 1},
}
GENERATORS = [("resnet", "tables"), ("resnet", "biggan"), ("stylegan2", "tables")]


# --- the Wasserstein loss with gradient penalty ---------------------------------------------------


def test_the_gradient_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared():
    torch.manual_seed(0)
    weight = torch.randn(1, 3, 8, 8)
    real, fake = torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    # the gradient of x -> <w, x> is w wherever it is taken, so the penalty is exactly (||w|| - 1)^2
    penalty = gradient_penalty(lambda x: (x * weight).sum(dim=(1, 2, 3)), real, fake)
    assert penalty.item() == pytest.approx((weight.norm().item() - 1.0) ** 2, rel=1e-5)
    unit = weight / weight.norm()
    assert gradient_penalty(lambda x: (x * unit).sum(dim=(1, 2, 3)), real, fake).item() == pytest.approx(0.0, abs=1e-6)


def test_the_gradient_penalty_reaches_the_critics_weights():
    critic = nn.Linear(12, 1)
    penalty = gradient_penalty(
        lambda x: critic(x.flatten(1)).squeeze(1), torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    )
    penalty.backward()
    assert critic.weight.grad is not None and critic.weight.grad.abs().sum() > 0  # double backward


def test_the_wasserstein_losses_are_the_critics_mean_differences():
    real, fake = torch.tensor([2.0, 4.0]), torch.tensor([-1.0, 0.0])
    assert discriminator_loss("wgan-gp", real, fake).item() == pytest.approx(-0.5 - 3.0)
    assert generator_loss("wgan-gp", fake).item() == pytest.approx(0.5)


# --- adaptive augmentation ------------------------------------------------------------------------


def test_the_adaptive_probability_rises_when_the_discriminator_is_sure_of_real_images_and_falls_when_not():
    step = 128 / (20 * 1000)
    assert adapted_probability(0.5, real_sign_mean=0.9, target=0.6, images=128, ada_kimg=20) == pytest.approx(
        0.5 + step
    )
    assert adapted_probability(0.5, real_sign_mean=0.2, target=0.6, images=128, ada_kimg=20) == pytest.approx(
        0.5 - step
    )
    assert adapted_probability(0.0, real_sign_mean=-1.0, target=0.6, images=128, ada_kimg=20) == 0.0
    assert adapted_probability(0.999, real_sign_mean=1.0, target=0.6, images=128, ada_kimg=20) == 1.0


class ConstantCritic(nn.Module):
    """A discriminator that says `value` of every image (and still passes gradients)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, x, y, conditioning=1.0):
        return self.value + 0.0 * x.sum(dim=(1, 2, 3))


@pytest.mark.parametrize("critic_says, rises", [(3.0, True), (-3.0, False)])
def test_the_module_adapts_its_augmentation_probability_to_the_discriminators_signs(critic_says, rises):
    cfg = tiny_params(train={**FAST, **FAMILIES["ada"], "ada_interval": 2}).train
    module = ConditionalGAN(params_to_dict(cfg), 16, 1, num_classes=3)
    module.discriminator = ConstantCritic(critic_says)
    module.augment_probability.fill_(0.5)
    real, labels = torch.rand(8, 1, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(4):
        module.discriminator_step_loss(real, labels, 1.0)
        module.end_batch()
    # two adjustments of 16 images each
    expected = 0.5 + (1 if rises else -1) * 2 * 16 / (cfg.ada_kimg * 1000)
    assert float(module.augment_probability) == pytest.approx(expected)


def test_augmentations_apply_to_each_image_with_the_probability():
    images = torch.ones(4000, 1, 8, 8)
    torch.manual_seed(0)
    blanked = (diff_augment(images, ["cutout"], probability=0.3) == 0).flatten(1).any(dim=1)
    assert blanked.float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(diff_augment(images, ["cutout"], probability=0.0), images)
    assert (diff_augment(images, ["cutout"], probability=1.0) == 0).flatten(1).any(dim=1).all()


# --- the generators -------------------------------------------------------------------------------


@pytest.mark.parametrize("arch, conditioning", GENERATORS)
@pytest.mark.parametrize("size", [16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_each_generator_makes_images_of_the_size_channels_and_range_asked(arch, conditioning, size, channels):
    torch.manual_seed(0)
    generator = build_generator(arch, size, channels, num_classes=4, z_dim=16, width=4, conditioning=conditioning)
    for mode in (generator.train, generator.eval):
        mode()
        with torch.no_grad():
            images = generator(torch.randn(3, 16), torch.tensor([0, 1, 3]))
        assert images.shape == (3, channels, size, size)
        assert images.abs().max() <= 1 and images.std() > 0


@pytest.mark.parametrize("arch, conditioning", GENERATORS)
def test_the_label_changes_a_conditional_generators_image_unless_conditioning_is_off(arch, conditioning):
    torch.manual_seed(0)
    generator = build_generator(arch, 32, 1, num_classes=4, z_dim=16, width=4, conditioning=conditioning).eval()
    for name, parameter in generator.named_parameters():  # the class tables start at zero: give them values
        if name.endswith(("gain.weight", "bias.weight", "shared.weight")):
            nn.init.normal_(parameter, std=0.5)
    z = torch.randn(1, 16).repeat(2, 1)
    with torch.no_grad():
        two_classes = generator(z, torch.tensor([0, 2]))
        unconditional = generator(z, torch.tensor([0, 2]), conditioning=0.0)
    assert (two_classes[0] - two_classes[1]).abs().max() > 1e-3
    assert torch.allclose(unconditional[0], unconditional[1], atol=1e-6)


def test_a_style_based_generator_in_eval_mode_depends_only_on_its_latent_and_label():
    torch.manual_seed(0)
    generator = build_generator("stylegan2", 16, 1, num_classes=4, z_dim=16, width=4).eval()
    z = torch.randn(3, 16)
    with torch.no_grad():
        alone = generator(z[:1], torch.tensor([1]))
        in_a_batch = generator(z, torch.tensor([1, 0, 3]))
    assert torch.allclose(alone[0], in_a_batch[0], atol=1e-5)  # fixed noise buffers, no batch statistics


def test_biggan_conditioning_is_an_option_of_the_resnet_generator_only():
    with pytest.raises(ConfigError, match=r"train\.g_conditioning biggan is an option of train\.arch resnet"):
        tiny_params(train={"arch": "stylegan2", "g_conditioning": "biggan"})


# --- the train stage with each family: it trains, resumes, and generate samples from it -------------


@pytest.fixture(scope="module")
def judged_tiny(prepared_tiny, tmp_path_factory) -> Path:
    """The tiny prepared data and its judge (read-only for tests: copy it)."""
    paths = Paths(copy_outputs(prepared_tiny, tmp_path_factory.mktemp("judged_tiny")))
    judge.run(tiny_params(), paths)
    return paths.root


@pytest.mark.parametrize("family", FAMILIES)
def test_the_train_stage_trains_each_family_resumes_it_and_generate_samples_from_it(
    family, judged_tiny, tmp_path, monkeypatch, capsys
):
    paths = Paths(copy_outputs(judged_tiny, tmp_path))
    params = tiny_params(
        train={**FAST, **FAMILIES[family], "max_epochs": 2},
        generate={"check_label": False, "check_memorisation": False, "target": 40},
    )
    per_epoch = 498 // 32

    def crash_at_end_of_second_epoch(self):  # Lightning calls it before the epoch's checkpoint is saved
        if self.current_epoch == 1:
            raise RuntimeError("simulated crash")

    monkeypatch.setattr(ConditionalGAN, "on_train_epoch_end", crash_at_end_of_second_epoch, raising=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run(params, paths)
    crashed = torch.load(paths.gan_resume / train.CHECKPOINT, map_location="cpu", weights_only=True)
    assert crashed["epoch"] == 0 and int(crashed["state_dict"]["batches_seen"]) == per_epoch
    monkeypatch.delattr(ConditionalGAN, "on_train_epoch_end")
    train.run(params, paths)
    assert f"resuming from {paths.gan_resume / train.CHECKPOINT}" in capsys.readouterr().out

    generator, meta = load_generator(paths.gan)
    assert type(generator).__name__ == ("StyleGenerator" if family == "stylegan2" else "Generator")
    assert meta.details.batches == 2 * per_epoch
    state = torch.load(paths.gan_resume / train.CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    if family == "ada":  # the probability is part of the checkpoint, and logged as a training curve
        assert float(state["augment_probability"]) > 0
        assert len((paths.train_report / "plots/metrics/augment_probability.tsv").read_text().splitlines()) > 2
    if family == "wgan-gp":
        assert (paths.train_report / "plots/metrics/gradient_penalty.tsv").is_file()

    generate.run(params, paths)  # the saved generator is rebuilt by its architecture and samples
    assert len(list(paths.synthetic.rglob("*.png"))) > 0


def test_the_style_based_generator_with_the_wasserstein_loss_and_adaptive_augmentation_trains_under_ddp(workspace):
    # no adjustment of the augmentation probability within the epoch: the signs of D's outputs add up
    options = {**FAMILIES["stylegan2"], **FAMILIES["wgan-gp"], **FAMILIES["ada"], "ada_interval": 100}
    write_params(
        workspace.root,
        merge_dicts(TINY_PARAMS, {"train": {**FAST, **options, "accelerator": "cpu", "devices": 2, "strategy": "ddp"}}),
    )
    result = run_cli("train", cwd=workspace.root)
    assert result.returncode == 0, result.stderr[-3000:]
    generator, meta = load_generator(workspace.gan)
    assert type(generator).__name__ == "StyleGenerator"
    assert meta.details.batches == 498 // (32 * 2)  # each process trains on half of every epoch
    state = torch.load(workspace.gan_resume / train.CHECKPOINT, map_location="cpu", weights_only=True)["state_dict"]
    # the signs of both processes' real images, summed over the processes, so both adapt the same probability
    assert float(state["real_signs"][1]) == meta.details.batches * 32 * 2
