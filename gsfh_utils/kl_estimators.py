"""Monte-Carlo estimators of KL(p || q) from samples of p, next to the exact KL (J. Schulman,
"Approximating KL divergence", 2020). RLHF monitors the KL of a policy to its reference with
them; notebooks 04 and 05 measure their bias and variance.

With ``a ~ p`` and ``log_ratio = log p(a)/q(a)``:

- ``k1 = log p/q``: unbiased, high variance, can be negative;
- ``k2 = (log p/q)^2 / 2``: biased (it is the f-divergence with ``f(u) = (log u)^2/2``, which agrees
  with KL to second order as ``q -> p``), lower variance;
- ``k3 = q/p - 1 - log q/p``: always ``>= 0``, low variance when ``p`` and ``q`` are close; unbiased
  when ``p`` and ``q`` have the same support (then ``E_p[q/p] = 1``). In general
  ``E_p[q/p] = q(supp p)``, so ``E_p k3 = KL - q(outside supp p)``: biased *down* when ``q`` puts
  mass where ``p`` puts none.

``kl_estimator_moments`` gives the exact mean and variance of each estimator (finite action
sets), so their bias and variance are known without sampling.
"""

from __future__ import annotations

import torch

from ._validation import broadcast_pair, check_probs
from .sampling import sample_categorical

ESTIMATORS = ("k1", "k2", "k3")


def kl_estimates(log_p, log_q) -> dict[str, torch.Tensor]:
    """Per-sample ``k1, k2, k3`` from ``log p(a)`` and ``log q(a)`` at samples ``a ~ p`` (any
    shape, broadcast together)."""
    log_p = torch.as_tensor(log_p, dtype=torch.float64)
    log_q = torch.as_tensor(log_q, dtype=torch.float64)
    if torch.isnan(log_p).any() or torch.isnan(log_q).any():
        raise ValueError("log_p and log_q must not contain NaN")
    if torch.isinf(log_p).any():
        raise ValueError("log_p must be finite at samples of p (a sample has p(a) > 0)")
    log_ratio = log_p - log_q  # log p/q
    return {
        "k1": log_ratio,
        "k2": 0.5 * log_ratio**2,
        "k3": torch.expm1(-log_ratio) + log_ratio,  # q/p - 1 - log q/p
    }


def kl_estimates_from_samples(samples, p, q) -> dict[str, torch.Tensor]:
    """``k1, k2, k3`` at the action indices ``samples [..., n]`` drawn from ``p [..., K]``."""
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    p, q = broadcast_pair(p, q, ("p", "q"))
    samples = torch.as_tensor(samples)
    if samples.dtype not in (torch.int64, torch.int32) or samples.shape[:-1] != p.shape[:-1]:
        raise ValueError(f"samples must be integer indices of shape [{tuple(p.shape[:-1])}, n], "
                         f"got {samples.dtype} {tuple(samples.shape)}")
    log_p = torch.log(p).gather(-1, samples.long())
    log_q = torch.log(q).gather(-1, samples.long())
    return kl_estimates(log_p, log_q)


def kl_estimator_moments(p, q) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Exact ``(mean, variance)`` under ``a ~ p`` of each per-sample estimator (batched).

    Sums over the support of ``p``; ``q`` must cover it (otherwise KL is infinite).
    """
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    p, q = broadcast_pair(p, q, ("p", "q"))
    support = p > 0
    if (support & (q == 0)).any():
        raise ValueError("q must be positive wherever p is (otherwise KL(p || q) is infinite)")
    log_ratio = torch.where(support, torch.log(p) - torch.log(torch.where(support, q, 1.0)), 0.0)
    values = kl_estimates(log_ratio, torch.zeros_like(log_ratio))
    moments = {}
    for name, value in values.items():
        value = torch.where(support, value, 0.0)
        mean = (p * value).sum(-1)
        moments[name] = (mean, (p * (value - mean.unsqueeze(-1)) ** 2).sum(-1))
    return moments


def mean_error_ratio(p, q, name: str) -> torch.Tensor:
    """``|E_p[k] - KL(p || q)|`` for the estimator ``name``, divided by the float64 summation
    bound of the two sums (``gsfh_utils.lab.stats.roundoff_tolerance``): at most 1 where the
    estimator is exactly unbiased (``k1`` always, ``k3`` when ``q``'s support is inside ``p``'s)."""
    from .gibbs import kl_divergence
    from .lab.stats import roundoff_tolerance

    if name not in ESTIMATORS:
        raise ValueError(f"name must be one of {ESTIMATORS}, got {name!r}")
    p = check_probs(p, "p")
    q = check_probs(q, "q")
    mean, _ = kl_estimator_moments(p, q)[name]
    log_ratio = torch.where(p > 0, torch.log(p) - torch.log(q), 0.0)
    magnitude = (p * (log_ratio.abs() + torch.exp(-log_ratio) + 1)).sum(-1)
    return (mean - kl_divergence(p, q)).abs() / roundoff_tolerance(p.shape[-1], magnitude)


def monte_carlo_means(p, q, num_draws: int, generator: torch.Generator):
    """Sample means of ``k1, k2, k3`` from ``num_draws`` draws of each row of ``p [..., K]``, and
    their distance to the exact means in standard errors (``kl_estimator_moments``): returns
    ``(means, standardised_errors)``, dicts of ``[...]`` tensors."""
    p, q = check_probs(p, "p"), check_probs(q, "q")
    draws = sample_categorical(p, num_draws, generator)
    means = {k: v.mean(-1) for k, v in kl_estimates_from_samples(draws, p, q).items()}
    moments = kl_estimator_moments(p, q)
    errors = {k: (means[k] - moments[k][0]).abs()
              / (moments[k][1] / num_draws).sqrt().clamp_min(1e-300) for k in means}
    return means, errors


def bias_test(p, q, name: str, num_draws: int, generator: torch.Generator):
    """Is the estimator ``name`` biased, as seen from ``num_draws`` draws of each row of ``p [R,
    K]``? Per row, a Chebyshev test of its sample mean against ``KL(p || q)`` with the exact
    standard error (``kl_estimator_moments``; valid for any law of the estimates), combined by
    the intersection-union test ("biased in every row"): a ``gsfh_utils.lab.stats.TestResult``."""
    from .gibbs import kl_divergence
    from .lab import stats

    if name not in ESTIMATORS:
        raise ValueError(f"name must be one of {ESTIMATORS}, got {name!r}")
    p, q = check_probs(p, "p"), check_probs(q, "q")
    if p.ndim != 2:
        raise ValueError(f"p must have shape [rows, K], got {tuple(p.shape)}")
    means, _ = monte_carlo_means(p, q, num_draws, generator)
    variance, kl = kl_estimator_moments(p, q)[name][1], kl_divergence(p, q)
    return stats.every([stats.chebyshev_test(means[name][row], kl[row],
                                             (variance[row] / num_draws).sqrt())
                        for row in range(p.shape[0])], "rows")
