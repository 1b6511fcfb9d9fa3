"""A notebook run without a kernel: ``lab.start`` on a plain namespace, as the parameters cell
would leave it, writing into the run folder that ``$GSFH_RUN_DIR`` names."""

from __future__ import annotations

import json
import re
import subprocess

import matplotlib.pyplot as plt
import numpy
import pandas as pd
import pytest
import torch

from gsfh_utils import lab
from gsfh_utils.lab import provenance as provenance_module
from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.notebook import notebook_name, progress
from gsfh_utils.lab.stats import TestResult

NAME = "07_example"


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """The run folder of ``07_example``, as the runner would set it."""
    monkeypatch.setenv("GSFH_NOTEBOOK", NAME)
    monkeypatch.setenv("GSFH_RUN_DIR", str(tmp_path / "run"))
    return tmp_path / "run"


def namespace(**overrides) -> dict:
    """A notebook's globals after its parameters cell and imports."""
    return {"profile": "small", "explore": False, "seed": 3, "level": 0.01, "eta": 0.5,
            "num_seeds": None, "pd": pd, "torch": torch, "_": None, **overrides}


def start(**overrides) -> lab.Notebook:
    return lab.start(namespace(**overrides), small={"num_seeds": 4}, full={"num_seeds": 200})


def results(folder) -> dict:
    return json.loads((folder / "results" / f"{NAME}.json").read_text())


@pytest.fixture
def figure():
    fig, ax = plt.subplots()
    ax.plot([0.0, 1.0, 2.0], [1.0, 0.0, 0.5])
    yield fig
    plt.close(fig)


# --- start, claims, finish ----------------------------------------------------------------------


def test_start_resolves_the_parameters_and_writes_an_incomplete_results_file(folder, capsys):
    nb = start()
    assert vars(nb.params) == {"profile": "small", "explore": False, "seed": 3, "level": 0.01,
                               "eta": 0.5, "num_seeds": 4}
    assert nb.name == NAME and nb.folder == folder
    data = results(folder)
    assert data["notebook"] == NAME and data["profile"] == "small" and data["seed"] == 3
    assert data["explore"] is False and data["complete"] is False
    assert data["parameters"] == vars(nb.params)
    assert data["claims"] == data["skipped"] == [] and data["figures"] == data["tables"] == {}
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{NAME}: profile small, seed 3, claims asserted; outputs in ")
    assert line.endswith(str(folder))


def test_the_full_profile_and_explicit_values(folder):
    nb = start(profile="full", num_seeds=9, eta=2.0)
    assert (nb.params.num_seeds, nb.params.eta) == (9, 2.0)
    assert results(folder)["profile"] == "full"


def test_the_results_file_is_rewritten_after_each_claim_and_completed_by_finish(folder, capsys):
    nb = start()
    nb.claims.identity("first", "s", value=0.5)
    assert [c["id"] for c in results(folder)["claims"]] == ["first"]
    nb.claims.skip("second", "one seed only")
    assert results(folder)["skipped"] == [{"id": "second", "reason": "one seed only",
                                           "family": None}]
    nb.claims.theorem("third", "s", measured=1.0, theory=2.0)
    data = results(folder)
    assert [c["id"] for c in data["claims"]] == ["first", "third"]
    assert data["complete"] is False
    nb.finish()
    assert results(folder)["complete"] is True
    out = capsys.readouterr().out
    assert "third" in out and "Sanity checks" in out  # the two tables


def test_a_failing_claim_stops_the_run_with_its_results_written(folder):
    nb = start()
    with pytest.raises(lab.ClaimFailed, match="broken"):
        nb.claims.theorem("broken", "s", measured=3.0, theory=1.0)
    data = results(folder)
    assert [(c["id"], c["holds"]) for c in data["claims"]] == [("broken", False)]
    assert data["complete"] is False


def test_explore_mode_runs_on_and_finish_lists_the_failures(folder, capsys):
    nb = start(explore=True)
    nb.claims.theorem("broken", "s", measured=3.0, theory=1.0)
    nb.claims.identity("fine", "s", value=0.0)
    nb.claims.finding("noise", "s", test=TestResult("t", 0.5, 0.1, "effect", 10))
    nb.finish()
    data = results(folder)
    assert data["explore"] is True and data["complete"] is True
    assert [c["holds"] for c in data["claims"]] == [False, True, False]
    out = capsys.readouterr().out
    assert "explore mode (failing claims recorded, run continues)" in out
    assert "2 claim(s) do not hold (explore mode): broken, noise" in out


