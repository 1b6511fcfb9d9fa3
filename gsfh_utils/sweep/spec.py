"""Sweep specifications: a grid of parameter lists (product or zip), the seeds, the experiment.

A spec is a small YAML file (or the same mapping in Python)::

    experiment: offline          # a name of gsfh_utils.sweep.experiments.EXPERIMENTS
    mode: product                # or zip: the i-th values of every list form the i-th cell
    grid:                        # the parameters that vary, each a non-empty list
      trap_mass: [0.002, 0.01, 0.05]
      n: [100, 300, 1000]
    fixed: {eta: 0.5}            # parameters held at one value (optional)
    seeds: 16                    # 0..15; or a list [3, 5, 8]; or {start: 100, count: 16}
    store: build/sweeps/offline  # where the results go (optional; the CLI's --store wins)

Every cell is a complete parameter dict: the experiment's defaults, then ``fixed``, then the
cell's grid values. Bad specs raise ``ValueError`` naming the offending key.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .experiments import get_experiment

MODES = ("product", "zip")
SPEC_KEYS = ("experiment", "mode", "grid", "fixed", "seeds", "store")
#: Parameter values a cell may hold (they become table columns and enter the cell's hash).
SCALARS = (bool, int, float, str)


def experiment_parameters(experiment: Callable) -> dict:
    """The parameters of ``experiment`` other than ``seeds``, with their defaults."""
    return {name: parameter.default
            for name, parameter in inspect.signature(experiment).parameters.items()
            if name != "seeds"}


def _check_value(key: str, value) -> None:
    if not isinstance(value, SCALARS):
        raise ValueError(f"{key}: values must be numbers, strings or booleans, got {value!r}")


def grid_cells(grid: Mapping, *, mode: str = "product") -> list[dict]:
    """The cells of ``grid`` (parameter -> non-empty list of values): every combination
    (``mode="product"``, the first parameter varying slowest) or the lists read in parallel
    (``"zip"``, all of one length)."""
    if mode not in MODES:
        raise ValueError(f"mode: must be one of {MODES}, got {mode!r}")
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid: must be a mapping of parameter lists, got {type(grid).__name__}")
    if not grid:
        raise ValueError("grid: empty grid (name at least one parameter and its values)")
    for key, values in grid.items():
        if not isinstance(key, str):
            raise ValueError(f"grid: parameter names must be strings, got {key!r}")
        if not isinstance(values, list | tuple):
            raise ValueError(f"{key}: grid values must be a list, got {values!r}")
        if not values:
            raise ValueError(f"{key}: empty list of values")
        for value in values:
            _check_value(key, value)
    keys = list(grid)
    if mode == "zip":
        lengths = {key: len(values) for key, values in grid.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"grid: zip needs lists of one length, got {lengths}")
        combos = zip(*grid.values(), strict=True)
    else:
        combos = itertools.product(*grid.values())
    return [dict(zip(keys, combo, strict=True)) for combo in combos]


def resolve_cells(experiment: Callable, grid: Mapping, *, mode: str = "product",
                  fixed: Mapping | None = None) -> list[dict]:
    """Complete parameter dicts of every cell: the experiment's defaults, ``fixed``, the cell's
    grid values. A parameter the experiment does not take, or one both in ``fixed`` and in the
    grid, raises ``ValueError`` naming it."""
    fixed = dict(fixed or {})
    known = experiment_parameters(experiment)
    name = getattr(experiment, "__name__", repr(experiment))
    for key, value in fixed.items():
        _check_value(key, value)
    for key in [*fixed, *(grid if isinstance(grid, Mapping) else {})]:
        if key not in known:
            raise ValueError(f"{key}: unknown parameter of experiment {name!r}; it takes "
                             f"{sorted(known)}")
    cells = grid_cells(grid, mode=mode)
    for key in fixed:
        if key in grid:
            raise ValueError(f"{key}: both fixed and in the grid")
    return [{**known, **fixed, **cell} for cell in cells]


def parse_seeds(seeds) -> tuple[int, ...]:
    """``16`` -> 0..15; a list of distinct non-negative integers; ``{start, count}``."""
    if isinstance(seeds, Mapping):
        unknown = set(seeds) - {"start", "count"}
        if unknown or "count" not in seeds:
            raise ValueError(f"seeds: a mapping needs 'count' (and optionally 'start'), got "
                             f"{dict(seeds)}")
        start, count = seeds.get("start", 0), seeds["count"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, count)):
            raise ValueError(f"seeds: start and count must be integers, got {dict(seeds)}")
        seeds = list(range(start, start + count))
    elif isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds))
    if not isinstance(seeds, list | tuple | range):
        raise ValueError(f"seeds: must be a count, a list or {{start, count}}, got {seeds!r}")
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds: no seeds")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ValueError(f"seeds: must be non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: repeated seeds in {seeds!r}")
    return seeds


@dataclass(frozen=True)
class SweepSpec:
    """A parsed spec: ``experiment`` (a registered name), the grid, its mode, the fixed
    parameters, the seeds and the store folder (``None``: the caller decides)."""

    experiment: str
    grid: dict
    mode: str = "product"
    fixed: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    store: Path | None = None

    def cells(self) -> list[dict]:
        return resolve_cells(get_experiment(self.experiment), self.grid, mode=self.mode,
                             fixed=self.fixed)


def parse_spec(spec: Mapping, *, base: Path | None = None) -> SweepSpec:
    """Check a spec mapping (see the module docstring) and return a ``SweepSpec``; a relative
    ``store`` is taken relative to ``base`` (default: the working directory)."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec: must be a mapping, got {type(spec).__name__}")
    unknown = [key for key in spec if key not in SPEC_KEYS]
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key of a sweep spec; keys are {SPEC_KEYS}")
    for key in ("experiment", "grid", "seeds"):
        if key not in spec:
            raise ValueError(f"{key}: missing from the spec")
    if not isinstance(spec["experiment"], str):
        raise ValueError(f"experiment: must be a name, got {spec['experiment']!r}")
    fixed = spec.get("fixed") or {}
    if not isinstance(fixed, Mapping):
        raise ValueError(f"fixed: must be a mapping of parameter values, got {fixed!r}")
    store = spec.get("store")
    if store is not None:
        store = Path(store) if base is None or Path(store).is_absolute() else Path(base) / store
    parsed = SweepSpec(spec["experiment"], dict(spec["grid"]) if isinstance(
        spec["grid"], Mapping) else spec["grid"], spec.get("mode", "product"), dict(fixed),
                       parse_seeds(spec["seeds"]), store)
    parsed.cells()  # every check of the grid and the parameters, now
    return parsed


def load_spec(path) -> SweepSpec:
    """Read a YAML spec; a relative ``store`` in it is relative to the working directory."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"spec: no such file {path}")
    return parse_spec(yaml.safe_load(path.read_text()))
