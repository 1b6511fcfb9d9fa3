"""Build the companion book: ``python book/build.py`` (what ``make book`` runs).

The book renders, never executes. It is assembled in a source folder under ``build/`` (nothing
generated is committed) from:

- ``book/``: ``conf.py``, ``index.md``, ``api.md``, ``bibliography.md``, the API templates and
  the style sheet;
- the README, as the introduction (its claims tables are replaced by a link to the claims page,
  links to files outside the book become plain text, remote images are dropped);
- the executed copy of every notebook of ``notebooks/`` from the last run,
  ``<runs-dir>/<notebook>/<notebook>.ipynb`` (one chapter each, found by the runner's glob, so a
  new notebook gets its chapter without any change here), papermill's injected-parameters cell
  removed; a chapter whose run was not the notebook as committed says so at its top;
- the claims page, generated from the committed ``results/*.json``;
- ``figures/`` (the README's images) and ``references.bib`` (the bibliography);
- MathJax 3 from ``node_modules/`` (``npm ci`` installs the version pinned in
  ``package-lock.json``), copied into the book's static files so that math is typeset offline.

Then ``sphinx-build -W`` (any warning fails the build) writes the HTML into ``<out>/html``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat

from gsfh_utils.lab.io import REPOSITORY_ROOT, output_paths
from gsfh_utils.lab.results import claims_frame, read_results
from gsfh_utils.lab.runner import canonical, find_notebooks

BOOK = Path(__file__).resolve().parent
MATHJAX = REPOSITORY_ROOT / "node_modules" / "mathjax" / "es5"
#: What the book needs of MathJax's es5 folder: the TeX-to-CHTML component and what it loads
#: (fonts, TeX extensions, the menu and its accessibility extensions).
MATHJAX_PARTS = ("tex-chtml.js", "output", "input", "ui", "a11y", "sre", "adaptors")
STATIC_SOURCES = ("conf.py", "index.md", "api.md", "bibliography.md", "_templates", "_static")
INJECTED = "injected-parameters"


class BookError(RuntimeError):
    """A missing input of the book, with what to run to produce it."""


def executed_notebook(notebook: Path, runs_dir: Path) -> Path:
    """The executed copy of ``notebook`` in ``runs_dir``; ``BookError`` if the run is missing or
    did not complete."""
    copy = Path(runs_dir) / notebook.stem / notebook.name
    number = notebook.stem.split("_")[0]
    advice = (f"run `make reproduce` (every notebook) or `make notebook NB={number}` "
              "(this one) first")
    if not copy.is_file():
        raise BookError(f"no executed copy of {notebook.stem} at {copy}: {advice}")
    results = output_paths(copy.parent, notebook.stem)["results"]
    if not results.is_file() or not read_results(results)["complete"]:
        raise BookError(f"the last run of {notebook.stem} did not complete ({results}): {advice}")
    return copy


def chapter(copy: Path) -> nbformat.NotebookNode:
    """The executed notebook as a chapter: papermill's injected-parameters cell removed; a note
    at the top when the run was not the notebook as committed (another profile or parameters)."""
    nb = nbformat.read(copy, as_version=4)
    nb.cells = [cell for cell in nb.cells if INJECTED not in cell.metadata.get("tags", [])]
    results = read_results(output_paths(copy.parent, copy.stem)["results"])
    parameters = nb.metadata.get("papermill", {}).get("parameters", {})
    if not canonical(parameters):
        given = ", ".join(f"`{name} = {value!r}`" for name, value in parameters.items())
        note = nbformat.v4.new_markdown_cell(
            ":::{note}\nThis chapter was rendered from a run with " + given
            + f" (profile `{results['profile']}`), not from the notebook as committed (full "
            "profile, no parameter changed): its numbers and figures differ from those of the "
            "committed results.\n:::")
        heading = next((i for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"), -1)
        nb.cells.insert(heading + 1, note)
    return nb


def _html_table(frame) -> str:
    return frame.to_html(index=False, escape=True, border=0, classes="table claims-table")


def claims_page(results_dir: Path) -> str:
    """The claims page (MyST): for each committed results file, its headline claims (theorems,
    findings, skipped claims) and its sanity checks (identities), as HTML tables."""
    paths = sorted(Path(results_dir).glob("*.json"))
    if not paths:
        raise BookError(f"no results files in {results_dir}: run `make reproduce` first")
    lines = ["# The claims", "",
             "Every claim recorded by the committed results (`results/<notebook>.json`, written by "
             "the last complete, passing, full-profile run of each notebook). A **theorem** is "
             "measured against the theory's value, a **finding** is an effect with its test and "
             "p-value (corrected for the comparisons of its family), an **identity** is exact "
             "mathematics checked to round-off (a sanity check of the code, listed apart).", ""]
    for path in paths:
        data = read_results(path)
        lines += [f"## {data['notebook']}", "",
                  f"Profile `{data['profile']}`, seed `{data['seed']}`; "
                  f"{sum(c['holds'] for c in data['claims'])} of {len(data['claims'])} claims "
                  "hold.", ""]
        for title, kinds, skipped in (("Results", ("theorem", "finding"), True),
                                      ("Sanity checks", ("identity",), False)):
            frame = claims_frame([data], kinds=kinds, with_notebook=False, with_skipped=skipped)
            if len(frame):
                lines += [f"### {title}", "", "```{raw} html", _html_table(frame), "```", ""]
    return "\n".join(lines)


_LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")


def introduction(readme: str, source: Path) -> str:
    """The README as the book's introduction: the claims section (tables the claims page shows
    in full) replaced by a link to that page; remote images dropped (a page may load nothing
    from the network); links to files outside the book turned into plain text."""
    def replace(match: re.Match) -> str:
        image, text, target = match.groups()
        if re.match(r"[a-z]+:", target):
            return "" if image else match.group(0)
        if (source / target.split("#")[0]).exists():
            return match.group(0)
        return text

    badges = re.sub(r"\[(!\[[^\]]*\]\(https?:[^)]*\))\]\([^)]*\)", r"\1", readme)
    head, rest = _LINK.sub(replace, badges).split("\n## The claims\n", 1)
    tail = rest.split("\n## ", 1)[1]
    return (f"{head}\n## The claims\n\nThe table of every claim, generated from `results/`, is "
            f"on the [claims page](claims.md).\n\n## {tail}")


def bibliography(bibtex: str) -> str:
    """The BibTeX entries with their inline math as text (``{$K$}-wise`` becomes ``{K}-wise``):
    the bibliography renders entries as text, where a formula would stay raw."""
    return re.sub(r"\$([^$]*)\$", r"\1", bibtex)


def assemble(source: Path, *, runs_dir: Path, results_dir: Path) -> None:
    """Write the book's Sphinx source folder ``source`` (emptied first)."""
    if not (MATHJAX / "tex-chtml.js").is_file():
        raise BookError(f"MathJax is missing ({MATHJAX}): run `npm ci` (pinned in "
                        "package-lock.json)")
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    for name in STATIC_SOURCES:
        origin = BOOK / name
        (shutil.copytree if origin.is_dir() else shutil.copyfile)(origin, source / name)
    for part in MATHJAX_PARTS:
        origin, target = MATHJAX / part, source / "_static" / "mathjax" / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if origin.is_dir() else shutil.copyfile)(origin, target)
    shutil.copytree(REPOSITORY_ROOT / "figures", source / "figures")
    (source / "references.bib").write_text(
        bibliography((REPOSITORY_ROOT / "references.bib").read_text()))
    notebooks = find_notebooks(REPOSITORY_ROOT / "notebooks")
    (source / "notebooks").mkdir()
    for notebook in notebooks:
        nbformat.write(chapter(executed_notebook(notebook, runs_dir)),
                       source / "notebooks" / notebook.name)
    (source / "claims.md").write_text(claims_page(results_dir))
    (source / "readme.md").write_text(
        introduction((REPOSITORY_ROOT / "README.md").read_text(), source))


