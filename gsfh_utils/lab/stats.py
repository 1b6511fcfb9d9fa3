"""The statistics behind the claims: tests that return their p-value with an effect size, and
the thresholds of the sanity checks (float64 round-off, goodness of fit).

Every test returns a ``TestResult`` (test name, p-value, effect size, number of samples, and a
one-line ``summary``), which ``ClaimRegistry.finding`` records. Thresholds come from here: a test
at a stated level or a round-off bound, never a tuned tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats as scipy_stats

from .._validation import check_probs
from ..gibbs import total_variation

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


def empirical_total_variation(samples: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """TV between the empirical law of ``samples [..., n]`` (action indices) and ``probs
    [..., K]``: shape ``[...]``. Positive even for exact draws (about ``sqrt(K / n)`` / 2 at
    most), so compare it with the same statistic of exact draws."""
    probs = check_probs(probs, "probs")
    if samples.ndim == 0 or samples.shape[-1] == 0:
        raise ValueError("samples must hold at least one draw in the last dimension")
    return total_variation(empirical_counts(samples, probs.shape[-1]) / samples.shape[-1], probs)


def pooled_law(samples: torch.Tensor, num_actions: int) -> torch.Tensor:
    """Empirical law of the draws of all independent runs together: ``samples [runs, ..., n]``
    (action indices; the first dimension indexes the runs) gives ``[..., num_actions]``. Its
    distance to the target is a sampler's *bias*, free of the noise and of the repeated draws
    within one run that ``empirical_total_variation`` of a single run also counts."""
    if samples.ndim < 2 or samples.shape[0] == 0 or samples.shape[-1] == 0:
        raise ValueError("samples must have shape [runs, ..., n] with runs, n >= 1, "
                         f"got {tuple(samples.shape)}")
    counts = empirical_counts(samples, num_actions).sum(0)
    return counts / counts.sum(-1, keepdim=True)


def pooled_total_variation(samples: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """TV between ``pooled_law(samples)`` (``[runs, ..., n]``) and ``probs [..., K]``: shape
    ``[...]``. Compare it with the same statistic of as many exact draws (its noise floor)."""
    probs = check_probs(probs, "probs")
    return total_variation(pooled_law(samples, probs.shape[-1]), probs)


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




# --------------------------------------------------------------------------------------------
# Tests with their effect sizes.
# --------------------------------------------------------------------------------------------

ALTERNATIVES = ("greater", "less", "two-sided")


@dataclass(frozen=True)
class TestResult:
    """A statistical test's outcome: ``test`` (what was run), ``p_value``, an ``effect`` size
    named ``effect_name``, the number of independent samples, and ``details`` (counts, intervals)
    kept with the claim."""

    __test__ = False  # not a pytest test class

    test: str
    p_value: float
    effect: float
    effect_name: str
    num_samples: int
    details: dict = field(default_factory=dict)

    def summary(self) -> str:
        p_text = f"{self.p_value:.3g}" if self.p_value >= 1e-6 else "< 1e-06"
        return (f"{self.test}: {self.effect_name} {self.effect:.3g} "
                f"({self.num_samples} samples), p {'= ' if self.p_value >= 1e-6 else ''}{p_text}")

    def as_row(self) -> dict:
        """``{effect_name: effect, "p": p_value}``: the test as columns of a results table."""
        return {self.effect_name: self.effect, "p": self.p_value}


def _alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, got {alternative!r}")
    return alternative


def _flat(values, name: str) -> torch.Tensor:
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if values.numel() == 0:
        raise ValueError(f"{name} must be non-empty")
    if torch.isnan(values).any():
        raise ValueError(f"{name} must not contain NaN")
    return values


def _pair(first, second):
    first, second = _flat(first, "first"), _flat(second, "second")
    if first.shape != second.shape:
        raise ValueError(f"first ({first.numel()}) and second ({second.numel()}) must be paired "
                         "samples of the same length")
    return first, second


def sign_test(first, second) -> TestResult:
    """One-sided paired sign test that ``first < second`` more often than not (e.g. "method A
    needs fewer comparisons than B", per seed).

    ``wins = #(first < second)``, ``losses = #(first > second)`` (ties dropped); the p-value is
    ``P(Binomial(wins + losses, 1/2) >= wins)``, exact (1 when every pair ties). Infinite entries
    (never reached) compare as usual. Effect: the fraction of untied pairs won.
    """
    first, second = _pair(first, second)
    wins, losses = int((first < second).sum()), int((first > second).sum())
    total = wins + losses
    p_value = 1.0 if total == 0 else float(
        scipy_stats.binomtest(wins, total, 0.5, alternative="greater").pvalue)
    return TestResult("one-sided paired sign test", p_value,
                      wins / total if total else 0.5, "fraction of untied pairs won",
                      first.numel(), {"wins": wins, "losses": losses,
                                      "ties": first.numel() - total})


def wilcoxon_test(first, second, alternative: str = "greater") -> TestResult:
    """Wilcoxon signed-rank test that ``first - second`` is centred at 0 (paired samples, e.g.
    two methods on the same seeds) against ``alternative`` ("greater": ``first`` tends to exceed
    ``second``). Effect: the mean of ``first - second``."""
    first, second = _pair(first, second)
    if first.numel() < 2:
        raise ValueError("the Wilcoxon test needs at least 2 pairs")
    p_value = float(scipy_stats.wilcoxon(first.numpy(), second.numpy(),
                                         alternative=_alternative(alternative)).pvalue)
    return TestResult(f"{'two-sided' if alternative == 'two-sided' else 'one-sided'} paired "
                      "Wilcoxon signed-rank test", p_value, (first - second).mean().item(),
                      "mean paired difference", first.numel(),
                      {"fraction_positive": (first > second).double().mean().item()})


def mann_whitney_test(first, second, alternative: str = "greater") -> TestResult:
    """Mann-Whitney U test that independent samples ``first`` and ``second`` come from one law,
    against ``alternative`` ("greater": ``first`` tends to be larger). Effect: the probability
    that a draw of ``first`` exceeds one of ``second`` (ties count half), ``U / (n1 n2)``."""
    first, second = _flat(first, "first"), _flat(second, "second")
    result = scipy_stats.mannwhitneyu(first.numpy(), second.numpy(),
                                      alternative=_alternative(alternative))
    return TestResult("Mann-Whitney U test", float(result.pvalue),
                      float(result.statistic) / (first.numel() * second.numel()),
                      "P(first > second)", first.numel() + second.numel(),
                      {"sizes": [first.numel(), second.numel()]})


def binomial_test(successes: int, trials: int, probability: float = 0.5,
                  alternative: str = "greater") -> TestResult:
    """Exact binomial test of ``successes`` out of ``trials`` against ``probability``. Effect:
    the observed proportion."""
    successes, trials = int(successes), int(trials)
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes}, "
                         f"{trials}")
    p_value = float(scipy_stats.binomtest(successes, trials, probability,
                                          alternative=_alternative(alternative)).pvalue)
    return TestResult(f"exact binomial test against {probability:g}", p_value,
                      successes / trials, "observed proportion", trials,
                      {"successes": successes, "trials": trials})


def coverage_test(covered, target: float) -> TestResult:
    """One-sided exact binomial test of "the event holds with probability >= ``target``" against
    "less", from independent indicators ``covered`` (e.g. one confidence event per seed). A small
    p-value means the coverage is significantly below the target. Effect: the observed coverage."""
    covered = _flat(covered, "covered")
    if not 0 < target < 1:
        raise ValueError(f"target must be in (0, 1), got {target!r}")
    successes, trials = int(covered.sum()), covered.numel()
    p_value = float(scipy_stats.binomtest(successes, trials, target, alternative="less").pvalue)
    return TestResult(f"one-sided exact binomial test of coverage >= {target:g}", p_value,
                      successes / trials, "observed coverage", trials,
                      {"covered": successes, "trials": trials})


def mean_test(values, null: float = 0.0, alternative: str = "greater") -> TestResult:
    """One-sample Student t-test of the mean of independent ``values`` against ``null``.
    Effect: the sample mean."""
    values = _flat(values, "values")
    if values.numel() < 2:
        raise ValueError("the t-test needs at least 2 values")
    result = scipy_stats.ttest_1samp(values.numpy(), null, alternative=_alternative(alternative))
    return TestResult("one-sample t-test", float(result.pvalue), values.mean().item(),
                      "mean", values.numel(),
                      {"standard_error": (values.std() / values.numel() ** 0.5).item()})


def mean_interval(values, level: float = 0.99) -> tuple[float, float, float]:
    """The mean of independent ``values`` and its two-sided ``level`` Student-t confidence
    interval: ``(mean, lower, upper)``."""
    values = _flat(values, "values")
    if values.numel() < 2:
        raise ValueError("a confidence interval needs at least 2 values")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    mean = values.mean().item()
    half = (scipy_stats.t.ppf(0.5 + level / 2, values.numel() - 1)
            * (values.std() / values.numel() ** 0.5).item())
    return mean, mean - half, mean + half


def sign_flip_test(values, null: float = 0.0, alternative: str = "greater") -> TestResult:
    """Exact one-sample sign-flip permutation test of the mean of independent ``values`` against
    ``null``, valid without normality when ``values - null`` is symmetric about 0 under the null:
    the p-value is the fraction of the ``2^n`` sign assignments of ``values - null`` whose mean is
    at least (``"greater"``), at most (``"less"``) or at least as far from 0 in absolute value
    (``"two-sided"``) as the observed one. Its smallest possible one-sided value is ``2^-n``.
    Effect: the sample mean."""
    values = _flat(values, "values").double()
    alternative = _alternative(alternative)
    if not 1 <= values.numel() <= 20:
        raise ValueError(f"values must hold 1 to 20 numbers (2^n assignments), got "
                         f"{values.numel()}")
    centred = values - float(null)
    bits = torch.arange(2 ** centred.numel()).unsqueeze(1) >> torch.arange(centred.numel())
    means = ((1 - 2 * (bits & 1)).double() * centred).mean(1)
    observed, slack = centred.mean().item(), 1e-12 * (1 + centred.abs().max().item())
    if alternative == "greater":
        extreme = means >= observed - slack
    elif alternative == "less":
        extreme = means <= observed + slack
    else:
        extreme = means.abs() >= abs(observed) - slack
    return TestResult("exact sign-flip permutation test", extreme.double().mean().item(),
                      values.mean().item(), "mean", values.numel(),
                      {"smallest_p_value": 2.0 ** -values.numel()})


def equivalence_test(values, margin: float) -> TestResult:
    """Two one-sided t-tests (TOST) that the mean of independent ``values`` lies within
    ``(-margin, margin)``: it rejects "the mean is at least ``margin`` away from 0" when both
    one-sided tests do, so its p-value is the larger one. Effect: the sample mean."""
    margin = float(margin)
    if not margin > 0:
        raise ValueError(f"margin must be positive, got {margin!r}")
    above = mean_test(values, null=-margin, alternative="greater")
    below = mean_test(values, null=margin, alternative="less")
    return TestResult("two one-sided t-tests (equivalence)", max(above.p_value, below.p_value),
                      above.effect, "mean", above.num_samples,
                      {"margin": margin, **above.details})


def welch_test(first, second, alternative: str = "greater") -> TestResult:
    """Welch's two-sample t-test of equal means of independent samples. Effect: the difference
    of the sample means ``mean(first) - mean(second)``."""
    first, second = _flat(first, "first"), _flat(second, "second")
    result = scipy_stats.ttest_ind(first.numpy(), second.numpy(), equal_var=False,
                                   alternative=_alternative(alternative))
    return TestResult("Welch two-sample t-test", float(result.pvalue),
                      (first.mean() - second.mean()).item(), "difference of means",
                      first.numel() + second.numel(), {"sizes": [first.numel(), second.numel()]})


def slope_test(sizes, values, null_slope: float, alternative: str = "less",
               level: float = 0.99) -> TestResult:
    """t-test of the least-squares slope of ``log values`` on ``log sizes`` against
    ``null_slope`` (``alternative="less"``: the values fall faster than ``n^null_slope``).
    Effect: the fitted slope; ``details`` holds its two-sided ``level`` interval."""
    slope, lower, upper = loglog_slope(sizes, values, level)
    dof = torch.as_tensor(values).numel() - 2
    stderr = (upper - slope) / scipy_stats.t.ppf(0.5 + level / 2, dof)
    statistic = (slope - null_slope) / stderr
    if _alternative(alternative) == "less":
        p_value = float(scipy_stats.t.cdf(statistic, dof))
    elif alternative == "greater":
        p_value = float(scipy_stats.t.sf(statistic, dof))
    else:
        p_value = float(2 * scipy_stats.t.sf(abs(statistic), dof))
    return TestResult(f"t-test of the log-log slope against {null_slope:g}", p_value, slope,
                      "fitted slope", dof + 2, {"interval": [lower, upper], "level": level})


def within_margin(interval, theory: float, margin: float) -> bool:
    """The equivalence rule: the whole ``interval (low, high)`` lies in ``[theory - margin,
    theory + margin]`` (False for a NaN bound)."""
    low, high = (float(v) for v in interval)
    return theory - margin <= low <= high <= theory + margin


def slope_summary(fit: TestResult, theory: float, margin: float) -> dict:
    """One table row for a ``slope_test`` result: the fitted slope, its interval (3 decimals) and
    whether the interval lies within ``theory +- margin`` (``within_margin``)."""
    low, high = fit.details["interval"]
    return {"fitted slope": round(fit.effect, 3), f"{fit.details['level']:.0%} interval":
            f"[{low:.3f}, {high:.3f}]", f"inside {theory:g} ± {margin:g}":
            within_margin((low, high), theory, margin)}


def every(results: list[TestResult], what: str) -> TestResult:
    """Intersection-union test of "the effect holds in every one of these independent units"
    (e.g. every seed): it rejects at level alpha exactly when every test does, so its p-value is
    the largest one (no multiplicity correction is needed). Effect: the smallest effect."""
    if not results:
        raise ValueError("results must hold at least one test")
    return TestResult(f"{results[0].test}, in every one of {len(results)} {what} "
                      "(intersection-union)", max(r.p_value for r in results),
                      min(r.effect for r in results), f"smallest {results[0].effect_name}",
                      len(results), {"per_unit_p_values": [r.p_value for r in results],
                                     "per_unit_effects": [r.effect for r in results]})


def z_test(estimate, reference, standard_error, alternative: str = "two-sided") -> TestResult:
    """Large-sample z-test of ``estimate`` (e.g. a Monte-Carlo mean) against ``reference`` with a
    known ``standard_error``. Effect: ``estimate - reference``."""
    estimate, reference = float(estimate), float(reference)
    standard_error = float(standard_error)
    if not standard_error > 0:
        raise ValueError(f"standard_error must be positive, got {standard_error!r}")
    z = (estimate - reference) / standard_error
    if _alternative(alternative) == "greater":
        p_value = float(scipy_stats.norm.sf(z))
    elif alternative == "less":
        p_value = float(scipy_stats.norm.cdf(z))
    else:
        p_value = float(2 * scipy_stats.norm.sf(abs(z)))
    return TestResult("z-test", p_value, estimate - reference, "difference", 1, {"z": z})


def _as_tensor(values, dtype) -> torch.Tensor:
    """A tensor copy of a tensor, a pandas Series, an array or a number."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(dtype)
    return torch.tensor(np.asarray(values), dtype=dtype)


def worst_ratio(measured, bound, where=None) -> tuple[float, float, float]:
    """The entry where ``measured / bound`` is largest (over the entries selected by ``where``):
    ``(measured, bound, ratio)`` there. For a theorem claim "measured <= bound on every seed"."""
    measured = _as_tensor(measured, torch.float64)
    bound = _as_tensor(bound, torch.float64).expand_as(measured)
    if where is not None:
        where = _as_tensor(where, torch.bool)
        measured, bound = measured[where], bound[where]
    if measured.numel() == 0:
        raise ValueError("no entry to compare (is the selection empty?)")
    index = (measured / bound).reshape(-1).argmax()
    worst_measured = measured.reshape(-1)[index].item()
    worst_bound = bound.reshape(-1)[index].item()
    return worst_measured, worst_bound, worst_measured / worst_bound


def chebyshev_test(estimate, reference, standard_error) -> TestResult:
    """Two-sided test of ``E estimate = reference`` from Chebyshev's inequality, valid for any law
    with the given ``standard_error`` (e.g. a mean of heavy-tailed draws, where a normal
    approximation is unsafe): ``p = min(1, 1/z^2)``, ``z = |estimate - reference| / se``. Effect:
    ``estimate - reference``."""
    estimate, reference = float(estimate), float(reference)
    standard_error = float(standard_error)
    if not standard_error > 0:
        raise ValueError(f"standard_error must be positive, got {standard_error!r}")
    z = abs(estimate - reference) / standard_error
    return TestResult("Chebyshev test", min(1.0, 1 / z**2) if z > 0 else 1.0,
                      estimate - reference, "difference", 1, {"z": z})
