"""Claims: the three kinds, their verdicts at the boundary, explore mode, families, strict JSON.

Every expected value below is worked out by hand from the rule the docstring states (e.g. a
finding holds when ``p <= level / comparisons``), never by calling the code's own helpers.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab.claims import (
    P_VALUE_FLOOR,
    ClaimFailed,
    ClaimRegistry,
    format_number,
    format_p_value,
)
from gsfh_utils.lab.stats import TestResult

NAN, INF = math.nan, math.inf


def outcome(p_value: float, *, effect: float = 0.8, samples: int = 40,
            details: dict | None = None) -> TestResult:
    """A statistical test's result as a ``stats`` function would return it."""
    return TestResult("sign test", p_value, effect, "fraction won", samples, details or {})


def explorer(**options) -> ClaimRegistry:
    """A registry in explore mode: failing claims are recorded, not raised."""
    return ClaimRegistry(explore=True, **options)


def strict(registry: ClaimRegistry) -> list[dict]:
    """The recorded claims after a round trip through strict JSON (fails on NaN or inf)."""
    return json.loads(json.dumps(registry.to_list(), allow_nan=False))


# --- theorem --------------------------------------------------------------------------------


def test_a_theorem_records_measured_theory_and_their_ratio():
    claims = ClaimRegistry()
    claims.theorem("gap", "the gap is within the bound", measured=0.75, theory=3.0, steps=10)
    (claim,) = strict(claims)
    assert claim == {"id": "gap", "kind": "theorem", "statement": "the gap is within the bound",
                     "value": 0.75, "threshold": 3.0, "comparison": "<=", "holds": True,
                     "measured": 0.75, "theory": 3.0, "ratio": 0.25, "details": {"steps": 10}}


def test_a_theorem_against_a_zero_theory_has_no_ratio():
    claims = ClaimRegistry()
    claims.theorem("zero", "nothing is lost", measured=0.0, theory=0.0)
    assert claims.claims[0].fields["ratio"] is None
    assert claims.claims[0].holds


@pytest.mark.parametrize(
    ("comparison", "measured", "theory", "holds"),
    [("<=", 1.0, 1.0, True), ("<", 1.0, 1.0, False), (">=", 1.0, 1.0, True),
     (">", 1.0, 1.0, False), ("<=", 1.0 + 2**-52, 1.0, False), (">=", 1.0 - 2**-53, 1.0, False),
     ("<", 0.5, 1.0, True), (">", 2.0, 1.0, True), ("<=", -INF, 0.0, True),
     (">=", INF, 1e300, True), ("<=", INF, 1e300, False)],
)
def test_theorem_comparisons_at_the_boundary(comparison, measured, theory, holds):
    claims = explorer()
    claims.theorem("c", "s", measured=measured, theory=theory, comparison=comparison)
    assert claims.claims[0].holds is holds
    assert claims.claims[0].comparison == comparison


@pytest.mark.parametrize("comparison", ["<=", "<", ">=", ">"])
@pytest.mark.parametrize(("measured", "theory"), [(NAN, 1.0), (1.0, NAN), (NAN, NAN)])
def test_nan_never_holds_for_a_theorem(comparison, measured, theory):
    claims = explorer()
    claims.theorem("nan", "a NaN measurement or bound", measured=measured, theory=theory,
                   comparison=comparison)
    assert claims.claims[0].holds is False


def test_a_failing_theorem_raises_and_is_still_recorded():
    written = []
    claims = ClaimRegistry(on_record=lambda registry: written.append(len(registry.claims)))
    claims.theorem("first", "holds", measured=0.5, theory=1.0)
    with pytest.raises(ClaimFailed, match="second.*DOES NOT HOLD"):
        claims.theorem("second", "does not hold", measured=2.0, theory=1.0)
    assert issubclass(ClaimFailed, AssertionError)  # a failing claim fails the notebook's cell
    assert [c.holds for c in claims.claims] == [True, False]
    assert written == [1, 2]  # the results file is rewritten before the exception


def test_values_may_be_tensors_but_must_be_numbers():
    claims = ClaimRegistry()
    claims.theorem("tensor", "s", measured=torch.tensor(0.25, dtype=torch.float64), theory=1)
    assert claims.claims[0].value == 0.25 and isinstance(claims.claims[0].value, float)
    with pytest.raises(ValueError, match="measured must be a number"):
        claims.theorem("text", "s", measured="small", theory=1.0)
    with pytest.raises(ValueError, match="measured must be a number"):
        claims.theorem("vector", "s", measured=torch.tensor([1.0, 2.0]), theory=1.0)
    with pytest.raises(ValueError, match="theory must be a number"):
        claims.theorem("none", "s", measured=1.0, theory=None)
    assert [c.id for c in claims.claims] == ["tensor"]


