"""Results files and the claims tables made from them (notebook, runner, README).

A results file ``results/<notebook>.json`` holds: ``notebook``, ``profile``, ``seed``,
``explore``, ``complete`` (false while the run is going or if it stopped early), ``parameters``
(all of them, profile sizes filled in), ``provenance`` (versions, git ids of the code),
``claims`` (see ``gsfh_utils.lab.claims``), ``skipped`` claims with their reasons, and the paths
of the ``figures`` and ``tables`` written beside it, each with its tidy data as CSV. Numbers are
written with ``SIGNIFICANT_DIGITS`` significant digits, so a rerun on the same machine rewrites
the same bytes and a rerun elsewhere changes only what moved beyond round-off.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .claims import SYMBOLS, format_number, format_p_value
from .io import atomic_write

SIGNIFICANT_DIGITS = 7
REQUIRED_KEYS = ("notebook", "profile", "seed", "complete", "parameters", "claims")


def _rounded(value):
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(item) for item in value]
    return value


def dump_results(data: dict) -> str:
    """The results as strict JSON text, numbers rounded to ``SIGNIFICANT_DIGITS``."""
    return json.dumps(_rounded(data), indent=2, allow_nan=False) + "\n"


def read_results(path) -> dict:
    """Load a results file and check that it has the keys every consumer relies on."""
    data = json.loads(Path(path).read_text())
    missing = [key for key in REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"results file {path} lacks the key(s) {missing}")
    return data


def passing(data: dict) -> bool:
    """A complete run in which every claim holds."""
    return bool(data["complete"]) and all(claim["holds"] for claim in data["claims"])


def write_table(path: Path, data) -> Path:
    """Write tidy data (a ``DataFrame`` or a dict of equal-length columns) as CSV, atomically,
    floats with ``SIGNIFICANT_DIGITS`` significant digits."""
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    return atomic_write(Path(path), lambda temporary: frame.to_csv(
        temporary, index=False, float_format=f"%.{SIGNIFICANT_DIGITS}g"))


# --------------------------------------------------------------------------------------------
# Tables of claims.
# --------------------------------------------------------------------------------------------

COLUMNS = ("kind", "claim", "statement", "measured", "theory / threshold", "margin", "verdict")


def _row(claim: dict) -> dict:
    kind, symbol = claim["kind"], SYMBOLS[claim["comparison"]]
    if kind == "theorem":
        measured = format_number(claim["measured"])
        if claim["comparison"] == "~":
            low, high = claim["interval"]
            measured += f" [{format_number(low)}, {format_number(high)}]"
            reference = f"{format_number(claim['theory'])} ± {format_number(claim['margin'])}"
            margin = "interval inside" if claim["holds"] else "interval not inside"
        else:
            reference = f"{symbol} {format_number(claim['theory'])}"
            margin = "" if claim.get("ratio") is None else (
                f"ratio {format_number(claim['ratio'])}")
        if claim.get("criterion"):
            margin = f"{margin}; {claim['criterion']}" if margin else claim["criterion"]
    elif kind == "finding":
        measured = (f"{format_number(claim['effect'])} ({claim['effect_name']}, "
                    f"n = {claim['seeds']})")
        correction = "" if claim["num_comparisons"] == 1 else (
            f" ({format_number(claim['level'])}/{claim['num_comparisons']})")
        reference = f"p ≤ {format_number(claim['threshold'])}{correction}"
        p_value = format_p_value(claim["p_value"])
        margin = f"p {p_value if p_value.startswith('<') else '= ' + p_value}; {claim['test']}"
    else:
        measured = format_number(claim["value"])
        reference = f"{symbol} {format_number(claim['threshold'])}"
        margin = ""
    return {"kind": kind, "claim": claim["id"], "statement": claim["statement"],
            "measured": measured, "theory / threshold": reference, "margin": margin,
            "verdict": "holds" if claim["holds"] else "DOES NOT HOLD"}


def claims_frame(results: list[dict], *, kinds=("theorem", "finding", "identity"),
                 with_notebook: bool = True, with_skipped: bool = True) -> pd.DataFrame:
    """One row per claim of the given ``kinds`` (in that order within each notebook), with the
    columns ``COLUMNS`` (and ``notebook`` first when ``with_notebook``); skipped claims as rows
    whose verdict gives the reason."""
    rows = []
    for data in results:
        for kind in kinds:
            for claim in data["claims"]:
                if claim["kind"] == kind:
                    rows.append({"notebook": data["notebook"], **_row(claim)})
        if with_skipped:
            rows.extend({"notebook": data["notebook"], "kind": "—", "claim": skipped["id"],
                         "statement": "", "measured": "", "theory / threshold": "",
                         "margin": "", "verdict": f"skipped: {skipped['reason']}"}
                        for skipped in data.get("skipped", []))
    columns = (["notebook"] if with_notebook else []) + list(COLUMNS)
    return pd.DataFrame(rows, columns=columns)


def markdown_table(frame: pd.DataFrame) -> str:
    """The frame as a Markdown table (pipes in cells escaped; claim ids as code)."""
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        cells = [str(cell).replace("|", r"\|") for cell in row]
        if "claim" in frame.columns:
            index = list(frame.columns).index("claim")
            cells[index] = f"`{cells[index]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_table(frame: pd.DataFrame, columns=("notebook", "kind", "claim", "measured",
                                             "theory / threshold", "verdict")) -> str:
    """A fixed-width plain-text table of the frame's ``columns`` (for a terminal)."""
    columns = [c for c in columns if c in frame.columns]
    rows = [columns, *([str(v) for v in row] for row in frame[columns].itertuples(index=False))]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)



def tidy(values, value_name: str, **coordinates) -> pd.DataFrame:
    """A tensor as a long (tidy) table: one row per entry, one column per dimension.

    ``coordinates`` name the dimensions of ``values`` in order, each with its labels (e.g.
    ``coverage=["poor", "good"], n=[100, 300], seed=range(200)``); the entry goes in the column
    ``value_name``. ``tidy(x, "error", n=sizes, seed=range(S))`` turns ``x [N, S]`` into N S rows.
    """
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    labels = {name: label.tolist() if hasattr(label, "tolist") else list(label)
              for name, label in coordinates.items()}
    if array.shape != tuple(len(label) for label in labels.values()):
        raise ValueError(f"values have shape {array.shape} but the coordinates {list(labels)} "
                         f"have lengths {[len(label) for label in labels.values()]}")
    index = pd.MultiIndex.from_product(list(labels.values()), names=list(labels))
    return pd.DataFrame({value_name: array.reshape(-1)}, index=index).reset_index()


def tidy_curves(curves: dict, value_name: str, label: str, **coordinates) -> pd.DataFrame:
    """Several tensors of the same shape as one tidy table: ``tidy`` of each value of ``curves``
    (``{name: tensor}``), its name in the column ``label``, stacked in the order of ``curves``."""
    if not curves:
        raise ValueError("curves must hold at least one tensor")
    return pd.concat([tidy(values, value_name, **coordinates).assign(**{label: name})
                      for name, values in curves.items()], ignore_index=True)
