"""dvc.yaml against the code: every stage depends on all the code it runs, stages are peers over a
library (no stage imports another), and only evaluate may read the oracle's holdout images."""

from __future__ import annotations

import ast

import pytest
import yaml

from conftest import REPO_ROOT

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def source_files(module: str) -> list:
    """The files of a module of the package: `pipeline/<module>.py`, or every file of `pipeline/<module>/`."""
    folder = REPO_ROOT / "pipeline" / module
    return sorted(folder.glob("*.py")) if folder.is_dir() else [REPO_ROOT / "pipeline" / f"{module}.py"]


def dependency(module: str) -> str:
    """How dvc.yaml names a module: its file, or its folder for a subpackage."""
    return f"pipeline/{module}" if (REPO_ROOT / "pipeline" / module).is_dir() else f"pipeline/{module}.py"


def package_imports(module: str) -> set[str]:
    """The package's modules that `pipeline/<module>` imports (`from pipeline.x import`, `from pipeline import x`)."""
    found = set()
    for node in (node for path in source_files(module) for node in ast.walk(ast.parse(path.read_text()))):
        if isinstance(node, ast.ImportFrom) and node.module == "pipeline":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("pipeline.")}
    return found - {module}


def modules_run_by(stage: str) -> set[str]:
    """The package's source files a stage runs (`python -m pipeline <stage>`): its imports, transitively."""
    seen, todo = set(), ["__init__", "__main__", stage]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += package_imports(module)
    return {dependency(module) for module in seen}


def test_stage_names_are_the_dispatchers_and_dvc_calls_them():
    from pipeline.__main__ import STAGES as dispatched

    assert tuple(DVC_YAML) == STAGES == dispatched
    assert all(DVC_YAML[stage]["cmd"] == f"python -m pipeline {stage}" for stage in STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_all_the_code_it_runs(stage):
    deps = set(DVC_YAML[stage]["deps"])
    assert modules_run_by(stage) <= deps
    assert not {d for d in deps if d.startswith("pipeline/") and d != "pipeline/templates"} - modules_run_by(stage)


def test_the_report_depends_on_its_template_and_the_source_is_prepares_dependency():
    assert "pipeline/templates" in DVC_YAML["report"]["deps"]
    assert "${data.source}" in DVC_YAML["prepare"]["deps"]


def test_only_evaluate_reads_the_holdout():
    readers = [stage for stage, spec in DVC_YAML.items() if "data/holdout" in spec.get("deps", [])]
    assert readers == ["evaluate"] and "data/holdout" in DVC_YAML["prepare"]["outs"]


def test_stages_are_peers_over_the_library():
    for stage in STAGES:
        assert not modules_run_by(stage) & {f"pipeline/{other}.py" for other in STAGES if other != stage}, stage


def test_every_module_says_what_it_is_for_and_stays_short():
    for path in sorted((REPO_ROOT / "pipeline").rglob("*.py")):
        source = path.read_text()
        assert ast.get_docstring(ast.parse(source)), path.name
        assert len(source.splitlines()) < 400, path.name
