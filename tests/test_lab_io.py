"""Run folders, atomic writes and the promotion of a run into the repository's layout."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gsfh_utils.lab import io
from gsfh_utils.lab.io import (
    REPOSITORY_ROOT,
    atomic_write,
    atomic_write_text,
    output_paths,
    promote,
    run_dir,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path, with its bytes."""
    return {path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


# --- atomic writes ------------------------------------------------------------------------------


def test_atomic_write_creates_and_replaces(tmp_path):
    target = tmp_path / "sub" / "deeper" / "out.txt"
    assert atomic_write(target, lambda temporary: temporary.write_text("one")) == target
    atomic_write(target, lambda temporary: temporary.write_text("two"))
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    assert atomic_write_text(target, "three") == target and target.read_text() == "three"


@pytest.mark.parametrize("failure", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, failure):
    target = tmp_path / "results.json"
    target.write_text("old")

    def half_written(temporary: Path) -> None:
        temporary.write_text("partial")
        raise failure

    with pytest.raises(type(failure)):
        atomic_write(target, half_written)
    assert listing(tmp_path) == {"results.json": b"old"}
    with pytest.raises(type(failure)):
        atomic_write(tmp_path / "fresh.json", half_written)
    assert listing(tmp_path) == {"results.json": b"old"}  # no new file either


def test_an_atomic_write_has_the_mode_open_would_give(tmp_path):
    """mkstemp makes private (0600) files; outputs get the usual mode, as open() makes them."""
    written = atomic_write_text(tmp_path / "atomic.txt", "x")
    with open(tmp_path / "plain.txt", "w") as handle:
        handle.write("x")
    assert mode(written) == mode(tmp_path / "plain.txt")
    umask = os.umask(0)
    os.umask(umask)
    if umask & 0o066 != 0o066:  # unless the umask itself makes files private
        assert mode(written) != 0o600


# --- run folders --------------------------------------------------------------------------------


def test_run_dir_honours_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GSFH_RUN_DIR", str(tmp_path / "elsewhere"))
    assert run_dir("01_x") == tmp_path / "elsewhere"
    monkeypatch.delenv("GSFH_RUN_DIR")
    assert run_dir("01_x") == REPOSITORY_ROOT / "build" / "runs" / "01_x"
    monkeypatch.setenv("GSFH_RUN_DIR", "")
    assert run_dir("02_y") == REPOSITORY_ROOT / "build" / "runs" / "02_y"


def test_the_repository_root_holds_the_package():
    assert (REPOSITORY_ROOT / "gsfh_utils" / "lab" / "io.py").is_file()
    assert (REPOSITORY_ROOT / "pyproject.toml").is_file()


def test_output_paths_mirror_the_repository_layout(tmp_path):
    assert output_paths(tmp_path, "01_x") == {
        "results": tmp_path / "results" / "01_x.json",
        "data": tmp_path / "results" / "01_x",
        "figures": tmp_path / "figures" / "01_x"}


# --- promote ------------------------------------------------------------------------------------


def populate(root: Path, notebook: str, files: dict[str, str]) -> Path:
    """Write ``files`` (relative path -> text) under ``root``; ``{nb}`` is the notebook."""
    for relative, text in files.items():
        path = root / relative.format(nb=notebook)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def run_and_repository(tmp_path):
    """A run of ``07_x`` with two figures and their data, and a repository holding an older run
    of it (with a figure no longer drawn) beside another notebook's outputs."""
    run = populate(tmp_path / "run", "07_x", {
        "results/{nb}.json": '{"new": true}', "results/{nb}/curve.csv": "x\n1\n",
        "figures/{nb}/curve.png": "png", "figures/{nb}/curve.pdf": "pdf",
        "figures/{nb}/sub/detail.png": "detail", "{nb}.ipynb": "executed copy"})
    repository = populate(tmp_path / "repository", "07_x", {
        "results/{nb}.json": '{"old": true}', "results/{nb}/old.csv": "old\n",
        "results/{nb}/curve.csv": "x\n0\n", "figures/{nb}/curve.png": "old png",
        "figures/{nb}/gone.png": "no longer drawn", "results/08_other.json": "{}",
        "figures/08_other/kept.png": "other", "README.md": "# readme\n"})
    return run, repository


def test_promote_replaces_the_results_and_the_folders_whole(run_and_repository):
    run, repository = run_and_repository
    promote(run, "07_x", repository)
    assert listing(repository) == {
        "README.md": b"# readme\n",
        "figures/07_x/curve.pdf": b"pdf", "figures/07_x/curve.png": b"png",
        "figures/07_x/sub/detail.png": b"detail", "figures/08_other/kept.png": b"other",
        "results/07_x.json": b'{"new": true}', "results/07_x/curve.csv": b"x\n1\n",
        "results/08_other.json": b"{}"}  # no executed copy, no staging or retired folders
    assert not any(path.name.startswith(".") for path in repository.rglob("*"))


def test_promoted_files_and_folders_get_the_usual_modes(run_and_repository, tmp_path):
    run, repository = run_and_repository
    promote(run, "07_x", repository)
    plain_folder, plain_file = tmp_path / "plain", tmp_path / "plain" / "file"
    plain_folder.mkdir()
    plain_file.write_text("x")
    promoted = repository / "figures" / "07_x"
    for path in [promoted, *promoted.rglob("*")]:
        assert mode(path) == mode(plain_file if path.is_file() else plain_folder), path


def test_promote_removes_a_folder_the_run_no_longer_writes(run_and_repository):
    run, repository = run_and_repository
    for path in sorted((run / "results" / "07_x").rglob("*"), reverse=True):
        path.unlink()
    (run / "results" / "07_x").rmdir()
    promote(run, "07_x", repository)
    assert not (repository / "results" / "07_x").exists()
    assert (repository / "results" / "07_x.json").read_text() == '{"new": true}'


def test_promote_into_an_empty_destination(run_and_repository, tmp_path):
    run, _ = run_and_repository
    promote(run, "07_x", tmp_path / "fresh")
    assert set(listing(tmp_path / "fresh")) == {
        "figures/07_x/curve.pdf", "figures/07_x/curve.png", "figures/07_x/sub/detail.png",
        "results/07_x.json", "results/07_x/curve.csv"}


def test_promote_without_a_results_file_is_a_value_error(run_and_repository):
    run, repository = run_and_repository
    (run / "results" / "07_x.json").unlink()
    before = listing(repository)
    with pytest.raises(ValueError, match="07_x.json does not exist"):
        promote(run, "07_x", repository)
    assert listing(repository) == before


def test_a_failed_swap_puts_the_old_folder_back(run_and_repository, monkeypatch):
    run, repository = run_and_repository
    before = listing(repository)
    real_replace = os.replace

    def failing_replace(source, target):
        if ".new." in Path(source).name:  # the rename of the staged copy onto the target
            raise OSError("simulated failure")
        real_replace(source, target)

    monkeypatch.setattr(io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated failure"):
        promote(run, "07_x", repository)
    assert listing(repository) == before
    assert not any(path.name.startswith(".") for path in repository.rglob("*"))
