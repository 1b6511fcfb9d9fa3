"""The run of one notebook: its parameters, its claims, its figures and its results file.

A notebook starts with its parameters cell, then::

    from gsfh_utils import lab
    nb = lab.start(globals(), small=dict(num_seeds=40), full=dict(num_seeds=200))
    p = nb.params                                  # every parameter, the profile's sizes filled in
    nb.claims.theorem(...)                         # record (and assert) a claim
    nb.figure(fig, "frontier", data=frame)         # PNG + PDF, and the tidy data as CSV
    nb.finish()                                    # the claims tables; the results file completed

The notebook's name comes from the file being executed (``$GSFH_NOTEBOOK``, set by the runner, or
the Jupyter session), so a renamed copy writes its own results. Everything goes to the notebook's
run folder (``gsfh_utils.lab.io``); the runner promotes a passing run into ``results/`` and
``figures/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from . import parameters as parameters_module
from .claims import ClaimRegistry
from .io import REPOSITORY_ROOT, atomic_write_text, output_paths, run_dir
from .provenance import provenance
from .results import claims_frame, dump_results, write_table


def notebook_name(namespace: dict | None = None) -> str:
    """The stem of the notebook being executed: ``$GSFH_NOTEBOOK`` (set by the runner), else the
    path of the Jupyter session (``$JPY_SESSION_NAME`` or IPython's ``__session__``)."""
    namespace = namespace or {}
    for candidate in (os.environ.get("GSFH_NOTEBOOK"), os.environ.get("JPY_SESSION_NAME"),
                      namespace.get("__session__")):
        if candidate:
            return Path(candidate).stem
    raise ValueError("cannot tell which notebook is running: set GSFH_NOTEBOOK to its name "
                     "(the runner does), or run it in Jupyter")


def progress(iterable, **kwargs):
    """A text progress bar for interactive runs; silent when the runner executes the notebook
    (its own log shows progress, and executed notebooks stay free of stderr noise)."""
    from tqdm import tqdm

    return tqdm(iterable, disable=bool(os.environ.get("GSFH_NOTEBOOK")), file=sys.stderr,
                **kwargs)


class Notebook:
    """One run of one notebook (see the module docstring); made by ``start``."""

    def __init__(self, name: str, params: SimpleNamespace, *, folder: Path | None = None):
        self.name = name
        self.params = params
        self.folder = Path(folder) if folder is not None else run_dir(name)
        self.paths = output_paths(self.folder, name)
        self.claims = ClaimRegistry(explore=getattr(params, "explore", False),
                                    level=getattr(params, "level", 0.01),
                                    on_record=lambda _: self.write())
        self.figures: dict[str, dict] = {}
        self.tables: dict[str, str] = {}
        self.complete = False
        self._provenance = provenance(name)
        for kind in ("data", "figures"):  # a fresh run: nothing left from an earlier one
            _clear(self.paths[kind])
        self.paths["results"].unlink(missing_ok=True)
        self.write()

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh ``torch.Generator`` seeded ``seed + offset``: one stream per experiment, so
        that methods compared on the same stream see the same data (common random numbers)."""
        return torch.Generator().manual_seed(self.params.seed + offset)

    def figure(self, fig, name: str, data=None) -> None:
        """Save ``fig`` as ``figures/<notebook>/<name>.png`` and ``.pdf`` and, if given, the
        tidy ``data`` behind it (a ``pandas.DataFrame`` or a dict of equal-length columns) as
        ``results/<notebook>/<name>.csv``, so it can be redrawn without rerunning."""
        from .plotting import savefig

        files = savefig(fig, self.paths["figures"], name)
        entry = {fmt: self._relative(path) for fmt, path in files.items()}
        if data is not None:
            entry["data"] = self._relative(write_table(self.paths["data"] / f"{name}.csv", data))
        self.figures[name] = entry
        self.write()

    def table(self, name: str, data):
        """Keep a table of results (no figure) as ``results/<notebook>/<name>.csv``; returns
        ``data``, so that a cell can end with it and show it."""
        self.tables[name] = self._relative(write_table(self.paths["data"] / f"{name}.csv", data))
        self.write()
        return data

    def to_dict(self) -> dict:
        params = vars(self.params)
        return {"notebook": self.name, "profile": params["profile"], "seed": params.get("seed"),
                "explore": bool(params.get("explore", False)), "complete": self.complete,
                "parameters": params, "provenance": self._provenance,
                "claims": self.claims.to_list(), "skipped": self.claims.skipped,
                "figures": self.figures, "tables": self.tables}

    def write(self) -> Path:
        return atomic_write_text(self.paths["results"], dump_results(self.to_dict()))

    def finish(self):
        """Close the run: check the findings' families, mark the results complete, and show the
        claims (the results, then the sanity checks) as tables. In explore mode, list the claims
        that do not hold (the runner then fails the run)."""
        self.claims.check_families()
        self.complete = True
        self.write()
        failing = self.claims.failing
        if failing:
            print(f"{len(failing)} claim(s) do not hold (explore mode): "
                  + ", ".join(claim.id for claim in failing))
        results = [self.to_dict()]
        _display(claims_frame(results, kinds=("theorem", "finding"), with_notebook=False))
        identities = claims_frame(results, kinds=("identity",), with_notebook=False)
        if len(identities):
            print("Sanity checks (identities and solver checks, not counted as results):")
            _display(identities)

    def _relative(self, path: Path) -> str:
        return Path(path).relative_to(self.folder).as_posix()


def _clear(folder: Path) -> None:
    if folder.exists():
        for path in sorted(folder.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()


def _display(frame) -> None:
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:  # pragma: no cover - IPython comes with the notebook stack
        print(frame.to_string(index=False))
        return
    frame = frame.set_index("claim")
    if get_ipython() is None:
        print(frame.to_string())
    else:
        display(frame)


def start(namespace: dict, *, small: dict, full: dict, num_threads: int = 1,
          name: str | None = None) -> Notebook:
    """Begin a notebook run from its ``globals()`` right after the parameters cell.

    Every plain value defined so far is a parameter (``parameters.declared_parameters``); those
    left ``None`` are sized by the ``small`` or ``full`` profile table (the names are remembered
    in the namespace, so running the cell again later takes the same ones). ``num_threads`` sets
    torch's intra-op threads: 1 by default, because the notebooks solve many small batched
    problems, where a second thread only spins (on a shared 2-core machine OpenMP's waiting made
    the same computation ten times slower), and results are then identical run to run. Prints
    one line with the notebook, the profile, the seed and the mode.
    """
    declared = parameters_module.declared_parameters(namespace)
    # Run again in the same kernel, this cell must not take later variables for parameters:
    # the names seen the first time are kept in the namespace.
    names = namespace.setdefault("_gsfh_parameter_names", sorted(declared))
    params = parameters_module.resolve({name: declared[name] for name in names if name in declared},
                                       small=small, full=full)
    torch.set_num_threads(num_threads)
    notebook = Notebook(name or notebook_name(namespace), params)
    explore = "explore mode (failing claims recorded, run continues)" if getattr(
        params, "explore", False) else "claims asserted"
    folder = notebook.folder
    if folder.is_relative_to(REPOSITORY_ROOT):
        folder = folder.relative_to(REPOSITORY_ROOT)
    print(f"{notebook.name}: profile {params.profile}, seed {params.seed}, {explore}; "
          f"outputs in {folder}")
    return notebook
