"""Parameter sweeps on ``dask.distributed``: where pessimism and exploration pay.

An experiment (``experiments``) is a pure function of its parameters and seeds returning one
flat dict of metrics per seed; a grid (``spec``) names the parameter lists to cross (product) or
read in parallel (zip); ``run_sweep`` (``engine``) runs one Dask task per cell, stores one Parquet
part per finished cell and resumes from what is stored. From the command line::

    python -m gsfh_utils.sweep sweeps/offline.yaml [--scheduler tcp://host:8786] [--store DIR]
"""

from .engine import SweepResult, cell_key, embedded_cluster, load_results, run_cell, run_sweep
from .experiments import EXPERIMENTS, get_experiment
from .spec import SweepSpec, grid_cells, load_spec, parse_seeds, parse_spec, resolve_cells

__all__ = ["EXPERIMENTS", "SweepResult", "SweepSpec", "cell_key", "embedded_cluster",
           "get_experiment", "grid_cells", "load_results", "load_spec", "parse_seeds",
           "parse_spec", "resolve_cells", "run_cell", "run_sweep"]
