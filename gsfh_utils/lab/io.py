"""Where a run writes, atomic writes, and the promotion of a passing run into the repository.

A notebook run never writes into the committed ``results/`` and ``figures/``. It writes into its
own *run folder*, laid out like the repository::

    <run folder>/results/<notebook>.json          the claims, parameters and provenance
    <run folder>/results/<notebook>/<figure>.csv  the tidy data behind each figure
    <run folder>/figures/<notebook>/<figure>.png  (and .pdf)
    <run folder>/<notebook>.ipynb                 the executed copy (written by the runner)

The run folder is ``$GSFH_RUN_DIR`` when set (the runner sets it) and otherwise
``build/runs/<notebook>``. ``promote`` copies a run's outputs over the committed ones, which the
runner does only for a complete, passing run (see ``gsfh_utils.lab.runner``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]

_UMASK = os.umask(0)
os.umask(_UMASK)
#: What ``open()`` would give a new file: read-write for all, less the process umask.
_FILE_MODE = 0o666 & ~_UMASK


def run_dir(notebook: str) -> Path:
    """The run folder of ``notebook``: ``$GSFH_RUN_DIR`` or ``build/runs/<notebook>``."""
    folder = os.environ.get("GSFH_RUN_DIR")
    return Path(folder) if folder else REPOSITORY_ROOT / "build" / "runs" / notebook


def output_paths(root: Path, notebook: str) -> dict[str, Path]:
    """The three outputs of ``notebook`` under ``root`` (a run folder or the repository)."""
    root = Path(root)
    return {"results": root / "results" / f"{notebook}.json",
            "data": root / "results" / notebook,
            "figures": root / "figures" / notebook}


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` then rename it onto ``path`` (atomic on one file system)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, _FILE_MODE)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_text(text))


def _replace_folder(source: Path, target: Path) -> None:
    """Make ``target`` a copy of ``source``: copy beside it, then swap by two renames (if the
    second rename fails, the old ``target`` is put back)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.new."))
    retired = target.parent / f".{target.name}.old.{staging.name.rsplit('.', 1)[-1]}"
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        for path in [staging, *staging.rglob("*")]:
            os.chmod(path, 0o777 & ~_UMASK if path.is_dir() else _FILE_MODE)
        if target.exists():
            os.replace(target, retired)
        try:
            os.replace(staging, target)
        except BaseException:
            if retired.exists():
                os.replace(retired, target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(retired, ignore_errors=True)


def promote(run_folder: Path, notebook: str, destination: Path = REPOSITORY_ROOT) -> None:
    """Copy the outputs of ``notebook`` from ``run_folder`` over those in ``destination``.

    The results file is replaced atomically; the data and figure folders are replaced whole (a
    figure the notebook no longer draws disappears), each by a rename.
    """
    source, target = output_paths(run_folder, notebook), output_paths(destination, notebook)
    if not source["results"].exists():
        raise ValueError(f"{source['results']} does not exist: nothing to promote")
    for kind in ("data", "figures"):
        if source[kind].exists():
            _replace_folder(source[kind], target[kind])
        elif target[kind].exists():
            shutil.rmtree(target[kind])
    atomic_write(target["results"],
                 lambda temporary: shutil.copyfile(source["results"], temporary))
