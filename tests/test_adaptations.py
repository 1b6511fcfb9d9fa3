"""A researcher's own experiments, through parameters alone: each notebook runs on a changed
instance or setting in explore mode, to the end, draws every figure it draws by default, and the
change shows in what it records (its parameters, its claims, the data behind its figures)."""

from __future__ import annotations

import pandas as pd
import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, run_notebook

NOTEBOOKS = {p.stem.split("_")[0]: p for p in find_notebooks(REPOSITORY_ROOT / "notebooks")}

FIGURES = {
    "02": {"confidence_radius", "suboptimality_vs_n", "rates", "coverage_dial"},
    "03": {"enhancer_kl_uncertainty", "log_det", "accuracy_vs_comparisons", "eta_sweep",
           "hybrid"},
    "04": {"rso_bias", "acceptance_rates", "reward_vs_kl", "reference_drift", "kl_estimators"},
}


def explore(number, tmp_path, **parameters):
    run = run_notebook(NOTEBOOKS[number], {"profile": "small", "explore": True, **parameters},
                       tmp_path)
    assert run.error is None, run.error
    assert run.results["complete"] and run.results["explore"]
    assert set(run.results["figures"]) == FIGURES[number]
    for name, entry in run.results["figures"].items():
        assert all((run.folder / path).is_file() for path in entry.values()), name
    return run


def data(run, name) -> pd.DataFrame:
    return pd.read_csv(run.folder / run.results["figures"][name]["data"])


@pytest.mark.notebook
def test_notebook_02_on_a_small_zipf_instance(tmp_path):
    run = explore("02", tmp_path, dim=4, num_actions=50, reference="zipf", num_seeds=12)
    recorded = run.results["parameters"]
    assert (recorded["dim"], recorded["num_actions"], recorded["reference"]) == (4, 50, "zipf")
    assert data(run, "suboptimality_vs_n")["seed"].nunique() == 12
    assert run.results["claims"], "the claims were recorded"


@pytest.mark.notebook
def test_notebook_03_with_another_batch_size(tmp_path):
    run = explore("03", tmp_path, batch_size=30, num_batches=4)
    comparisons = sorted(data(run, "accuracy_vs_comparisons")["comparisons"].unique())
    assert comparisons == [0, 30, 60, 90, 120]


@pytest.mark.notebook
def test_notebook_04_with_random_pairs_only(tmp_path):
    run = explore("04", tmp_path, selectors=["random"])
    iterative = [c for c in run.results["claims"] if c["id"].startswith("iterative_beats")]
    assert len(iterative) == 4 and all("random pairs" in c["statement"] for c in iterative)
    methods = set(data(run, "reward_vs_kl")["method"])
    assert "iterative, random" in methods and "iterative, max_min" not in methods
