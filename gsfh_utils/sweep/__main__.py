"""``python -m gsfh_utils.sweep SPEC.yaml [--scheduler ADDR] [--store DIR] [--workers N]``.

Runs the sweep of a spec (``gsfh_utils.sweep.spec``), prints its summary and exits with 1 if any
cell failed (2 for a bad spec). Without ``--scheduler`` the cells run on an embedded
``LocalCluster``; the store defaults to the spec's ``store``, else ``build/sweeps/<spec name>``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import run_sweep
from .spec import load_spec


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gsfh_utils.sweep",
                                     description="Run a parameter sweep on dask.distributed.")
    parser.add_argument("spec", type=Path, help="the sweep's YAML spec (see sweeps/)")
    parser.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. "
                        "tcp://127.0.0.1:8786 (default: an embedded LocalCluster)")
    parser.add_argument("--store", type=Path, help="folder of the results (default: the spec's "
                        "store, else build/sweeps/<spec name>)")
    parser.add_argument("--workers", type=int, help="workers of the embedded cluster (default: "
                        "one per core)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except ValueError as exc:
        print(f"bad spec {args.spec}: {exc}", file=sys.stderr)
        return 2
    store = args.store or spec.store or Path("build") / "sweeps" / args.spec.stem
    result = run_sweep(spec.experiment, spec.grid, spec.seeds, store, mode=spec.mode,
                       fixed=spec.fixed, scheduler=args.scheduler, n_workers=args.workers)
    print(f"results: {store}/parts ({len(result.table)} rows)")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
