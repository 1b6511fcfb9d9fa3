"""The claims registry, the results file, atomic writes, savefig, output folders and profiles.

Every test runs with GSFH_FIGURES_DIR / GSFH_RESULTS_DIR pointing into its tmp_path (the
autouse ``output_dirs`` fixture of conftest.py), so nothing is written into the repository.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch

from gsfh_utils import ClaimFailed, ClaimRegistry, savefig, set_style, sizes_for
from gsfh_utils.claims import format_claims_table, markdown_claims_table, read_results
from gsfh_utils.io import REPOSITORY_ROOT, atomic_write, output_dir

CLAIM_KEYS = {"id", "statement", "value", "threshold", "comparison", "holds"}


def registry(**parameters) -> ClaimRegistry:
    return ClaimRegistry("01_example", "small", 7, parameters or {"eta": 0.5})


# --- ClaimRegistry ------------------------------------------------------------------------------


def test_a_claim_that_holds_is_recorded_and_written(output_dirs):
    claims = registry()
    claim = claims.check("gap", "the gap identity holds", 1e-15, 1e-12, "<=", rows=3)
    assert claim.holds is True and claim.value == 1e-15 and claim.details == {"rows": 3}
    assert claims.path == output_dirs["results"] / "01_example.json"
    data = json.loads(claims.path.read_text())
    assert data["notebook"] == "01_example" and data["profile"] == "small" and data["seed"] == 7
    assert data["parameters"] == {"eta": 0.5}
    assert len(data["claims"]) == 1
    written = data["claims"][0]
    assert CLAIM_KEYS <= set(written)
    assert written == {"id": "gap", "statement": "the gap identity holds", "value": 1e-15,
                       "threshold": 1e-12, "comparison": "<=", "holds": True,
                       "details": {"rows": 3}}
    assert isinstance(written["holds"], bool)


def test_a_failing_claim_raises_and_still_writes_the_file():
    claims = registry()
    claims.check("first", "holds", 0.5, 1.0, "<")
    with pytest.raises(ClaimFailed, match="'second' does not hold"):
        claims.check("second", "does not hold", 2.0, 1.0, "<=")
    assert issubclass(ClaimFailed, AssertionError)  # a failing claim fails the notebook cell
    data = read_results(claims.path)
    assert [c["id"] for c in data["claims"]] == ["first", "second"]
    assert [c["holds"] for c in data["claims"]] == [True, False]


@pytest.mark.parametrize(
    ("comparison", "value", "threshold", "holds"),
    [("<=", 1.0, 1.0, True), ("<", 1.0, 1.0, False), (">=", 1.0, 1.0, True),
     (">", 1.0, 1.0, False), ("<", 0.5, 1.0, True), (">", 2.0, 1.0, True),
     ("<=", 1.0 + 1e-15, 1.0, False), (">=", -math.inf, 0.0, False), ("<=", -math.inf, 0.0, True)],
)
def test_comparisons(comparison, value, threshold, holds):
    claims = registry()
    if holds:
        assert claims.check("c", "s", value, threshold, comparison).holds
    else:
        with pytest.raises(ClaimFailed):
            claims.check("c", "s", value, threshold, comparison)
        assert claims.claims[-1].holds is False


@pytest.mark.parametrize("comparison", ["<=", "<", ">=", ">"])
def test_nan_never_holds(comparison):
    claims = registry()
    with pytest.raises(ClaimFailed):
        claims.check("nan", "a NaN measurement", math.nan, 1.0, comparison)
    with pytest.raises(ClaimFailed):
        claims.check("nan_threshold", "a NaN threshold", 1.0, math.nan, comparison)
    assert [c.holds for c in claims.claims] == [False, False]
    assert all(c["holds"] is False for c in read_results(claims.path)["claims"])


def test_duplicate_id_and_bad_comparison_are_value_errors():
    claims = registry()
    claims.check("x", "s", 1.0, 2.0, "<=")
    with pytest.raises(ValueError, match="'x' is already recorded"):
        claims.check("x", "s", 1.0, 2.0, "<=")
    for bad in ["==", "=<", "le", ""]:
        with pytest.raises(ValueError, match="comparison"):
            claims.check("y", "s", 1.0, 2.0, bad)
    assert [c.id for c in claims.claims] == ["x"]  # rejected claims are not recorded


def test_values_may_be_tensors_but_must_be_numbers():
    claims = registry()
    quarter = torch.tensor(0.25, dtype=torch.float64)
    assert claims.check("tensor", "s", quarter, 1, "<").value == 0.25
    with pytest.raises(ValueError, match="value must be a number"):
        claims.check("bad", "s", "small", 1.0, "<")
    with pytest.raises(ValueError, match="value must be a number"):
        claims.check("vector", "s", torch.tensor([1.0, 2.0]), 1.0, "<")
    with pytest.raises(ValueError, match="threshold must be a number"):
        claims.check("bad_threshold", "s", 1.0, None, "<")


def test_details_must_be_serialisable_and_a_bad_one_does_not_poison_the_registry():
    claims = registry()
    with pytest.raises(ValueError, match="details must be strict JSON"):
        claims.check("tensor_details", "s", 1.0, 2.0, "<=", rates=torch.tensor([0.5]))
    assert claims.claims == []
    claims.check("list_details", "s", 1.0, 2.0, "<=", rates=[0.5, 0.25], label="ok")
    assert read_results(claims.path)["claims"][0]["details"] == {"rates": [0.5, 0.25],
                                                               "label": "ok"}


def test_summary_and_read_results_shape(tmp_path):
    claims = registry()
    claims.check("alpha", "s", 0.125, 1.0, "<=")
    summary = claims.summary()
    assert "alpha" in summary and "01_example" in summary and "yes" in summary
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"notebook": "x", "profile": "small", "claims": []}))
    with pytest.raises(ValueError, match="'seed'"):
        read_results(bad)


# --- claims tables ---------------------------------------------------------------------------

RESULTS = [
    {"notebook": "01_gibbs", "profile": "small", "seed": 0, "claims": [
        {"id": "gap", "statement": "gap identity", "value": 1.234567e-15, "threshold": 1e-12,
         "comparison": "<=", "holds": True},
        {"id": "fit", "statement": "chi-square p-value", "value": 0.0001, "threshold": 0.001,
         "comparison": ">=", "holds": False},
    ]},
    {"notebook": "02_offline", "profile": "small", "seed": 0, "claims": [
        {"id": "rate", "statement": "slope of the rate", "value": -1.02, "threshold": -0.8,
         "comparison": "<", "holds": True},
    ]},
]


def test_format_claims_table():
    lines = format_claims_table(RESULTS).splitlines()
    assert lines[0].split() == ["notebook", "claim", "value", "cmp", "threshold", "holds"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert len(lines) == 2 + 3
    assert lines[2].split() == ["01_gibbs", "gap", "1.235e-15", "<=", "1e-12", "yes"]
    assert lines[3].split() == ["01_gibbs", "fit", "0.0001", ">=", "0.001", "NO"]
    assert lines[4].split() == ["02_offline", "rate", "-1.02", "<", "-0.8", "yes"]
    # fixed width: every column starts at the same offset on every line
    starts = [lines[0].index(name) for name in ("claim", "value", "cmp", "threshold", "holds")]
    for line in lines[2:]:
        assert all(line[start - 2:start] == "  " for start in starts)


def test_markdown_claims_table():
    lines = markdown_claims_table(RESULTS).splitlines()
    assert lines[0] == "| notebook | claim | statement | value | threshold | holds |"
    assert lines[1] == "|---|---|---|---|---|---|"
    assert lines[2] == "| 01_gibbs | `gap` | gap identity | 1.235e-15 | <= 1e-12 | yes |"
    assert lines[3] == "| 01_gibbs | `fit` | chi-square p-value | 0.0001 | >= 0.001 | **no** |"
    assert len(lines) == 5
    assert markdown_claims_table([]).count("\n") == 1  # header only
    # a pipe in a statement is escaped so that it does not split the cell
    piped = [{"notebook": "n", "claims": [dict(RESULTS[0]["claims"][0], statement="|a| <= b")]}]
    row = markdown_claims_table(piped).splitlines()[2]
    assert row.startswith("| n | `gap` | \\|a\\| <= b | ")
    assert row.replace("\\|", "").count("|") == 7


# --- atomic writes and output folders ---------------------------------------------------------


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    assert atomic_write(target, lambda temporary: temporary.write_text("one")) == target
    atomic_write(target, lambda temporary: temporary.write_text("two"))
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_failed_atomic_write_leaves_no_temporary_file_and_keeps_the_old_one(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_written(temporary: Path) -> None:
        temporary.write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_written)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    # also for an interrupt (BaseException), and when no file existed before
    fresh = tmp_path / "fresh.json"

    def interrupted(temporary: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(fresh, interrupted)
    assert not fresh.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_output_dir_honours_the_environment(output_dirs, monkeypatch, tmp_path):
    assert output_dir("figures") == output_dirs["figures"] and output_dirs["figures"].is_dir()
    assert output_dir("results") == output_dirs["results"] and output_dirs["results"].is_dir()
    elsewhere = tmp_path / "deep" / "results"
    monkeypatch.setenv("GSFH_RESULTS_DIR", str(elsewhere))
    assert output_dir("results") == elsewhere and elsewhere.is_dir()
    monkeypatch.delenv("GSFH_FIGURES_DIR")
    assert output_dir("figures") == REPOSITORY_ROOT / "figures"  # the default (already exists)
    with pytest.raises(ValueError, match="kind"):
        output_dir("notebooks")


def test_registry_writes_where_the_environment_says(monkeypatch, tmp_path):
    monkeypatch.setenv("GSFH_RESULTS_DIR", str(tmp_path / "other"))
    claims = registry()
    claims.check("x", "s", 0.0, 1.0, "<=")
    assert (tmp_path / "other" / "01_example.json").exists()


# --- savefig ------------------------------------------------------------------------------------


@pytest.fixture
def figure():
    set_style()
    fig, ax = plt.subplots()
    ax.plot([0.0, 1.0, 2.0], [1.0, 0.0, 0.5], label="a line")
    ax.legend()
    yield fig
    plt.close(fig)


def test_savefig_writes_png_and_pdf_into_the_figures_folder(figure, output_dirs):
    paths = savefig(figure, "01_example")
    assert paths == [output_dirs["figures"] / "01_example.png",
                     output_dirs["figures"] / "01_example.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in output_dirs["figures"].iterdir()) == [
        "01_example.pdf", "01_example.png"]  # no temporary files left behind
    assert savefig(figure, "only_png", formats=("png",)) == [output_dirs["figures"]
                                                            / "only_png.png"]


def test_savefig_output_is_byte_for_byte_reproducible(figure):
    first = [p.read_bytes() for p in savefig(figure, "again")]
    second = [p.read_bytes() for p in savefig(figure, "again")]
    assert first == second  # no timestamps or software versions in the files


@pytest.mark.parametrize("name", ["", "a/b", "figure.png", "../escape"])
def test_savefig_rejects_bad_names(figure, name):
    with pytest.raises(ValueError, match="name"):
        savefig(figure, name)


@pytest.mark.parametrize("formats", [("svg",), ("png", "jpg")])
def test_savefig_rejects_unknown_formats(figure, formats, output_dirs):
    with pytest.raises(ValueError, match="formats"):
        savefig(figure, "x", formats=formats)
    assert not output_dirs["figures"].exists() or not any(output_dirs["figures"].iterdir())


# --- profiles -----------------------------------------------------------------------------------


def test_sizes_for():
    small, full = {"num_seeds": 2, "n": 100}, {"num_seeds": 20, "n": 10_000}
    assert sizes_for("small", small, full) == small
    assert sizes_for("full", small, full) == full
    chosen = sizes_for("small", small, full)
    chosen["n"] = 0
    assert small["n"] == 100  # a copy
    for bad in ["medium", "Small", "", None]:
        with pytest.raises(ValueError, match="profile"):
            sizes_for(bad, small, full)
    with pytest.raises(ValueError, match="same sizes.*'extra'"):
        sizes_for("small", small, full | {"extra": 1})


def test_non_finite_values_are_written_as_strings_so_the_file_is_strict_json(tmp_path):
    registry = ClaimRegistry("nb_strict", "small", 0)
    with pytest.raises(ClaimFailed):
        registry.check("nan_value", "a NaN never holds", float("nan"), 1.0, "<=")
    registry_inf = ClaimRegistry("nb_strict_inf", "small", 0)
    registry_inf.check("inf_value", "inf is above any threshold", float("inf"), 1.0, ">=")
    for path, expected in [(registry.path, "nan"), (registry_inf.path, "inf")]:
        data = json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(name))
        assert data["claims"][0]["value"] == expected
    with pytest.raises(ValueError, match="details"):
        registry_inf.check("bad_details", "details must be finite", 1.0, 1.0, "<=",
                           spread=float("nan"))


def test_atomic_write_gives_the_usual_file_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    path = atomic_write(tmp_path / "shared.txt", lambda temporary: temporary.write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