# --- theorem with "~": an equivalence test, the interval inside theory +- margin ---------------


@pytest.mark.parametrize(
    ("theory", "interval", "holds"),
    [(-1.0, (-1.2, -0.9), True), (-1.0, (-1.25, -0.75), True), (-1.0, (-1.26, -0.9), False),
     (-1.0, (-1.1, -0.74), False), (-1.0, (-0.7, -0.6), False), (0.5, (0.4, INF), False),
     (NAN, (0.0, 1.0), False), (0.5, (NAN, 1.0), False)],
)
def test_approximate_theorem_holds_when_the_interval_lies_within_the_margin(theory, interval,
                                                                           holds):
    claims = explorer()
    claims.theorem("rate", "the rate is n^-1", measured=-0.98, theory=theory, comparison="~",
                   interval=interval, margin=0.25)
    assert claims.claims[0].holds is holds
    assert claims.claims[0].fields["margin"] == 0.25


def test_approximate_theorem_with_a_nan_measurement_does_not_hold():
    claims = explorer()
    claims.theorem("rate", "s", measured=NAN, theory=1.0, comparison="~", interval=(0.9, 1.1),
                   margin=0.5)
    assert claims.claims[0].holds is False


@pytest.mark.parametrize(("interval", "margin"), [(None, 0.1), ((1.0,), 0.1),
                                                  ((0.0, 1.0, 2.0), 0.1), ((0.0, 1.0), None)])
def test_approximate_theorem_needs_an_interval_and_a_margin(interval, margin):
    with pytest.raises(ValueError, match="interval=.* and margin"):
        ClaimRegistry().theorem("rate", "s", measured=1.0, theory=1.0, comparison="~",
                                interval=interval, margin=margin)
    with pytest.raises(ValueError, match="margin must be positive"):
        ClaimRegistry().theorem("rate", "s", measured=1.0, theory=1.0, comparison="~",
                                interval=(0.9, 1.1), margin=0.0)


def test_non_finite_interval_and_values_are_recorded_as_strings():
    claims = explorer()
    claims.theorem("one_sided", "s", measured=1.0, theory=0.5, comparison="~",
                   interval=(0.25, INF), margin=0.5)
    claims.theorem("diverged", "s", measured=INF, theory=1.0)
    claims.theorem("undefined", "s", measured=NAN, theory=1.0)
    one_sided, diverged, undefined = strict(claims)
    assert one_sided["comparison"] == "~" and one_sided["holds"] is False  # unbounded above
    assert one_sided["interval"] == [0.25, "inf"]
    assert diverged["measured"] == diverged["value"] == diverged["ratio"] == "inf"
    assert undefined["measured"] == undefined["ratio"] == "nan"


# --- the holds= override ----------------------------------------------------------------------


def test_holds_overrides_the_default_rule_and_records_the_criterion():
    claims = explorer()
    claims.theorem("coverage", "the radius covers theta* on 95% of seeds", measured=0.93,
                   theory=0.95, comparison=">=", holds=True,
                   criterion="binomial test of coverage >= 0.95 at level 0.01")
    claims.theorem("vetoed", "s", measured=0.1, theory=1.0, holds=False)
    coverage, vetoed = strict(claims)
    assert coverage["holds"] is True
    assert coverage["criterion"] == "binomial test of coverage >= 0.95 at level 0.01"
    assert vetoed["holds"] is False and "criterion" not in vetoed
    assert [c.id for c in claims.failing] == ["vetoed"]


# --- finding ----------------------------------------------------------------------------------


def test_a_finding_records_its_test():
    claims = ClaimRegistry(level=0.05)
    claims.finding("wins", "A needs fewer comparisons than B", test=outcome(
        0.002, details={"wins": 30}), ties=2)
    (claim,) = strict(claims)
    assert claim == {"id": "wins", "kind": "finding", "statement": "A needs fewer comparisons "
                     "than B", "value": 0.002, "threshold": 0.05, "comparison": "<=",
                     "holds": True, "test": "sign test", "effect": 0.8,
                     "effect_name": "fraction won", "p_value": 0.002, "level": 0.05,
                     "num_comparisons": 1, "family": None, "seeds": 40,
                     "details": {"wins": 30, "ties": 2}}


def test_seeds_overrides_the_number_of_samples_of_the_test():
    claims = ClaimRegistry()
    claims.finding("f", "s", test=outcome(0.001, samples=400), seeds=20)
    assert claims.claims[0].fields["seeds"] == 20


