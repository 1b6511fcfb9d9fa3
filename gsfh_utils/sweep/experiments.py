"""The experiments of the sweeps: thin wrappers over the package's functions.

An experiment is a pure function ``f(*, seeds, **parameters) -> list[dict]``: one flat dict of
scalar metrics per seed, in the order of ``seeds``. Every parameter is keyword-only with a
default (the defaults are the parameters of the notebooks), so a grid names only what it varies.
Each seed has its own ``torch.Generator``, seeded with the seed: it draws the seed's *instance*
(instances vary across seeds, so a cell's verdict is about a family of problems, not one draw)
and then its data. The seeds of a cell run in one task; because the package's bandits are not
batched over instances, the task loops over its seeds and the batched functions see a batch of
one. No global state is read or written except torch's intra-op thread count, set to 1 as the
notebooks do (results are then the same on every worker).

- ``offline``: MLE-then-Gibbs against pointwise and expected pessimism at the bootstrap radius,
  on notebook 02's trap instance (Xiong et al., arXiv:2312.11456, section 3 "Offline Learning
  with Pessimism"), over the behaviour policy's trap mass (coverage), ``n``, ``eta`` and ``d``.
- ``online``: the enhancer against pairs with ``pi0`` and on-policy pairs, on notebook 03's
  under-covered instance (section 4 "Online Iterative Learning with Batch Exploration"), over
  ``eta``, ``d`` and the batch size.
- ``rates``: the suboptimality of MLE-then-Gibbs and ``n`` times it, under good coverage, over
  ``n`` and ``eta`` (notebook 02's rate section).
- ``probe``: no algorithm: a random draw per seed, an optional sleep and an optional failure,
  for the engine's tests and the per-task overhead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from .. import estimation
from .. import offline as offline_module
from .. import online as online_module


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _trap(seed_generator, *, dim, eta, num_actions, num_contexts, num_traps, norm_bound,
          trap_weight, ref_trap_mass):
    return offline_module.trap_instance(
        num_contexts=num_contexts, num_actions=num_actions, dim=dim, num_traps=num_traps,
        norm_bound=norm_bound, trap_weight=trap_weight, eta=eta, generator=seed_generator,
        ref_trap_mass=ref_trap_mass)


def offline(*, seeds, trap_mass: float = 0.01, n: int = 300, eta: float = 0.5, dim: int = 8,
            num_actions: int = 12, num_contexts: int = 16, num_traps: int = 2,
            norm_bound: float = 4.0, trap_weight: float = 3.0, ref_trap_mass: float = 0.2,
            reg: float = 1.0, delta: float = 0.05, num_bootstrap: int = 20) -> list[dict]:
    """Per seed: a trap instance (``offline.trap_instance``), ``n`` pairs from the behaviour
    policy with ``trap_mass`` on the traps, the MLE and its bootstrap radius
    (``offline.fit_offline_grid``), and the exact suboptimality of MLE-then-Gibbs and of both
    pessimistic policies at that radius (``offline.evaluate_offline``). ``trap_mass`` is a
    coverage dial: ``num_traps / num_actions`` is the uniform behaviour policy (good coverage).
    Metrics: ``subopt_none``, ``subopt_pointwise``, ``subopt_expected``, ``radius``."""
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        generator = _generator(seed)
        trap = _trap(generator, dim=dim, eta=eta, num_actions=num_actions,
                     num_contexts=num_contexts, num_traps=num_traps, norm_bound=norm_bound,
                     trap_weight=trap_weight, ref_trap_mass=ref_trap_mass)
        fits = offline_module.fit_offline_grid(
            trap, trap_masses=[trap_mass], sizes=[n], num_seeds=1, reg=reg, generator=generator,
            bootstrap_sizes=[n], num_bootstrap=num_bootstrap, delta=delta)
        results = offline_module.evaluate_offline(trap, fits,
                                                  radii={"bootstrap": fits.bootstrap_radius})
        rows.append({"subopt_none": float(results["none"]),
                     "subopt_pointwise": float(results["pointwise"]["bootstrap"]),
                     "subopt_expected": float(results["expected"]["bootstrap"]),
                     "radius": float(fits.bootstrap_radius)})
    return rows


def rates(*, seeds, n: int = 1000, eta: float = 0.5, dim: int = 8, num_actions: int = 12,
          num_contexts: int = 16, num_traps: int = 2, norm_bound: float = 4.0,
          trap_weight: float = 3.0, ref_trap_mass: float = 0.2,
          reg: float = 1.0) -> list[dict]:
    """Per seed: a trap instance under good coverage (uniform behaviour policy), ``n`` pairs, the
    MLE (``offline.fit_offline_grid``) and the exact suboptimality of its Gibbs policy at ``eta``
    (``offline.evaluate_offline``). Metrics: ``subopt``, ``n_subopt`` (``n`` times it: flat in
    ``n`` where the suboptimality falls like ``1/n``, growing like ``sqrt(n)`` where it falls like
    ``n^-1/2``), ``error`` (``||theta_hat - theta*||``)."""
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        generator = _generator(seed)
        trap = _trap(generator, dim=dim, eta=eta, num_actions=num_actions,
                     num_contexts=num_contexts, num_traps=num_traps, norm_bound=norm_bound,
                     trap_weight=trap_weight, ref_trap_mass=ref_trap_mass)
        fits = offline_module.fit_offline_grid(trap, trap_masses=[num_traps / num_actions],
                                               sizes=[n], num_seeds=1, reg=reg,
                                               generator=generator)
        subopt = float(offline_module.evaluate_offline(trap, fits, radii={})["none"])
        rows.append({"subopt": subopt, "n_subopt": n * subopt,
                     "error": float(fits.error_euclid)})
    return rows


#: The pair samplers the online experiment compares (``online.run_online``'s methods).
ONLINE_METHODS = ("enhancer", "reference", "on_policy")


def online(*, seeds, eta: float = 0.1, dim: int = 8, batch_size: int = 100,
           num_batches: int = 8, num_contexts: int = 16, num_actions: int = 20,
           num_rare: int = 4, rare_mass: float = 0.02, norm_bound: float = 3.0,
           reg: float = 1.0, delta: float = 0.05) -> list[dict]:
    """Per seed: an under-covered instance (``online.undercovered_instance``), its Wald radius
    (``estimation.asymptotic_radius`` with the slope bound over the instance's reward
    differences, as in notebook 03), and ``online.run_online`` for each of ``ONLINE_METHODS``
    with the same number of comparisons and common random numbers (each method's stream starts
    from the seed). Metrics: ``accuracy_<method>``, the accuracy ``J(pi*) - J(pi1) + eta KL(pi* ||
    pi1)`` of the main agent after the last batch (smaller is better)."""
    torch.set_num_threads(1)
    rows = []
    for seed in seeds:
        bandit = online_module.undercovered_instance(
            num_contexts=num_contexts, num_actions=num_actions, dim=dim, num_rare=num_rare,
            rare_mass=rare_mass, norm_bound=norm_bound, eta=eta, generator=_generator(seed))
        gamma = estimation.slope_bound(estimation.reward_difference_bound(bandit.features,
                                                                          norm_bound))
        beta = estimation.asymptotic_radius(dim=dim, delta=delta, gamma=gamma, reg=reg,
                                            norm_bound=norm_bound)
        row = {}
        for method in ONLINE_METHODS:
            run = online_module.run_online(bandit, method=method, num_batches=num_batches,
                                           batch_size=batch_size, num_seeds=1, beta=beta,
                                           reg=reg, generator=_generator(seed))
            row[f"accuracy_{method}"] = float(run.target[-1, 0])
        rows.append(row)
    return rows


def probe(*, seeds, scale: float = 1.0, duration: float = 0.0, fail: bool = False) -> list[dict]:
    """No algorithm: per seed, ``scale`` times a standard normal drawn from the seed's generator;
    sleeps ``duration`` seconds first and raises ``RuntimeError`` when ``fail`` is true. For the
    engine's tests (a failing cell, a cell in flight while a worker is killed) and the per-task
    overhead of the benchmark."""
    if duration:
        time.sleep(duration)
    if fail:
        raise RuntimeError(f"probe cell asked to fail (scale={scale})")
    return [{"value": scale * float(torch.randn((), dtype=torch.float64,
                                                generator=_generator(seed)))}
            for seed in seeds]


#: The experiments a spec can name.
EXPERIMENTS: dict[str, Callable[..., list[dict]]] = {
    "offline": offline, "online": online, "rates": rates, "probe": probe}


def get_experiment(name: str) -> Callable[..., list[dict]]:
    """The experiment registered as ``name`` (``ValueError`` naming it otherwise)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"experiment: unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
