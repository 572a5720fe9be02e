"""constraints.txt, the lock that `make test`, `make repro` and .ci/run install from (`make lock` writes it with
uv): one file for every Python that pyproject.toml admits, its environment markers choosing each one's pins.

Without the network: for each admitted Python, every dependency is pinned once and inside its range, with
hashes; this environment holds exactly the pins of its Python; requires-python, ruff's target, the README
and the lock agree. With the network (marker `network`, `make test-network`, run by .ci/run): the package
index has, for each admitted Python, a release of every pin that Python would install."""

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import version

import pytest
from packaging.markers import Marker, default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

LOCK = REPO_ROOT / "constraints.txt"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
REQUIRES_PYTHON = SpecifierSet(PYPROJECT["project"]["requires-python"])
PLATFORMS = {  # the marker values of the platforms torch publishes wheels for
    "linux-x86_64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"},
    "linux-aarch64": {"sys_platform": "linux", "platform_system": "Linux", "platform_machine": "aarch64"},
    "macos-arm64": {"sys_platform": "darwin", "platform_system": "Darwin", "platform_machine": "arm64"},
    "windows-amd64": {
        "sys_platform": "win32",
        "platform_system": "Windows",
        "platform_machine": "AMD64",
        "os_name": "nt",
    },
}


@dataclass(frozen=True)
class Pin:
    name: str  # canonical
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]


def read_lock(text: str) -> list[Pin]:
    """The pins of a requirements file as uv writes it: `name==version ; marker \\` then `--hash=...` lines."""
    pins = []
    for entry in re.sub(r"\\\n", " ", text).splitlines():
        requirement_text, *hashes = re.sub(r"#.*", "", entry).split("--hash=")
        if requirement_text.strip():
            requirement = Requirement(requirement_text)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", entry
            hashes = tuple(h.strip() for h in hashes)
            pins.append(Pin(canonicalize_name(requirement.name), specifier.version, requirement.marker, hashes))
    return pins


def admitted_pythons() -> list[str]:
    """Every Python minor version that requires-python admits, lowest first."""
    assert any(s.operator in ("<", "<=") for s in REQUIRES_PYTHON), "requires-python needs an upper bound"
    return [f"3.{minor}" for minor in range(30) if REQUIRES_PYTHON.contains(f"3.{minor}.0")]


def environment(python: str, platform: dict[str, str] | None = None) -> dict[str, str]:
    """Marker values for CPython `python` on `platform` (this machine's where None)."""
    return default_environment() | {"python_version": python, "python_full_version": f"{python}.0"} | (platform or {})


def pins_for(pins: list[Pin], env: dict[str, str]) -> dict[str, Pin]:
    """name -> pin: what pip installs from the lock in `env`; a name chosen twice fails."""
    chosen = [pin for pin in pins if pin.marker is None or pin.marker.evaluate(env)]
    names = [pin.name for pin in chosen]
    assert len(names) == len(set(names)), f"pinned twice for Python {env['python_version']}: {sorted(names)}"
    return {pin.name: pin for pin in chosen}


def project_requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    return [Requirement(line) for line in project["dependencies"] + project["optional-dependencies"]["dev"]]


def lock_pins() -> list[Pin]:
    return read_lock(LOCK.read_text(encoding="utf-8"))


def test_reading_the_lock_applies_its_markers():
    text = 'numpy==2.2.6 ; python_full_version < "3.11" \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n'
    text += "numpy==2.4.6 ; python_full_version >= '3.11' \\\n    --hash=sha256:cc\n    # via x\ntorch==2.14.1\n"
    pins = read_lock(text)
    assert [(p.name, p.version, p.hashes) for p in pins] == [
        ("numpy", "2.2.6", ("sha256:aa", "sha256:bb")),
        ("numpy", "2.4.6", ("sha256:cc",)),
        ("torch", "2.14.1", ()),
    ]
    assert pins_for(pins, environment("3.10"))["numpy"].version == "2.2.6"
    assert pins_for(pins, environment("3.13"))["numpy"].version == "2.4.6"
    with pytest.raises(AssertionError, match="pinned twice"):
        pins_for(read_lock("numpy==2.2.6\nnumpy==2.4.6 ; python_version >= '3.11'\n"), environment("3.12"))


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("python", admitted_pythons())
def test_every_dependency_is_pinned_once_inside_its_range_with_hashes(python, platform):
    env = environment(python, PLATFORMS[platform])
    pinned = pins_for(lock_pins(), env)
    for requirement in project_requirements():
        if requirement.marker and not requirement.marker.evaluate(env):
            continue
        pin = pinned.get(canonicalize_name(requirement.name))
        assert pin, f"{requirement.name} is not in constraints.txt for Python {python} on {platform}: run make lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (requirement, pin.version)
    assert all(pin.hashes for pin in pinned.values()), "pip installs with --require-hashes: run make lock"


