"""The notebooks' own checks: every .ipynb has its jupytext .py pair with the same cells.

(Running the notebooks is nbval's job: pytest collects notebooks/*.ipynb in numeric order.)
"""

from pathlib import Path

import jupytext
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
PAIRS = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _cells(nb):
    return [(c.cell_type, c.source.strip(), sorted(c.metadata.get("tags", []))) for c in nb.cells]


def test_the_course_has_its_numbered_notebooks_each_paired():
    assert [p[:2] for p in PAIRS] == ["01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13"]
    assert sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.py")) == PAIRS


@pytest.mark.parametrize("name", PAIRS)
def test_notebook_and_its_py_pair_have_the_same_cells(name):
    ipynb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    py = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert _cells(ipynb) == _cells(py), f"{name}.ipynb and {name}.py differ: run `jupytext --update --to ipynb notebooks/{name}.py`"


@pytest.mark.parametrize("name", PAIRS)
def test_notebook_stays_small(name):
    assert (NOTEBOOKS / f"{name}.ipynb").stat().st_size < 1024 * 1024
