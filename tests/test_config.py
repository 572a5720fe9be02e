"""params.yaml is loaded into typed, validated objects; mistakes are one-line errors naming the key."""

import pytest
import yaml

from conftest import REPO_ROOT, TINY_PARAMS, run_cli, write_params
from pipeline.config import Params, load_params, params_from_dict, params_to_dict
from pipeline.errors import ConfigError


def test_repository_params_load_and_are_the_code_defaults():
    params = load_params(REPO_ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source == "data/builtin/mnist5k.yaml"
    assert params.data.imbalance.profile == "auto" and params.data.imbalance.ratio == 100
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    assert list(raw) == ["seed", "data", "judge", "train", "generate", "merge", "evaluate", "report"]
    # params.yaml spells out every key with its default, so that what a user reads there is what runs
    defaults = params_to_dict(Params())
    assert {k: v for k, v in params_to_dict(params).items() if k != "judge"} == {
        k: v for k, v in defaults.items() if k != "judge"
    }

    def keys(tree: dict, prefix: str = "") -> set[str]:
        return {f"{prefix}{k}" for k in tree} | {
            key for k, v in tree.items() if isinstance(v, dict) for key in keys(v, f"{prefix}{k}.")
        }

    assert keys(raw) == keys(defaults)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"train": {"max_epochs": -3}}, "params.yaml: train.max_epochs must be >= 1, got -3"),
        ({"train": {"max_epoch": 3}}, "params.yaml: train.max_epoch is not a known key"),
        ({"sed": 1}, "params.yaml: sed is not a known key"),
        ({"data": {"image_size": "big"}}, "params.yaml: data.image_size must be an integer, got 'big'"),
        ({"data": {"image_size": 32.0}}, "params.yaml: data.image_size must be an integer, got 32.0"),
        ({"data": {"strict": "yes"}}, "params.yaml: data.strict must be true or false, got 'yes'"),
        ({"data": {"channels": "cmyk"}}, "params.yaml: data.channels must be one of auto, grayscale, rgb, got 'cmyk'"),
        ({"data": {"imbalance": {"ratio": 0.5}}}, "params.yaml: data.imbalance.ratio must be >= 1.0, got 0.5"),
        ({"data": {"imbalance": "long"}}, "params.yaml: data.imbalance must be a mapping, got 'long'"),
        ({"data": {"test_fraction": 1}}, "params.yaml: data.test_fraction must be < 1.0, got 1.0"),
        ({"data": {"max_per_class": 1}}, "params.yaml: data.max_per_class must be >= 2, got 1"),
        (
            {"evaluate": {"classifier": {"patience": 0}}},
            "params.yaml: evaluate.classifier.patience must be >= 1, got 0",
        ),
        ({"evaluate": {"workers": "many"}}, "params.yaml: evaluate.workers must be auto or an integer, got 'many'"),
        ({"data": {"workers": "all"}}, "params.yaml: data.workers must be auto or an integer, got 'all'"),
        ({"data": {"workers": 0}}, "params.yaml: data.workers must be >= 1, got 0"),
        ({"train": {"max_batches": 0}}, "params.yaml: train.max_batches must be >= 1, got 0"),
        (
            {"train": {"memory_budget_mb": 2048}},
            "params.yaml: train.memory_budget_mb was replaced by nothing: the train split is read from a scratch file",
        ),
        ({"generate": {"label_pass_rate": 0}}, "params.yaml: generate.label_pass_rate must be > 0.0, got 0.0"),
        ({"report": {"seeds": 3}}, "params.yaml: report.seeds is not a known key"),
        (
            {"generate": {"allow_short": True}},
            "params.yaml: generate.allow_short was replaced by generate.on_short: "
            "fill (keep what passed and warn) or fail (stop)",
        ),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw)
    assert str(err.value).startswith(message)


def test_defaults_fill_missing_keys_and_values_are_converted():
    params = params_from_dict({"data": {"imbalance": {"ratio": 10}}})
    assert params.data.imbalance.ratio == 10.0 and isinstance(params.data.imbalance.ratio, float)
    assert params.data.imbalance.profile == "auto"
    assert params.data.image_size == 32


def test_cli_reports_a_bad_param_in_one_line_without_traceback(tmp_path):
    write_params(tmp_path, {**TINY_PARAMS, "data": {**TINY_PARAMS["data"], "image_size": -1}})
    result = run_cli("prepare", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: params.yaml: data.image_size must be one of 16, 32, 64, 128, got -1"
    assert not (tmp_path / "data" / "prepared").exists()


def test_cli_reports_invalid_yaml_and_a_missing_file(tmp_path):
    assert "params.yaml: file not found" in run_cli("prepare", cwd=tmp_path).stderr
    (tmp_path / "params.yaml").write_text("data: [unclosed\n")
    result = run_cli("prepare", cwd=tmp_path)
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
