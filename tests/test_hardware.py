"""Where the classifier trainings run, with the GPUs mocked away (the machine's own GPUs are not asked):
the judge's and evaluate's hardware params, and how evaluate spreads its runs over GPUs or CPU cores."""

import pytest

from pipeline.arms import worker_gpus
from pipeline.config import ClassifierParams, EvaluateParams
from pipeline.errors import ConfigError
from pipeline.hardware import classifier_settings


def test_auto_trains_a_classifier_on_a_gpu_in_bf16_when_there_is_one_else_on_the_cpu_in_32_bit():
    auto = ClassifierParams()
    assert classifier_settings(auto, 2, "judge") == {"accelerator": "gpu", "devices": 1, "precision": "bf16-mixed"}
    assert classifier_settings(auto, 0, "judge") == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    on_cpu = ClassifierParams(accelerator="cpu")
    assert classifier_settings(on_cpu, 2, "judge") == {"accelerator": "cpu", "devices": 1, "precision": "32-true"}
    in_32 = ClassifierParams(precision="32-true")
    assert classifier_settings(in_32, 1, "evaluate.classifier")["precision"] == "32-true"


@pytest.mark.parametrize("section", ["judge", "evaluate.classifier"])
def test_a_gpu_asked_for_where_there_is_none_is_one_line_naming_the_key(section):
    with pytest.raises(
        ConfigError, match=rf"^{section}\.accelerator is gpu but no GPU is available \(use auto or cpu\)$"
    ):
        classifier_settings(ClassifierParams(accelerator="gpu"), 0, section)
    assert classifier_settings(ClassifierParams(accelerator="gpu"), 1, section)["accelerator"] == "gpu"


def test_evaluate_runs_runs_per_gpu_workers_on_each_gpu_or_one_per_core():
    cfg = EvaluateParams(runs_per_gpu=3)
    assert worker_gpus(cfg, jobs=30, gpus=2, cores=16) == [0, 1, 0, 1, 0, 1]
    assert worker_gpus(cfg, jobs=4, gpus=2, cores=16) == [0, 1, 0, 1]  # never more workers than runs
    assert worker_gpus(cfg, jobs=30, gpus=0, cores=2) == [None, None]
    assert worker_gpus(EvaluateParams(workers=3), jobs=30, gpus=2, cores=16) == [0, 1, 0]
    assert worker_gpus(EvaluateParams(workers=5), jobs=30, gpus=0, cores=2) == [None] * 5