def test_finish_refuses_a_family_with_the_wrong_count(folder):
    nb = start()
    nb.claims.finding("a", "s", test=TestResult("t", 1e-4, 0.9, "effect", 10), comparisons=2,
                      family="methods")
    with pytest.raises(ValueError, match="'methods'"):
        nb.finish()
    assert results(folder)["complete"] is False


def test_the_level_parameter_is_the_level_of_findings(folder):
    nb = start(level=0.05, explore=True)
    nb.claims.finding("f", "s", test=TestResult("t", 0.03, 0.9, "effect", 10))
    assert results(folder)["claims"][0]["holds"] is True


# --- figures and tables -------------------------------------------------------------------------


def test_figure_writes_png_pdf_and_data_and_records_relative_paths(folder, figure):
    nb = start()
    nb.figure(figure, "curve", data={"x": [0.0, 1.0], "y": [1 / 3, 2.0]})
    nb.figure(figure, "bare")
    assert results(folder)["figures"] == {
        "curve": {"png": f"figures/{NAME}/curve.png", "pdf": f"figures/{NAME}/curve.pdf",
                  "data": f"results/{NAME}/curve.csv"},
        "bare": {"png": f"figures/{NAME}/bare.png", "pdf": f"figures/{NAME}/bare.pdf"}}
    assert (folder / "figures" / NAME / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "figures" / NAME / "curve.pdf").read_bytes()[:5] == b"%PDF-"
    assert (folder / "results" / NAME / "curve.csv").read_text() == "x,y\n0,0.3333333\n1,2\n"
    assert sorted(p.name for p in (folder / "results" / NAME).iterdir()) == ["curve.csv"]


def test_table_writes_csv_and_records_its_path(folder):
    nb = start()
    summary = pd.DataFrame({"method": ["a", "b"], "reward": [0.25, 0.5]})
    assert nb.table("summary", summary) is summary
    assert results(folder)["tables"] == {"summary": f"results/{NAME}/summary.csv"}
    assert (folder / "results" / NAME / "summary.csv").read_text() == (
        "method,reward\na,0.25\nb,0.5\n")


def test_a_second_start_clears_the_previous_runs_outputs(folder, figure):
    nb = start()
    nb.figure(figure, "old_figure", data={"x": [1.0]})
    nb.table("old_table", {"x": [1.0]})
    nb.claims.identity("old_claim", "s", value=0.0)
    nb.finish()
    start()
    assert list((folder / "figures" / NAME).iterdir()) == []
    assert list((folder / "results" / NAME).iterdir()) == []
    data = results(folder)
    assert data["claims"] == [] and data["figures"] == {} and data["complete"] is False


# --- provenance, names, progress, generators ----------------------------------------------------


def test_provenance_records_versions_and_the_git_ids_of_the_code(folder):
    start()
    provenance = results(folder)["provenance"]
    versions = provenance["versions"]
    assert versions["torch"] == torch.__version__ and versions["numpy"] == numpy.__version__
    assert versions["pandas"] == pd.__version__
    assert {"python", "gsfh_utils", "scipy", "matplotlib"} <= versions.keys()
    git = provenance["git"]
    assert set(git) == {"objects", "uncommitted_changes"}
    assert set(git["objects"]) == {"gsfh_utils", "pyproject.toml", f"notebooks/{NAME}.ipynb"}
    assert git["objects"][f"notebooks/{NAME}.ipynb"] is None  # no such notebook in git
    tree = subprocess.run(["git", "rev-parse", "HEAD:gsfh_utils"], cwd=REPOSITORY_ROOT,
                          capture_output=True, text=True)
    if tree.returncode == 0:
        assert git["objects"]["gsfh_utils"] == tree.stdout.strip()
        assert re.fullmatch("[0-9a-f]{40}", git["objects"]["pyproject.toml"])


def git(repository, *arguments):
    subprocess.run(["git", "-C", str(repository), "-c", "user.name=t", "-c", "user.email=t@t",
                    *arguments], check=True, capture_output=True)


