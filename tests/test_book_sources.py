"""The book's sources as book/build.py assembles them (no Sphinx, no browser): the introduction
from the README, the claims page from results files, the chapters from executed notebooks, and
the errors that say which run is missing."""

from __future__ import annotations

import importlib.util
import json

import nbformat
import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT, output_paths
from gsfh_utils.lab.results import dump_results

SPEC = importlib.util.spec_from_file_location("book_build", REPOSITORY_ROOT / "book" / "build.py")
build = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(build)

README = """# Title

[![Binder](https://mybinder.org/badge_logo.svg)](https://mybinder.org/)

See [notebook 01](notebooks/01_a.ipynb), [the bench](benchmarks/README.md) and
[the paper](https://arxiv.org/abs/2312.11456). ![A figure](figures/a.png)

## The claims

| a huge | table |

## Layout

The end.
"""


def test_introduction_links_the_claims_page_and_keeps_only_what_the_book_has(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_a.ipynb").write_text("{}")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "a.png").write_bytes(b"")
    text = build.introduction(README, tmp_path)
    assert "mybinder.org/badge_logo.svg" not in text  # a remote image would be loaded
    assert "[notebook 01](notebooks/01_a.ipynb)" in text and "![A figure](figures/a.png)" in text
    assert "[the paper](https://arxiv.org/abs/2312.11456)" in text  # a link, not a load
    assert "the bench" in text and "benchmarks/README.md" not in text
    assert "a huge" not in text and "[claims page](claims.md)" in text
    assert text.rstrip().endswith("## Layout\n\nThe end.")


def results_file(folder, notebook, *, complete=True, claims=("c1",), skipped=()):
    claim = {"kind": "identity", "statement": "s", "value": 0.5, "threshold": 1.0,
             "comparison": "<=", "holds": True, "details": {}}
    data = {"notebook": notebook, "profile": "full", "seed": 1, "explore": False,
            "complete": complete, "parameters": {"profile": "full"},
            "claims": [{**claim, "id": name} for name in claims],
            "skipped": [{"id": name, "reason": "r"} for name in skipped]}
    path = output_paths(folder, notebook)["results"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_results(data))
    return path


def test_claims_page_shows_every_claim_and_skip(tmp_path):
    results_file(tmp_path, "01_a", claims=("first_claim", "second_claim"))
    results_file(tmp_path, "02_b", claims=("third_claim",), skipped=("skipped_claim",))
    page = build.claims_page(tmp_path / "results")
    for name in ("first_claim", "second_claim", "third_claim", "skipped_claim"):
        assert f"<td>{name}</td>" in page
    assert page.index("## 01_a") < page.index("## 02_b")
    with pytest.raises(build.BookError, match="make reproduce"):
        build.claims_page(tmp_path / "nothing")


def executed(folder, parameters) -> object:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'full'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("profile = 'small'",
                                          metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell("# 01 · A chapter"),
                nbformat.v4.new_code_cell("x = 1")]
    nb.metadata["papermill"] = {"parameters": parameters}
    path = folder / "01_a" / "01_a.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(nb, path)
    return path


def test_a_chapter_drops_the_injected_parameters_and_says_when_the_run_was_not_canonical(
        tmp_path):
    copy = executed(tmp_path, {"profile": "small"})
    results_file(copy.parent, "01_a")
    chapter = build.chapter(copy)
    assert [cell.source.split("\n")[0] for cell in chapter.cells] == [
        "profile = 'full'", "# 01 · A chapter", ":::{note}", "x = 1"]
    assert "`profile = 'small'`" in chapter.cells[2].source
    copy.write_text(copy.read_text().replace('"small"', '"full"'))
    assert len(build.chapter(copy).cells) == 3  # the notebook as committed: no note


def test_a_missing_or_incomplete_run_says_what_to_run(tmp_path):
    notebook = REPOSITORY_ROOT / "notebooks" / "01_gibbs_optimality.ipynb"
    with pytest.raises(build.BookError, match="make notebook NB=01"):
        build.executed_notebook(notebook, tmp_path)
    folder = tmp_path / notebook.stem
    folder.mkdir()
    (folder / notebook.name).write_text(json.dumps({}))
    with pytest.raises(build.BookError, match="did not complete"):
        build.executed_notebook(notebook, tmp_path)
    results_file(folder, notebook.stem, complete=False)
    with pytest.raises(build.BookError, match="did not complete"):
        build.executed_notebook(notebook, tmp_path)
    results_file(folder, notebook.stem)
    assert build.executed_notebook(notebook, tmp_path) == folder / notebook.name


def test_make_book_without_runs_fails_with_what_to_run(tmp_path, capsys):
    assert build.main(["--runs-dir", str(tmp_path / "no-runs"), "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "make reproduce" in error and "make notebook NB=01" in error


def test_bibliography_math_becomes_text():
    entry = "title = {Pairwise or {$K$}-wise Comparisons with $\\eta$},\n  year = {2023}"
    assert build.bibliography(entry) == (
        "title = {Pairwise or {K}-wise Comparisons with \\eta},\n  year = {2023}")
