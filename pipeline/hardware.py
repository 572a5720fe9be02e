"""The hardware params of a section (train, generate) as Lightning Trainer arguments.

Train and generate hand their `accelerator`, `devices`, `num_nodes`, `precision` and `strategy` to
the same `trainer_settings`, so a GPU, several GPUs (DDP) or several nodes apply to training and
sampling alike.
"""

from __future__ import annotations

from pipeline.config import GenerateParams, TrainParams
from pipeline.errors import ConfigError

HARDWARE_PARAMS = ("accelerator", "devices", "num_nodes", "precision", "strategy")  # what trainer_settings reads


def trainer_settings(cfg: TrainParams | GenerateParams, gpu_count: int, section: str) -> dict:
    """Trainer arguments from a section's hardware params: "auto" means all GPUs when there are any
    (bf16-mixed where precision is auto), else one CPU process in 32-bit; more than one process means DDP."""
    if cfg.accelerator in ("gpu", "cuda") and gpu_count == 0:
        raise ConfigError(f"{section}.accelerator is {cfg.accelerator} but no GPU is available (use auto or cpu)")
    on_gpu = gpu_count > 0 and cfg.accelerator in ("auto", "gpu", "cuda")
    devices = cfg.devices if cfg.devices != "auto" else (gpu_count if on_gpu else 1)
    distributed = cfg.strategy == "ddp" or devices > 1 or cfg.num_nodes > 1
    return {
        "accelerator": "gpu" if on_gpu else ("cpu" if cfg.accelerator == "auto" else cfg.accelerator),
        "devices": devices,
        "num_nodes": cfg.num_nodes,
        "precision": cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if on_gpu else "32-true"),
        # One DDP module holds G and D, and each optimiser step leaves the other network's
        # parameters without gradients, so DDP must look for unused parameters (sampling has no DDP
        # module: only the processes).
        "strategy": "ddp_find_unused_parameters_true" if distributed else "auto",
    }
