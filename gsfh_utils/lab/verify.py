"""Regenerate the claims and compare them with the committed results: ``make verify``.

    python -m gsfh_utils.lab.verify               # every notebook, full profile, against results/
    python -m gsfh_utils.lab.verify -n 01 --profile small --results-dir <folder of small runs>

Every notebook is executed again by the runner into a temporary folder (nothing is promoted and
the committed ``results/`` and ``figures/`` are never touched); each claim of the rerun is then
compared with the same claim in the committed results file. What must agree:

- the set of claims and of skipped claims, and each claim's verdict (``holds``), exactly;
- a theorem's measured value and theory's value, and a finding's effect, to a relative
  tolerance: ``RTOL`` (1e-6) by default, ten units of the last of the ``SIGNIFICANT_DIGITS`` (7)
  digits a results file keeps, so a rerun on the same machine agrees and a rerun on another CPU or
  BLAS may differ by round-off propagated through the fits; ``TOLERANCES`` widens it where the
  computation amplifies round-off (see there).

An identity's value is itself a measure of round-off (an error over its float64 bound), and a
p-value far in the tail moves with the last bits of a statistic: both are printed when they move
but only their verdicts are checked. The exit status is non-zero if a notebook fails, a committed
results file is missing or anything checked moved beyond its tolerance.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .io import REPOSITORY_ROOT, output_paths
from .parameters import PROFILES
from .results import read_results
from .runner import find_notebooks, run

#: Relative tolerance of a checked value (see the module docstring).
RTOL = 1e-6
#: Wider relative tolerances, by notebook (every claim of it) or ``"<notebook>/<claim id>"``.
#: Notebook 05 trains a GRU by hundreds of gradient steps: a difference in the last bit of a
#: reduction (another CPU's vector width) grows through training, so across machines its values
#: are expected to move by a few percent while every verdict holds. On one machine it is exact.
TOLERANCES = {"05_miniature_llm_alignment": 0.05}
#: The values checked against the tolerance, by kind of claim.
CHECKED = {"theorem": ("measured", "theory"), "finding": ("effect",), "identity": ()}
#: The values printed when they move (checked or not).
REPORTED = ("measured", "theory", "effect", "p_value", "value")


@dataclass(frozen=True)
class Change:
    """One difference between the committed and the regenerated results of a notebook.

    ``field`` is a claim's value (``"measured"``, ...), ``"holds"`` (its verdict), ``"claim"``
    (present in one only) or ``"skipped"``; ``tolerance`` is ``None`` for what is not checked
    against one; ``beyond`` marks a difference that fails the verification."""

    notebook: str
    claim: str
    field: str
    committed: object
    regenerated: object
    relative_change: float
    tolerance: float | None
    beyond: bool


def tolerance(notebook: str, claim: str, *, rtol: float = RTOL,
              tolerances: dict[str, float] | None = None) -> float:
    """The relative tolerance of ``claim`` of ``notebook``: its own entry in ``tolerances``,
    else its notebook's, else ``rtol``."""
    tolerances = TOLERANCES if tolerances is None else tolerances
    return tolerances.get(f"{notebook}/{claim}", tolerances.get(notebook, rtol))


def relative_change(committed, regenerated) -> float:
    """``|b - a| / max(|a|, |b|)`` for numbers (0 when equal); for anything else (the strings
    "inf", "nan" of non-finite values, ``None``) 0 when equal and infinite otherwise."""
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool)
                  for v in (committed, regenerated))
    if not numbers or not all(math.isfinite(v) for v in (committed, regenerated)):
        return 0.0 if committed == regenerated else math.inf
    if committed == regenerated:
        return 0.0
    return abs(regenerated - committed) / max(abs(committed), abs(regenerated))


