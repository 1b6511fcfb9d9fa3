"""The runner: discovery, parameters and their types, the report, the README's blocks, and a few
end-to-end runs of tiny notebooks (marked ``notebook``: each starts a kernel, about 2 s)."""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import nbformat
import pytest
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab.claims import ClaimRegistry
from gsfh_utils.lab.results import dump_results, read_results
from gsfh_utils.lab.runner import (
    NotebookKernelManager,
    NotebookRun,
    build_parser,
    canonical,
    check_parameters,
    find_notebooks,
    kernel_config,
    list_parameters,
    main,
    parse_value,
    readme_inputs,
    report,
    run,
    update_readme,
)

HEADER = '''\
profile: str = "full"  # "small" or "full"
explore: bool = False  # record failing claims and run on
seed: int = 0  # the seed
'''


def make_notebook(path: Path, parameters: str = HEADER, *cells: str) -> Path:
    """A notebook with a first code cell tagged ``parameters`` and the given code cells."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    notebook.cells.append(nbformat.v4.new_code_cell(parameters,
                                                    metadata={"tags": ["parameters"]}))
    notebook.cells.extend(nbformat.v4.new_code_cell(source) for source in cells)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def test_find_notebooks_in_order_ignoring_unnumbered_files(notebook_folder):
    assert [p.name for p in find_notebooks(notebook_folder)] == [
        "01_first.ipynb", "02_second.ipynb", "10_tenth.ipynb"]


def test_find_notebooks_by_number_or_name(notebook_folder):
    assert [p.stem for p in find_notebooks(notebook_folder, ["02"])] == ["02_second"]
    assert [p.stem for p in find_notebooks(notebook_folder, ["10", "01_first"])] == [
        "10_tenth", "01_first"]  # in the order asked for
    assert [p.stem for p in find_notebooks(notebook_folder, ["01", "01_first"])] == ["01_first"]
    assert find_notebooks(notebook_folder, []) == find_notebooks(notebook_folder)


def test_find_notebooks_by_path_under_any_name(notebook_folder, tmp_path):
    copy = tmp_path / "elsewhere" / "my variant.ipynb"
    copy.parent.mkdir()
    copy.write_text("{}")
    unnumbered = notebook_folder / "notes.ipynb"
    assert find_notebooks(notebook_folder, [str(copy), "02", str(unnumbered)]) == [
        copy.resolve(), notebook_folder / "02_second.ipynb", unnumbered.resolve()]


@pytest.mark.parametrize("wanted", ["05", "03", "first", "1", "notes", "missing.ipynb"])
def test_an_unknown_selection_is_a_value_error(notebook_folder, wanted):
    with pytest.raises(ValueError, match=f"notebook '{wanted}' not found.*01_first"):
        find_notebooks(notebook_folder, [wanted])


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("3", 3), ("1e-3", 1e-3), ("-2", -2), ("'full'", "full"), ("abc", "abc"),
     ("[1, 2.5]", [1, 2.5]), ("True", True), ("None", None), ("(1, 'a')", (1, "a")),
     ("{'a': 1}", {"a": 1}), ("inf", "inf"), ("", ""), ("1 + ", "1 + ")],
)
def test_parse_value(text, value):
    parsed = parse_value(text)
    assert parsed == value and type(parsed) is type(value)


# --- parameters ---------------------------------------------------------------------------------

TYPED = HEADER + '''\
eta: float = 1.0  # the KL coefficient
steps: int = None  # (small 2, full 5)
grid: list[float] = [0.5]  # the grid of eta
counts: list[int] = [1]  # sizes
names: list = ["a"]  # anything listed
label: str = "x"  # a label
options: dict = {}  # solver options
untyped = 3
'''


@pytest.fixture
def typed(tmp_path):
    return make_notebook(tmp_path / "01_a.ipynb", TYPED)


@pytest.fixture
def short(tmp_path):
    return make_notebook(tmp_path / "02_b.ipynb")


@pytest.mark.parametrize("parameters", [
    {}, {"profile": "small"}, {"profile": "full", "explore": True, "seed": 3},
    {"eta": 0.5}, {"eta": 2}, {"steps": 3}, {"grid": [1, 2.5]}, {"grid": (0.1,)}, {"grid": []},
    {"counts": [1, 2]}, {"names": [1, "b", None]}, {"label": "y"}, {"options": {"tol": 1e-9}},
    {"untyped": "anything"}])
def test_check_parameters_accepts_declared_well_typed_values(typed, parameters):
    check_parameters([typed], parameters)


@pytest.mark.parametrize(("parameters", "message"), [
    ({"eta": "abc"}, "eta must be float, got str 'abc'"),
    ({"eta": True}, "eta must be float, got the boolean True"),
    ({"steps": 2.5}, "steps must be int, got float 2.5"),
    ({"steps": False}, "steps must be int, got the boolean False"),
    ({"seed": "1"}, "seed must be int, got str '1'"),
    ({"explore": 1}, "explore must be bool, got int 1"),
    ({"grid": 0.5}, "grid must be list[float], got float 0.5"),
    ({"grid": [1.0, "a"]}, "every item of grid must be float, got str 'a'"),
    ({"grid": [1.0, True]}, "every item of grid must be float, got the boolean True"),
    ({"counts": [1, 1.5]}, "every item of counts must be int, got float 1.5"),
    ({"names": "a"}, "names must be list, got str 'a'"),
    ({"label": 3}, "label must be str, got int 3"),
    ({"options": [1]}, "options must be dict, got list [1]"),
])
def test_check_parameters_names_an_ill_typed_value_and_its_annotation(typed, parameters,
                                                                       message):
    with pytest.raises(ValueError) as error:
        check_parameters([typed], parameters)
    assert str(error.value) == f"{message} (in 01_a.ipynb)"


def test_check_parameters_names_the_notebook_that_lacks_a_parameter(typed, short):
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['gamma'\] for 01_a.ipynb"):
        check_parameters([typed], {"profile": "small", "gamma": 1.0})
    with pytest.raises(ValueError, match=r"\['eta'\] for 02_b.ipynb; its parameters are "
                                         r"\['explore', 'profile', 'seed'\]"):
        check_parameters([typed, short], {"eta": 0.5})


@pytest.mark.parametrize("profile", ["medium", "", "FULL", None])
def test_check_parameters_rejects_a_bad_profile(typed, profile):
    with pytest.raises(ValueError, match="profile must be one of"):
        check_parameters([typed], {"profile": profile})


def test_list_parameters(typed):
    lines = list_parameters(typed).splitlines()
    assert lines[0] == "01_a:"
    rows = {line.split()[0]: line.split(maxsplit=3)[1:] for line in lines[1:]}
    assert list(rows) == ["profile", "explore", "seed", "eta", "steps", "grid", "counts",
                          "names", "label", "options", "untyped"]
    assert rows["eta"] == ["float", "1.0", "the KL coefficient"]
    assert rows["steps"] == ["int", "None", "(small 2, full 5)"]
    assert rows["grid"] == ["list[float]", "[0.5]", "the grid of eta"]
    assert rows["untyped"] == ["None", "3"]  # no annotation, no help
    assert all(line == line.rstrip() for line in lines)


@pytest.mark.parametrize(("parameters", "expected"), [
    ({"profile": "full"}, True), ({"profile": "small"}, False),
    ({"profile": "full", "explore": True}, False), ({"profile": "full", "seed": 1}, False),
    ({"profile": "full", "eta": 0.5}, False)])
def test_canonical_is_the_notebook_as_committed(parameters, expected):
    assert canonical(parameters) is expected


# --- the report ---------------------------------------------------------------------------------


def results_with(notebook: str, *, holds: bool, complete: bool = True) -> dict:
    claims = ClaimRegistry(explore=True)
    claims.identity(f"claim_{notebook}", "s", value=0.5 if holds else 2.0)
    return {"notebook": notebook, "profile": "small", "seed": 0, "explore": False,
            "complete": complete, "parameters": {}, "claims": claims.to_list(), "skipped": []}


def test_report_lists_every_run_and_every_failure(tmp_path):
    runs = [
        NotebookRun("01_ok", 1.25, tmp_path / "01_ok", None, results_with("01_ok", holds=True),
                    promoted=True),
        NotebookRun("02_crash", 2.0, tmp_path / "02_crash", "RuntimeError: boom\nTraceback",
                    results_with("02_crash", holds=True, complete=False)),
        NotebookRun("03_claim", 0.5, tmp_path / "03_claim", None,
                    results_with("03_claim", holds=False)),
        NotebookRun("04_silent", 0.1, tmp_path / "04_silent", "no results file", None),
    ]
    assert [r.ok for r in runs] == [True, False, False, False]
    assert [r.failing_claims for r in runs] == [[], [], ["claim_03_claim"], []]
    text = report(runs)
    lines = text.splitlines()
    status = {line.split()[0]: line for line in lines
              if len(line.split()) > 1 and line.split()[1] in ("ok", "FAILED")}
    assert list(status) == ["01_ok", "02_crash", "03_claim", "04_silent"]
    assert status["01_ok"].split()[1:4] == ["ok", "1.2", "s"]
    assert status["01_ok"].endswith("promoted")
    assert status["02_crash"].split()[1] == "FAILED"
    assert status["02_crash"].endswith(f"outputs in {tmp_path / '02_crash'}")
    assert "    error: RuntimeError: boom Traceback" in lines  # the error on one line
    assert f"    executed copy kept at {tmp_path / '02_crash' / '02_crash.ipynb'}" in lines
    assert "    claims that do not hold: claim_03_claim" in lines
    table = [line.split()[:3] for line in lines if line.startswith(("01_ok ", "03_claim "))
             and "claim_" in line]
    assert table == [["01_ok", "identity", "claim_01_ok"], ["03_claim", "identity",
                                                            "claim_03_claim"]]
    assert lines[-1] == "1 notebooks ok, 3 failed: 02_crash, 03_claim, 04_silent"


def test_report_without_any_claim(tmp_path):
    text = report([NotebookRun("01_x", 0.0, tmp_path, "KeyError: 'a'", None)])
    assert "(no claims recorded)" in text
    assert text.splitlines()[-1] == "0 notebooks ok, 1 failed: 01_x"


def test_long_errors_are_cut(tmp_path):
    text = report([NotebookRun("01_x", 0.0, tmp_path, "ValueError: " + "x" * 1000, None)])
    error_line = next(line for line in text.splitlines() if "error:" in line)
    assert len(error_line) == len("    error: ") + 300


# --- the README's generated blocks --------------------------------------------------------------


def full_results(notebook: str = "07_x", **changes) -> dict:
    """Complete, passing, full-profile results with a theorem, an identity and a table."""
    claims = ClaimRegistry()
    claims.theorem("bound", "gap | bound", measured=0.04, theory=0.3)
    claims.identity("sums", "sums to one", value=0.5)
    return {"notebook": notebook, "profile": "full", "seed": 0, "explore": False,
            "complete": True, "parameters": {"profile": "full"}, "claims": claims.to_list(),
            "skipped": [], "figures": {}, "tables": {"summary": f"results/{notebook}/summary.csv"},
            **changes}


def block(key: str, content: str) -> str:
    return f"<!-- {key}:start -->\n{content}\n<!-- {key}:end -->"


README = ("# Title\n\nintro\n" + block("claims", "stale claims") + "\nbetween\n"
          + block("identities", "stale identities") + "\n" + block("07_x/summary", "stale table")
          + "\nafter\n")


def blocks_of(text: str) -> dict[str, str]:
    return {key: text.split(f"<!-- {key}:start -->\n")[1].split(f"\n<!-- {key}:end -->")[0]
            for key in ("claims", "identities", "07_x/summary") if f"<!-- {key}:start" in text}


def test_update_readme_replaces_only_the_marked_blocks(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme(readme, [full_results()], {"07_x/summary": "| a |\n|---|\n| 1 |",
                                             "07_x/absent": "not in the README"})
    text = readme.read_text()
    blocks = blocks_of(text)
    assert text.replace(blocks["claims"], "C").replace(blocks["identities"], "I").replace(
        blocks["07_x/summary"], "T") == README.replace("stale claims", "C").replace(
        "stale identities", "I").replace("stale table", "T")
    claims_lines = blocks["claims"].splitlines()
    assert claims_lines[0].startswith("| notebook | kind | claim |")
    assert claims_lines[2:] == ["| 07_x | theorem | `bound` | gap \\| bound | 0.04 | ≤ 0.3 | "
                                "ratio 0.1333 | holds |"]
    assert blocks["identities"].splitlines()[2:] == [
        "| 07_x | identity | `sums` | sums to one | 0.5 | ≤ 1 |  | holds |"]
    assert blocks["07_x/summary"] == "| a |\n|---|\n| 1 |"
    assert "not in the README" not in text
    update_readme(readme, [full_results()], {"07_x/summary": "| a |\n|---|\n| 1 |"})
    assert readme.read_text() == text  # idempotent
    assert [p.name for p in tmp_path.iterdir()] == ["README.md"]  # no temporary left


def test_identities_stay_out_of_a_readme_without_their_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("top\n" + block("claims", "") + "\nbottom\n")
    update_readme(readme, [full_results()])
    text = readme.read_text()
    assert "`bound`" in text and "`sums`" not in text
    assert text.startswith("top\n<!-- claims:start -->\n") and text.endswith("end -->\nbottom\n")


@pytest.mark.parametrize("changes", [
    {"complete": False}, {"profile": "small"}, {"explore": True},
    {"claims": [{**full_results()["claims"][0], "holds": False}]}])
def test_update_readme_refuses_results_that_are_not_a_passing_canonical_run(tmp_path, changes):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    with pytest.raises(ValueError, match=r"refusing to update the README: the results of "
                                         r"\['08_bad'\]"):
        update_readme(readme, [full_results(), full_results("08_bad", **changes)])
    assert readme.read_text() == README


@pytest.mark.parametrize("content", ["# no markers\n", "only the start <!-- claims:start -->\n",
                                     "only the end <!-- claims:end -->\n"])
def test_update_readme_without_the_claims_markers_is_an_error(tmp_path, content):
    readme = tmp_path / "README.md"
    readme.write_text(content)
    with pytest.raises(ValueError, match="lacks the markers"):
        update_readme(readme, [full_results()])
    assert readme.read_text() == content


def test_readme_inputs_reads_results_and_their_tables(tmp_path):
    notebooks = [make_notebook(tmp_path / "notebooks" / "07_x.ipynb")]
    (tmp_path / "results" / "07_x").mkdir(parents=True)
    (tmp_path / "results" / "07_x.json").write_text(dump_results(full_results()))
    (tmp_path / "results" / "07_x" / "summary.csv").write_text("method,reward\na|b,0.5\n")
    results, tables = readme_inputs(notebooks, tmp_path)
    assert results == [read_results(tmp_path / "results" / "07_x.json")]
    assert tables == {"07_x/summary": "| method | reward |\n|---|---|\n| a\\|b | 0.5 |"}
    notebooks.append(make_notebook(tmp_path / "notebooks" / "08_y.ipynb"))
    with pytest.raises(ValueError, match="08_y.json is missing"):
        readme_inputs(notebooks, tmp_path)


# --- the command line without kernels -----------------------------------------------------------


def arguments(tmp_path: Path, folder: Path) -> list[str]:
    return ["--notebook-dir", str(folder), "--runs-dir", str(tmp_path / "runs"),
            "--destination", str(tmp_path / "destination")]


@pytest.mark.parametrize(("given", "message"), [
    (["--profile", "medium"], "invalid choice: 'medium'"),
    (["-p", "profile", "small"], "set profile with --profile, not -p profile"),
    (["-p", "explore", "True"], "set explore with --explore, not -p explore"),
    (["-p", "gamma", "1"], "unknown parameter(s) ['gamma'] for 01_a.ipynb"),
    (["-p", "eta", "abc"], "eta must be float, got str 'abc' (in 01_a.ipynb)"),
    (["-p", "steps", "2.5"], "steps must be int, got float 2.5"),
    (["-n", "07"], "notebook '07' not found")])
def test_main_rejects_bad_arguments_before_running_anything(typed, tmp_path, capsys, given,
                                                            message):
    with pytest.raises(SystemExit) as exit_info:
        main([*given, *arguments(tmp_path, typed.parent)])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "destination").exists()


def test_main_with_an_empty_folder_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(arguments(tmp_path, tmp_path / "empty"))
    assert exit_info.value.code == 2
    assert "no NN_name.ipynb notebooks" in capsys.readouterr().err


def test_main_lists_parameters_without_running(typed, short, tmp_path, capsys):
    assert main(["--list-parameters", *arguments(tmp_path, typed.parent)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "01_a:" and "02_b:" in out.splitlines()
    assert "the KL coefficient" in out
    assert not (tmp_path / "runs").exists()


# --- end to end: tiny notebooks in real kernels -------------------------------------------------

VALUE = "value: float = 0.5  # the measured value; above 1 the claim fails\n"
START = "from gsfh_utils import lab\n\nnb = lab.start(globals(), small={}, full={})"
FIGURE = """\
import matplotlib.pyplot as plt