@pytest.mark.parametrize(
    ("p_value", "level", "comparisons", "holds"),
    [(0.0025, 0.01, 4, True), (0.0026, 0.01, 4, False), (0.01, 0.01, 1, True),
     (0.0101, 0.01, 1, False), (0.025, 0.05, 2, True), (0.02501, 0.05, 2, False)],
)
def test_bonferroni_threshold_is_level_over_comparisons(p_value, level, comparisons, holds):
    claims = explorer(level=level)
    claims.finding("f", "s", test=outcome(p_value), comparisons=comparisons,
                   family=None if comparisons == 1 else "family")
    claim = claims.claims[0]
    assert claim.threshold == pytest.approx(level / comparisons, rel=1e-15)
    assert claim.holds is holds


def test_a_finding_level_overrides_the_registry_level():
    claims = explorer(level=0.01)
    claims.finding("loose", "s", test=outcome(0.04), level=0.05)
    claims.finding("default", "s", test=outcome(0.04))
    assert [(c.threshold, c.holds) for c in claims.claims] == [(0.05, True), (0.01, False)]


@pytest.mark.parametrize("level", [0.0, 1.0, -0.1, 5.0, NAN])
def test_a_level_outside_the_unit_interval_is_a_value_error(level):
    with pytest.raises(ValueError, match="level must be in"):
        ClaimRegistry(level=level)
    with pytest.raises(ValueError, match="level must be in"):
        ClaimRegistry().finding("f", "s", test=outcome(0.9), level=level)


def test_p_values_are_floored_in_the_record_but_not_in_the_verdict():
    claims = explorer()
    claims.finding("tiny", "s", test=outcome(1e-12))
    # a threshold below the floor: the unfloored p decides
    claims.finding("below", "s", test=outcome(1e-7), level=5e-7)
    claims.finding("above", "s", test=outcome(8e-7), level=5e-7)
    tiny, below, above = strict(claims)
    assert tiny["p_value"] == tiny["value"] == P_VALUE_FLOOR == 1e-6
    assert tiny["holds"] is True
    assert below["p_value"] == 1e-6 and below["holds"] is True
    assert above["p_value"] == 1e-6 and above["holds"] is False


def test_a_nan_p_value_is_recorded_and_never_holds():
    claims = explorer()
    claims.finding("undefined", "s", test=outcome(NAN, effect=NAN))
    (claim,) = strict(claims)
    assert claim["holds"] is False
    assert claim["p_value"] == claim["value"] == claim["effect"] == "nan"


@pytest.mark.parametrize("comparisons", [0, -1, 2.0, True, "3"])
def test_comparisons_must_be_a_positive_integer(comparisons):
    with pytest.raises(ValueError, match="comparisons must be a positive integer"):
        ClaimRegistry().finding("f", "s", test=outcome(0.001), comparisons=comparisons,
                                family="family")


def test_a_corrected_finding_must_name_its_family():
    with pytest.raises(ValueError, match="must name its family"):
        ClaimRegistry().finding("f", "s", test=outcome(0.001), comparisons=3)


def test_a_family_keeps_the_count_it_was_declared_with():
    claims = ClaimRegistry()
    claims.finding("a", "s", test=outcome(0.001), comparisons=3, family="methods")
    with pytest.raises(ValueError, match="'methods' was declared with 3 comparisons, not 2"):
        claims.finding("b", "s", test=outcome(0.001), comparisons=2, family="methods")
    assert [c.id for c in claims.claims] == ["a"]


# --- families, checked at the end -------------------------------------------------------------


def family_of(size: int, members: int, skipped: int = 0) -> ClaimRegistry:
    """A registry whose family "f" was corrected for ``size`` comparisons and holds
    ``members`` findings and ``skipped`` skipped claims."""
    claims = ClaimRegistry()
    for index in range(members):
        claims.finding(f"member_{index}", "s", test=outcome(1e-4), comparisons=size, family="f")
    for index in range(skipped):
        claims.skip(f"skipped_{index}", "not enough seeds", family="f")
    return claims


@pytest.mark.parametrize(("size", "members", "skipped"), [(3, 3, 0), (3, 2, 1), (1, 1, 0),
                                                          (4, 0, 0)])
def test_check_families_accepts_complete_families(size, members, skipped):
    family_of(size, members, skipped).check_families()


@pytest.mark.parametrize(("size", "members", "skipped"), [(3, 2, 0), (3, 1, 1), (2, 3, 0),
                                                          (2, 2, 1)])
