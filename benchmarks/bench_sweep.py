"""Benchmark: a sweep serially in one process against the same cells on a 2-worker LocalCluster.

Both sides run the same cells of the offline experiment (``gsfh_utils.sweep.experiments``;
about a second each) through the same ``run_cell``, in the same run: serially in this process,
and with ``run_sweep`` on an embedded cluster of 2 single-threaded worker processes (started and
warmed up before the clock starts: every process has imported torch and the package and run a
real cell of each size). The two alternate ``--repeats`` times and the best of each is kept, so
that both see the same load. The script checks that both give bit-identical metrics and prints
the speed-up, the CPU time the tasks' threads used on each side (robust to other load: equal CPU
means the workers compute as fast as a plain process, so an idle machine gives the ideal ratio
less the overhead), and the per-task overhead of the engine: many no-op cells (the ``probe``
experiment, one seed each), whose wall time per cell is what a task costs beyond its own work
(scheduling, transfer, the Parquet part).

    .venv/bin/python benchmarks/bench_sweep.py               # about a minute
    .venv/bin/python benchmarks/bench_sweep.py --cells 16 --seeds 12

The load average is printed before and after: on a shared machine the wall-clock ratio moves
with the other jobs; the CPU times do not.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=12, help="cells of the timed grid")
    parser.add_argument("--seeds", type=int, default=10, help="seeds per cell (~0.1 s each)")
    parser.add_argument("--noop-cells", type=int, default=200, help="cells of the overhead run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="alternating repeats (best kept)")
    return parser.parse_args(argv)


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from distributed import Client

    from gsfh_utils.sweep import cell_key, embedded_cluster, resolve_cells, run_cell, run_sweep
    from gsfh_utils.sweep import experiments as ex

    torch.set_num_threads(1)
    masses = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    sizes = [300, 1000, 3000, 10000]
    grid = {"trap_mass": masses, "n": sizes[: max(1, -(-args.cells // len(masses)))]}
    cells = resolve_cells(ex.offline, grid)[: args.cells]
    grid = {key: [cell[key] for cell in cells] for key in ("trap_mass", "n")}
    seeds = list(range(args.seeds))
    print(f"load average at the start: {load()}")
    print(f"grid: {len(cells)} offline cells x {len(seeds)} seeds; {args.workers} workers")

    def warm_up():  # one real cell of each size: imports, first calls, allocator
        return [run_cell(ex.offline, cell, (0,)) for cell in cells[:: len(masses)]]

    start = time.perf_counter()
    cluster = embedded_cluster(args.workers)
    client = Client(cluster)
    client.run(warm_up)
    startup = time.perf_counter() - start
    warm_up()
    serial_times, parallel_times = [], []
    with tempfile.TemporaryDirectory() as store:
        for repeat in range(args.repeats):  # alternate, so that both see the same load
            start = time.perf_counter()
            serial = {cell_key("offline", cell, seeds): run_cell(ex.offline, cell, tuple(seeds))
                      for cell in cells}
            serial_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = run_sweep("offline", grid, seeds, Path(store) / f"timed{repeat}",
                               client=client, mode="zip", progress=False, verbose=False)
            parallel_times.append(time.perf_counter() - start)
        serial_time, parallel_time = min(serial_times), min(parallel_times)
        metrics = ["subopt_none", "subopt_pointwise", "subopt_expected", "radius"]
        for _, row in result.table.iterrows():
            expected = serial[row["cell"]]["rows"][seeds.index(row["seed"])]
            assert [row[m] for m in metrics] == [expected[m] for m in metrics], row["cell"]
        start = time.perf_counter()
        noop = run_sweep("probe", {"scale": [float(i) for i in range(args.noop_cells)]}, 1,
                         Path(store) / "noop", client=client, progress=False, verbose=False)
        noop_time = time.perf_counter() - start
        assert noop.done == args.noop_cells
    client.close()
    cluster.close()
    per_cell = sum(outcome["wall_time"] for outcome in serial.values()) / len(cells)
    serial_cpu = sum(outcome["cpu_time"] for outcome in serial.values())
    cluster_cpu = result.table.groupby("cell")["cpu_time"].first().sum()
    print(f"mean cell: {per_cell:.2f} s of work ({per_cell / len(seeds):.3f} s per seed)")
    print(f"CPU time of the tasks' threads: serial {serial_cpu:.2f} s, cluster {cluster_cpu:.2f} s "
          f"(ratio {cluster_cpu / serial_cpu:.2f}; the same work, so near 1 unless the workers "
          "compute slower than a plain process)")
    print(f"serial, one process:        {serial_time:.2f} s (best of {len(serial_times)})")
    print(f"LocalCluster, {args.workers} workers:   {parallel_time:.2f} s (best of "
          f"{len(parallel_times)}; cluster start and warm-up before: {startup:.1f} s)")
    print(f"speed-up: {serial_time / parallel_time:.2f}x (metrics bit-identical)")
    print(f"per-task overhead: {noop_time / args.noop_cells * 1e3:.1f} ms per no-op cell "
          f"({args.noop_cells} cells in {noop_time:.2f} s, Parquet part included)")
    print(f"load average at the end: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
