"""The sweep engine on a real ``LocalCluster`` (2 single-threaded worker processes, shared by the
module): results equal a serial run bit for bit, resumption computes only the missing cells, a
worker killed mid-sweep loses no row, a failing cell is reported (and fails the CLI), bad specs
name their key. Experiments are tiny; the killed-worker test runs last (its worker restarts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import dask
import distributed
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import background, prestart
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.sweep import (
    cell_key,
    grid_cells,
    load_results,
    parse_seeds,
    parse_spec,
    resolve_cells,
    run_cell,
    run_sweep,
)
from gsfh_utils.sweep import experiments as ex
from gsfh_utils.sweep.__main__ import main as cli
from gsfh_utils.sweep.phase import (
    local_slopes,
    mean_interval,
    per_seed_slopes,
    sign_boundary,
    win_table,
)

TINY_OFFLINE = dict(num_contexts=3, num_actions=4, num_traps=1, num_bootstrap=3)
OFFLINE_GRID = {"trap_mass": [0.02, 0.25], "n": [20, 40]}


#: The cluster lives from the end of collection on, with its scheduler and nannies in this
#: process: their event-loop and system monitors (which only feed the dashboard and the
#: "unresponsive event loop" warning) tick at 1 s and 10 s instead of 20 ms and 0.5 s, so that
#: the idle cluster does not take CPU time from the tests before this module.
QUIET_MONITORS = {"distributed.admin.tick.interval": "1s",
                  "distributed.admin.system-monitor.interval": "10s"}


def warm_cluster():
    """The embedded cluster of 2 worker processes, each having imported the engine (torch and the
    package), as unpickling its first task would: no task has run on them yet."""
    from gsfh_utils.sweep import embedded_cluster

    with dask.config.set(QUIET_MONITORS):
        cluster = embedded_cluster(2)
    with distributed.Client(cluster) as client:
        client.run(exec, "import gsfh_utils.sweep.engine")
    return cluster


@prestart
def cluster_start():
    """``warm_cluster`` in the background from the end of collection on: the workers start and
    import while the tests before this module run."""
    return background(warm_cluster)


@pytest.fixture(scope="module")
def client(cluster_start):
    cluster = cluster_start.result(timeout=300)
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()


def serial_rows(experiment, grid, seeds, fixed):
    """The same cells run one after the other in this process: {(cell key, seed): metrics}."""
    rows = {}
    for params in resolve_cells(experiment, grid, fixed=fixed):
        key = cell_key(experiment.__name__, params, seeds)
        outcome = run_cell(experiment, params, seeds)
        rows.update({(key, seed): row for seed, row in zip(seeds, outcome["rows"], strict=True)})
    return rows


# --- the engine on the cluster -----------------------------------------------------------------


def test_cluster_results_equal_a_serial_run(client, tmp_path):
    seeds = (3, 7)
    result = run_sweep("offline", OFFLINE_GRID, seeds, tmp_path, client=client,
                       fixed=TINY_OFFLINE, progress=False, verbose=False)
    assert (result.done, result.skipped, result.failed) == (4, 0, 0)
    expected = serial_rows(ex.offline, OFFLINE_GRID, seeds, TINY_OFFLINE)
    table = result.table
    assert len(table) == len(expected) == 8
    metrics = ["subopt_none", "subopt_pointwise", "subopt_expected", "radius"]
    for _, row in table.iterrows():
        assert [row[m] for m in metrics] == [expected[(row["cell"], row["seed"])][m]
                                             for m in metrics]  # bit-identical
    assert set(table.columns) >= {*OFFLINE_GRID, "seed", "version", "wall_time", "cpu_time",
                                  *metrics}
    assert (table["wall_time"] > 0).all() and (table["cpu_time"] > 0).all()
    # Instances vary across seeds: the two seeds of a cell give different results.
    assert table.groupby("cell")["subopt_none"].nunique().eq(2).all()


#: ``python -m gsfh_utils.sweep ARGS`` with ARGS read from the first line of stdin (a JSON list):
#: the process imports the engine (torch, distributed) before it knows what to run.
DRIVER = """\
import json, runpy, sys
import gsfh_utils.sweep.engine
sys.argv[1:] = json.loads(sys.stdin.readline())
runpy.run_module("gsfh_utils.sweep", run_name="__main__", alter_sys=True)
"""


@prestart
def sweep_driver():
    """A driver process for the interruption test, started after collection: its imports run
    while the tests before this module do; it waits for its arguments."""
    return subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)


def test_resume_after_the_driver_is_killed_computes_only_missing_cells(client, sweep_driver,
                                                                       tmp_path):
    """A real interruption: the CLI running the sweep is killed (SIGKILL) once some parts are
    written; the rerun computes exactly the cells without a part."""
    spec, store = tmp_path / "spec.yaml", tmp_path / "store"
    grid = {"scale": [float(i) for i in range(10)], "duration": [0.2]}
    spec.write_text(yaml.safe_dump({"experiment": "probe", "grid": grid, "seeds": 2}))
    driver = sweep_driver
    driver.stdin.write(json.dumps([str(spec), "--scheduler", client.scheduler.address, "--store",
                                   str(store)]) + "\n")
    driver.stdin.close()
    parts = store / "parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("*.parquet"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    driver.kill()
    assert driver.wait(timeout=30) == -signal.SIGKILL  # interrupted, not finished
    stored = {part: part.stat().st_mtime_ns for part in parts.glob("*.parquet")}
    assert 2 <= len(stored) < 10
    resumed = run_sweep("probe", grid, 2, store, client=client, progress=False, verbose=False)
    assert (resumed.done, resumed.skipped, resumed.failed) == (10 - len(stored), len(stored), 0)
    assert all(part.stat().st_mtime_ns == mtime for part, mtime in stored.items())
    assert len(resumed.table) == 20 and not resumed.table.duplicated(["cell", "seed"]).any()


def test_a_changed_grid_reuses_what_overlaps(client, tmp_path):
    first = run_sweep("probe", {"scale": [1.0, 2.0, 3.0]}, 3, tmp_path, client=client,
                      progress=False, verbose=False)
    assert (first.done, first.skipped) == (3, 0)
    again = run_sweep("probe", {"scale": [1.0, 2.0, 3.0]}, 3, tmp_path, client=client,
                      progress=False, verbose=False)
    assert (again.done, again.skipped) == (0, 3)
    pd.testing.assert_frame_equal(again.table, first.table)
    changed = run_sweep("probe", {"scale": [2.0, 3.0, 5.0]}, 3, tmp_path, client=client,
                        progress=False, verbose=False)
    assert (changed.done, changed.skipped) == (1, 2)
    assert sorted(changed.table["scale"].unique()) == [2.0, 3.0, 5.0]  # only its own cells
    assert len(load_results(tmp_path)) == 4 * 3
    other_seeds = run_sweep("probe", {"scale": [2.0]}, 4, tmp_path, client=client,
                            progress=False, verbose=False)
    assert other_seeds.done == 1  # the seeds are part of a cell's key


def test_seeds_split_into_tasks_give_the_same_rows(client, tmp_path):
    whole = run_sweep("probe", {"scale": [1.0, 2.0]}, 5, tmp_path / "a", client=client,
                      progress=False, verbose=False)
    split = run_sweep("probe", {"scale": [1.0, 2.0]}, 5, tmp_path / "b", client=client,
                      seeds_per_task=2, progress=False, verbose=False)
    assert (whole.done, split.done) == (2, 6)  # 2 cells; 2 cells x 3 blocks of seeds
    columns = ["scale", "seed", "value"]
    pd.testing.assert_frame_equal(
        whole.table[columns].sort_values(columns[:2], ignore_index=True),
        split.table[columns].sort_values(columns[:2], ignore_index=True))
    with pytest.raises(ValueError, match="^seeds_per_task"):
        run_sweep("probe", {"scale": [1.0]}, 2, tmp_path, client=client, seeds_per_task=0)


def test_failing_cell_is_recorded_and_the_others_finish(client, tmp_path):
    result = run_sweep("probe", {"fail": [False, True]}, 2, tmp_path, client=client,
                       progress=False, verbose=False)
    assert (result.done, result.failed, result.ok) == (1, 1, False)
    (key, message), = result.errors.items()
    assert "RuntimeError: probe cell asked to fail" in message
    record = json.loads((tmp_path / "failed" / f"{key}.json").read_text())
    assert record["params"]["fail"] is True and record["error"] == message
    assert list(result.table["fail"]) == [False, False]
    assert "1 failed" in result.summary() and key in result.summary()


def test_cli_exits_non_zero_on_a_failing_cell(client, tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"experiment": "probe", "grid": {"fail": [False, True]},
                                    "seeds": 2}))
    store = tmp_path / "store"
    assert cli([str(spec), "--scheduler", client.scheduler.address, "--store", str(store)]) == 1
    assert "1 done, 0 skipped (already stored), 1 failed" in capsys.readouterr().out
    spec.write_text(yaml.safe_dump({"experiment": "probe", "grid": {"fail": [False]},
                                    "seeds": 2}))
    assert cli([str(spec), "--scheduler", client.scheduler.address, "--store", str(store)]) == 0
    spec.write_text(yaml.safe_dump({"experiment": "probe", "grid": {"speed": [1]}, "seeds": 2}))
    assert cli([str(spec), "--store", str(store)]) == 2
    assert "speed" in capsys.readouterr().err


def test_worker_killed_mid_sweep_loses_and_duplicates_nothing(client, tmp_path):
    pids = client.run(os.getpid)
    victim = sorted(pids.values())[0]
    timer = threading.Timer(0.6, os.kill, (victim, signal.SIGKILL))
    timer.start()
    grid = {"scale": [float(i) for i in range(8)], "duration": [0.25]}
    try:
        result = run_sweep("probe", grid, 4, tmp_path, client=client, progress=False,
                           verbose=False)
    finally:
        timer.join()
    assert victim not in client.run(os.getpid).values()  # the worker did die (and restarted)
    assert (result.done, result.failed) == (8, 0)
    table = result.table
    assert len(table) == 8 * 4 and not table.duplicated(["cell", "seed"]).any()
    assert sorted(table["scale"].unique()) == grid["scale"]


# --- specs --------------------------------------------------------------------------------------


def spec(**changes):
    base = {"experiment": "probe", "grid": {"scale": [1.0, 2.0]}, "seeds": 2}
    return {**base, **changes}


@pytest.mark.parametrize("changes, key", [
    (dict(grid={"speed": [1.0]}), "speed"),              # unknown parameter
    (dict(fixed={"speed": 1.0}), "speed"),               # unknown fixed parameter
    (dict(grid={}), "grid"),                             # empty grid
    (dict(grid={"scale": []}), "scale"),                 # empty list
    (dict(grid={"scale": 1.0}), "scale"),                # not a list
    (dict(grid={"scale": [[1.0]]}), "scale"),            # not a scalar
    (dict(experiment="nonesuch"), "experiment"),         # unknown experiment
    (dict(mode="cross"), "mode"),
    (dict(grid={"scale": [1.0], "fail": [True, False]}, mode="zip"), "grid"),
    (dict(fixed={"scale": 1.0}), "scale"),               # fixed and in the grid
    (dict(seeds=[1, 1]), "seeds"),
    (dict(seeds=0), "seeds"),
    (dict(store_path="x"), "store_path"),                # unknown key of the spec
])
def test_bad_specs_name_their_key(changes, key):
    with pytest.raises(ValueError, match=rf"^{key}\b"):
        parse_spec(spec(**changes))


def test_missing_key_and_both_client_and_scheduler(tmp_path):
    with pytest.raises(ValueError, match="^seeds"):
        parse_spec({"experiment": "probe", "grid": {"scale": [1.0]}})
    with pytest.raises(ValueError, match="client and scheduler"):
        run_sweep("probe", {"scale": [1.0]}, 1, tmp_path, client=object(),
                  scheduler="tcp://127.0.0.1:1")


def test_shipped_specs_parse():
    from gsfh_utils.lab.io import REPOSITORY_ROOT

    shipped = sorted((REPOSITORY_ROOT / "sweeps").glob("*.yaml"))
    assert shipped
    for path in shipped:
        parsed = parse_spec(yaml.safe_load(path.read_text()))
        assert parsed.cells()


def test_grid_cells_product_and_zip():
    grid = {"a": [1, 2], "b": ["x", "y", "z"]}
    assert grid_cells(grid) == [{"a": a, "b": b} for a in (1, 2) for b in "xyz"]
    assert grid_cells({"a": [1, 2], "b": [3, 4]}, mode="zip") == [{"a": 1, "b": 3},
                                                                  {"a": 2, "b": 4}]
    cells = resolve_cells(ex.probe, {"scale": [2.0]}, fixed={"duration": 0.0})
    assert cells == [{"scale": 2.0, "duration": 0.0, "fail": False}]


@given(st.lists(st.integers(1, 4), min_size=1, max_size=4))
def test_product_grid_has_every_combination_once(lengths):
    grid = {f"p{i}": list(range(length)) for i, length in enumerate(lengths)}
    cells = grid_cells(grid)
    expected = 1
    for length in lengths:
        expected *= length
    assert len(cells) == expected
    assert len({cell_key("e", cell, (0,)) for cell in cells}) == expected


def test_parse_seeds():
    assert parse_seeds(3) == (0, 1, 2)
    assert parse_seeds([5, 2]) == (5, 2)
    assert parse_seeds({"start": 10, "count": 2}) == (10, 11)


def test_cell_key_depends_on_name_parameters_and_seeds():
    key = cell_key("offline", {"n": 1, "eta": 0.5}, (0, 1))
    assert key == cell_key("offline", {"eta": 0.5, "n": 1}, [0, 1])  # order-free
    others = [cell_key("rates", {"n": 1, "eta": 0.5}, (0, 1)),
              cell_key("offline", {"n": 2, "eta": 0.5}, (0, 1)),
              cell_key("offline", {"n": 1, "eta": 0.5}, (0, 2))]
    assert key not in others and len(set(others)) == 3


def test_run_cell_records_bad_experiment_output():
    assert "asked to fail" in run_cell(ex.probe, {"fail": True}, (0,))["error"]

    def wrong_count(*, seeds):
        return [{"x": 1.0}]

    def not_scalar(*, seeds):
        return [{"x": [1.0]} for _ in seeds]

    def shadowing(*, seeds, n=1):
        return [{"n": 1.0} for _ in seeds]

    assert "list of 2" in run_cell(wrong_count, {}, (0, 1))["error"]
    assert "scalar" in run_cell(not_scalar, {}, (0,))["error"]
    assert "name of a parameter" in run_cell(shadowing, {"n": 1}, (0,))["error"]


# --- the experiments ----------------------------------------------------------------------------


def test_experiment_rows_depend_on_their_seed_only():
    alone = ex.offline(seeds=[5], n=30, **TINY_OFFLINE)
    together = ex.offline(seeds=[4, 5], n=30, **TINY_OFFLINE)
    assert together[1] == alone[0] and together[0] != alone[0]
    rows = ex.rates(seeds=[0, 1], n=50, num_contexts=3, num_actions=4, num_traps=1)
    assert all(row["n_subopt"] == 50 * row["subopt"] and row["subopt"] >= 0 for row in rows)
    online = ex.online(seeds=[0], num_batches=1, batch_size=5, num_contexts=2, num_actions=4,
                       num_rare=1, dim=2)
    assert set(online[0]) == {f"accuracy_{m}" for m in ex.ONLINE_METHODS}
    assert all(value >= 0 for value in online[0].values())  # the accuracy is a gap plus a KL


# --- phase diagrams -----------------------------------------------------------------------------


def test_win_table_counts_ties_half_and_averages_differences():
    frame = pd.DataFrame({"cell": ["a"] * 4 + ["b"] * 2, "new": [1, 2, 3, 5, 1, 1],
                          "old": [2, 2, 1, 6, 0, 0]})
    table = win_table(frame, better="new", worse="old", by=["cell"]).set_index("cell")
    assert table.loc["a", "win"] == (1 + 0.5 + 0 + 1) / 4  # brute force
    assert table.loc["a", "effect"] == ((2 - 1) + 0 + (1 - 3) + (6 - 5)) / 4
    assert (table.loc["b", "win"], table.loc["b", "seeds"]) == (0.0, 2)
    with pytest.raises(ValueError, match="^missing"):
        win_table(frame, better="missing", worse="old", by=["cell"])


def test_sign_boundary_separates_opposite_cells_only():
    assert sign_boundary([[0.2, 0.8]], 0.5) == [((1.0, 0.0), (1.0, 1.0))]
    assert sign_boundary([[0.2], [0.8]], 0.5) == [((0.0, 1.0), (1.0, 1.0))]
    assert sign_boundary([[0.2, 0.5, 0.8]], 0.5) == []  # a cell at the threshold
    grid = np.array([[1.0, -1.0], [-1.0, -1.0]])
    assert sorted(sign_boundary(grid)) == sorted([((1.0, 0.0), (1.0, 1.0)),
                                                  ((0.0, 1.0), (1.0, 1.0))])


@given(st.lists(st.lists(st.floats(-1, 1), min_size=3, max_size=3), min_size=1, max_size=4))
def test_sign_boundary_length_counts_sign_changes(rows):
    values = np.array(rows)
    side = np.sign(values)
    changes = int((side[:, 1:] * side[:, :-1] < 0).sum() + (side[1:] * side[:-1] < 0).sum())
    assert len(sign_boundary(values)) == changes


def test_per_seed_slopes_and_mean_interval():
    n = np.array([10.0, 100.0, 1000.0])
    frame = pd.DataFrame({"seed": np.repeat([0, 1], 3), "n": np.tile(n, 2),
                          "y": np.concatenate([3 / n, 5 * n ** -0.5])})
    slopes = per_seed_slopes(frame, x="n", y="y")
    np.testing.assert_allclose(slopes.to_numpy(), [-1.0, -0.5], atol=1e-12)
    local = local_slopes(frame.assign(eta=0.5), x="n", y="y", by="eta")
    assert list(local["n"]) == [10.0, 100.0]
    np.testing.assert_allclose(local["slope"], [-0.75, -0.75], atol=1e-12)  # mean of -1, -1/2
    mean, low, high = mean_interval([1.0, 2.0, 3.0], level=0.95)
    half = 4.302652729911275 * 1.0 / np.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n)
    assert mean == 2.0 and abs(low - (2 - half)) < 1e-9 and abs(high - (2 + half)) < 1e-9
