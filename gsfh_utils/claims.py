"""The claims registry: every result a notebook states is measured, compared and asserted.

A notebook makes one ``ClaimRegistry`` and calls ``check`` for each claim. ``check`` records the
claim, rewrites ``results/<notebook>.json`` atomically (so a failing run still leaves a file that
shows which claim failed) and raises ``ClaimFailed`` if the claim does not hold.

The results file: ``{"notebook", "profile", "seed", "parameters", "claims": [{"id",
"statement", "value", "threshold", "comparison", "holds", "details"}]}``.
"""

from __future__ import annotations

import json
import math
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .io import atomic_write, output_dir

COMPARISONS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


class ClaimFailed(AssertionError):
    """A measured value did not satisfy its claim."""


@dataclass(frozen=True)
class Claim:
    id: str
    statement: str
    value: float
    threshold: float
    comparison: str
    holds: bool
    details: dict = field(default_factory=dict)


def _as_float(value, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number, got {value!r}") from exc


class ClaimRegistry:
    """Records, asserts and writes the claims of one notebook run."""

    def __init__(self, notebook: str, profile: str, seed: int, parameters: dict | None = None):
        self.notebook = notebook
        self.profile = profile
        self.seed = seed
        self.parameters = dict(parameters or {})
        self.claims: list[Claim] = []

    @property
    def path(self) -> Path:
        return output_dir("results") / f"{self.notebook}.json"

    def check(self, id: str, statement: str, value, threshold, comparison: str,
              **details) -> Claim:
        """Record ``value <comparison> threshold``, write the results file, raise if false.

        NaN never holds; a non-finite value is written as the string "nan", "inf" or "-inf"
        (the file is strict JSON). ``details`` (finite numbers, strings, lists) are stored
        beside the claim.
        """
        if comparison not in COMPARISONS:
            raise ValueError(f"comparison must be one of {sorted(COMPARISONS)}, got {comparison!r}")
        if any(claim.id == id for claim in self.claims):
            raise ValueError(f"claim id {id!r} is already recorded")
        value = _as_float(value, "value")
        threshold = _as_float(threshold, "threshold")
        try:  # checked before recording: an unwritable claim would block every later write
            json.dumps(details, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"details must be strict JSON (finite numbers, strings, lists): {exc}"
            ) from exc
        holds = not math.isnan(value) and COMPARISONS[comparison](value, threshold)
        claim = Claim(id, statement, value, threshold, comparison, bool(holds), details)
        self.claims.append(claim)
        self.write()
        if not holds:
            raise ClaimFailed(
                f"claim {id!r} does not hold: {value:.6g} {comparison} {threshold:.6g} is false "
                f"({statement})"
            )
        return claim

    def to_dict(self) -> dict:
        return {
            "notebook": self.notebook,
            "profile": self.profile,
            "seed": self.seed,
            "parameters": self.parameters,
            "claims": [_strict_json_numbers(asdict(claim)) for claim in self.claims],
        }

    def write(self) -> Path:
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        return atomic_write(self.path, lambda temporary: temporary.write_text(text))

    def summary(self) -> str:
        """A plain-text table of the claims recorded so far (for the end of a notebook)."""
        return format_claims_table([self.to_dict()])


def read_results(path) -> dict:
    """Load a results file and check its shape."""
    data = json.loads(Path(path).read_text())
    for key in ("notebook", "profile", "seed", "claims"):
        if key not in data:
            raise ValueError(f"results file {path} lacks the key {key!r}")
    return data


def _strict_json_numbers(claim: dict) -> dict:
    """NaN and infinities as the strings "nan", "inf", "-inf": strict JSON has no such numbers."""
    for key in ("value", "threshold"):
        if not math.isfinite(claim[key]):
            claim[key] = str(claim[key])
    return claim


def _format_number(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.4g}"


def claims_rows(results: list[dict]) -> list[tuple[str, ...]]:
    return [
        (data["notebook"], claim["id"], _format_number(claim["value"]), claim["comparison"],
         _format_number(claim["threshold"]), "yes" if claim["holds"] else "NO")
        for data in results for claim in data["claims"]
    ]


HEADER = ("notebook", "claim", "value", "cmp", "threshold", "holds")


def format_claims_table(results: list[dict]) -> str:
    """Fixed-width text table of every claim in ``results`` (a list of results dicts)."""
    rows = [HEADER, *claims_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_claims_table(results: list[dict]) -> str:
    """The claims as a Markdown table with the statements (for the README)."""
    lines = ["| notebook | claim | statement | value | threshold | holds |",
             "|---|---|---|---|---|---|"]
    for data in results:
        for claim in data["claims"]:
            statement = claim["statement"].replace("|", r"\|")  # a pipe would split the cell
            lines.append(
                f"| {data['notebook']} | `{claim['id']}` | {statement} | "
                f"{_format_number(claim['value'])} | {claim['comparison']} "
                f"{_format_number(claim['threshold'])} | {'yes' if claim['holds'] else '**no**'} |"
            )
    return "\n".join(lines)
