"""Every notebook, executed by papermill at the small profile into a temporary run folder, with
its claims, figures and outputs read back."""

from __future__ import annotations

import re

import nbformat
import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, run_notebook

NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")
WARNING = re.compile(r"\b\w+Warning\b")


def execute(notebook, runs_dir):
    run = run_notebook(notebook, {"profile": "small"}, runs_dir)
    assert run.error is None, f"{notebook.name} failed: {run.error}"
    return run


def output_texts(output) -> list[str]:
    """The text an output shows: a stream's text, or the plain text of a result or display."""
    if output["output_type"] == "stream":
        return [output["text"]]
    return [output.get("data", {}).get("text/plain", ""), output.get("evalue", "")]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_claims_hold(notebook, tmp_path):
    run = execute(notebook, tmp_path)
    results = run.results
    assert results["notebook"] == notebook.stem and results["profile"] == "small"
    assert results["complete"] is True
    assert results["claims"], "the notebook recorded no claim"
    failing = [claim["id"] for claim in results["claims"] if not claim["holds"]]
    assert not failing, f"claims that do not hold: {failing}"

    figures = run.folder / "figures" / notebook.stem
    data = run.folder / "results" / notebook.stem
    assert list(figures.glob("*.png")) and list(figures.glob("*.pdf")), "no figure written"
    assert list(data.glob("*.csv")), "no figure data or table written"
    for entry in results["figures"].values():
        assert all((run.folder / relative).is_file() for relative in entry.values())

    executed = nbformat.read(run.folder / notebook.name, as_version=4)
    for index, cell in enumerate(executed.cells):
        if cell.cell_type != "code":
            continue
        streams = [o for o in cell.outputs if o["output_type"] == "stream"]
        assert all(o["name"] == "stdout" for o in streams), f"cell {index} wrote to stderr"
        warned = [text for o in cell.outputs for text in output_texts(o) if WARNING.search(text)]
        assert not warned, f"cell {index} shows a warning: {warned}"


@pytest.mark.notebook
def test_notebook_01_is_deterministic(tmp_path):
    """Same seed, same results file and figure data, byte for byte."""
    notebook = next(p for p in NOTEBOOKS if p.stem.startswith("01_"))
    first, second = (execute(notebook, tmp_path / name).folder for name in ("first", "second"))

    def results(folder):
        return {path.relative_to(folder): path.read_bytes()
                for path in sorted((folder / "results").rglob("*")) if path.is_file()}

    assert results(first) == results(second)
