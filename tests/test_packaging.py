"""The set-up files agree with each other and with README."""

import re

import tomllib

from tests.conftest import ROOT


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"]}
    for reqs in project["optional-dependencies"].values():
        wanted |= {_name(r) for r in reqs if not r.startswith("ltlib")}
    lines = (ROOT / "environment.yml").read_text().split("- pip:", 1)[1].splitlines()
    listed = {_name(line.strip()[2:]) for line in lines if line.strip().startswith("- ") and not line.strip().startswith("- -e")}
    assert listed == wanted


def test_ci_runs_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    quick = re.search(r"## Quickstart(.*?)\n## ", readme, re.S).group(1)
    commands = [
        line.strip() for block in re.findall(r"```(?:bash|sh)?\n(.*?)```", quick, re.S) for line in block.splitlines() if line.strip()
    ]
    assert len(commands) == 2
    test_command = next(c for c in commands if "test" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text()
