"""Where outputs go, and atomic writes (no half-written figure or results file).

``GSFH_FIGURES_DIR`` and ``GSFH_RESULTS_DIR`` override the default folders ``figures/`` and
``results/`` at the repository root; the runner and the tests use them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]

_UMASK = os.umask(0)
os.umask(_UMASK)
#: What ``open()`` would give a new file: read-write for all, less the process umask.
_FILE_MODE = 0o666 & ~_UMASK


def output_dir(kind: str) -> Path:
    """The folder for ``kind`` in {"figures", "results"}, created if needed."""
    if kind not in {"figures", "results"}:
        raise ValueError(f"kind must be 'figures' or 'results', got {kind!r}")
    folder = Path(os.environ.get(f"GSFH_{kind.upper()}_DIR", REPOSITORY_ROOT / kind))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


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
