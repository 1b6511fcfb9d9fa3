"""The notebook runner: discovery, parameters, README block, the report, and one end-to-end run
of a tiny two-notebook folder (the only test here that starts a kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

from gsfh_utils.runner import (
    README_END,
    README_START,
    NotebookRun,
    check_parameters,
    find_notebooks,
    main,
    parse_value,
    report,
    update_readme,
)

PARAMETERS = 'profile = "small"\nseed = 0\neta = 1.0\n'


def make_notebook(path: Path, parameters: str | None = PARAMETERS, *cells: str) -> Path:
    """A notebook with a first code cell tagged ``parameters`` and the given code cells."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    if parameters is not None:
        notebook.cells.append(nbformat.v4.new_code_cell(parameters,
                                                        metadata={"tags": ["parameters"]}))
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    nbformat.write(notebook, path)
    return path


# --- discovery ----------------------------------------------------------------------------------


@pytest.fixture
def notebook_folder(tmp_path):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ["02_second.ipynb", "01_first.ipynb", "10_tenth.ipynb",  # numbered: kept
                 "notes.ipynb", "1_short.ipynb", "03_Upper.ipynb", "04-dash.ipynb",  # ignored
                 "05_text.txt"]:
        (folder / name).write_text("{}")
    return folder


def test_find_notebooks_in_order_and_ignores_unnumbered_files(notebook_folder):
    assert [p.name for p in find_notebooks(notebook_folder)] == [
        "01_first.ipynb", "02_second.ipynb", "10_tenth.ipynb"]


def test_find_notebooks_selection_by_number_or_name(notebook_folder):
    assert [p.stem for p in find_notebooks(notebook_folder, ["02"])] == ["02_second"]
    assert [p.stem for p in find_notebooks(notebook_folder, ["10", "01_first"])] == [
        "10_tenth", "01_first"]  # in the order asked for
    assert [p.stem for p in find_notebooks(notebook_folder, ["01", "01_first"])] == ["01_first"]
    assert find_notebooks(notebook_folder, []) == find_notebooks(notebook_folder)


@pytest.mark.parametrize("wanted", ["05", "03", "first", "1", "notes"])
def test_unknown_selection_is_a_value_error(notebook_folder, wanted):
    with pytest.raises(ValueError, match=f"notebook '{wanted}' not found.*01_first"):
        find_notebooks(notebook_folder, [wanted])


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("3", 3), ("1e-3", 1e-3), ("-2", -2), ("'full'", "full"), ("abc", "abc"),
     ("[1, 2]", [1, 2]), ("True", True), ("None", None), ("(1, 'a')", (1, "a")),
     ("inf", "inf"), ("", "")],
)
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


# --- parameters -----------------------------------------------------------------------------


@pytest.fixture
def parameterised(tmp_path):
    first = make_notebook(tmp_path / "01_a.ipynb")
    second = make_notebook(tmp_path / "02_b.ipynb", 'profile = "small"\nseed = 0\n')
    return first, second


def test_check_parameters_accepts_known_parameters(parameterised):
    first, second = parameterised
    check_parameters([first, second], {"profile": "small", "seed": 3})
    check_parameters([first], {"profile": "full", "eta": 0.1})
    check_parameters([first], {})


def test_check_parameters_rejects_an_unknown_parameter(parameterised):
    first, second = parameterised
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['gamma'\] for 01_a.ipynb"):
        check_parameters([first], {"profile": "small", "gamma": 1.0})
    # eta exists in the first notebook only: the second is named
    with pytest.raises(ValueError, match=r"\['eta'\] for 02_b.ipynb"):
        check_parameters([first, second], {"profile": "small", "eta": 0.5})


@pytest.mark.parametrize("profile", ["medium", "", "FULL", None])
def test_check_parameters_rejects_a_bad_profile(parameterised, profile):
    with pytest.raises(ValueError, match="profile must be one of"):
        check_parameters(list(parameterised), {"profile": profile})


