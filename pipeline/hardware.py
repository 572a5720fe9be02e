"""The hardware params of a section as Lightning Trainer arguments.

Train and generate hand their `accelerator`, `devices`, `num_nodes`, `precision` and `strategy` to
the same `trainer_settings`, so a GPU, several GPUs (DDP) or several nodes apply to training and
sampling alike. The classifier trainings (the judge, evaluate's arms) take `accelerator` and
`precision` the same way (`classifier_settings`): each trains on one device, and evaluate spreads its
runs over the GPUs itself.
"""

from __future__ import annotations

from pytorch_lightning.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

from pipeline.config import ClassifierParams, GenerateParams, TrainParams
from pipeline.errors import ConfigError

HARDWARE_PARAMS = ("accelerator", "devices", "num_nodes", "precision", "strategy")  # what trainer_settings reads


def trainer_settings(cfg: TrainParams | GenerateParams, gpu_count: int, section: str, launched: int = 1) -> dict:
    """Trainer arguments from a section's hardware params: "auto" means all GPUs when there are any
    (bf16-mixed where precision is auto), else one CPU process in 32-bit; more than one process means DDP.

    `launched`: the processes a cluster launcher started for the run (`launched_processes`). They must
    be the params' processes: one process in the params would make each of them train alone and write
    the outputs, and Lightning checks other numbers only with a traceback."""
    accelerator, precision = placement(cfg, gpu_count, section)
    on_gpu = accelerator == "gpu"
    devices = cfg.devices if cfg.devices != "auto" else (gpu_count if on_gpu else 1)
    if launched > 1 and launched != devices * cfg.num_nodes:
        raise ConfigError(
            f"{section}.num_nodes {cfg.num_nodes} x {section}.devices {devices} make {devices * cfg.num_nodes} "
            f"process(es), but the launcher (torchrun or srun) started {launched}; set {section}.num_nodes to its "
            f"nodes and {section}.devices to its processes per node"
        )
    distributed = cfg.strategy == "ddp" or devices > 1 or cfg.num_nodes > 1
    return {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": cfg.num_nodes,
        "precision": precision,
        # One DDP module holds G and D, and each optimiser step leaves the other network's
        # parameters without gradients, so DDP must look for unused parameters (sampling has no DDP
        # module: only the processes).
        "strategy": "ddp_find_unused_parameters_true" if distributed else "auto",
    }


def classifier_settings(recipe: ClassifierParams, gpu_count: int, section: str) -> dict:
    """Trainer arguments of one classifier training (`section`: where the recipe is in params.yaml): one
    device, the GPU when `accelerator` allows and there is one."""
    accelerator, precision = placement(recipe, gpu_count, section)
    return {"accelerator": accelerator, "devices": 1, "precision": precision}


def placement(cfg: TrainParams | GenerateParams | ClassifierParams, gpu_count: int, section: str) -> tuple[str, str]:
    """(accelerator, precision) of a section: "auto" is the GPU when there is one, in bf16-mixed where
    precision is auto, else the CPU in 32-bit. A GPU asked for where there is none is a one-line error."""
    if cfg.accelerator in ("gpu", "cuda") and gpu_count == 0:
        raise ConfigError(f"{section}.accelerator is {cfg.accelerator} but no GPU is available (use auto or cpu)")
    on_gpu = gpu_count > 0 and cfg.accelerator in ("auto", "gpu", "cuda")
    accelerator = "gpu" if on_gpu else ("cpu" if cfg.accelerator == "auto" else cfg.accelerator)
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true")
    return accelerator, precision


def launched_processes() -> int:
    """The processes that torchrun or SLURM's srun started for this run, as Lightning reads them from
    the environment; 1 without a launcher (Lightning's own DDP launcher included)."""
    for environment in (TorchElasticEnvironment, SLURMEnvironment):
        if environment.detect():
            return environment().world_size()
    return 1
