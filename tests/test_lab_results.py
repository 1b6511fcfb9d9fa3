"""Results files and claims tables: rounding, reading back, CSV tables, the three table formats."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab import results as results_module
from gsfh_utils.lab.claims import ClaimRegistry
from gsfh_utils.lab.results import (
    COLUMNS,
    claims_frame,
    dump_results,
    markdown_table,
    passing,
    read_results,
    text_table,
    write_table,
)
from gsfh_utils.lab.stats import TestResult

finite_floats = st.floats(allow_nan=False, allow_infinity=False)


# --- dump_results -----------------------------------------------------------------------------


def test_dump_results_rounds_every_float_to_seven_significant_digits():
    text = dump_results({"third": 1 / 3, "tiny": 1.23456789e-300,
                         "nested": {"list": [2 / 3, 0.1 + 0.2], "tuple": (1e20 / 3,)},
                         "exact": 0.5, "integer": 123456789, "flag": True, "nothing": None,
                         "word": "1.23456789"})
    assert json.loads(text) == {"third": 0.3333333, "nested": {"list": [0.6666667, 0.3],
                                                               "tuple": [3.333333e19]},
                                "tiny": 1.234568e-300, "exact": 0.5, "integer": 123456789,
                                "flag": True, "nothing": None, "word": "1.23456789"}
    assert text.endswith("}\n")


@given(finite_floats)
def test_rounding_keeps_at_most_seven_digits_within_half_a_unit_of_the_seventh(value):
    written = json.loads(dump_results({"x": value}))["x"]
    if value == 0:
        assert written == 0
        return
    digits = Decimal(repr(float(written))).normalize().as_tuple().digits
    assert len(digits) <= 7
    # half a unit in the 7th significant digit, relative to |value|: at most 5e-7
    assert abs(written - value) <= 5.000001e-7 * abs(value)


@given(st.recursive(finite_floats | st.integers() | st.booleans() | st.none() | st.text(),
                    lambda children: st.lists(children, max_size=4)
                    | st.dictionaries(st.text(max_size=5), children, max_size=4), max_leaves=20))
def test_dump_results_is_deterministic_and_a_fixed_point(data):
    """The same data gives the same bytes, and rewriting what was read back changes nothing (a
    rerun on the same machine rewrites the same file)."""
    text = dump_results({"data": data})
    assert dump_results({"data": data}) == text
    assert dump_results(json.loads(text)) == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_dump_results_refuses_non_finite_numbers(value):
    with pytest.raises(ValueError):
        dump_results({"claims": [{"value": value}]})


# --- read_results and passing -----------------------------------------------------------------

COMPLETE = {"notebook": "07_x", "profile": "full", "seed": 0, "explore": False, "complete": True,
            "parameters": {"profile": "full"}, "claims": []}


def test_read_results_returns_the_file(tmp_path):
    path = tmp_path / "07_x.json"
    path.write_text(dump_results(COMPLETE))
    assert read_results(path) == COMPLETE


@pytest.mark.parametrize("missing", [["seed"], ["complete", "claims"], ["notebook", "profile",
                                                                           "parameters"]])
def test_read_results_names_the_missing_keys(tmp_path, missing):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({k: v for k, v in COMPLETE.items() if k not in missing}))
    with pytest.raises(ValueError, match="lacks the key") as error:
        read_results(path)
    assert all(repr(key) in str(error.value) for key in missing)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("complete", "verdicts", "expected"),
    [(True, [], True), (True, [True, True], True), (True, [True, False], False),
     (False, [True], False), (False, [], False)],
)
def test_passing_means_complete_with_every_claim_holding(complete, verdicts, expected):
    data = {**COMPLETE, "complete": complete,
            "claims": [{"id": f"c{i}", "holds": holds} for i, holds in enumerate(verdicts)]}
    assert passing(data) is expected


# --- write_table --------------------------------------------------------------------------------


def test_write_table_writes_csv_with_seven_significant_digits(tmp_path):
    path = write_table(tmp_path / "deep" / "table.csv",
                       {"x": [1 / 3, 2.0, 1e-20 / 3, 123456789.0], "n": [1, 2, 3, 4],
                        "name": ["a", "b|c", "d,e", "f"]})
    assert path == tmp_path / "deep" / "table.csv"
    assert path.read_text() == ("x,n,name\n0.3333333,1,a\n2,2,b|c\n3.333333e-21,3,\"d,e\"\n"
                                "1.234568e+08,4,f\n")


def test_write_table_takes_a_frame_and_reads_back(tmp_path):
    frame = pd.DataFrame({"eta": [0.1, 1.0], "kind": ["gibbs", "own"]})
    path = write_table(tmp_path / "frame.csv", frame)
    pd.testing.assert_frame_equal(pd.read_csv(path), frame)
    assert [p.name for p in tmp_path.iterdir()] == ["frame.csv"]  # no temporary left


def test_write_table_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "table.csv"
    path.write_text("old\n")

    def half_written(self, target, **options):
        target.write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_written)
    with pytest.raises(OSError, match="disk full"):
        write_table(path, {"x": [1.0]})
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


# --- tables of claims ---------------------------------------------------------------------------


def outcome(p_value: float) -> TestResult:
    return TestResult("paired sign test", p_value, 0.8, "fraction won", 40)


def results_of(notebook: str = "07_x") -> dict:
    """A results dict with one claim of each kind (recorded out of order) and a skipped one."""
    claims = ClaimRegistry(explore=True)
    claims.identity("sums", "probabilities | sum to one", value=2.5e-16, threshold=1.0)
    claims.finding("wins", "A beats B", test=outcome(1e-9), comparisons=3, family="f")
    claims.theorem("bound", "gap within the bound", measured=0.04, theory=0.3)
    claims.theorem("rate", "slope is -1", measured=-1.02, theory=-1.0, comparison="~",
                   interval=(-1.1, -0.9), margin=0.25)
    claims.finding("weak", "C beats D", test=outcome(0.25))
    claims.skip("slope", "one data size only")
    return {**COMPLETE, "notebook": notebook, "claims": claims.to_list(),
            "skipped": claims.skipped}


def test_claims_frame_columns_and_order():
    frame = claims_frame([results_of("07_x"), results_of("08_y")])
    assert list(frame.columns) == ["notebook", "kind", "claim", "statement", "measured",
                                   "theory / threshold", "margin", "verdict"]
    assert list(frame.columns[1:]) == list(COLUMNS)
    order = ["bound", "rate", "wins", "weak", "sums", "slope"]  # theorems, findings, identities
    assert list(frame["claim"]) == order * 2
    assert list(frame["notebook"]) == ["07_x"] * 6 + ["08_y"] * 6
    assert list(frame["kind"][:6]) == ["theorem", "theorem", "finding", "finding", "identity",
                                       "—"]


def test_claims_frame_rows():
    rows = claims_frame([results_of()]).set_index("claim").to_dict("index")
    assert rows["bound"] == {"notebook": "07_x", "kind": "theorem",
                             "statement": "gap within the bound", "measured": "0.04",
                             "theory / threshold": "≤ 0.3", "margin": "ratio 0.1333",
                             "verdict": "holds"}
    assert rows["rate"]["measured"] == "-1.02 [-1.1, -0.9]"
    assert rows["rate"]["theory / threshold"] == "-1 ± 0.25"
    assert rows["rate"]["margin"] == "interval inside"
    assert rows["wins"]["measured"] == "0.8 (fraction won, n = 40)"
    assert rows["wins"]["theory / threshold"] == "p ≤ 0.003333 (0.01/3)"
    assert rows["wins"]["margin"] == "p < 1e-06; paired sign test"
    assert rows["weak"]["theory / threshold"] == "p ≤ 0.01"
    assert rows["weak"]["margin"] == "p = 0.25; paired sign test"
    assert rows["weak"]["verdict"] == "DOES NOT HOLD"
    assert rows["sums"]["measured"] == "2.5e-16" and rows["sums"]["theory / threshold"] == "≤ 1"
    assert rows["slope"]["verdict"] == "skipped: one data size only"


def test_claims_frame_selects_kinds_and_columns():
    frame = claims_frame([results_of()], kinds=("identity",), with_notebook=False,
                         with_skipped=False)
    assert list(frame.columns) == list(COLUMNS)
    assert list(frame["claim"]) == ["sums"]
    assert len(claims_frame([])) == 0 and list(claims_frame([]).columns)[0] == "notebook"


def test_claims_frame_shows_a_criterion_beside_the_margin():
    claims = ClaimRegistry()
    claims.theorem("coverage", "s", measured=0.96, theory=0.95, comparison=">=",
                   criterion="binomial test at level 0.01")
    frame = claims_frame([{**COMPLETE, "claims": claims.to_list()}])
    assert frame["margin"][0] == "ratio 1.011; binomial test at level 0.01"


def test_claims_frame_reads_non_finite_values_back_from_a_results_file():
    """An explore run may record NaN or an infinite interval; the report must still show it."""
    claims = ClaimRegistry(explore=True)
    claims.finding("undefined", "s", test=outcome(math.nan))
    claims.theorem("outside", "s", measured=1.0, theory=math.nan, comparison="~",
                   interval=(0.0, math.inf), margin=0.5)
    data = json.loads(dump_results({**COMPLETE, "claims": claims.to_list()}))
    rows = claims_frame([data]).set_index("claim").to_dict("index")
    assert rows["undefined"]["margin"] == "p = nan; paired sign test"
    assert rows["outside"]["measured"] == "1 [0, inf]"
    assert rows["outside"]["margin"] == "interval not inside"
    assert rows["outside"]["verdict"] == rows["undefined"]["verdict"] == "DOES NOT HOLD"


def test_markdown_table_escapes_pipes_and_marks_claims_as_code():
    frame = claims_frame([results_of()], kinds=("identity",))
    lines = markdown_table(frame).splitlines()
    assert lines[0] == ("| notebook | kind | claim | statement | measured | theory / threshold "
                        "| margin | verdict |")
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert lines[2] == ("| 07_x | identity | `sums` | probabilities \\| sum to one | 2.5e-16 "
                        "| ≤ 1 |  | holds |")
    assert lines[2].replace("\\|", "").count("|") == 9  # one cell per column


def test_markdown_table_of_a_plain_table():
    frame = pd.DataFrame({"method": ["a|b", "c"], "reward": [0.5, 1.25]})
    assert markdown_table(frame) == ("| method | reward |\n|---|---|\n| a\\|b | 0.5 |\n"
                                     "| c | 1.25 |")


def test_text_table_is_fixed_width():
    lines = text_table(claims_frame([results_of()])).splitlines()
    assert lines[0].split() == ["notebook", "kind", "claim", "measured", "theory", "/",
                                "threshold", "verdict"]
    assert set(lines[1]) == {"-", " "}
    assert len(lines) == 2 + 6
    starts = [lines[0].index(name) for name in ("kind", "claim", "measured", "theory", "verdict")]
    for line in lines[2:]:
        assert all(line[start - 2:start] == "  " for start in starts)  # columns line up
        assert line == line.rstrip()
    assert lines[2].split()[:3] == ["07_x", "theorem", "bound"]
    assert lines[-1].split()[:3] == ["07_x", "—", "slope"]


def test_text_table_keeps_only_the_columns_present():
    frame = pd.DataFrame({"claim": ["a", "bb"], "verdict": ["holds", "DOES NOT HOLD"]})
    assert text_table(frame) == "claim  verdict\n-----  -------------\na      holds\nbb     " \
                                "DOES NOT HOLD"


@pytest.mark.skipif(not hasattr(results_module, "tidy"), reason="no tidy() in results")
def test_tidy_makes_one_row_per_entry():
    frame = results_module.tidy([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "error",
                                coverage=["poor", "good"], seed=range(3))
    assert list(frame.columns) == ["coverage", "seed", "error"]
    assert list(frame["coverage"]) == ["poor"] * 3 + ["good"] * 3
    assert list(frame["seed"]) == [0, 1, 2] * 2
    assert list(frame["error"]) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="shape"):
        results_module.tidy([1.0, 2.0], "error", seed=range(3))
