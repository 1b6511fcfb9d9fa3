"""make verify's comparison: synthetic results files against hand-computed changes, and one
real notebook regenerated end to end at the small profile."""

from __future__ import annotations

import copy
import json
import math
import shutil

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks
from gsfh_utils.lab.verify import (
    RTOL,
    Change,
    compare,
    main,
    relative_change,
    report,
    tolerance,
)


def results(**claims) -> dict:
    """A results file of notebook ``07_x`` with the given claims (``id=dict of fields``)."""
    kinds = {"t": "theorem", "f": "finding", "i": "identity"}
    return {"notebook": "07_x", "profile": "full", "seed": 0, "skipped": [],
            "claims": [{"id": name, "kind": kinds[name[0]], "holds": True, **fields}
                       for name, fields in claims.items()]}


BASE = results(t1={"measured": 2.0, "theory": 4.0, "p_value": None},
               f1={"effect": 0.5, "p_value": 1e-9}, i1={"value": 0.2})


def changed(path: tuple[str, str], value) -> dict:
    data = copy.deepcopy(BASE)
    claim = next(c for c in data["claims"] if c["id"] == path[0])
    claim[path[1]] = value
    return data


def test_identical_results_have_no_change():
    assert compare(BASE, copy.deepcopy(BASE)) == []
    assert report([]) == "nothing moved"


def test_relative_change_against_hand_computed_values():
    assert relative_change(2.0, 2.0) == 0.0
    assert relative_change(2.0, 2.5) == pytest.approx(0.2)  # 0.5 / 2.5
    assert relative_change(-1.0, 1.0) == pytest.approx(2.0)
    assert relative_change("inf", "inf") == 0.0 and relative_change(None, None) == 0.0
    assert math.isinf(relative_change(1.0, "nan")) and math.isinf(relative_change(None, 1.0))


@given(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6))
def test_relative_change_is_symmetric_and_at_most_two(a, b):
    assert relative_change(a, b) == pytest.approx(relative_change(b, a))
    assert 0 <= relative_change(a, b) <= 2


def test_a_move_within_the_tolerance_is_reported_not_failed():
    moved = 2.0 * (1 + RTOL / 2)
    (change,) = compare(BASE, changed(("t1", "measured"), moved))
    assert change == Change("07_x", "t1", "measured", 2.0, moved,
                            relative_change(2.0, moved), RTOL, False)


def test_a_move_beyond_the_tolerance_fails():
    (change,) = compare(BASE, changed(("f1", "effect"), 0.6))
    assert change.beyond and change.relative_change == pytest.approx(0.1 / 0.6)
    assert "BEYOND" in report([change]) and "f1" in report([change])


def test_identity_values_and_p_values_are_reported_but_not_checked():
    moved = compare(BASE, changed(("i1", "value"), 0.9)) + compare(
        BASE, changed(("f1", "p_value"), 1e-7))
    assert [(c.claim, c.field, c.tolerance, c.beyond) for c in moved] == [
        ("i1", "value", None, False), ("f1", "p_value", None, False)]


def test_a_verdict_a_claim_or_a_skip_that_changes_fails():
    verdict = compare(BASE, changed(("i1", "holds"), False))
    assert [(c.field, c.beyond) for c in verdict] == [("holds", True)]
    fewer = copy.deepcopy(BASE)
    fewer["claims"].pop()
    fewer["skipped"] = [{"id": "i1", "reason": "grid too small"}]
    assert sorted((c.claim, c.field) for c in compare(BASE, fewer)) == [
        ("i1", "claim"), ("i1", "skipped")]
    assert all(c.beyond for c in compare(BASE, fewer))
    other_profile = {**copy.deepcopy(BASE), "profile": "small"}
    assert [(c.field, c.beyond) for c in compare(BASE, other_profile)] == [("profile", True)]


def test_per_claim_and_per_notebook_tolerances():
    tolerances = {"07_x": 0.05, "07_x/t1": 0.5}
    assert tolerance("07_x", "t1", tolerances=tolerances) == 0.5
    assert tolerance("07_x", "f1", tolerances=tolerances) == 0.05
    assert tolerance("08_y", "f1", tolerances=tolerances) == RTOL
    within = compare(BASE, changed(("t1", "theory"), 5.0), tolerances=tolerances)
    assert [(c.tolerance, c.beyond) for c in within] == [(0.5, False)]


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="rtol"):
        compare(BASE, BASE, rtol=-1.0)
    with pytest.raises(ValueError, match="regenerated"):
        compare(BASE, {**BASE, "notebook": "08_y"})


def test_a_missing_committed_results_file_fails_before_running(tmp_path, capsys):
    assert main(["-n", "01", "--results-dir", str(tmp_path)]) == 1
    assert "make reproduce" in capsys.readouterr().err


@pytest.mark.notebook
def test_verify_end_to_end_on_notebook_01_at_the_small_profile(small_runs, tmp_path, capsys):
    """The session's small run of notebook 01 plays the committed results: a rerun matches it
    exactly; with one verdict and one value of the "committed" copy altered, verify names both
    and fails."""
    notebook = find_notebooks(REPOSITORY_ROOT / "notebooks", ["01"])[0]
    committed = small_runs(notebook).folder
    assert small_runs(notebook).error is None
    altered = tmp_path / "committed"
    shutil.copytree(committed / "results", altered / "results")
    path = altered / "results" / f"{notebook.stem}.json"
    data = json.loads(path.read_text())
    first, second = data["claims"][0], data["claims"][1]
    first["holds"], second["value"] = False, second["value"] * 3
    path.write_text(json.dumps(data))
    runs = tmp_path / "runs"
    assert main(["-n", "01", "--profile", "small", "--results-dir", str(altered),
                 "--runs-dir", str(runs)]) == 1
    out = capsys.readouterr().out
    moved = [line.split()[:3] for line in out.splitlines()[1:] if line.startswith("01_")]
    assert moved == [[notebook.stem, first["id"], "holds"], [notebook.stem, second["id"], "value"]]
    assert "2 value(s) moved, 1 beyond tolerance; 0 notebook(s) failed" in out
    rerun = json.loads((runs / notebook.stem / "results" / f"{notebook.stem}.json").read_text())
    original = json.loads((committed / "results" / f"{notebook.stem}.json").read_text())
    assert compare(original, rerun) == []
