"""Committed notebooks are clean: no outputs, no execution counts, one `parameters` cell."""

from __future__ import annotations

import json

import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks

NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_stripped_and_parameterised(notebook):
    data = json.loads(notebook.read_text())
    code_cells = [cell for cell in data["cells"] if cell["cell_type"] == "code"]
    assert all(not cell.get("outputs") for cell in code_cells), "outputs are committed"
    assert all(cell.get("execution_count") is None for cell in code_cells), "execution counts"
    tagged = [cell for cell in data["cells"] if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0] is code_cells[0], "the parameters cell must be the first code cell"
    source = "".join(tagged[0]["source"])
    assert "profile = " in source and "seed = " in source
    assert data["metadata"]["kernelspec"]["name"] == "python3"


def test_every_notebook_file_is_numbered():
    names = sorted(p.name for p in (REPOSITORY_ROOT / "notebooks").glob("*.ipynb"))
    assert names == [p.name for p in NOTEBOOKS], "notebooks must be named NN_snake_case.ipynb"


def test_code_passes_the_linter():
    """ruff (configured in pyproject.toml) over the package, tests, benchmarks and notebooks."""
    import subprocess
    import sys

    folders = ["gsfh_utils", "tests", "benchmarks", "notebooks"]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *folders],
                            cwd=REPOSITORY_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