fig, ax = plt.subplots()
ax.plot([0.0, 1.0], [0.0, nb.params.value])
nb.figure(fig, "line", data={"x": [0.0, 1.0], "y": [0.0, nb.params.value]})"""
CLAIM = ('nb.claims.theorem("bounded", "the value is at most one", measured=nb.params.value, '
         'theory=1.0)')
AFTER = 'print("after the claim")'
LATER = 'nb.claims.identity("later", "a later claim", value=0.0)'
FINISH = "nb.finish()"


def tiny(path: Path, value: float = 0.5) -> Path:
    """A notebook with a figure, a theorem on ``value``, a printing cell and a later claim."""
    return make_notebook(path, HEADER + VALUE.replace("0.5", repr(value)), START, FIGURE, CLAIM,
                         AFTER, LATER, FINISH)


def listing(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def cell_outputs(executed: Path, source: str) -> list[dict]:
    notebook = nbformat.read(executed, as_version=4)
    return next(cell.outputs for cell in notebook.cells if cell.source == source)


@pytest.mark.notebook
def test_renamed_copies_write_their_own_results(tmp_path, capsys):
    """A copy named ``08_my_variant`` in the folder and an unnumbered copy given by path each
    write results under their own name; a small-profile run is not promoted."""
    folder = tmp_path / "notebooks"
    original = tiny(folder / "01_base.ipynb")
    shutil.copy(original, folder / "08_my_variant.ipynb")
    unnumbered = tmp_path / "elsewhere" / "variant.ipynb"
    unnumbered.parent.mkdir()
    shutil.copy(original, unnumbered)
    code = main(["-n", "08", str(unnumbered), "--profile", "small",
                 *arguments(tmp_path, folder)])
    assert code == 0, capsys.readouterr()
    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["08_my_variant", "variant"]
    for name in ("08_my_variant", "variant"):
        data = read_results(runs / name / "results" / f"{name}.json")
        assert data["notebook"] == name and data["profile"] == "small" and data["complete"]
        assert data["figures"]["line"]["png"] == f"figures/{name}/line.png"
        assert (runs / name / "figures" / name / "line.png").exists()
        assert (runs / name / f"{name}.ipynb").exists()  # the executed copy
    assert not (tmp_path / "destination").exists()  # small profile: nothing promoted


@pytest.mark.notebook
def test_explore_mode_runs_past_a_failing_claim_and_still_fails(tmp_path, capsys):
    folder = tmp_path / "notebooks"
    tiny(folder / "01_base.ipynb", value=2.0)
    code = main(["--explore", "--profile", "small", *arguments(tmp_path, folder)])
    out = capsys.readouterr().out
    assert code == 1
    run = tmp_path / "runs" / "01_base"
    data = read_results(run / "results" / "01_base.json")
    assert data["explore"] is True and data["complete"] is True
    assert [(c["id"], c["holds"]) for c in data["claims"]] == [("bounded", False),
                                                               ("later", True)]
    assert [o["text"] for o in cell_outputs(run / "01_base.ipynb", AFTER)] == [
        "after the claim\n"]
    assert "claims that do not hold: bounded" in out
    assert out.strip().splitlines()[-1] == "0 notebooks ok, 1 failed: 01_base"
    assert not (tmp_path / "destination").exists()


@pytest.mark.notebook
def test_a_failed_run_leaves_the_committed_outputs_and_readme_untouched(tmp_path, capsys):
    """A passing canonical run is promoted and fills the README; a failing version of the same
    notebook then stops at its claim, keeps its partial outputs in its run folder, and changes
    neither the promoted results and figures nor the README."""
    folder, destination = tmp_path / "notebooks", tmp_path / "destination"
    destination.mkdir()
    (destination / "README.md").write_text("# T\n" + block("claims", "") + "\n")
    notebook = tiny(folder / "01_base.ipynb")
    assert main(["--update-readme", *arguments(tmp_path, folder)]) == 0, capsys.readouterr()
    committed = listing(destination)
    assert {"results/01_base.json", "results/01_base/line.csv", "figures/01_base/line.png",
            "figures/01_base/line.pdf", "README.md"} == set(committed)
    assert "`bounded`" in committed["README.md"].decode()
    assert read_results(destination / "results" / "01_base.json")["complete"] is True

    tiny(notebook, value=2.0)
    capsys.readouterr()
    assert main(["--update-readme", *arguments(tmp_path, folder)]) == 1
    captured = capsys.readouterr()
    assert "README not updated" in captured.err
    assert "ClaimFailed" in captured.out
    assert listing(destination) == committed
    run = tmp_path / "runs" / "01_base"
    partial = read_results(run / "results" / "01_base.json")
    assert partial["complete"] is False
    assert [(c["id"], c["holds"]) for c in partial["claims"]] == [("bounded", False)]
    assert (run / "results" / "01_base" / "line.csv").read_text() == "x,y\n0,0\n1,2\n"
    errors = [o for o in cell_outputs(run / "01_base.ipynb", CLAIM) if o["output_type"] == "error"]
    assert [o["ename"] for o in errors] == ["ClaimFailed"]
    assert cell_outputs(run / "01_base.ipynb", AFTER) == []  # the failing claim stopped the run


@pytest.mark.notebook
def test_a_passing_run_with_a_changed_parameter_is_not_promoted(tmp_path, monkeypatch):
    """As ``-p value 0.25`` would run it, with run and destination folders given relative to
    the current directory (the kernel itself runs in the notebook's folder)."""
    tiny(tmp_path / "notebooks" / "01_base.ipynb")
    monkeypatch.chdir(tmp_path)
    (result,) = run(find_notebooks(Path("notebooks")), {"value": 0.25, "profile": "full"},
                    runs_dir=Path("runs"), destination=Path("destination"), log=io.StringIO())
    assert result.ok and not result.promoted
    assert result.folder == tmp_path / "runs" / "01_base"
    data = read_results(tmp_path / "runs" / "01_base" / "results" / "01_base.json")
    assert data["profile"] == "full" and data["parameters"]["value"] == 0.25
    assert data["complete"] and all(claim["holds"] for claim in data["claims"])
    assert not (tmp_path / "destination").exists()


def test_repeated_notebook_options_add_up():
    arguments = build_parser().parse_args(["-n", "01", "-n", "05", "03"])
    assert arguments.notebooks == ["01", "05", "03"]


# --- property: any mix of passing and failing toy notebooks -------------------------------------

#: Toy notebooks by outcome: the code cells after the parameters cell, and whether the run passes.
OUTCOMES = {
    "passes": ((START, CLAIM, LATER, FINISH), True),
    "claim_fails": ((START, 'nb.claims.theorem("bounded", "at most one", measured=2.0, '
                             'theory=1.0)', FINISH), False),
    "crashes": ((START, 'raise RuntimeError("boom")', FINISH), False),
    "unfinished": ((START, CLAIM), False),
    "silent": (('print("no lab.start")',), False),
}


def execute_in_process(notebook, output, parameters, cwd, **_):
    """Stands in for papermill.execute_notebook without a kernel: the code cells run in this
    process, the injected parameters after the parameters cell, an exception becomes papermill's
    execution error (what the runner sees from a kernel)."""
    import papermill

    cells = nbformat.read(notebook, as_version=4).cells
    namespace = {}
    for index, cell in enumerate(cells):
        try:
            exec(cell.source, namespace)
            if index == 0:
                namespace.update(parameters)
        except Exception as exc:
            raise papermill.PapermillExecutionError(index, index, cell.source,
                                                    type(exc).__name__, str(exc), []) from exc
    shutil.copy(notebook, output)


@examples(15)
@given(st.lists(st.sampled_from(sorted(OUTCOMES)), min_size=1, max_size=5))
def test_property_any_mix_of_toy_notebooks_gives_the_right_summary_and_exit_code(outcomes):
    """Every toy notebook passes or fails as its outcome says; the last line counts them and
    names the failures in order; the exit status is 0 exactly when every notebook passes."""
    import papermill

    with tempfile.TemporaryDirectory() as temporary, pytest.MonkeyPatch.context() as patch:
        patch.setattr(papermill, "execute_notebook", execute_in_process)
        tmp_path = Path(temporary)
        folder = tmp_path / "notebooks"
        names = [f"{index + 1:02d}_{outcome}" for index, outcome in enumerate(outcomes)]
        for name, outcome in zip(names, outcomes, strict=True):
            make_notebook(folder / f"{name}.ipynb", HEADER + VALUE, *OUTCOMES[outcome][0])
        output = io.StringIO()
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()):
            code = main(["--profile", "small", *arguments(tmp_path, folder)])
    failed = [name for name, outcome in zip(names, outcomes, strict=True)
              if not OUTCOMES[outcome][1]]
    summary = f"{len(names) - len(failed)} notebooks ok, {len(failed)} failed"
    assert output.getvalue().strip().splitlines()[-1] == summary + (
        f": {', '.join(failed)}" if failed else "")
    assert code == (1 if failed else 0)


