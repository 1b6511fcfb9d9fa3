"""Claims: what a notebook states, measured, compared with a threshold that comes from reasoning,
and recorded with its margin.

Three kinds, kept apart in every table:

- **theorem**: a quantitative statement of the paper (or one derived in the notebook) on a
  concrete instance: a bound against the measured quantity, or a rate. It records the measured
  value, the theory's value and their ratio (how much of the bound is used).
- **finding**: an empirical statement (one method beats another, a rate is observed, a bias is
  detected), decided by a statistical test: it records the effect size, the test, the p-value, the
  level, the number of comparisons it is corrected for (Bonferroni) and the number of samples
  (seeds). p-values below ``P_VALUE_FLOOR`` are recorded as that floor (shown "< 1e-06").
- **identity**: an exact mathematical fact (or a solver's guarantee) checked to round-off or to a
  stated tolerance: a sanity check of the code, listed apart from the results.

A claim that does not hold raises ``ClaimFailed`` (and so fails the notebook), unless the registry
is in *explore* mode, where it is recorded and the run continues to the end.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field

from .stats import within_margin

KINDS = ("theorem", "finding", "identity")
COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
SYMBOLS = {"<=": "≤", "<": "<", ">=": "≥", ">": ">", "~": "≈"}

#: p-values are recorded down to this floor; below it the tail of most tests is not trustworthy
#: (normal approximations) and no verdict depends on the digits.
P_VALUE_FLOOR = 1e-6


class ClaimFailed(AssertionError):
    """A measured value did not satisfy its claim."""


def _number(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc


def _level(value) -> float:
    """A significance level, checked to lie in (0, 1)."""
    level = _number(value, "level")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {value!r}")
    return level


def format_number(value) -> str:
    if isinstance(value, str):
        return value
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3g}"
    return f"{value:.4g}"


def format_p_value(p_value) -> str:
    """``"< 1e-06"`` at the floor, else the number (a non-finite one read back from a results
    file is the string "nan")."""
    if isinstance(p_value, str):
        return p_value
    return f"< {P_VALUE_FLOOR:.0e}" if p_value <= P_VALUE_FLOOR else format_number(p_value)


@dataclass(frozen=True)
class Claim:
    """One recorded claim. ``value comparison threshold`` decides ``holds`` (for ``"~"``: the
    theory's value lies in ``fields["interval"]``); ``fields`` holds the kind's own entries
    (theorem: measured, theory, ratio; finding: effect, test, p-value, level, comparisons,
    seeds); ``details`` anything else worth keeping."""

    id: str
    kind: str
    statement: str
    value: float
    threshold: float
    comparison: str
    holds: bool
    fields: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "statement": self.statement,
                "value": self.value, "threshold": self.threshold,
                "comparison": self.comparison, "holds": self.holds, **self.fields,
                "details": self.details}

    def line(self) -> str:
        """One readable line: what was measured against what, and the verdict."""
        return f"[{self.kind}] {self.id}: {describe(self.to_dict())} — " + (
            "holds" if self.holds else "DOES NOT HOLD")


def describe(claim: dict) -> str:
    """The measurement of a claim (a results-file entry) as text, e.g. ``0.04 ≤ 0.3 (ratio
    0.14)`` or ``effect 0.8, p < 1e-06 ≤ 0.0033 (0.01/3)``."""
    kind, symbol = claim["kind"], SYMBOLS[claim["comparison"]]
    if kind == "theorem":
        measured, theory = format_number(claim["measured"]), format_number(claim["theory"])
        if claim["comparison"] == "~":
            low, high = (format_number(v) for v in claim["interval"])
            return (f"measured {measured} [{low}, {high}], theory {theory} ± "
                    f"{format_number(claim['margin'])}")
        ratio = "" if claim.get("ratio") is None else f" (ratio {format_number(claim['ratio'])})"
        return f"measured {measured} {symbol} theory {theory}{ratio}"
    if kind == "finding":
        correction = "" if claim["num_comparisons"] == 1 else (
            f" ({format_number(claim['level'])}/{claim['num_comparisons']})")
        return (f"{claim['effect_name']} {format_number(claim['effect'])} "
                f"({claim['test']}, {claim['seeds']} samples), p {format_p_value(claim['p_value'])}"
                f" vs {format_number(claim['threshold'])}{correction}")
    return f"{format_number(claim['value'])} {symbol} {format_number(claim['threshold'])}"


class ClaimRegistry:
    """Records the claims of one notebook run; ``on_record(registry)`` is called after each one
    (the notebook uses it to rewrite its results file, so a failing run still shows its claims).

    ``explore``: record failing claims instead of raising. ``level``: the default significance
    level of findings.
    """

    def __init__(self, *, explore: bool = False, level: float = 0.01, on_record=None):
        self.explore = bool(explore)
        self.level = _level(level)
        self.claims: list[Claim] = []
        self.skipped: list[dict] = []
        self._families: dict[str, int] = {}
        self._on_record = on_record

    # --- the three kinds ------------------------------------------------------------------------

    def theorem(self, id: str, statement: str, *, measured, theory, comparison: str = "<=",
                interval=None, margin=None, holds: bool | None = None,
                criterion: str | None = None, **details) -> None:
        """A quantitative statement of theory: ``measured comparison theory``.

        With ``comparison="~"`` it is an equivalence test: it holds when the whole ``interval``
        (a confidence interval of the measurement, e.g. of a fitted rate) lies within
        ``theory +- margin``, a tolerance stated in advance (e.g. half the distance to the
        competing value). Not rejecting ``theory`` would pass more easily with less data; an
        interval inside the margin needs enough of it. ``holds`` overrides the default rule
        when the verdict is decided otherwise (e.g. a binomial test on a coverage); say how in
        ``criterion``. ``ratio = measured / theory`` is recorded.
        """
        measured, theory = _number(measured, "measured"), _number(theory, "theory")
        fields = {"measured": measured, "theory": theory,
                  "ratio": measured / theory if theory != 0 else None}
        if comparison == "~":
            if interval is None or len(interval) != 2 or margin is None:
                raise ValueError("comparison '~' needs interval=(low, high) and margin")
            low, high = (_number(v, "interval") for v in interval)
            margin = _number(margin, "margin")
            if not margin > 0:
                raise ValueError(f"margin must be positive, got {margin!r}")
            fields["interval"], fields["margin"] = [low, high], margin
            default = not math.isnan(measured) and within_margin((low, high), theory, margin)
        else:
            self._check_comparison(comparison)
            default = not math.isnan(measured) and COMPARISONS[comparison](measured, theory)
        if criterion is not None:
            fields["criterion"] = criterion
        self._record(Claim(id, "theorem", statement, measured, theory, comparison,
                           bool(default if holds is None else holds), fields, details))

    def finding(self, id: str, statement: str, *, test, comparisons: int = 1,
                family: str | None = None, level: float | None = None, seeds: int | None = None,
                **details) -> None:
        """An empirical statement decided by ``test`` (a ``gsfh_utils.lab.stats.TestResult``):
        it holds when ``p <= level / comparisons`` (Bonferroni over the ``comparisons`` tests of
        its ``family``; ``finish`` checks that the family has that many members)."""
        level = self.level if level is None else _level(level)
        if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
            raise ValueError(f"comparisons must be a positive integer, got {comparisons!r}")
        if comparisons > 1 and family is None:
            raise ValueError("a finding corrected for several comparisons must name its family")
        if family is not None:
            expected = self._families.setdefault(family, comparisons)
            if expected != comparisons:
                raise ValueError(f"family {family!r} was declared with {expected} comparisons, "
                                 f"not {comparisons}")
        threshold = level / comparisons
        p_value = _number(test.p_value, "p_value")
        fields = {"test": test.test, "effect": _number(test.effect, "effect"),
                  "effect_name": test.effect_name, "p_value": max(p_value, P_VALUE_FLOOR),
                  "level": level, "num_comparisons": comparisons, "family": family,
                  "seeds": int(test.num_samples if seeds is None else seeds)}
        holds = not math.isnan(p_value) and p_value <= threshold
        self._record(Claim(id, "finding", statement, fields["p_value"], threshold, "<=", holds,
                           fields, {**test.details, **details}))

    def identity(self, id: str, statement: str, *, value, threshold=1.0, comparison: str = "<=",
                 **details) -> None:
        """A sanity check: ``value comparison threshold``, e.g. an error divided by its float64
        round-off bound, at most 1."""
        self._check_comparison(comparison)
        value, threshold = _number(value, "value"), _number(threshold, "threshold")
        holds = not math.isnan(value) and COMPARISONS[comparison](value, threshold)
        self._record(Claim(id, "identity", statement, value, threshold, comparison, holds, {},
                           details))

    def skip(self, id: str, reason: str, *, family: str | None = None) -> None:
        """A claim the parameters make meaningless: recorded as skipped, with the reason (a
        skipped finding still counts among the comparisons of its ``family``)."""
        self._check_id(id)
        self.skipped.append({"id": id, "reason": reason, "family": family})
        print(f"[skipped] {id}: {reason}")
        self._notify()

    # --- bookkeeping ----------------------------------------------------------------------------

    @property
    def failing(self) -> list[Claim]:
        return [claim for claim in self.claims if not claim.holds]

    def check_families(self) -> None:
        """Every family of findings has as many members as the comparisons it was corrected for
        (a family declared for 3 tests but holding 2 was corrected with the wrong count)."""
        for family, expected in self._families.items():
            members = sum(1 for c in self.claims if c.fields.get("family") == family)
            skipped = sum(1 for s in self.skipped if s.get("family") == family)
            if members + skipped != expected:
                raise ValueError(f"family {family!r} was corrected for {expected} comparisons "
                                 f"but holds {members} findings")

    def to_list(self) -> list[dict]:
        return [_strict_json(claim.to_dict()) for claim in self.claims]

    def _check_comparison(self, comparison: str) -> None:
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {sorted(COMPARISONS)}, "
                             f"got {comparison!r}")

    def _check_id(self, id: str) -> None:
        if not isinstance(id, str) or not id:
            raise ValueError(f"claim id must be a non-empty string, got {id!r}")
        if any(c.id == id for c in self.claims) or any(s["id"] == id for s in self.skipped):
            raise ValueError(f"claim id {id!r} is already recorded")

    def _record(self, claim: Claim) -> None:
        self._check_id(claim.id)
        try:  # checked before recording: an unwritable claim would block every later write
            json.dumps(_strict_json(claim.to_dict()), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"claim {claim.id!r}: details must be strict JSON (finite numbers, "
                             f"strings, lists, dicts): {exc}") from exc
        self.claims.append(claim)
        print(claim.line())
        self._notify()
        if not claim.holds and not self.explore:
            raise ClaimFailed(f"{claim.line()} ({claim.statement})")

    def _notify(self) -> None:
        if self._on_record is not None:
            self._on_record(self)


def _strict_json(claim: dict) -> dict:
    """Non-finite numbers of the main fields (and of the interval) as the strings "nan", "inf",
    "-inf" (strict JSON has no such numbers); details must be finite already."""
    def text_if_not_finite(value):
        return str(value) if isinstance(value, float) and not math.isfinite(value) else value

    for key in ("value", "threshold", "measured", "theory", "ratio", "effect", "p_value"):
        if key in claim:
            claim[key] = text_if_not_finite(claim[key])
    if "interval" in claim:
        claim["interval"] = [text_if_not_finite(value) for value in claim["interval"]]
    return claim
