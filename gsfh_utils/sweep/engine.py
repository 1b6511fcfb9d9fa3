"""Run a sweep on ``dask.distributed``: one task per cell, one Parquet part per finished cell.

``run_sweep(experiment, grid, seeds, store)`` submits every cell not yet in ``store`` to a Dask
client (an embedded ``LocalCluster`` of single-threaded worker processes by default; a scheduler
address or a ``Client`` runs it unchanged on an existing cluster), writes each finished cell as
``<store>/parts/<key>.parquet`` the moment it arrives (written to a temporary file and renamed,
so a part is complete or absent), records a failing cell's error in
``<store>/failed/<key>.json`` without stopping the others, and returns the tidy table of the
sweep's cells with a summary. The key of a cell is a hash of the experiment's name, the cell's
complete parameters and its seeds: running the same sweep again computes nothing, an interrupted
sweep loses at most the cells in flight, a changed grid reuses every cell it shares with the
old one, and a failed cell is tried again by the next run. The parts are written by the process
that calls ``run_sweep``, so the store need not be visible to the workers of a remote cluster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from ..lab.io import atomic_write, atomic_write_text
from .experiments import EXPERIMENTS, get_experiment
from .spec import SCALARS, parse_seeds, resolve_cells

#: Columns every row carries besides the cell's parameters and the metrics.
META_COLUMNS = ("experiment", "cell", "seed", "version", "wall_time", "cpu_time")


def package_version() -> str:
    try:
        return metadata.version("gsfh_utils")
    except metadata.PackageNotFoundError:  # pragma: no cover - the package is installed
        return "unknown"


def experiment_name(experiment: Callable) -> str:
    """The registered name of ``experiment``, else its module-qualified name."""
    for name, function in EXPERIMENTS.items():
        if function is experiment:
            return name
    return f"{experiment.__module__}.{experiment.__qualname__}"


def cell_key(name: str, params: Mapping, seeds) -> str:
    """The hash identifying a cell: experiment name, complete parameters, seeds (sha256, 16 hex
    digits)."""
    text = json.dumps({"experiment": name, "params": dict(sorted(params.items())),
                       "seeds": list(seeds)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_cell(experiment: Callable, params: dict, seeds: tuple[int, ...]) -> dict:
    """Run one cell (on a worker): ``{"rows": [...], "wall_time": s, "cpu_time": s}`` on success
    (``cpu_time``: the CPU time of the thread that ran it), ``{"error": "Type: message", ...}`` if
    the experiment raised or returned something other than one flat dict of scalar metrics per
    seed, with the same keys for every seed."""
    start, cpu = time.perf_counter(), time.thread_time()
    try:
        rows = experiment(seeds=list(seeds), **params)
        _check_rows(rows, len(seeds), params)
        outcome = {"rows": rows}
    except Exception as exc:  # a failing cell is recorded, never fatal to the sweep
        outcome = {"error": f"{type(exc).__name__}: {exc}"}
    return {**outcome, "wall_time": time.perf_counter() - start,
            "cpu_time": time.thread_time() - cpu}


def _check_rows(rows, num_seeds: int, params: dict) -> None:
    if not isinstance(rows, list) or len(rows) != num_seeds:
        raise TypeError(f"the experiment must return a list of {num_seeds} metric dicts")
    keys = None
    for row in rows:
        if not isinstance(row, dict) or not row:
            raise TypeError("each seed's metrics must be a non-empty dict")
        if keys is None:
            keys = set(row)
        if set(row) != keys:
            raise TypeError(f"every seed must have the same metrics, got {sorted(row)} and "
                            f"{sorted(keys)}")
        for key, value in row.items():
            if not isinstance(value, SCALARS):
                raise TypeError(f"metric {key!r} must be a scalar, got {type(value).__name__}")
            if key in params or key in META_COLUMNS:
                raise TypeError(f"metric {key!r} has the name of a parameter or column")


@dataclass
class SweepResult:
    """The outcome of ``run_sweep``: ``table`` (one row per stored cell x seed of this sweep),
    the counts of cells ``done`` (computed now), ``skipped`` (already stored) and ``failed``,
    and ``errors`` (cell key -> error message)."""

    experiment: str
    table: pd.DataFrame
    done: int
    skipped: int
    failed: int
    errors: dict[str, str] = field(default_factory=dict)
    dashboard: str | None = None

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        total = self.done + self.skipped + self.failed
        text = (f"sweep {self.experiment}: {total} cells, {self.done} done, {self.skipped} "
                f"skipped (already stored), {self.failed} failed")
        return "\n".join([text, *(f"  failed cell {key}: {message}"
                                  for key, message in self.errors.items())])


def _paths(store: Path, key: str) -> tuple[Path, Path]:
    return store / "parts" / f"{key}.parquet", store / "failed" / f"{key}.json"


def load_results(store, keys=None) -> pd.DataFrame:
    """The stored rows of ``store`` (every part, or the parts of ``keys``), in key order."""
    parts = sorted((Path(store) / "parts").glob("*.parquet"))
    if keys is not None:
        wanted = set(keys)
        parts = [part for part in parts if part.stem in wanted]
    if not parts:
        return pd.DataFrame(columns=list(META_COLUMNS))
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


def _write_part(store: Path, name: str, key: str, params: dict, seeds, outcome: dict) -> None:
    part, failure = _paths(store, key)
    frame = pd.DataFrame([{**params, "experiment": name, "cell": key, "seed": seed,
                           "version": package_version(), "wall_time": outcome["wall_time"],
                           "cpu_time": outcome["cpu_time"], **row}
                          for seed, row in zip(seeds, outcome["rows"], strict=True)])
    atomic_write(part, lambda temporary: frame.to_parquet(temporary, engine="pyarrow",
                                                          index=False))
    failure.unlink(missing_ok=True)


def _write_failure(store: Path, name: str, key: str, params: dict, error: str) -> None:
    atomic_write_text(_paths(store, key)[1], json.dumps(
        {"experiment": name, "cell": key, "params": params, "error": error}, indent=1))


#: Dask settings of the embedded cluster's workers, against two defaults that cost the
#: experiments' many small tensor operations CPU time: the statistical profiler (it samples the
#: running task's stack every 10 ms), and the nanny's ``MALLOC_TRIM_THRESHOLD_=65536``, which
#: fixes glibc's trim threshold and so turns off its adaptive mmap threshold (measured: 30-45%
#: more CPU for the same cells in one process). ``None`` unsets a pre-spawn variable.
WORKER_CONFIG = {"distributed.worker.profile.enabled": False,
                 "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def embedded_cluster(n_workers: int | None = None):
    """A ``LocalCluster`` of ``n_workers`` (default: the cores this process may use)
    single-threaded worker processes with ``WORKER_CONFIG``; distributed's logs below ERROR are
    silenced and the dashboard takes a free port."""
    import dask
    from distributed import LocalCluster

    if n_workers is None:
        n_workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                     else os.cpu_count() or 1)
    with dask.config.set(WORKER_CONFIG):  # the nannies hand the config to their workers
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR)


def dashboard_line(client) -> str:
    """Where the dashboard is, or why there is none (its pages need bokeh)."""
    link = getattr(client, "dashboard_link", None)
    if not link:
        return "no dashboard"
    if importlib.util.find_spec("bokeh") is None:
        return f"no dashboard pages (bokeh is not installed; the scheduler serves {link})"
    return f"dashboard: {link}"


def run_sweep(experiment, grid: Mapping, seeds, store, *, client=None,
              scheduler: str | None = None, mode: str = "product", fixed: Mapping | None = None,
              n_workers: int | None = None, seeds_per_task: int | None = None,
              progress: bool = True, verbose: bool = True) -> SweepResult:
    """Run ``experiment`` (a registered name or a function, see ``experiments``) on every cell of
    ``grid`` (``spec.resolve_cells``: product or zip, plus ``fixed``) for ``seeds`` (a count, a
    list or ``{start, count}``), storing under ``store``.

    Cells already in the store are skipped; the others are submitted to ``client``, or to a new
    client of the scheduler at ``scheduler`` (``"tcp://host:8786"``), or to an embedded cluster
    (``embedded_cluster(n_workers)``, closed at the end). Each finished cell is written at once;
    a failing cell (the experiment raised, or its worker died more often than the scheduler
    allows) is recorded with its error and the others go on. ``progress``: a bar over the cells
    (silent when the notebook runner executes); ``verbose``: print the dashboard line and the
    summary. ``seeds_per_task``: split each cell's seeds into blocks of at most this many, one task
    (and one stored part, keyed with its block's seeds) each, to spread a grid of few cells over
    more workers; by default all the seeds of a cell are one task, and the counts of the result
    are of these tasks. Returns a ``SweepResult``."""
    if client is not None and scheduler is not None:
        raise ValueError("client and scheduler: give one of them, not both")
    if isinstance(experiment, str):
        experiment = get_experiment(experiment)
    name = experiment_name(experiment)
    seeds = parse_seeds(seeds)
    cells = resolve_cells(experiment, grid, mode=mode, fixed=fixed)
    store = Path(store)
    if seeds_per_task is None:
        blocks = [seeds]
    else:
        if isinstance(seeds_per_task, bool) or not isinstance(seeds_per_task, int) or (
                seeds_per_task < 1):
            raise ValueError(f"seeds_per_task: must be a positive integer, got {seeds_per_task!r}")
        blocks = [seeds[i:i + seeds_per_task] for i in range(0, len(seeds), seeds_per_task)]
    tasks = [(cell_key(name, params, block), params, block) for params in cells
             for block in blocks]
    keys = [key for key, _, _ in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("grid: repeated cells")
    pending = [task for task in tasks if not _paths(store, task[0])[0].exists()]
    errors: dict[str, str] = {}
    dashboard = None
    if pending:
        errors, dashboard = _submit(experiment, name, pending, store, client=client,
                                    scheduler=scheduler, n_workers=n_workers, progress=progress,
                                    verbose=verbose)
    result = SweepResult(name, load_results(store, keys), len(pending) - len(errors),
                         len(tasks) - len(pending), len(errors), errors, dashboard)
    if verbose:
        print(result.summary())
    return result


def _submit(experiment, name, pending, store, *, client, scheduler, n_workers, progress,
            verbose):
    from distributed import Client, as_completed

    from ..lab import progress as progress_bar

    cluster = None
    if client is None:
        if scheduler is None:
            cluster = embedded_cluster(n_workers)
            client = Client(cluster)
        else:
            client = Client(scheduler)
        owned = True
    else:
        owned = False
    errors = {}
    try:
        dashboard = dashboard_line(client)
        if verbose:
            print(f"sweep {name}: {len(pending)} cells to run on {client.scheduler.address}; "
                  f"{dashboard}")
        futures = {}
        for key, params, seeds in pending:
            future = client.submit(run_cell, experiment, params, seeds, pure=False,
                                   key=f"sweep-{name}-{key}-{os.urandom(4).hex()}")
            futures[future] = (key, params, seeds)
        completed = as_completed(futures)
        if progress:
            completed = progress_bar(completed, total=len(futures), desc=f"sweep {name}")
        for future in completed:
            key, params, seeds = futures.pop(future)
            try:
                outcome = future.result()
            except Exception as exc:  # e.g. KilledWorker: the task's workers kept dying
                outcome = {"error": f"{type(exc).__name__}: {exc}"}
            if "error" in outcome:
                errors[key] = outcome["error"]
                _write_failure(store, name, key, params, outcome["error"])
            else:
                _write_part(store, name, key, params, seeds, outcome)
    finally:
        if owned:
            client.close()
        if cluster is not None:
            cluster.close()
    return errors, dashboard
