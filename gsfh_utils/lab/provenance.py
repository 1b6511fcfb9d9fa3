"""What produced a results file: the package version, the code's git trees, the library versions.

Nothing here changes from one run to the next on the same checkout and machine (no clock, no
host name), so a rerun rewrites the same bytes. The code is identified by the git object ids of
what a notebook's numbers depend on (the package's tree, the notebook's file, pyproject.toml) and
whether any of them has uncommitted changes, not by the commit: committing the results a run
produced makes a new commit but leaves these ids, and so a rerun's results file, unchanged.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from .io import REPOSITORY_ROOT

#: Libraries whose versions can change the numbers a notebook records.
LIBRARIES = ("torch", "numpy", "scipy", "pandas", "matplotlib")

#: The code every notebook depends on (a notebook adds its own file, ``notebooks/<name>.ipynb``).
SOURCES = ("gsfh_utils", "pyproject.toml")


def _git(*arguments: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(REPOSITORY_ROOT), *arguments],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_state(notebook: str | None = None) -> dict:
    """``{"objects": {path: git object id or None}, "uncommitted_changes": bool or None}`` for
    the package, pyproject.toml and, given its name, ``notebooks/<notebook>.ipynb`` (the ids at
    ``HEAD``; ``None`` for a path git does not track, such as a copy under a new name). Outside a
    git checkout every value is ``None``."""
    paths = [*SOURCES, *([f"notebooks/{notebook}.ipynb"] if notebook else [])]
    head = _git("rev-parse", "--verify", "--quiet", "HEAD")
    if head is None or head.returncode != 0:
        return {"objects": dict.fromkeys(paths), "uncommitted_changes": None}
    objects = {}
    for path in paths:
        found = _git("rev-parse", "--verify", "--quiet", f"HEAD:{path}")
        objects[path] = found.stdout.strip() if found and found.returncode == 0 else None
    status = _git("status", "--porcelain", "--", *paths)
    changed = None if status is None or status.returncode != 0 else bool(status.stdout.strip())
    return {"objects": objects, "uncommitted_changes": changed}


def provenance(notebook: str | None = None) -> dict:
    """Versions of Python, the package and ``LIBRARIES``, and the git state of the code (with
    the file of ``notebook`` when given)."""
    versions = {"python": platform.python_version()}
    for library in ("gsfh_utils", *LIBRARIES):
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    return {"versions": versions, "git": git_state(notebook), "machine": platform.machine()}
