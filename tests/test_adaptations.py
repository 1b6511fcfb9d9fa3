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
    "01": {"mirror_ascent", "eta_limits", "acceptance_rate", "frontier"},
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


def skipped(run) -> set[str]:
    return {entry["id"] for entry in run.results["skipped"]}


@pytest.mark.notebook
def test_notebook_01_with_its_grids_changed(tmp_path):
    run = explore("01", tmp_path, mirror_steps=10, sampling_etas=[0.5], num_samples=500,
                  limit_eta_exponents=[0, 3], frontier_policies=50)
    assert len(data(run, "mirror_ascent")) == 11
    acceptance = data(run, "acceptance_rate")
    assert acceptance[acceptance["kind"] == "measured"]["eta"].tolist() == [0.5]
    assert data(run, "eta_limits")["eta"].tolist() == [1.0, 10.0, 100.0, 1000.0]
    assert skipped(run) == {"small_eta_limit"}  # the grid no longer reaches eta <= 0.1
    assert (data(run, "frontier")["kind"] == "random").sum() == 50 + 12  # + the vertices


@pytest.mark.notebook
def test_notebook_02_on_a_small_zipf_instance(tmp_path):
    run = explore("02", tmp_path, dim=4, num_actions=50, reference="zipf", num_seeds=12,
                  data_sizes=[100, 1000], dial_masses=[0.01, 0.1])
    recorded = run.results["parameters"]
    assert (recorded["dim"], recorded["num_actions"], recorded["reference"]) == (4, 50, "zipf")
    curves = data(run, "suboptimality_vs_n")
    assert curves["seed"].nunique() == 12 and sorted(curves["n"].unique()) == [100, 300, 1000]
    assert sorted(data(run, "coverage_dial")["trap_mass"].unique()) == [0.01, 0.1]
    # one size from rate_min_size on: the rate claims are skipped, with their reason
    assert skipped(run) == {"mle_error_rate", "suboptimality_rate"}


@pytest.mark.notebook
def test_notebook_03_with_another_batch_size(tmp_path):
    run = explore("03", tmp_path, batch_size=30, num_batches=4, sweep_etas=[0.3],
                  baselines=["reference"])
    comparisons = sorted(data(run, "accuracy_vs_comparisons")["comparisons"].unique())
    assert comparisons == [0, 30, 60, 90, 120]
    assert data(run, "eta_sweep")["eta"].unique().tolist() == [0.3]
    baselines = [c for c in run.results["claims"] if c["id"].startswith("fewer_comparisons")]
    assert [c["id"] for c in baselines] == ["fewer_comparisons_than_reference"]
    assert baselines[0]["num_comparisons"] == 1  # the family shrank with the parameter


@pytest.mark.notebook
def test_notebook_04_with_random_pairs_only(tmp_path):
    run = explore("04", tmp_path, selectors=["random"], pool_sizes=[8, 16, 64])
    iterative = [c for c in run.results["claims"] if c["id"].startswith("iterative_beats")]
    assert len(iterative) == 4 and all("random pairs" in c["statement"] for c in iterative)
    methods = set(data(run, "reward_vs_kl")["method"])
    assert "iterative, random" in methods and "iterative, max_min" not in methods
    assert data(run, "rso_bias")["pool"].tolist() == [8, 16, 64]
    shrinks = next(c for c in run.results["claims"] if c["id"] == "rso_deficit_shrinks")
    assert "pool 64 than at pool 16" in shrinks["statement"]
