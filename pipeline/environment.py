"""What a stage computed with: Python, the key packages, the device and the thread count.

The stages that make models or images (judge, train, generate) record this beside what they write,
and merge collects it in the dataset card, so two versions of the data can be compared by what made
them. The same versions (constraints.txt), the same CPU kind (its model and the kernels PyTorch
picks for it: `cpu_capability`) and the same thread count give the same bytes; other machines give
the same figures within the spread of realisations, not the same bytes.
"""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path

import torch

# the installed packages whose versions can change a number the pipeline writes
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pillow",
    "albumentations",
    "opencv-python-headless",
)


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what the platform says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment(accelerator: str) -> dict:
    """The environment of this process, for a stage that computed on `accelerator` (Lightning's name:
    "cpu", "gpu", "cuda" or "mps")."""
    device = "gpu" if accelerator in ("gpu", "cuda") else accelerator
    return {
        "python": platform.python_version(),
        "packages": {name: package_version(name) for name in KEY_PACKAGES},
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "gpu" else cpu_name(),
        "cuda": torch.version.cuda if device == "gpu" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD kernels PyTorch dispatches to
        "threads": torch.get_num_threads(),
    }