def test_git_state_ignores_commits_of_results_and_sees_changes_of_the_code(tmp_path,
                                                                          monkeypatch):
    """Committing results leaves the state (and so a rerun's results file) unchanged; changing
    the package or the notebook shows as uncommitted changes, and committing them changes ids."""
    monkeypatch.setattr(provenance_module, "REPOSITORY_ROOT", tmp_path)
    assert provenance_module.git_state("01_x") == {
        "objects": {"gsfh_utils": None, "pyproject.toml": None, "notebooks/01_x.ipynb": None},
        "uncommitted_changes": None}  # not a git checkout
    for path, text in (("gsfh_utils/a.py", "x = 1\n"), ("pyproject.toml", "[project]\n"),
                       ("notebooks/01_x.ipynb", "{}\n"), ("notebooks/02_y.ipynb", "{}\n")):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "code")
    first = provenance_module.git_state("01_x")
    assert first["uncommitted_changes"] is False
    assert all(re.fullmatch("[0-9a-f]{40}", value) for value in first["objects"].values())
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01_x.json").write_text("{}\n")
    (tmp_path / "notebooks" / "02_y.ipynb").write_text("[]\n")  # another notebook
    assert provenance_module.git_state("01_x") == first
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-qm", "results")
    assert provenance_module.git_state("01_x") == first
    (tmp_path / "gsfh_utils" / "a.py").write_text("x = 2\n")
    assert provenance_module.git_state("01_x") == {**first, "uncommitted_changes": True}
    git(tmp_path, "commit", "-qam", "code changed")
    changed = provenance_module.git_state("01_x")
    assert changed["uncommitted_changes"] is False
    assert changed["objects"]["gsfh_utils"] != first["objects"]["gsfh_utils"]
    assert changed["objects"]["notebooks/01_x.ipynb"] == first["objects"]["notebooks/01_x.ipynb"]


@pytest.mark.parametrize(
    ("notebook", "session", "space", "expected"),
    [("07_runner", "/home/me/08_jupyter.ipynb", "/x/09_ipython.ipynb", "07_runner"),
     (None, "/home/me/08_jupyter.ipynb", "/x/09_ipython.ipynb", "08_jupyter"),
     (None, None, "/x/my copy.ipynb", "my copy"),
     ("", "", "notebooks/10_variant.ipynb", "10_variant")],
)
def test_notebook_name_resolution_order(monkeypatch, notebook, session, space, expected):
    for variable, value in (("GSFH_NOTEBOOK", notebook), ("JPY_SESSION_NAME", session)):
        if value is None:
            monkeypatch.delenv(variable, raising=False)
        else:
            monkeypatch.setenv(variable, value)
    assert notebook_name({"__session__": space}) == expected


def test_without_a_name_start_is_a_value_error(monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    with pytest.raises(ValueError, match="cannot tell which notebook is running"):
        notebook_name({})
    with pytest.raises(ValueError, match="GSFH_NOTEBOOK"):
        notebook_name()
    with pytest.raises(ValueError, match="cannot tell which notebook is running"):
        start()


def test_an_explicit_name_wins(folder):
    nb = lab.start(namespace(), small={"num_seeds": 1}, full={"num_seeds": 2}, name="11_named")
    assert nb.name == "11_named"
    assert (folder / "results" / "11_named.json").exists()


def test_progress_is_silent_under_the_runner(monkeypatch):
    monkeypatch.setenv("GSFH_NOTEBOOK", NAME)
    bar = progress(range(3))
    assert bar.disable and list(bar) == [0, 1, 2]
    monkeypatch.delenv("GSFH_NOTEBOOK")
    bar = progress(range(3), desc="seeds")
    assert not bar.disable and list(bar) == [0, 1, 2]


def test_generators_are_seeded_seed_plus_offset(folder):
    nb = start(seed=11)
    draws = [torch.rand(4, generator=nb.generator(offset)) for offset in (0, 0, 1)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert torch.equal(draws[2], torch.rand(4, generator=torch.Generator().manual_seed(12)))


def test_num_threads_sets_torchs_threads(folder):
    before = torch.get_num_threads()
    try:
        lab.start(namespace(), small={"num_seeds": 1}, full={"num_seeds": 2}, num_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
