"""Execute the notebooks in order with papermill and report every claim.

    python -m gsfh_utils.runner --profile full           # what `make reproduce` runs
    python -m gsfh_utils.runner --profile small -n 01    # one notebook, test sizes
    python -m gsfh_utils.runner -p eta 0.5 -n 01         # override a parameter

Each notebook runs in its own kernel with ``cwd = notebooks/``; a failing notebook does not stop
the others, and its partial executed copy is kept in the output folder. At the end a table of
every claim is printed and the exit status is non-zero if any notebook or claim failed.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .claims import format_claims_table, markdown_claims_table, read_results
from .io import REPOSITORY_ROOT, atomic_write
from .io import output_dir as results_folder
from .profiles import PROFILES

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
README_START = "<!-- claims:start -->"
README_END = "<!-- claims:end -->"


@dataclass
class NotebookRun:
    name: str
    seconds: float
    error: str | None = None
    results: dict | None = None

    @property
    def claims_hold(self) -> bool:
        return self.results is not None and all(c["holds"] for c in self.results["claims"])

    @property
    def ok(self) -> bool:
        return self.error is None and self.claims_hold


def find_notebooks(folder: Path, selection: list[str] | None = None) -> list[Path]:
    """The ``NN_name.ipynb`` notebooks of ``folder`` in order; ``selection`` picks by number
    (``"01"``) or name (``"01_gibbs_optimality"``)."""
    notebooks = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))
    if not selection:
        return notebooks
    chosen = []
    for wanted in selection:
        matches = [p for p in notebooks if p.stem == wanted or p.stem.split("_")[0] == wanted]
        if not matches:
            raise ValueError(
                f"notebook {wanted!r} not found; available: {[p.stem for p in notebooks]}"
            )
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def parse_value(text: str):
    """A parameter value from the command line: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def check_parameters(notebooks: list[Path], parameters: dict) -> None:
    """Every overridden parameter must exist in the ``parameters`` cell of every notebook run."""
    import papermill

    if parameters.get("profile", "small") not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {parameters['profile']!r}")
    for notebook in notebooks:
        known = papermill.inspect_notebook(str(notebook))
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for {notebook.name}; "
                f"its parameters are {sorted(known)}"
            )


def run_notebook(notebook: Path, output_dir: Path, parameters: dict,
                 results_dir: Path) -> NotebookRun:
    """Execute one notebook; never raises for a failure inside the notebook."""
    import papermill

    results_path = results_dir / f"{notebook.stem}.json"
    results_path.unlink(missing_ok=True)  # a stale file must not pass for this run's results
    start = time.perf_counter()
    error = None
    try:
        papermill.execute_notebook(
            str(notebook), str(output_dir / notebook.name), parameters=parameters,
            cwd=str(notebook.parent), progress_bar=False, request_save_on_cell_execute=True,
        )
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}".strip()
    except Exception as exc:  # kernel death, bad notebook JSON: report, keep going
        error = f"{type(exc).__name__}: {exc}"
    seconds = time.perf_counter() - start
    results = read_results(results_path) if results_path.exists() else None
    if error is None and results is None:
        error = f"the notebook wrote no results file ({results_path})"
    return NotebookRun(notebook.stem, seconds, error, results)


def _replace_block(text: str, start: str, end: str, content: str) -> str:
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def update_readme(readme: Path, results: list[dict]) -> None:
    """Rewrite the generated blocks of the README from the results files.

    The claims table goes between ``README_START`` and ``README_END`` (required). A claim detail
    whose key ends in ``_markdown`` (a table a notebook made) fills the optional block
    ``<!-- <notebook>/<key>:start -->`` ... ``<!-- <notebook>/<key>:end -->``, so the README
    never shows numbers that the results no longer hold.
    """
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} lacks the markers {README_START} ... {README_END}")
    text = _replace_block(text, README_START, README_END, markdown_claims_table(results))
    for data in results:
        for claim in data["claims"]:
            for key, value in claim.get("details", {}).items():
                start = f"<!-- {data['notebook']}/{key}:start -->"
                end = f"<!-- {data['notebook']}/{key}:end -->"
                if key.endswith("_markdown") and start in text and end in text:
                    text = _replace_block(text, start, end, value)
    atomic_write(readme, lambda temporary: temporary.write_text(text))


