"""The README is true: its example script runs as shown, its figures and links exist, and the
commands it shows name real notebooks and parameters."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

import pytest
from conftest import prestart

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, notebook_parameters

README = (REPOSITORY_ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def example_script() -> str:
    return re.search(r"```python\n(.*?)```", section("Your own experiment"), re.S).group(1)


@prestart
def example_script_run() -> subprocess.Popen:
    """The README's script in a fresh interpreter, in an empty folder, started after collection
    (it runs while the tests before it do)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("GSFH_NOTEBOOK", "GSFH_RUN_DIR")}
    folder = tempfile.TemporaryDirectory(prefix="readme-example-")
    process = subprocess.Popen([sys.executable, "-c", example_script()], cwd=folder.name,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    process.folder = folder  # removed with the process handle
    return process


def test_the_example_script_runs_as_shown(example_script_run):
    assert len(example_script().strip().splitlines()) <= 20
    stdout, stderr = example_script_run.communicate(timeout=120)
    assert example_script_run.returncode == 0, stderr
    lines = stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["MLE then Gibbs", "pointwise pessimism"]
    assert all("over 100 data sets" in line for line in lines)
    assert not stderr


def test_every_figure_and_link_exists():
    targets = re.findall(r"\]\(([^)#]+)\)", README)
    assert targets
    missing = [target for target in targets
               if not target.startswith("http") and not (REPOSITORY_ROOT / target).exists()]
    assert not missing, f"the README points at missing files: {missing}"


def test_the_commands_name_real_notebooks_and_parameters():
    notebooks = {p.stem.split("_")[0]: p for p in find_notebooks(REPOSITORY_ROOT / "notebooks")}
    block = re.search(r"```bash\n(.*?)```", section("Your own experiment"), re.S).group(1)
    commands = block.strip().splitlines()
    assert commands
    for command in commands:
        number = re.search(r"(?:-n |NB=)(\d\d)", command).group(1)
        known = notebook_parameters(notebooks[number])
        for name in re.findall(r"-p (\w+)", command):
            assert name in known, f"{command!r}: {name} is not a parameter of notebook {number}"


@pytest.mark.parametrize("module", ["gibbs", "sampling", "instance", "estimation", "offline",
                                    "online", "dpo", "kl_estimators"])
def test_every_algorithm_module_is_listed(module):
    assert f"| `{module}` |" in README
