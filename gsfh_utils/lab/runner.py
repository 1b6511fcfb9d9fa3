"""Execute notebooks with papermill, check their claims, keep what passed.

    python -m gsfh_utils.lab.runner                          # every notebook, full profile
    python -m gsfh_utils.lab.runner -n 02 -p dim 4 --explore # one notebook, a parameter changed
    python -m gsfh_utils.lab.runner --list-parameters -n 03  # what can be changed

Each notebook runs in its own kernel (``cwd = notebooks/``) and writes into a fresh run folder,
``build/runs/<notebook>/`` (its results, figure data, figures and the executed copy). A failing
notebook does not stop the others and its partial copy is kept there. A run that completes with
every claim holding is *promoted* into ``results/`` and ``figures/`` when it is the notebook as
committed (full profile, no parameter changed, not exploring); any other run leaves the committed
outputs untouched. The report lists every claim; the exit status is non-zero if any notebook
failed or any claim does not hold (in explore mode too).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from jupyter_client import AsyncKernelManager

from .io import REPOSITORY_ROOT, atomic_write_text, output_paths, promote
from .parameters import PROFILES
from .results import claims_frame, markdown_table, passing, read_results, text_table

NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
README_CLAIMS = "claims"
README_IDENTITIES = "identities"

#: Annotations of the parameters cell that the runner checks a value against.
TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
         "list": (list, tuple), "dict": (dict,)}


@dataclass
class NotebookRun:
    name: str
    seconds: float
    folder: Path
    error: str | None = None
    results: dict | None = None
    promoted: bool = False

    @property
    def failing_claims(self) -> list[str]:
        return [] if self.results is None else [
            claim["id"] for claim in self.results["claims"] if not claim["holds"]]

    @property
    def ok(self) -> bool:
        return self.error is None and self.results is not None and passing(self.results)


def find_notebooks(folder: Path, selection: list[str] | None = None) -> list[Path]:
    """The ``NN_name.ipynb`` notebooks of ``folder`` in order. ``selection`` picks by number
    (``"01"``), by name (``"01_gibbs_optimality"``) or by path (a copy under any name)."""
    notebooks = sorted(p for p in Path(folder).glob("*.ipynb") if NOTEBOOK_PATTERN.match(p.name))
    if not selection:
        return notebooks
    chosen = []
    for wanted in selection:
        path = Path(wanted)
        if path.suffix == ".ipynb" and path.is_file():
            matches = [path]
        else:
            matches = [p for p in notebooks if wanted in (p.stem, p.stem.split("_")[0])]
        matches = [match.resolve() for match in matches]
        if not matches:
            raise ValueError(f"notebook {wanted!r} not found; available: "
                             f"{[p.stem for p in notebooks]} (or give a path to an .ipynb)")
        chosen.extend(m for m in matches if m not in chosen)
    return chosen


def parse_value(text: str):
    """A parameter value from the command line: a Python literal, else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def notebook_parameters(notebook: Path) -> dict:
    """The parameters cell of ``notebook``: ``{name: {"inferred_type_name", "default",
    "help"}}`` (papermill's inspection)."""
    import papermill

    return papermill.inspect_notebook(str(notebook))


def _type_error(name: str, value, annotation: str, default: str = "") -> str | None:
    if value is None and default == "None":
        return None  # the declared default: sized by the profile
    outer = annotation.split("[", 1)[0].strip()
    if outer not in TYPES:
        return None
    allowed = TYPES[outer]
    if isinstance(value, bool) and bool not in allowed:
        return f"{name} must be {annotation}, got the boolean {value!r}"
    if not isinstance(value, allowed):
        return f"{name} must be {annotation}, got {type(value).__name__} {value!r}"
    inner = annotation[len(outer):].strip("[] ")
    if outer == "list" and inner in TYPES:
        for item in value:
            problem = _type_error(f"every item of {name}", item, inner)
            if problem:
                return problem
    return None


def check_parameters(notebooks: list[Path], parameters: dict) -> None:
    """Every parameter given must be declared in the parameters cell of every notebook run, with
    a value of its annotated type; raises ``ValueError`` naming the first problem."""
    if parameters.get("profile", "full") not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {parameters['profile']!r}")
    for notebook in notebooks:
        known = notebook_parameters(notebook)
        unknown = sorted(set(parameters) - set(known))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} for {notebook.name}; "
                             f"its parameters are {sorted(known)}")
        for name, value in parameters.items():
            problem = _type_error(name, value, known[name]["inferred_type_name"],
                                  known[name]["default"])
            if problem:
                raise ValueError(f"{problem} (in {notebook.name})")


def list_parameters(notebook: Path) -> str:
    """The parameters of ``notebook`` as text: name, type, default and help."""
    lines = [f"{notebook.stem}:"]
    for name, info in notebook_parameters(notebook).items():
        lines.append(f"  {name:<24} {info['inferred_type_name']:<10} {info['default']:<14} "
                     f"{info['help']}".rstrip())
    return "\n".join(lines)


def canonical(parameters: dict) -> bool:
    """A run of the notebook as committed: full profile, no other parameter given."""
    return parameters == {"profile": "full"}


