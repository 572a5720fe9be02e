"""dvc.yaml against the code: every stage depends on exactly the code it runs, stages are peers over a
library (no stage imports another, the library imports no stage), and only evaluate may read the
oracle's holdout images."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

STAGES = ("prepare", "judge", "train", "generate", "merge", "evaluate", "report")
DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PACKAGE = REPO_ROOT / "pipeline"


def module_file(module: str) -> Path | None:
    """The file of a module of the package, named by its dotted path below `pipeline` ("" is the package
    itself, "nets" a subpackage, "stages.train" a module): None when there is no such module."""
    path = PACKAGE.joinpath(*module.split(".")) if module else PACKAGE
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def package_imports(module: str) -> set[str]:
    """The package's modules that importing `module` runs directly: each module it imports from the package
    (`from pipeline.x.y import name`, `from pipeline.x import y`, `import pipeline.x`) and their parent
    packages, whose `__init__.py` Python runs first."""
    found = set()
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            base = node.module.removeprefix("pipeline").lstrip(".")
            found.add(base)
            found |= {f"{base}.{a.name}".lstrip(".") for a in node.names if module_file(f"{base}.{a.name}".lstrip("."))}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("pipeline.") for a in node.names if a.name.startswith("pipeline.")}
    return with_parents(found) - {module}


def with_parents(modules: set[str]) -> set[str]:
    """The modules and the packages above them, the package itself ("") included."""
    return {".".join(name.split(".")[:i]) for name in modules for i in range(name.count(".") + 2)}


def modules_run_by(stage: str) -> set[str]:
    """The package's modules a stage runs (`python -m pipeline <stage>`): the dispatcher, the stage's module
    (which the dispatcher imports by name) and their imports, transitively."""
    from pipeline.__main__ import STAGES as dispatched

    seen, todo = set(), list(with_parents({"__main__", dispatched[stage].removeprefix("pipeline.")}))
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += package_imports(module)
    return seen


def files_run_by(stage: str) -> set[str]:
    return {str(module_file(module).relative_to(REPO_ROOT)) for module in modules_run_by(stage)}


def code_dependencies(stage: str) -> set[str]:
    """The source files a stage's dvc.yaml deps name: a file, or every file of a folder."""
    files = set()
    for dep in DVC_YAML[stage]["deps"]:
        path = REPO_ROOT / dep
        if dep.startswith("pipeline/") and dep != "pipeline/templates":
            found = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            files |= {str(p.relative_to(REPO_ROOT)) for p in found}
    return files


def library_modules() -> list[str]:
    """Every module of the package but the stages and the dispatcher, by dotted name."""
    names = [".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in sorted(PACKAGE.rglob("*.py"))]
    return [
        n.removesuffix(".__init__").removesuffix("__init__")
        for n in names
        if n.split(".")[0] not in ("stages", "__main__")
    ]


def test_stage_names_are_the_dispatchers_and_dvc_calls_them():
    from pipeline.__main__ import STAGES as dispatched

    assert tuple(DVC_YAML) == STAGES == tuple(dispatched)
    assert all(dispatched[stage] == f"pipeline.stages.{stage}" for stage in STAGES)
    assert all(DVC_YAML[stage]["cmd"] == f"python -m pipeline {stage}" for stage in STAGES)


def test_the_stages_folder_holds_the_stages_and_nothing_else():
    assert {p.name for p in (PACKAGE / "stages").iterdir() if p.name != "__pycache__"} == {
        "__init__.py",
        *(f"{stage}.py" for stage in STAGES),
    }


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_exactly_the_code_it_runs(stage):
    # a folder may be named only when the stage runs every module in it: otherwise an edit to a module
    # the stage never runs would rerun it
    assert code_dependencies(stage) == files_run_by(stage)


def test_generate_runs_no_training_code_and_train_no_sampling_code():
    generate, train = files_run_by("generate"), files_run_by("train")
    # neither the GAN's training (its module, losses, augmentations) nor the classifier recipe
    assert not {f for f in generate if f.startswith("pipeline/gan/") or f == "pipeline/classifier_training.py"}
    assert "pipeline/sampler.py" not in train and "pipeline/hardware.py" in generate & train


def test_the_report_depends_on_its_template_and_the_source_is_prepares_dependency():
    assert "pipeline/templates" in DVC_YAML["report"]["deps"]
    assert "${data.source}" in DVC_YAML["prepare"]["deps"]


def test_only_evaluate_reads_the_holdout():
    readers = [stage for stage, spec in DVC_YAML.items() if "data/holdout" in spec.get("deps", [])]
    assert readers == ["evaluate"] and "data/holdout" in DVC_YAML["prepare"]["outs"]


def test_stages_are_peers_over_the_library():
    for stage in STAGES:
        assert not modules_run_by(stage) & {f"stages.{other}" for other in STAGES if other != stage}, stage
    for module in library_modules():
        assert not {name for name in package_imports(module) if name.startswith("stages")}, module


def test_every_module_says_what_it_is_for_and_stays_short():
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        assert ast.get_docstring(ast.parse(source)), path.name
        assert len(source.splitlines()) < 400, path.name