def run(notebooks: list[Path], output_dir: Path, parameters: dict,
        show_progress: bool = True) -> list[NotebookRun]:
    from tqdm.auto import tqdm

    output_dir.mkdir(parents=True, exist_ok=True)
    results_dir = results_folder("results")
    runs = []
    with tqdm(notebooks, desc="notebooks", unit="nb", disable=not show_progress,
              file=sys.stderr) as bar:
        for notebook in bar:
            bar.set_postfix_str(notebook.stem)
            runs.append(run_notebook(notebook, output_dir, parameters, results_dir))
            status = "ok" if runs[-1].ok else "FAILED"
            bar.write(f"{notebook.stem}: {status} in {runs[-1].seconds:.1f} s", file=sys.stderr)
    return runs


def report(runs: list[NotebookRun], output_dir: Path) -> str:
    results = [r.results for r in runs if r.results is not None]
    lines = ["", format_claims_table(results) if results else "(no claims recorded)", ""]
    for r in runs:
        state = "ok" if r.ok else "FAILED"
        lines.append(f"{r.name:<32} {state:<7} {r.seconds:7.1f} s")
        if r.error:
            lines.append(f"    error: {' '.join(r.error.split())[:300]}")
            lines.append(f"    executed copy kept at {output_dir / (r.name + '.ipynb')}")
        elif not r.claims_hold:
            lines.append("    a claim does not hold (see the table)")
    failed = [r.name for r in runs if not r.ok]
    lines.append("")
    lines.append(f"{len(runs) - len(failed)} notebooks ok, {len(failed)} failed"
                 + (f": {', '.join(failed)}" if failed else ""))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsfh_utils.runner",
        description="Execute the GSHF companion notebooks with papermill and check their claims.",
    )
    parser.add_argument("--profile", default="full", choices=PROFILES,
                        help="'full' for the figures, 'small' for fast tests (default: full)")
    parser.add_argument("-n", "--notebooks", nargs="*", metavar="NN",
                        help="run only these notebooks (number like 01, or full name)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="override a notebook parameter")
    parser.add_argument("--notebook-dir", type=Path, default=REPOSITORY_ROOT / "notebooks")
    parser.add_argument("--output-dir", type=Path, default=REPOSITORY_ROOT / "build" / "executed",
                        help="where executed copies go (default: build/executed)")
    parser.add_argument("--figures-dir", type=Path, help="override figures/ (GSFH_FIGURES_DIR)")
    parser.add_argument("--results-dir", type=Path, help="override results/ (GSFH_RESULTS_DIR)")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the claims table in README.md from the results")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parameters = {name: parse_value(value) for name, value in args.parameter}
    if "profile" in parameters:
        parser.error("set the profile with --profile, not -p profile")
    parameters["profile"] = args.profile
    if args.figures_dir:
        os.environ["GSFH_FIGURES_DIR"] = str(args.figures_dir.resolve())
    if args.results_dir:
        os.environ["GSFH_RESULTS_DIR"] = str(args.results_dir.resolve())
    try:
        notebooks = find_notebooks(args.notebook_dir, args.notebooks)
        if not notebooks:
            raise ValueError(f"no NN_name.ipynb notebooks in {args.notebook_dir}")
        check_parameters(notebooks, parameters)
    except ValueError as exc:
        parser.error(str(exc))
    runs = run(notebooks, args.output_dir.resolve(), parameters, not args.no_progress)
    print(report(runs, args.output_dir))
    if args.update_readme and all(r.ok for r in runs):
        # Every notebook's results file, not only this run's: a partial run keeps the table whole.
        results_dir = results_folder("results")
        every = [results_dir / f"{p.stem}.json" for p in find_notebooks(args.notebook_dir)]
        update_readme(REPOSITORY_ROOT / "README.md", [read_results(p) for p in every if p.exists()])
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