def build(out: Path, *, runs_dir: Path, results_dir: Path) -> Path:
    """Assemble the sources into ``out/source`` and render them into ``out/html`` with every
    warning an error; returns the HTML folder."""
    source, html = Path(out) / "source", Path(out) / "html"
    assemble(source, runs_dir=runs_dir, results_dir=results_dir)
    shutil.rmtree(html, ignore_errors=True)
    command = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
               "-d", str(Path(out) / "doctrees"), str(source), str(html)]
    if subprocess.run(command, check=False).returncode:
        raise BookError("sphinx-build failed (warnings are errors): see the messages above")
    return html


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python book/build.py", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=REPOSITORY_ROOT / "build" / "runs",
                        help="where the executed notebooks are (default: build/runs)")
    parser.add_argument("--results-dir", type=Path, default=REPOSITORY_ROOT / "results",
                        help="the results files of the claims page (default: results/)")
    parser.add_argument("--out", type=Path, default=REPOSITORY_ROOT / "build" / "book",
                        help="the build folder; the HTML goes to <out>/html (default: build/book)")
    args = parser.parse_args(argv)
    try:
        html = build(args.out, runs_dir=args.runs_dir, results_dir=args.results_dir)
    except BookError as exc:
        print(f"make book: {exc}", file=sys.stderr)
        return 1
    print(f"the book is in {html}; open {html / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
