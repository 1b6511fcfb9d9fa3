"""Statistical checks behind the claims: goodness of fit and binomial proportions (batched).

Thresholds of the claims come from here: a test at a stated level, not a tuned tolerance.
"""

from __future__ import annotations

import torch

from ._validation import check_probs

#: Pearson's chi-square approximation is trusted only for bins expected to hold >= 5 draws;
#: smaller bins are pooled into one.
MIN_EXPECTED_COUNT = 5.0


def empirical_counts(samples: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Counts of each action in ``samples [..., n]``: shape ``[..., num_actions]`` (float64)."""
    if samples.numel() and (samples.min() < 0 or samples.max() >= num_actions):
        raise ValueError(f"samples must be action indices in [0, {num_actions}), "
                         f"got values in [{samples.min().item()}, {samples.max().item()}]")
    counts = torch.zeros(*samples.shape[:-1], num_actions, dtype=torch.float64)
    return counts.scatter_add_(-1, samples, torch.ones_like(samples, dtype=torch.float64))


def chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """Pearson chi-square goodness-of-fit p-value of ``counts`` against ``probs`` (batched).

    Bins with expected count below ``MIN_EXPECTED_COUNT`` are pooled into one extra bin (kept
    only if its expected count is positive); degrees of freedom = bins used - 1. Zero-probability
    bins that received draws give p = 0. The p-value is ``Q(dof/2, stat/2)`` (regularised upper
    incomplete gamma), which is the chi-square survival function.
    """
    probs = check_probs(probs, "probs")
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.shape != probs.shape:
        raise ValueError(f"counts {tuple(counts.shape)} and probs {tuple(probs.shape)} differ")
    total = counts.sum(-1, keepdim=True)
    expected = probs * total
    large = expected >= MIN_EXPECTED_COUNT
    stat = torch.where(large, (counts - expected) ** 2 / expected.clamp_min(1e-300), 0.0).sum(-1)
    pooled_expected = torch.where(large, 0.0, expected).sum(-1)
    pooled_counts = torch.where(large, 0.0, counts).sum(-1)
    has_pool = pooled_expected > 0
    stat = stat + torch.where(
        has_pool, (pooled_counts - pooled_expected) ** 2 / pooled_expected.clamp_min(1e-300), 0.0
    )
    dof = large.sum(-1).to(torch.float64) + has_pool.to(torch.float64) - 1
    impossible = (torch.where(probs == 0, counts, 0.0).sum(-1) > 0)
    pvalue = torch.where(dof > 0, torch.special.gammaincc(dof.clamp_min(0.5) / 2, stat / 2), 1.0)
    return torch.where(impossible, 0.0, pvalue)


def normal_quantile(probability: float) -> float:
    """Standard normal quantile (inverse CDF)."""
    if not 0 < probability < 1:
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    return torch.special.ndtri(torch.tensor(probability, dtype=torch.float64)).item()


def binomial_z_scores(successes_rate: torch.Tensor, trials: torch.Tensor,
                      probability: torch.Tensor) -> torch.Tensor:
    """``(p_hat - p) / sqrt(p (1 - p) / n)``: z-scores of measured rates against exact ones."""
    probability = torch.as_tensor(probability, dtype=torch.float64)
    trials = torch.as_tensor(trials, dtype=torch.float64)
    spread = torch.sqrt(probability * (1 - probability) / trials)
    return (successes_rate - probability) / spread


#: Unit round-off of float64 (half the machine epsilon).
UNIT_ROUNDOFF = torch.finfo(torch.float64).eps / 2


def roundoff_tolerance(num_terms: int, magnitude: torch.Tensor) -> torch.Tensor:
    """Float64 error bound of a sum of ``num_terms`` terms whose absolute values add up to
    ``magnitude``: ``(num_terms + 8) u magnitude``.

    Recursive summation errs by at most ``gamma_{n-1} sum |x_i|`` with ``gamma_n ≈ n u``
    (Higham, Accuracy and Stability, eq. 4.4); the ``+ 8`` covers the few rounded operations
    (log, exp, product, difference) that make each term.
    """
    return (num_terms + 8) * UNIT_ROUNDOFF * torch.as_tensor(magnitude, dtype=torch.float64)