def test_kernel_config_uses_ipc_sockets_at_the_given_path(tmp_path):
    config = kernel_config(tmp_path / "kernel")
    assert config.KernelManager.transport == "ipc"
    assert config.KernelManager.ip == str(tmp_path / "kernel")


@pytest.mark.notebook
def test_a_run_is_quiet_and_leaves_no_kernel_sockets(tmp_path, capfd, monkeypatch):
    """The kernel (a child process writing to the same stderr) logs nothing: no warning about
    unencrypted TCP, no KeyboardInterrupt at shutdown; the folder of its sockets is gone after the
    run (this run's folder, recorded as it is made: other runs on the machine do not count)."""
    folder = tmp_path / "notebooks"
    tiny(folder / "01_base.ipynb")
    made, mkdtemp = [], tempfile.mkdtemp

    def recording_mkdtemp(*args, **kwargs):
        made.append(mkdtemp(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", recording_mkdtemp)
    assert main(["--profile", "small", *arguments(tmp_path, folder)]) == 0
    captured = capfd.readouterr()
    assert "IPKernelApp" not in captured.err and "WARNING" not in captured.err, captured.err
    assert [line.split(" ", 1)[0] for line in captured.err.splitlines()] == ["[1/1]", "[1/1]"]
    sockets = [Path(path) for path in made if Path(path).name.startswith("gsfh-kernel-")]
    assert sockets and not any(path.exists() for path in sockets), made
    assert sorted(p.name for p in folder.iterdir()) == ["01_base.ipynb"]


def test_the_kernel_manager_interrupts_a_kernel_except_to_shut_it_down(monkeypatch):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from jupyter_client import AsyncKernelManager

    interrupts = []

    async def interrupt(self):
        interrupts.append(self.shutting_down)

    def interrupt_in_a_fresh_event_loop(manager):
        # Its own thread: the session's browser keeps an event loop running in this one.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, manager._async_interrupt_kernel()).result()

    monkeypatch.setattr(AsyncKernelManager, "_async_interrupt_kernel", interrupt)
    manager = NotebookKernelManager()
    interrupt_in_a_fresh_event_loop(manager)
    manager.shutting_down = True
    interrupt_in_a_fresh_event_loop(manager)
    assert interrupts == [False]