def common_arguments(tmp_path: Path, folder: Path) -> list[str]:
    return ["--notebook-dir", str(folder), "--output-dir", str(tmp_path / "executed"),
            "--figures-dir", str(tmp_path / "figures"), "--results-dir", str(tmp_path / "results"),
            "--no-progress"]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [(["--profile", "medium"], "invalid choice: 'medium'"),
     (["-p", "profile", "small"], "set the profile with --profile"),
     (["-p", "gamma", "1"], "unknown parameter"),
     (["-n", "07"], "notebook '07' not found")],
)
def test_main_rejects_bad_arguments_with_a_usage_error(parameterised, tmp_path, capsys, arguments,
                                                         message):
    with pytest.raises(SystemExit) as exit_info:
        main([*arguments, *common_arguments(tmp_path, tmp_path)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "executed").exists()  # nothing ran


def test_main_with_an_empty_folder_is_a_usage_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(common_arguments(tmp_path, empty))
    assert exit_info.value.code == 2
    assert "no NN_name.ipynb notebooks" in capsys.readouterr().err


# --- README block -------------------------------------------------------------------------------

RESULTS = [{"notebook": "01_a", "profile": "full", "seed": 0, "claims": [
    {"id": "gap", "statement": "gap | identity", "value": 1e-15, "threshold": 1e-12,
     "comparison": "<=", "holds": True}]}]


def test_update_readme_replaces_only_the_block_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{README_START}\nold table\n{README_END}\nafter\n")
    update_readme(readme, RESULTS)
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n" + README_START + "\n")
    assert text.endswith(README_END + "\nafter\n")
    assert "old table" not in text
    block = text.split(README_START)[1].split(README_END)[0]
    assert "| 01_a | `gap` | gap \\| identity | 1e-15 | <= 1e-12 | yes |" in block
    update_readme(readme, RESULTS)  # idempotent
    assert readme.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary file left


def test_update_readme_fills_a_notebook_table_block_from_a_markdown_detail(tmp_path):
    results = [{**RESULTS[0], "claims": [
        {**RESULTS[0]["claims"][0], "details": {"table_markdown": "| a |\n|---|\n| 1 |",
                                                "other_markdown": "not in the README"}}]}]
    readme = tmp_path / "README.md"
    block = "<!-- 01_a/table_markdown:start -->\nstale\n<!-- 01_a/table_markdown:end -->"
    readme.write_text(f"{README_START}\n{README_END}\n{block}\ntail\n")
    update_readme(readme, results)
    text = readme.read_text()
    table = "| a |\n|---|\n| 1 |"
    assert f"<!-- 01_a/table_markdown:start -->\n{table}\n<!-- 01_a/table_markdown:end -->" in text
    assert "stale" not in text and "not in the README" not in text
    assert text.endswith("tail\n")


@pytest.mark.parametrize("content", ["# no markers\n", f"only the start {README_START}\n",
                                     f"only the end {README_END}\n"])
def test_update_readme_without_markers_is_an_error(tmp_path, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    with pytest.raises(ValueError, match="lacks the markers"):
        update_readme(readme, RESULTS)
    assert readme.read_text() == content


# --- the report ---------------------------------------------------------------------------------


def results_with(holds: bool, notebook: str) -> dict:
    return {"notebook": notebook, "profile": "small", "seed": 0, "claims": [
        {"id": f"claim_{notebook}", "statement": "s", "value": 1.0, "threshold": 2.0,
         "comparison": "<=", "holds": holds}]}


def test_report_lists_every_run_and_every_failure(tmp_path):
    runs = [
        NotebookRun("01_ok", 1.25, None, results_with(True, "01_ok")),
        NotebookRun("02_crash", 2.0, "RuntimeError: boom\nTraceback line", None),
        NotebookRun("03_claim", 0.5, None, results_with(False, "03_claim")),
        NotebookRun("04_silent", 0.1, None, None),
    ]
    assert [r.ok for r in runs] == [True, False, False, False]
    text = report(runs, tmp_path / "executed")
    lines = text.splitlines()
    assert any(line.split()[:2] == ["01_ok", "ok"] and "1.2 s" in line for line in lines)
    assert any(line.split()[:2] == ["02_crash", "FAILED"] for line in lines)
    error_line = next(line for line in lines if "error:" in line)
    assert "RuntimeError: boom" in error_line  # the error on one line
    assert f"executed copy kept at {tmp_path / 'executed' / '02_crash.ipynb'}" in text
    assert "a claim does not hold" in text
    assert "claim_01_ok" in text and "claim_03_claim" in text and "NO" in text  # claims table
    assert lines[-1] == "1 notebooks ok, 3 failed: 02_crash, 03_claim, 04_silent"


def test_report_without_any_claim(tmp_path):
    text = report([NotebookRun("01_x", 0.0, "KeyError: 'a'", None)], tmp_path)
    assert "(no claims recorded)" in text
    assert text.splitlines()[-1] == "0 notebooks ok, 1 failed: 01_x"


def test_long_errors_are_cut(tmp_path):
    text = report([NotebookRun("01_x", 0.0, "ValueError: " + "x" * 1000, None)], tmp_path)
    error_line = next(line for line in text.splitlines() if "error:" in line)
    assert len(error_line) <= len("    error: ") + 300


# --- end to end ---------------------------------------------------------------------------------

FIRST_NOTEBOOK_CLAIM = """\
from gsfh_utils import ClaimRegistry

claims = ClaimRegistry("01_first", profile, seed, {"seed": seed})
claims.check("one_below_two", "one is at most two", 1.0, 2.0, "<=")
"""


@pytest.mark.notebook
def test_main_runs_every_notebook_keeps_going_and_fails_overall(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    make_notebook(folder / "01_first.ipynb", 'profile = "small"\nseed = 0\n',
                  FIRST_NOTEBOOK_CLAIM, 'print("first notebook finished")')
    make_notebook(folder / "02_second.ipynb", 'profile = "small"\nseed = 0\n',
                  'raise RuntimeError("deliberate failure")', 'print("never printed")')
    code = main(["--profile", "small", *common_arguments(tmp_path, folder)])
    assert code == 1
    out = capsys.readouterr().out

    # the first notebook ran to completion and wrote its results where --results-dir says
    results = tmp_path / "results" / "01_first.json"
    assert results.exists()
    first = nbformat.read(tmp_path / "executed" / "01_first.ipynb", as_version=4)
    assert first.cells[-1].outputs[0]["text"] == "first notebook finished\n"
    # papermill injected the profile into the executed copy
    assert any("injected-parameters" in cell.metadata.get("tags", []) for cell in first.cells)

    # the second failed, and its partial executed copy is kept for inspection
    second = nbformat.read(tmp_path / "executed" / "02_second.ipynb", as_version=4)
    outputs = [output for cell in second.cells for output in cell.get("outputs", [])]
    assert any(output.get("ename") == "RuntimeError" for output in outputs)
    assert "never printed" not in str(outputs)
    assert not (tmp_path / "results" / "02_second.json").exists()

    # the report: the claim table, and the failure with its error
    assert "one_below_two" in out
    assert "RuntimeError: deliberate failure" in out
    assert out.strip().splitlines()[-1] == "1 notebooks ok, 1 failed: 02_second"
    # nothing was written into the repository's figures/ or results/
    assert not (Path(__file__).resolve().parents[1] / "results" / "01_first.json").exists()