class NotebookKernelManager(AsyncKernelManager):
    """The kernel manager of a run: shuts a kernel down by its shutdown request alone.

    jupyter_client interrupts a kernel (SIGINT) before asking it to shut down, and a kernel that
    is still finishing its last reply then logs "KeyboardInterrupt caught in kernel" into the
    runner's output. When a run shuts its kernel down every cell has finished, so there is
    nothing to interrupt; an interrupt at any other time goes through as usual.
    """

    async def _async_interrupt_kernel(self) -> None:
        if not self.shutting_down:
            await super()._async_interrupt_kernel()


def kernel_config(sockets: Path):
    """The kernel's configuration for a run: IPC transport (Unix sockets ``<sockets>-1`` ...,
    reachable only through the file system) instead of unencrypted TCP on localhost, so the
    kernel has nothing to warn about. ``sockets`` must be absolute and unique to the run (two
    runs at once must not share sockets) and short (a socket path has at most 107 bytes)."""
    from traitlets.config import Config

    return Config({"KernelManager": {"transport": "ipc", "ip": str(sockets)}})


def run_notebook(notebook: Path, parameters: dict, runs_dir: Path) -> NotebookRun:
    """Execute one notebook into a fresh ``runs_dir/<notebook>/``; never raises for a failure
    inside the notebook."""
    import papermill

    folder = Path(runs_dir).resolve() / notebook.stem  # absolute: the kernel runs in notebooks/
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    environment = {"GSFH_NOTEBOOK": notebook.stem, "GSFH_RUN_DIR": str(folder)}
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    start, error = time.perf_counter(), None
    sockets = Path(tempfile.mkdtemp(prefix="gsfh-kernel-"))
    try:
        papermill.execute_notebook(
            str(notebook), str(folder / notebook.name), parameters=parameters,
            cwd=str(notebook.parent), progress_bar=False, request_save_on_cell_execute=True,
            config=kernel_config(sockets / "kernel"), kernel_manager_class=NotebookKernelManager)
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}".strip()
    except Exception as exc:  # kernel death, bad notebook JSON: report, keep going
        error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    seconds = time.perf_counter() - start
    results_path = output_paths(folder, notebook.stem)["results"]
    results = read_results(results_path) if results_path.exists() else None
    if error is None and results is None:
        error = f"the notebook wrote no results file ({results_path}); does it call lab.start?"
    elif error is None and not results["complete"]:
        error = "the notebook did not call nb.finish(): its results are incomplete"
    return NotebookRun(notebook.stem, seconds, folder, error, results)


def run(notebooks: list[Path], parameters: dict, *, runs_dir: Path, destination: Path,
        promote_canonical: bool = True, log=None) -> list[NotebookRun]:
    """Run each notebook in turn (logging one line before and after each to ``log``, by default
    the current ``sys.stderr``); promote each passing canonical run into ``destination``."""
    log = sys.stderr if log is None else log
    runs = []
    for index, notebook in enumerate(notebooks, start=1):
        print(f"[{index}/{len(notebooks)}] {notebook.stem} ...", file=log, flush=True)
        result = run_notebook(notebook, parameters, runs_dir)
        if result.ok and promote_canonical and canonical(parameters):
            promote(result.folder, result.name, destination)
            result.promoted = True
        state = "ok" if result.ok else "FAILED"
        print(f"[{index}/{len(notebooks)}] {notebook.stem}: {state} in {result.seconds:.1f} s",
              file=log, flush=True)
        runs.append(result)
    return runs


def report(runs: list[NotebookRun]) -> str:
    """The claims of every run as a table, then one status line per notebook."""
    results = [r.results for r in runs if r.results is not None]
    frame = claims_frame(results) if results else None
    lines = ["", text_table(frame) if frame is not None and len(frame) else
             "(no claims recorded)", ""]
    for r in runs:
        state = "ok" if r.ok else "FAILED"
        where = "promoted" if r.promoted else f"outputs in {r.folder}"
        lines.append(f"{r.name:<32} {state:<7} {r.seconds:7.1f} s   {where}")
        if r.error:
            lines.append(f"    error: {' '.join(r.error.split())[:300]}")
            lines.append(f"    executed copy kept at {r.folder / (r.name + '.ipynb')}")
        elif r.failing_claims:
            lines.append(f"    claims that do not hold: {', '.join(r.failing_claims)}")
    failed = [r.name for r in runs if not r.ok]
    lines += ["", f"{len(runs) - len(failed)} notebooks ok, {len(failed)} failed"
              + (f": {', '.join(failed)}" if failed else "")]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# The README's generated blocks.
# --------------------------------------------------------------------------------------------


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- {key}:start -->", f"<!-- {key}:end -->"


def _replace_block(text: str, key: str, content: str) -> str:
    start, end = _markers(key)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{content}\n{end}{tail}"