def compare(committed: dict, regenerated: dict, *, rtol: float = RTOL,
            tolerances: dict[str, float] | None = None) -> list[Change]:
    """Every difference between two results files of one notebook (see the module docstring
    for what is checked); an empty list when nothing moved."""
    if rtol < 0:
        raise ValueError(f"rtol must be >= 0, got {rtol}")
    notebook = committed["notebook"]
    if regenerated["notebook"] != notebook:
        raise ValueError(f"regenerated is the results of {regenerated['notebook']!r}, committed "
                         f"of {notebook!r}")
    changes = []
    for key in ("profile", "seed"):
        if committed[key] != regenerated[key]:
            changes.append(Change(notebook, "—", key, committed[key], regenerated[key], math.inf,
                                  0.0, True))
    old = {claim["id"]: claim for claim in committed["claims"]}
    new = {claim["id"]: claim for claim in regenerated["claims"]}
    for claim in sorted(old.keys() ^ new.keys()):
        changes.append(Change(notebook, claim, "claim", "recorded" if claim in old else "absent",
                              "recorded" if claim in new else "absent", math.inf, 0.0, True))
    old_skipped = {skipped["id"] for skipped in committed.get("skipped", [])}
    new_skipped = {skipped["id"] for skipped in regenerated.get("skipped", [])}
    for claim in sorted(old_skipped ^ new_skipped):
        changes.append(Change(notebook, claim, "skipped", claim in old_skipped,
                              claim in new_skipped, math.inf, 0.0, True))
    for claim in (claim for claim in old if claim in new):
        before, after = old[claim], new[claim]
        if before["holds"] != after["holds"]:
            changes.append(Change(notebook, claim, "holds", before["holds"], after["holds"],
                                  math.inf, 0.0, True))
        checked = CHECKED.get(after["kind"], ())
        limit = tolerance(notebook, claim, rtol=rtol, tolerances=tolerances)
        for field in REPORTED:
            if field not in before and field not in after:
                continue
            moved = relative_change(before.get(field), after.get(field))
            if moved > 0:
                is_checked = field in checked
                changes.append(Change(notebook, claim, field, before.get(field),
                                      after.get(field), moved, limit if is_checked else None,
                                      is_checked and moved > limit))
    return changes


def report(changes: list[Change]) -> str:
    """What moved, one line per change, with its tolerance and whether it is beyond."""
    if not changes:
        return "nothing moved"
    rows = [("notebook", "claim", "field", "committed", "regenerated", "relative change",
             "tolerance", "status")]
    for c in changes:
        rows.append((c.notebook, c.claim, c.field, str(c.committed), str(c.regenerated),
                     f"{c.relative_change:.2e}" if math.isfinite(c.relative_change) else "—",
                     "not checked" if c.tolerance is None else f"{c.tolerance:g}",
                     "BEYOND" if c.beyond else "within"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gsfh_utils.lab.verify",
        description="Execute the notebooks again into a temporary folder and compare every "
                    "claim with the committed results.")
    parser.add_argument("-n", "--notebooks", nargs="*", action="extend", metavar="NN",
                        help="only these notebooks (number, name or path)")
    parser.add_argument("--profile", default="full", choices=PROFILES,
                        help="the profile of the committed results (default: full)")
    parser.add_argument("--notebook-dir", type=Path, default=REPOSITORY_ROOT / "notebooks")
    parser.add_argument("--results-dir", type=Path, default=REPOSITORY_ROOT,
                        help="the folder holding results/<notebook>.json to compare with "
                             "(default: the repository)")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="keep the reruns here (default: a temporary folder, removed)")
    parser.add_argument("--rtol", type=float, default=RTOL,
                        help=f"default relative tolerance (default: {RTOL:g})")
    args = parser.parse_args(argv)
    if args.rtol < 0:
        parser.error(f"--rtol must be >= 0, got {args.rtol}")
    try:
        notebooks = find_notebooks(args.notebook_dir, args.notebooks)
    except ValueError as exc:
        parser.error(str(exc))
    committed = {}
    for notebook in notebooks:
        path = output_paths(args.results_dir, notebook.stem)["results"]
        if not path.is_file():
            print(f"no committed results for {notebook.stem} ({path}): run `make reproduce`",
                  file=sys.stderr)
            return 1
        committed[notebook.stem] = read_results(path)
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="gsfh-verify-"))
    try:
        runs = run(notebooks, {"profile": args.profile}, runs_dir=runs_dir.resolve(),
                   destination=args.results_dir, promote_canonical=False)
    finally:
        if args.runs_dir is None:
            shutil.rmtree(runs_dir, ignore_errors=True)
    changes, failed = [], []
    for r in runs:
        if r.error is not None or r.results is None:
            failed.append(f"{r.name}: {r.error}")
        else:
            changes += compare(committed[r.name], r.results, rtol=args.rtol)
    print(report(changes))
    beyond = [c for c in changes if c.beyond]
    print(f"\n{len(runs)} notebook(s) regenerated; {len(changes)} value(s) moved, "
          f"{len(beyond)} beyond tolerance; {len(failed)} notebook(s) failed")
    for line in failed:
        print(f"    failed: {' '.join(line.split())[:300]}")
    return 1 if beyond or failed else 0


if __name__ == "__main__":
    sys.exit(main())
