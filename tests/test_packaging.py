"""The set-up files agree with each other and with README."""

import re
import subprocess
import sys

import pytest
import tomllib
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import ROOT

# conda-forge names that differ from the PyPI ones.
CONDA_TO_PYPI = {"pytorch": "torch", "python-kaleido": "kaleido"}


def _bounds(*groups: str) -> dict[str, SpecifierSet]:
    """PyPI name → every bound pyproject.toml sets on it in these groups ("dependencies" or an extra's name)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds: dict[str, SpecifierSet] = {}
    for group in groups:
        for text in project["dependencies"] if group == "dependencies" else project["optional-dependencies"][group]:
            req = Requirement(text)
            if req.name != "ltlib":  # `all` names the other extras
                bounds[req.name.lower()] = bounds.get(req.name.lower(), SpecifierSet()) & req.specifier
    return bounds


def _pins(file: str) -> dict[str, Version]:
    """PyPI name → pinned version of every package a conda environment file lists (conda and pip sections)."""
    pins: dict[str, Version] = {}
    for dep in yaml.safe_load((ROOT / file).read_text())["dependencies"]:
        for spec, sep in [(d, "==") for d in dep["pip"] if d != "-e ."] if isinstance(dep, dict) else [(dep, "=")]:
            name, _, version = spec.partition(sep)
            if name not in ("python", "pip"):
                assert version and version[0].isdigit(), f"{file}: {spec!r} is not pinned as name{sep}version"
                pins[CONDA_TO_PYPI.get(name, name)] = Version(version)
    return pins


@pytest.mark.parametrize(
    "file, groups", [("environment.yml", ("dependencies", "app", "notebooks")), ("environment-dev.yml", ("dev",))], ids=["user", "dev"]
)
def test_conda_environment_files_pin_pyproject_packages(file, groups):
    """Same packages as pyproject.toml's groups, each pinned to a version that meets pyproject's bounds."""
    bounds, pins = _bounds(*groups), _pins(file)
    assert set(pins) == set(bounds)
    assert {name: str(v) for name, v in pins.items() if v not in bounds[name]} == {}


def test_conda_environment_files_agree_on_shared_packages():
    user, dev = _pins("environment.yml"), _pins("environment-dev.yml")
    assert {name: (user[name], dev[name]) for name in user.keys() & dev.keys() if user[name] != dev[name]} == {}


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quickstart(.*?)\n## ", readme, re.S).group(1)
    commands = [
        line.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", quick, re.S) for line in block.splitlines() if line.strip()
    ]
    assert len(commands) == 2
    test_command = next(c for c in commands if "test" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()


def test_import_ltlib_loads_no_torch_and_losses_still_register_their_extensions():
    probe = (
        "import sys, ltlib, ltlib.registry, ltlib.runs\n"
        "print('torch' in sys.modules)\n"
        "from ltlib import losses\n"
        "print(all(n in losses.available() for n in ('autobalance', 'rescom')))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]
