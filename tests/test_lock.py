"""constraints.txt, the lock that `make test`, `make repro` and .ci/run install from, against the ranges
of pyproject.toml: a dependency added or narrowed without `make lock` fails here, not in a fresh clone."""

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def pins() -> dict[str, str]:
    lines = (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pairs}


def test_every_dependency_is_pinned_inside_its_range():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pinned = pins()
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name} is not in constraints.txt: run make lock"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (requirement, pinned[name])


def test_the_lock_holds_the_torch_this_project_is_made_with():
    assert pins()["torch"] == "2.14.1" and pins()["torchvision"] == "0.29.1"
