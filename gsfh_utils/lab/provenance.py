"""What produced a results file: the package version, the git commit, the library versions.

Nothing here changes from one run to the next on the same checkout and machine (no clock, no
host name), so a rerun rewrites the same bytes.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata

from .io import REPOSITORY_ROOT

#: Libraries whose versions can change the numbers a notebook records.
LIBRARIES = ("torch", "numpy", "scipy", "pandas", "matplotlib")

#: The files whose uncommitted changes make a commit hash a partial description of the code.
SOURCES = ("gsfh_utils", "notebooks", "pyproject.toml")


def _git(*arguments: str) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(["git", "-C", str(REPOSITORY_ROOT), *arguments],
                              capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_state() -> dict:
    """``{"commit": sha or None, "uncommitted_changes": bool or None}`` of the code (package,
    notebooks, pyproject.toml); ``None`` outside a git checkout."""
    head = _git("rev-parse", "HEAD")
    if head is None or head.returncode != 0:
        return {"commit": None, "uncommitted_changes": None}
    diff = _git("status", "--porcelain", "--", *SOURCES)
    changed = None if diff is None or diff.returncode != 0 else bool(diff.stdout.strip())
    return {"commit": head.stdout.strip(), "uncommitted_changes": changed}


def provenance() -> dict:
    """Versions of Python, the package and ``LIBRARIES``, and the git state of the code."""
    versions = {"python": platform.python_version()}
    for library in ("gsfh_utils", *LIBRARIES):
        try:
            versions[library] = metadata.version(library)
        except metadata.PackageNotFoundError:
            versions[library] = None
    return {"versions": versions, "git": git_state(), "machine": platform.machine()}