def update_readme(readme: Path, results: list[dict], tables: dict[str, str] | None = None) -> None:
    """Rewrite the generated blocks of the README from complete, passing, full-profile results.

    The headline claims (theorems and findings) go between ``<!-- claims:start -->`` and
    ``<!-- claims:end -->`` (required); the sanity checks into the ``identities`` block if the
    README has one; a notebook's table ``results/<notebook>/<name>.csv`` (given in ``tables`` as
    ``{"<notebook>/<name>": markdown}``) into the block ``<notebook>/<name>`` if present. Refuses
    (``ValueError``) unless every result is complete, passing, full-profile and not exploring, so
    the README never shows numbers that a failed or partial run produced.
    """
    bad = [data["notebook"] for data in results
           if not passing(data) or data["profile"] != "full" or data.get("explore")]
    if bad:
        raise ValueError(f"refusing to update the README: the results of {bad} are not complete, "
                         "passing, full-profile runs")
    text = readme.read_text()
    for key in (README_CLAIMS, *([README_IDENTITIES] if _markers(README_IDENTITIES)[0] in text
                                 else [])):
        start, end = _markers(key)
        if start not in text or end not in text:
            raise ValueError(f"{readme} lacks the markers {start} ... {end}")
        kinds = ("theorem", "finding") if key == README_CLAIMS else ("identity",)
        frame = claims_frame(results, kinds=kinds, with_skipped=key == README_CLAIMS)
        text = _replace_block(text, key, markdown_table(frame))
    for key, markdown in (tables or {}).items():
        start, end = _markers(key)
        if start in text and end in text:
            text = _replace_block(text, key, markdown)
    atomic_write_text(readme, text)


def readme_inputs(notebooks: list[Path], root: Path) -> tuple[list[dict], dict[str, str]]:
    """The results of every notebook under ``root`` and their tables as Markdown; a missing
    results file is a ``ValueError`` (the README would be incomplete)."""
    import pandas as pd

    results, tables = [], {}
    for notebook in notebooks:
        paths = output_paths(root, notebook.stem)
        if not paths["results"].exists():
            raise ValueError(f"refusing to update the README: {paths['results']} is missing")
        data = read_results(paths["results"])
        results.append(data)
        for name, relative in data.get("tables", {}).items():
            if not (root / relative).exists():
                raise ValueError(f"refusing to update the README: {root / relative} is missing")
            tables[f"{notebook.stem}/{name}"] = markdown_table(pd.read_csv(root / relative))
    return results, tables


# --------------------------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gsfh_utils.lab.runner",
        description="Execute the GSHF companion notebooks with papermill and check their claims.")
    parser.add_argument("--profile", default="full", choices=PROFILES,
                        help="'full' for the figures, 'small' for fast tests (default: full)")
    parser.add_argument("-n", "--notebooks", nargs="*", action="extend", metavar="NN",
                        help="run only these notebooks: number (01), name, or path to a copy")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="set a notebook parameter (a Python literal, e.g. 0.5 or \"[1, 2]\")")
    parser.add_argument("--explore", action="store_true",
                        help="record every claim, failing or not, and run each notebook to the "
                             "end (the exit status still reports failing claims)")
    parser.add_argument("--list-parameters", action="store_true",
                        help="print the parameters of the selected notebooks and exit")
    parser.add_argument("--notebook-dir", type=Path, default=REPOSITORY_ROOT / "notebooks")
    parser.add_argument("--runs-dir", type=Path, default=REPOSITORY_ROOT / "build" / "runs",
                        help="where each notebook's run folder goes (default: build/runs)")
    parser.add_argument("--destination", type=Path, default=REPOSITORY_ROOT,
                        help="where passing canonical runs are promoted (default: the repository)")
    parser.add_argument("--no-promote", action="store_true",
                        help="never copy outputs into results/ and figures/")
    parser.add_argument("--update-readme", action="store_true",
                        help="rewrite the README's claims table (only if every notebook of "
                             "this run passed, from complete, passing, full-profile results of "
                             "every notebook)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    parameters = {name: parse_value(value) for name, value in args.parameter}
    for reserved in ("profile", "explore"):
        if reserved in parameters:
            parser.error(f"set {reserved} with --{reserved}, not -p {reserved}")
    parameters["profile"] = args.profile
    if args.explore:
        parameters["explore"] = True
    try:
        notebooks = find_notebooks(args.notebook_dir, args.notebooks)
        if not notebooks:
            raise ValueError(f"no NN_name.ipynb notebooks in {args.notebook_dir}")
        if args.list_parameters:
            print("\n".join(list_parameters(notebook) for notebook in notebooks))
            return 0
        check_parameters(notebooks, parameters)
    except ValueError as exc:
        parser.error(str(exc))
    runs = run(notebooks, parameters, runs_dir=args.runs_dir.resolve(),
               destination=args.destination.resolve(), promote_canonical=not args.no_promote)
    print(report(runs))
    status = 0 if all(r.ok for r in runs) else 1
    if args.update_readme and status:
        print("README not updated: a notebook failed in this run", file=sys.stderr)
    elif args.update_readme:
        try:
            results, tables = readme_inputs(find_notebooks(args.notebook_dir), args.destination)
            update_readme(args.destination / "README.md", results, tables)
        except ValueError as exc:
            print(f"README not updated: {exc}", file=sys.stderr)
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