def test_check_families_catches_a_wrong_count(size, members, skipped):
    with pytest.raises(ValueError, match=f"family 'f' was corrected for {size} comparisons"):
        family_of(size, members, skipped).check_families()


def test_check_families_counts_only_its_own_members():
    claims = ClaimRegistry()
    claims.finding("a", "s", test=outcome(1e-4), comparisons=2, family="first")
    claims.finding("b", "s", test=outcome(1e-4), comparisons=2, family="second")
    claims.finding("c", "s", test=outcome(1e-4), comparisons=2, family="first")
    with pytest.raises(ValueError, match="'second'"):
        claims.check_families()


# --- identity ---------------------------------------------------------------------------------


def test_an_identity_records_value_threshold_and_nothing_else():
    claims = ClaimRegistry()
    claims.identity("sum_to_one", "probabilities sum to one", value=0.5, num_checked=12)
    (claim,) = strict(claims)
    assert claim == {"id": "sum_to_one", "kind": "identity",
                     "statement": "probabilities sum to one", "value": 0.5, "threshold": 1.0,
                     "comparison": "<=", "holds": True, "details": {"num_checked": 12}}


@pytest.mark.parametrize(
    ("value", "threshold", "comparison", "holds"),
    [(1.0, 1.0, "<=", True), (1.0000001, 1.0, "<=", False), (0.0, 0.0, "<=", True),
     (0.01, 0.01, ">=", True), (0.0099, 0.01, ">=", False), (NAN, 1.0, "<=", False),
     (NAN, 1.0, ">=", False), (1.0, NAN, "<", False), (1.0, NAN, ">", False)],
)
def test_identity_verdicts(value, threshold, comparison, holds):
    claims = explorer()
    claims.identity("i", "s", value=value, threshold=threshold, comparison=comparison)
    assert claims.claims[0].holds is holds


@pytest.mark.parametrize("comparison", ["==", "=<", "le", "", "~"])
def test_an_unknown_comparison_is_a_value_error(comparison):
    claims = ClaimRegistry()
    with pytest.raises(ValueError, match="comparison must be one of"):
        claims.identity("i", "s", value=1.0, comparison=comparison)
    if comparison != "~":
        with pytest.raises(ValueError, match="comparison must be one of"):
            claims.theorem("t", "s", measured=1.0, theory=1.0, comparison=comparison)
    assert claims.claims == []


# --- explore mode -----------------------------------------------------------------------------


def test_explore_mode_records_failures_and_goes_on():
    claims = ClaimRegistry(explore=True)
    claims.theorem("broken", "s", measured=2.0, theory=1.0)
    claims.finding("insignificant", "s", test=outcome(0.5))
    claims.identity("fine", "s", value=0.5)
    claims.identity("off", "s", value=3.0)
    assert [c.id for c in claims.failing] == ["broken", "insignificant", "off"]
    assert [c.holds for c in claims.claims] == [False, False, True, False]


@given(value=st.floats(allow_nan=True, allow_infinity=True),
       threshold=st.floats(allow_nan=True, allow_infinity=True),
       comparison=st.sampled_from(["<=", "<", ">=", ">"]))
def test_explore_and_assert_modes_agree_on_every_verdict(value, threshold, comparison):
    """The mode decides only whether a failure raises, never the verdict."""
    expected = {"<=": value <= threshold, "<": value < threshold,
                ">=": value >= threshold, ">": value > threshold}[comparison]
    explored = ClaimRegistry(explore=True)
    explored.identity("i", "s", value=value, threshold=threshold, comparison=comparison)
    asserted = ClaimRegistry()
    if expected:
        asserted.identity("i", "s", value=value, threshold=threshold, comparison=comparison)
    else:
        with pytest.raises(ClaimFailed):
            asserted.identity("i", "s", value=value, threshold=threshold, comparison=comparison)
    assert explored.claims[0].holds is asserted.claims[0].holds is expected


# --- ids and skipped claims -------------------------------------------------------------------


def test_duplicate_ids_are_rejected_across_kinds_and_skips():
    claims = ClaimRegistry()
    claims.identity("x", "s", value=0.0)
    claims.skip("y", "the small profile has one seed")
    with pytest.raises(ValueError, match="'x' is already recorded"):
        claims.theorem("x", "s", measured=0.0, theory=1.0)
    with pytest.raises(ValueError, match="'x' is already recorded"):
        claims.skip("x", "reason")
    with pytest.raises(ValueError, match="'y' is already recorded"):
        claims.finding("y", "s", test=outcome(0.001))
    assert [c.id for c in claims.claims] == ["x"] and [s["id"] for s in claims.skipped] == ["y"]


