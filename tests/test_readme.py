"""The README is true: its example script runs as shown, its figures and links exist, and the
commands it shows name real notebooks and parameters."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gsfh_utils.lab.io import REPOSITORY_ROOT
from gsfh_utils.lab.runner import find_notebooks, notebook_parameters

README = (REPOSITORY_ROOT / "README.md").read_text()


def section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_the_example_script_runs_as_shown(tmp_path):
    script = re.search(r"```python\n(.*?)```", section("Your own experiment"), re.S).group(1)
    assert len(script.strip().splitlines()) <= 20
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["MLE then Gibbs", "pointwise pessimism"]
    assert all("over 100 data sets" in line for line in lines)
    assert not result.stderr


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
