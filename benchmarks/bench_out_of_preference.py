"""Benchmark: notebook 06's whole exact comparison (DPO, RM-PO, RM-PO+ and the class floor) for
1000 seeds at one setting, batched over seeds, against a per-seed loop of the same computation.

    .venv/bin/python benchmarks/bench_out_of_preference.py                # about a minute
    .venv/bin/python benchmarks/bench_out_of_preference.py --loop-seeds 1000

Both sides call the same package functions (``out_of_preference.compare_routes`` and
``in_class_optimum``) on the same instances: the batched side on all seeds at once, the loop on
one seed at a time (``ContinuousBandit.subset``). The loop runs over the first ``--loop-seeds``
seeds and its time is scaled to all of them (its cost is linear in the seeds). The two sides draw
their preference data from different random streams, so the script checks agreement of the
routes' median suboptimality over the looped seeds rather than bit equality.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=1000)
    parser.add_argument("--loop-seeds", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ARGS = parse_args()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(ARGS.threads)  # before numpy / torch load their BLAS

import torch  # noqa: E402

from gsfh_utils import out_of_preference as oop  # noqa: E402

#: One setting of notebook 06 (its full-profile instance, the middle eta, n = 100).
SETTING = dict(context_dim=4, num_actions=8, dim=8, norm_bound=4.0, eta=1.0)
ROUTES = dict(num_pairs=100, extra_prompts=[1000], policy_dim=4, reg=1.0, tol=1e-7)
EVALUATION_CONTEXTS = 500


def comparison(bandit, evaluation, generator):
    """Every route and the floor, as notebook 06 computes them: ``{route: [S]}``."""
    result = oop.compare_routes(bandit, evaluation=evaluation, generator=generator, **ROUTES)
    floor = oop.in_class_optimum(bandit, policy_dim=ROUTES["policy_dim"], evaluation=evaluation)
    return {**result.suboptimality, "floor": floor}


def main() -> int:
    torch.set_num_threads(ARGS.threads)
    generator = torch.Generator().manual_seed(ARGS.seed)
    bandit = oop.ContinuousBandit.random(num_seeds=ARGS.seeds, generator=generator, **SETTING)
    evaluation = bandit.features(bandit.sample_contexts(EVALUATION_CONTEXTS, generator))

    start = time.perf_counter()
    batched = comparison(bandit, evaluation, generator)
    batched_seconds = time.perf_counter() - start

    looped = {name: [] for name in batched}
    start = time.perf_counter()
    for seed in range(ARGS.loop_seeds):
        one = comparison(bandit.subset(seed), evaluation[seed:seed + 1], generator)
        for name, values in one.items():
            looped[name].append(values)
    loop_seconds = (time.perf_counter() - start) * ARGS.seeds / ARGS.loop_seeds

    print(f"{ARGS.seeds} seeds, n = {ROUTES['num_pairs']}, m = {ROUTES['extra_prompts']}, "
          f"{EVALUATION_CONTEXTS} evaluation contexts, {ARGS.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.1f}")
    ratio = loop_seconds / batched_seconds
    print(f"batched: {batched_seconds:.1f} s; per-seed loop: {loop_seconds:.1f} s "
          f"(measured on {ARGS.loop_seeds} seeds, scaled); ratio {ratio:.1f}x")
    print("median suboptimality over the looped seeds (batched | loop):")
    for name in batched:
        first = batched[name][:ARGS.loop_seeds].median().item()
        second = torch.cat(looped[name]).median().item()
        print(f"  {name:<12} {first:.4f} | {second:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