@pytest.mark.parametrize("bad", ["", None, 3])
def test_an_id_must_be_a_non_empty_string(bad):
    with pytest.raises(ValueError, match="claim id must be a non-empty string"):
        ClaimRegistry().identity(bad, "s", value=0.0)


def test_skip_records_the_reason_prints_it_and_rewrites_the_file(capsys):
    written = []
    claims = ClaimRegistry(on_record=lambda registry: written.append(list(registry.skipped)))
    claims.skip("slope", "one data size only")
    claims.skip("paired", "one seed only", family="methods")
    assert claims.skipped == [{"id": "slope", "reason": "one data size only", "family": None},
                              {"id": "paired", "reason": "one seed only", "family": "methods"}]
    assert capsys.readouterr().out.splitlines() == ["[skipped] slope: one data size only",
                                                    "[skipped] paired: one seed only"]
    assert len(written) == 2 and written[1] == claims.skipped
    assert claims.claims == [] and claims.failing == []


# --- details must be strict JSON --------------------------------------------------------------


@pytest.mark.parametrize("detail", [NAN, INF, [1.0, NAN], {"a": -INF}, torch.tensor([0.5]),
                                    {1, 2}, object()])
def test_details_must_be_strict_json_and_a_bad_claim_is_not_recorded(detail):
    written = []
    claims = ClaimRegistry(on_record=lambda registry: written.append(1))
    with pytest.raises(ValueError, match="details must be strict JSON"):
        claims.identity("bad", "s", value=0.0, spread=detail)
    assert claims.claims == [] and written == []
    claims.identity("bad", "s", value=0.0, spread=[0.5, {"n": 3, "label": "ok"}])  # id free
    assert strict(claims)[0]["details"] == {"spread": [0.5, {"n": 3, "label": "ok"}]}


# --- the one-line text ------------------------------------------------------------------------


def test_each_kind_prints_one_readable_line(capsys):
    claims = explorer()
    claims.theorem("mirror", "s", measured=0.04, theory=0.3)
    claims.theorem("rate", "s", measured=-1.02, theory=-1.0, comparison="~",
                   interval=(-1.1, -0.9), margin=0.25)
    claims.theorem("loose", "s", measured=2.0, theory=1.0)
    claims.finding("wins", "s", test=outcome(1e-9), comparisons=3, family="f")
    claims.finding("weak", "s", test=outcome(0.25, effect=0.55, samples=12))
    claims.identity("gap", "s", value=1.5e-16, threshold=1e-12)
    assert capsys.readouterr().out.splitlines() == [
        "[theorem] mirror: measured 0.04 ≤ theory 0.3 (ratio 0.1333) — holds",
        "[theorem] rate: measured -1.02 [-1.1, -0.9], theory -1 ± 0.25 — holds",
        "[theorem] loose: measured 2 ≤ theory 1 (ratio 2) — DOES NOT HOLD",
        "[finding] wins: fraction won 0.8 (sign test, 40 samples), p < 1e-06 vs 0.003333 "
        "(0.01/3) — holds",
        "[finding] weak: fraction won 0.55 (sign test, 12 samples), p 0.25 vs 0.01 "
        "— DOES NOT HOLD",
        "[identity] gap: 1.5e-16 ≤ 1e-12 — holds",
    ]
    assert claims.claims[0].line() == "[theorem] mirror: measured 0.04 ≤ theory 0.3 (ratio " \
                                      "0.1333) — holds"


def test_the_exception_carries_the_line_and_the_statement():
    with pytest.raises(ClaimFailed) as failure:
        ClaimRegistry().identity("gap", "the gap identity", value=2.0, comparison="<")
    assert str(failure.value) == "[identity] gap: 2 < 1 — DOES NOT HOLD (the gap identity)"


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "0"), (0.0, "0"), (1.0, "1"), (0.123456, "0.1235"), (1234.5678, "1235"),
     (12345.678, "1.23e+04"), (0.000123456, "0.000123"), (0.001, "0.001"), (-2.5, "-2.5"),
     ("nan", "nan"), (INF, "inf")],
)
def test_format_number(value, text):
    assert format_number(value) == text


@pytest.mark.parametrize(("p_value", "text"), [(1e-6, "< 1e-06"), (1e-9, "< 1e-06"),
                                               (2e-6, "2e-06"), (0.04, "0.04"), ("nan", "nan")])
def test_format_p_value(p_value, text):
    assert format_p_value(p_value) == text
