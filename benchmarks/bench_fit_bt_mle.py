"""Benchmark: batched ``fit_bt_mle`` against a per-seed loop of scipy L-BFGS fits.

Both solve the same problems (ridge-regularised Bradley-Terry MLE, analytic gradient for scipy)
in the same run; the script checks that both reach the same optimum and prints the time ratio
per regime, from many seeds with small ``n`` (where the notebooks spend their time) to fewer seeds
with large ``n``.

    .venv/bin/python benchmarks/bench_fit_bt_mle.py            # all regimes, about a minute
    .venv/bin/python benchmarks/bench_fit_bt_mle.py --threads 2

Thread count: both sides use the same number of BLAS/intra-op threads (default 1: on a shared
2-core machine more threads than free cores slow both down). Times are the best of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy / torch load their BLAS

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.optimize import minimize  # noqa: E402

from gsfh_utils.estimation import bt_gradient, fit_bt_mle  # noqa: E402

REG = 1.0
#: (label, seeds, n, d): where the notebooks spend their time first.
REGIMES = [
    ("many seeds, small n (notebook 02 small n)", 1000, 100, 8),
    ("notebook 02 grid, n = 1000", 200, 1000, 8),
    ("notebook 02 grid, n = 10000", 200, 10000, 8),
    ("fewer seeds, n = 2000, d = 16", 128, 2000, 16),
    ("fewer seeds, n = 10000, d = 16", 128, 10000, 16),
]


def make_problems(seeds, num_pairs, dim, generator):
    """BT data with ||theta*|| = 4 and feature differences of unit-norm features."""
    theta = torch.randn(dim, dtype=torch.float64, generator=generator)
    theta = 4 * theta / theta.norm()
    phi = torch.randn(seeds, num_pairs, 2, dim, dtype=torch.float64, generator=generator)
    phi = phi / phi.norm(dim=-1, keepdim=True)
    z = phi[:, :, 0] - phi[:, :, 1]
    labels = (torch.rand(seeds, num_pairs, dtype=torch.float64, generator=generator)
              < torch.sigmoid(z @ theta)).to(torch.float64)
    return z, labels


def scipy_loop(z, labels):
    """One L-BFGS-B fit per seed (analytic gradient), to a gradient tolerance like the batch."""
    z_all, signs_all = z.numpy(), (2 * labels - 1).numpy()
    out = np.empty((z_all.shape[0], z_all.shape[2]))
    for seed in range(z_all.shape[0]):
        zs, signs = z_all[seed], signs_all[seed]

        def objective(w, zs=zs, signs=signs):
            margins = signs * (zs @ w)
            value = np.logaddexp(0, -margins).sum() + 0.5 * REG * w @ w
            return value, -zs.T @ (signs / (1 + np.exp(margins))) + REG * w

        result = minimize(objective, np.zeros(zs.shape[1]), jac=True, method="L-BFGS-B",
                          options=dict(gtol=1e-9, ftol=0, maxiter=10_000))
        out[seed] = result.x
    return torch.from_numpy(out)


def best_time(function, repeats):
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - start)
    return best, value


def main():
    torch.set_num_threads(ARGS.threads)
    generator = torch.Generator().manual_seed(ARGS.seed)
    print(f"threads = {ARGS.threads}, best of {ARGS.repeats}, reg = {REG}, torch "
          f"{torch.__version__}, load average at start {os.getloadavg()[0]:.2f}")
    header = (f"{'regime':<44} {'seeds':>5} {'n':>6} {'d':>3} {'batched s':>10} {'scipy s':>9} "
              f"{'ratio':>6} {'max |dtheta|':>12} {'grad b/s':>17}")
    print(header)
    print("-" * len(header))
    ok = True
    for label, seeds, num_pairs, dim in REGIMES:
        z, labels = make_problems(seeds, num_pairs, dim, generator)
        fit_bt_mle(z[:2], labels[:2], REG)  # warm up
        batched_time, batched = best_time(lambda z=z, labels=labels: fit_bt_mle(z, labels, REG),
                                          ARGS.repeats)
        scipy_time, reference = best_time(lambda z=z, labels=labels: scipy_loop(z, labels),
                                          max(1, ARGS.repeats - 1))
        difference = (batched - reference).abs().max().item()
        grad_batched = bt_gradient(batched, z, labels, REG).norm(dim=-1).max().item()
        grad_scipy = bt_gradient(reference, z, labels, REG).norm(dim=-1).max().item()
        # Strong convexity (modulus REG): each is within its gradient norm / REG of the optimum.
        same = difference <= (grad_batched + grad_scipy) / REG + 1e-12
        ok &= same
        print(f"{label:<44} {seeds:>5} {num_pairs:>6} {dim:>3} {batched_time:>10.3f} "
              f"{scipy_time:>9.3f} {scipy_time / batched_time:>5.1f}x {difference:>12.1e} "
              f"{grad_batched:>8.1e}/{grad_scipy:.1e}" + ("" if same else "  DIFFERENT OPTIMA"))
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