@pytest.mark.parametrize("python", admitted_pythons())
def test_the_lock_holds_the_torch_this_project_is_made_with_on_every_python(python):
    pinned = pins_for(lock_pins(), environment(python, PLATFORMS["linux-x86_64"]))
    assert pinned["torch"].version == "2.14.1" and pinned["torchvision"].version == "0.29.1"


def test_this_environment_holds_the_pins_of_its_python():
    """What `make install` put here: every pin the lock gives this Python, at its version."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python in admitted_pythons()
    pinned = pins_for(lock_pins(), default_environment())
    wrong = {name: (pin.version, version(name)) for name, pin in pinned.items() if version(name) != pin.version}
    assert not wrong, f"installed versions differ from the lock (pin, installed): {wrong}; run make install"


def test_requires_python_ruff_the_readme_and_the_lock_agree():
    pythons = admitted_pythons()
    lowest, highest = pythons[0], pythons[-1]
    header = LOCK.read_text(encoding="utf-8").split("\n", 2)[1]
    assert f"--python-version {lowest} " in header, f"constraints.txt is not written from Python {lowest} up"
    assert PYPROJECT["tool"]["ruff"]["target-version"] == "py" + lowest.replace(".", "")
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Requirements: Python {lowest} to {highest}," in readme


# --- with the network: a release of every pin for each admitted Python ------------------------------


def pip_dry_run(requirements: str, tmp_path, *options: str) -> subprocess.CompletedProcess:
    """`pip install --dry-run` of `requirements` (one pin a line, with its hashes), not looking at what is
    installed and not following dependencies: the lock already names them all."""
    (tmp_path / "requirements.txt").write_text(requirements, encoding="utf-8")
    command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps"]
    command += ["--disable-pip-version-check", "--require-hashes", "-r", str(tmp_path / "requirements.txt")]
    command += ["--target", str(tmp_path / "target"), *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


def requirements_text(pins: dict[str, Pin]) -> str:
    return "".join(f"{p.name}=={p.version} " + " ".join(f"--hash={h}" for h in p.hashes) + "\n" for p in pins.values())


def pip_error(result: subprocess.CompletedProcess) -> str:
    return "\n".join(line for line in result.stderr.splitlines() if "is ignored: it is neither" not in line)[-3000:]


@pytest.fixture(scope="module")
def source_only(tmp_path_factory) -> list[str]:
    """The pins that pip installs here from a source archive (as `make install` did): pure-Python releases
    that publish no wheel at all. Everywhere else a wheel is required, so that no check builds anything."""
    tmp_path = tmp_path_factory.mktemp("this-python")
    here = pins_for(lock_pins(), default_environment())
    result = pip_dry_run(requirements_text(here), tmp_path, "--report", str(tmp_path / "report.json"))
    assert result.returncode == 0, pip_error(result)
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))["install"]
    return sorted(
        canonicalize_name(item["metadata"]["name"])
        for item in report
        if not item["download_info"]["url"].endswith(".whl")
    )


@pytest.mark.network
@pytest.mark.parametrize("python", admitted_pythons())
def test_the_index_has_a_release_of_every_pin_for_each_admitted_python(python, source_only, tmp_path):
    """For Python `python` on this platform: pip, told that Python (--python-version), finds every pin the
    markers give it, as a wheel built for it (or the source archive of a pure-Python release), with a hash
    that the lock holds. The markers are evaluated here, since pip evaluates them for the Python it runs on."""
    pinned = pins_for(lock_pins(), environment(python))
    options = ["--python-version", python, "--only-binary", ":all:"]
    options += ["--no-binary", ",".join(source_only)] if source_only else []
    result = pip_dry_run(requirements_text(pinned), tmp_path, *options)
    assert result.returncode == 0, f"Python {python}, {len(pinned)} pins:\n{pip_error(result)}"
