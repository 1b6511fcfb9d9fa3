"""Every notebook, executed by papermill at the small profile, with its claims read back."""

from __future__ import annotations

import json

import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, run_notebook

NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")


@pytest.fixture
def outputs(tmp_path, monkeypatch):
    """Figures and results go to a temporary folder, never into the repository."""
    folders = {kind: tmp_path / kind for kind in ("figures", "results", "executed")}
    for folder in folders.values():
        folder.mkdir()
    monkeypatch.setenv("GSFH_FIGURES_DIR", str(folders["figures"]))
    monkeypatch.setenv("GSFH_RESULTS_DIR", str(folders["results"]))
    return folders


def execute(notebook, outputs):
    run = run_notebook(notebook, outputs["executed"], {"profile": "small"}, outputs["results"])
    assert run.error is None, f"{notebook.name} failed: {run.error}"
    return run


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_its_claims_hold(notebook, outputs):
    run = execute(notebook, outputs)
    results = run.results
    assert results["notebook"] == notebook.stem
    assert results["profile"] == "small"
    assert results["claims"], "the notebook recorded no claim"
    failing = [claim["id"] for claim in results["claims"] if not claim["holds"]]
    assert not failing, f"claims that do not hold: {failing}"
    for claim in results["claims"]:
        assert set(claim) >= {"id", "statement", "value", "threshold", "comparison", "holds"}
    figures = sorted(p.name for p in outputs["figures"].iterdir())
    prefix = notebook.stem.split("_")[0]
    assert any(name.startswith(prefix) and name.endswith(".png") for name in figures)
    assert any(name.startswith(prefix) and name.endswith(".pdf") for name in figures)


@pytest.mark.notebook
def test_notebook_01_is_deterministic(outputs):
    """Same seed, same results file, byte for byte."""
    notebook = next(p for p in NOTEBOOKS if p.stem.startswith("01_"))
    first = execute(notebook, outputs).results
    second = execute(notebook, outputs).results
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
