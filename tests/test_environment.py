"""environment.yml (conda/Binder) and pyproject.toml list the same dependencies."""

from __future__ import annotations

import tomllib

import yaml

from gsfh_utils.lab.io import REPOSITORY_ROOT


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
    extras = [req for group in project["optional-dependencies"].values() for req in group]
    return {req.replace(" ", "") for req in project["dependencies"] + extras}


def environment_requirements() -> set[str]:
    environment = yaml.safe_load((REPOSITORY_ROOT / "environment.yml").read_text())
    pip_lists = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict)]
    assert len(pip_lists) == 1, "environment.yml must have exactly one pip section"
    return {req.replace(" ", "") for req in pip_lists[0] if not req.startswith("-e")}


def test_same_dependencies():
    assert pyproject_requirements() == environment_requirements()


def test_torch_is_bounded_to_the_cpu_wheel_series():
    """An unbounded torch would pull several GB of CUDA packages; keep the newest match 2.13."""
    for requirements in (pyproject_requirements(), environment_requirements()):
        (torch,) = [req for req in requirements if req.startswith("torch")]
        assert "<2.14" in torch
