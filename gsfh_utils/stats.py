"""Statistical checks behind the claims: goodness of fit and binomial proportions (batched).

Thresholds of the claims come from here: a test at a stated level, not a tuned tolerance.
"""

from __future__ import annotations

import math

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


def loglog_slope(sizes, values, level: float = 0.99) -> tuple[float, float, float]:
    """Least-squares slope of ``log values`` against ``log sizes`` and its two-sided ``level``
    confidence interval (Student t, ``len - 2`` degrees of freedom).

    ``sizes`` and ``values`` are flat arrays of the same length, one entry per independent
    measurement (e.g. every seed at every data size, drawn independently), all values > 0.
    Returns ``(slope, lower, upper)``.
    """
    from scipy import stats as scipy_stats

    x = torch.log(torch.as_tensor(sizes, dtype=torch.float64).reshape(-1))
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if x.shape != values.shape:
        raise ValueError(f"sizes ({x.numel()}) and values ({values.numel()}) must match")
    if x.numel() < 3 or bool((x == x[0]).all()):
        raise ValueError("need at least 3 points and 2 distinct sizes")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    if bool((values <= 0).any()) or not bool(torch.isfinite(values).all()):
        raise ValueError("values must be positive and finite (they are logged)")
    y = torch.log(values)
    x_centred = x - x.mean()
    slope = (x_centred * (y - y.mean())).sum() / (x_centred**2).sum()
    residuals = y - y.mean() - slope * x_centred
    dof = x.numel() - 2
    stderr = torch.sqrt((residuals**2).sum() / dof / (x_centred**2).sum())
    half = scipy_stats.t.ppf(0.5 + level / 2, dof) * stderr.item()
    return slope.item(), slope.item() - half, slope.item() + half


def paired_test(first, second, alternative: str = "greater") -> float:
    """p-value of the Wilcoxon signed-rank test that ``first - second`` is centred at 0, against
    ``alternative`` ("greater": ``first`` tends to exceed ``second``; "less"; "two-sided").
    Paired samples, e.g. two methods on the same seeds."""
    from scipy import stats as scipy_stats

    first = torch.as_tensor(first, dtype=torch.float64).reshape(-1)
    second = torch.as_tensor(second, dtype=torch.float64).reshape(-1)
    if first.shape != second.shape or first.numel() < 2:
        raise ValueError("first and second must be paired samples of the same length (>= 2)")
    if alternative not in {"greater", "less", "two-sided"}:
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    return float(scipy_stats.wilcoxon(first.numpy(), second.numpy(),
                                      alternative=alternative).pvalue)


def two_sample_test(first, second, alternative: str = "greater") -> float:
    """p-value of the Mann-Whitney U test that ``first`` and ``second`` (independent samples) come
    from the same law, against ``alternative`` ("greater": ``first`` tends to be larger)."""
    from scipy import stats as scipy_stats

    first = torch.as_tensor(first, dtype=torch.float64).reshape(-1)
    second = torch.as_tensor(second, dtype=torch.float64).reshape(-1)
    if first.numel() < 1 or second.numel() < 1:
        raise ValueError("first and second must be non-empty")
    if alternative not in {"greater", "less", "two-sided"}:
        raise ValueError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}")
    return float(scipy_stats.mannwhitneyu(first.numpy(), second.numpy(),
                                          alternative=alternative).pvalue)


def sign_test(first, second) -> tuple[int, int, float]:
    """One-sided paired sign test that ``first < second`` more often than not.

    Returns ``(wins, losses, p_value)``: ``wins = #(first < second)``, ``losses =
    #(first > second)`` (ties dropped), ``p = P(Binomial(wins + losses, 1/2) >= wins)`` (exact);
    ``p = 1`` when every pair ties. Infinite entries (never reached) compare as usual.
    """
    first = torch.as_tensor(first, dtype=torch.float64)
    second = torch.as_tensor(second, dtype=torch.float64)
    if first.shape != second.shape:
        raise ValueError(f"first {tuple(first.shape)} and second {tuple(second.shape)} differ")
    wins = int((first < second).sum())
    losses = int((first > second).sum())
    total = wins + losses
    if total == 0:
        return wins, losses, 1.0
    tail = sum(math.comb(total, k) for k in range(wins, total + 1))
    return wins, losses, tail / 2**total
