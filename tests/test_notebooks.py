"""Every notebook, executed by papermill at the small profile into a temporary run folder, with
its claims, figures and outputs read back. The runs are the session's (``small_runs``), which
the book tests render too, so each notebook runs once per session."""

from __future__ import annotations

import re

import nbformat
import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, run_notebook

NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")
WARNING = re.compile(r"\b\w+Warning\b")


def check(run, notebook):
    assert run.error is None, f"{notebook.name} failed: {run.error}"
    return run


def output_texts(output) -> list[str]:
    """The text an output shows: a stream's text, or the plain text of a result or display."""
    if output["output_type"] == "stream":
        return [output["text"]]
    return [output.get("data", {}).get("text/plain", ""), output.get("evalue", "")]


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_claims_hold(notebook, small_runs):
    run = check(small_runs(notebook), notebook)
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
def test_notebook_01_is_deterministic(tmp_path, small_runs):
    """Same seed, same results file, figure data and figures, byte for byte."""
    notebook = next(p for p in NOTEBOOKS if p.stem.startswith("01_"))
    first = check(small_runs(notebook), notebook).folder
    second = check(run_notebook(notebook, {"profile": "small"}, tmp_path), notebook).folder

    def results(folder):
        return {path.relative_to(folder): path.read_bytes() for kind in ("results", "figures")
                for path in sorted((folder / kind).rglob("*")) if path.is_file()}

    assert results(first) == results(second)
