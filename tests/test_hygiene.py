"""Committed notebooks follow the conventions: stripped, one annotated and commented parameters
cell, short code, every parameter used, the lab's start and finish, references at the end. The
code passes the linter, and no tracked file points at working notes outside the repository."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys

import papermill
import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks

NOTEBOOKS = find_notebooks(REPOSITORY_ROOT / "notebooks")
IDS = [p.stem for p in NOTEBOOKS]

#: Parameters ``lab.start`` reads itself: a notebook need not mention them as ``p.<name>``.
USED_BY_LAB = {"profile", "explore", "seed", "level"}
MAX_CELL_LINES, MAX_CODE_LINES = 30, 180


def cells(notebook) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def code_cells(notebook) -> list[str]:
    return ["".join(cell["source"]) for cell in cells(notebook) if cell["cell_type"] == "code"]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found"


def test_every_notebook_file_is_numbered():
    names = sorted(p.name for p in (REPOSITORY_ROOT / "notebooks").glob("*.ipynb"))
    assert names == [p.name for p in NOTEBOOKS], "notebooks must be named NN_snake_case.ipynb"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_notebook_is_stripped(notebook):
    data = json.loads(notebook.read_text())
    code = [cell for cell in data["cells"] if cell["cell_type"] == "code"]
    assert all(not cell.get("outputs") for cell in code), "outputs are committed"
    assert all(cell.get("execution_count") is None for cell in code), "execution counts"
    assert data["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_the_first_code_cell_is_the_only_parameters_cell(notebook):
    code = [cell for cell in cells(notebook) if cell["cell_type"] == "code"]
    tagged = [cell for cell in cells(notebook)
              if "parameters" in cell["metadata"].get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0] == code[0], "the parameters cell must be the first code cell"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_every_parameter_is_annotated_and_commented(notebook):
    statements = ast.parse(code_cells(notebook)[0]).body
    plain = [ast.unparse(s) for s in statements
             if not (isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))]
    assert not plain, f"the parameters cell holds more than annotated assignments: {plain}"
    inspected = papermill.inspect_notebook(str(notebook))
    untyped = [name for name, info in inspected.items() if info["inferred_type_name"] == "None"]
    uncommented = [name for name, info in inspected.items() if not info["help"].strip()]
    assert not untyped, f"parameters without a type annotation: {untyped}"
    assert not uncommented, f"parameters without a '#' comment: {uncommented}"
    missing = sorted({"profile", "explore", "seed"} - set(inspected))
    assert not missing, f"the parameters cell must declare {missing}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_every_parameter_is_used(notebook):
    parameters, *rest = code_cells(notebook)
    body = "\n".join(rest)
    declared = papermill.inspect_notebook(str(notebook))
    unused = [name for name in declared if name not in USED_BY_LAB
              and not re.search(rf"\bp\.{re.escape(name)}\b", body)]
    assert not unused, f"parameters never used as p.<name>: {unused}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_the_notebook_starts_and_finishes_a_lab_run(notebook):
    body = "\n".join(code_cells(notebook)[1:])
    assert "lab.start(" in body, "the notebook must call lab.start(globals(), ...)"
    assert "nb.finish()" in body, "the notebook must call nb.finish()"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_code_is_short(notebook):
    lengths = [len(source.splitlines()) for source in code_cells(notebook)]
    long = {index: length for index, length in enumerate(lengths) if length > MAX_CELL_LINES}
    assert not long, f"code cells over {MAX_CELL_LINES} lines (index: lines): {long}"
    assert sum(lengths) < MAX_CODE_LINES, f"{sum(lengths)} lines of code in all"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=IDS)
def test_the_last_cell_holds_the_references(notebook):
    last = cells(notebook)[-1]
    assert last["cell_type"] == "markdown"
    assert "".join(last["source"]).startswith("## References")


def test_code_passes_the_linter():
    """ruff (configured in pyproject.toml) over the package, tests, benchmarks and notebooks."""
    folders = ["gsfh_utils", "tests", "benchmarks", "notebooks"]
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *folders],
                            cwd=REPOSITORY_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


#: Working notes that live outside the repository; a reader of the repository cannot follow them.
#: Built from parts so that this file does not contain them.
FORBIDDEN = ["PAPER" + ".md", "DESIGN" + ".md", "the " + "issue", "the " + "prototype",
             "../" + "shared"]
CHECKED = ("gsfh_utils/", "notebooks/", "tests/", "benchmarks/", "README.md", "Makefile",
           "pyproject.toml")


def test_no_tracked_file_mentions_working_notes():
    listed = subprocess.run(["git", "ls-files", "--", *CHECKED], cwd=REPOSITORY_ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    mentions = []
    for relative in listed.stdout.splitlines():
        path = REPOSITORY_ROOT / relative
        if not path.is_file():  # deleted in the working tree
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # a binary file
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            mentions += [f"{relative}:{number}: {word!r}" for word in FORBIDDEN
                         if word.lower() in line.lower()]
    assert not mentions, "\n".join(mentions)
