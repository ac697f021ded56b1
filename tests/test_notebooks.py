"""The course notebooks: each runs top to bottom within its time budget, and git holds them clean."""

import importlib.util
import os
import re
import time

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import ROOT

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
# The budget for one notebook on 2 CPU cores.
BUDGET_SECONDS = 90


def _build_module():
    spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOK_DIR / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_the_course_has_notebooks():
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_carries_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs; rebuild with notebooks/build.py or clear outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_matches_its_source(path):
    build = _build_module()
    source = build.SOURCES / f"{path.stem}.py"
    assert source.exists(), f"{path.name} has no source {source.relative_to(ROOT)}"
    built = build.notebook(source)
    committed = nbformat.read(path, as_version=4)
    assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in built.cells], (
        f"{path.name} differs from {source.name}: run `python notebooks/build.py`"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_follows_the_course_format(path):
    """Parameter cell, ltlib figures saved with one call, exercises with separate solutions."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(_code(nb))
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert re.search(r"^PRESET = \"digits-[a-z-]*quick\"", code, re.M), "the parameter cell must set PRESET to a quick digits preset"
    assert "plots.save(" in code
    # Figures come from ltlib.plots, not from plotly directly.
    assert not re.search(r"^\s*(import plotly|from plotly)", code, re.M)
    assert len(re.findall(r"^#+ .*Try it", markdown, re.M | re.I)) >= 1
    assert 2 <= len(re.findall(r"^\*\*Exercise \d", markdown, re.M)) <= 4
    solutions = NOTEBOOK_DIR / "solutions" / f"{path.stem}.md"
    assert solutions.exists(), f"missing {solutions.relative_to(ROOT)}"
    assert len(re.findall(r"^## Exercise \d", solutions.read_text(), re.M)) == len(re.findall(r"^\*\*Exercise \d", markdown, re.M))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch, capsys):
    """Execute the notebook in a fresh kernel (cwd and LTLIB_HOME temporary) within the budget."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.chdir(tmp_path)
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=BUDGET_SECONDS, resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{path.name}: {seconds:.1f} s")
    assert seconds <= BUDGET_SECONDS, f"{path.name} took {seconds:.0f} s; the budget is {BUDGET_SECONDS} s"
    assert list((tmp_path / "figures").glob("*.pdf")), "the notebook saved no PDF figure"


def test_readme_course_lists_every_notebook():
    course = re.search(r"## Course(.*?)\n## ", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "jupyter lab notebooks/" in course
    for path in NOTEBOOKS:
        assert f"`{path.stem}`" in course, f"README's Course section does not list {path.stem}"
