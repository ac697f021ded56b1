"""Build the course notebooks from their readable sources: ``notebooks/src/NN_name.py`` → ``notebooks/NN_name.ipynb``.

A source is a Python file in the "percent" format: a line ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell whose lines are comments (``# `` is stripped). Lines before
the first marker are a note for editors and are not copied. The notebooks are written without
outputs or execution counts, so git diffs stay readable; ``tests/test_notebooks.py`` checks that
every notebook matches its source.

    .venv/bin/python notebooks/build.py          # rebuild every notebook
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
KERNEL = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def _cell(kind: str, lines: list[str]) -> nbformat.NotebookNode:
    while lines and not lines[-1].strip():
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if kind == "markdown":
        text = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in lines)
        return nbformat.v4.new_markdown_cell(text)
    return nbformat.v4.new_code_cell("\n".join(lines))


def notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook of one percent-format source file, without outputs."""
    cells, kind, lines = [], None, []
    for line in source.read_text().splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                cells.append(_cell(kind, lines))
            kind, lines = ("markdown" if "[markdown]" in line else "code"), []
        elif kind is not None:
            lines.append(line)
    if kind is not None:
        cells.append(_cell(kind, lines))
    nb = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNEL, "language_info": {"name": "python"}})
    # Cell ids are random by default; derive them from the position so rebuilding changes nothing.
    for i, cell in enumerate(nb.cells):
        cell.id = f"{source.stem[:2]}-{i:02d}"
    return nb


def target(source: Path) -> Path:
    return HERE / f"{source.stem}.ipynb"


def main() -> int:
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        nbformat.write(notebook(source), target(source))
        print(f"wrote {target(source).relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
