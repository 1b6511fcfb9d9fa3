"""The Gibbs policy and the KL-regularised objective (notebook 01), each checked against an
independent computation: naive float formulas in plain Python, finite differences, the exact
gap identity, and the two limits in eta.

Round-off tolerances are derived, not tuned: a float64 sum of n terms whose absolute values add
up to M errs by at most about n u M (Higham, eq. 4.4); we allow ``(n + 8) eps M`` (eps = 2u, and
+8 for the few rounded operations that form each term), times a small safety factor where
several such sums are combined.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import EPS, etas, examples, gibbs_problems, policies_on_support, rewards_like
from hypothesis import assume, given
from hypothesis import strategies as st

from gsfh_utils import (
    gibbs_log_policy,
    gibbs_policy,
    kl_divergence,
    log_partition,
    mirror_ascent,
    regularized_value,
)
from gsfh_utils.gibbs import (
    frontier_excess,
    gap_identity_magnitude,
    gibbs_frontier_eta,
    large_eta_tv_bound,
    objective_gradient,
    small_eta_limit,
    small_eta_tv_bound,
    total_variation,
)

F64 = torch.float64


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


# --- independent reference computations (plain Python floats, no torch) ---------------------


def naive_gibbs(ref: list[float], rewards: list[float], eta: float) -> tuple[list[float], float]:
    """pi0 exp(r/eta) / Z and log Z by the textbook formula; valid while exp(r/eta) is finite."""
    weights = [p * math.exp(r / eta) for p, r in zip(ref, rewards, strict=True)]
    z = math.fsum(weights)
    return [w / z for w in weights], math.log(z)


def naive_kl(p: list[float], q: list[float]) -> float:
    total = []
    for pa, qa in zip(p, q, strict=True):
        if pa == 0:
            continue  # 0 log(0/q) = 0
        if qa == 0:
            return math.inf
        total.append(pa * math.log(pa / qa))
    return math.fsum(total)


def naive_value(pi: list[float], ref: list[float], rewards: list[float], eta: float) -> float:
    return math.fsum(p * r for p, r in zip(pi, rewards, strict=True)) - eta * naive_kl(pi, ref)


def sum_tolerance(num_terms: int, magnitude) -> torch.Tensor:
    """Round-off bound of a float64 sum of ``num_terms`` terms of total absolute size
    ``magnitude``: (n + 8) eps M."""
    return (num_terms + 8) * EPS * torch.as_tensor(magnitude, dtype=F64)


def value_magnitude(policy, ref_probs, rewards, eta) -> torch.Tensor:
    """Sum of the absolute values of the terms of E_pi r - eta KL(pi || pi0), per row."""
    kl_terms = torch.xlogy(policy, policy).abs() + torch.xlogy(policy, ref_probs).abs()
    return (policy * rewards).abs().sum(-1) + eta * kl_terms.sum(-1)


def max_abs_logit(ref_probs, rewards, eta) -> torch.Tensor:
    """max over the support of |log pi0 + r/eta|: sets the round-off of a log-space softmax."""
    logits = torch.where(ref_probs > 0, torch.log(ref_probs) + rewards / eta, 0.0)
    return logits.abs().amax(-1)


# --- agreement with the textbook formula -------------------------------------------------------


@given(gibbs_problems(eta_range=(0.05, 1e4)))
def test_gibbs_policy_and_log_partition_match_naive_formula(problem):
    ref_probs, rewards, eta = problem
    num_actions = ref_probs.shape[-1]
    probs = gibbs_policy(ref_probs, rewards, eta)
    log_probs = gibbs_log_policy(ref_probs, rewards, eta)
    log_z = log_partition(ref_probs, rewards, eta)
    # The logits log pi0 + r/eta carry an absolute error of about eps |logit|; a softmax turns it
    # into a relative error of about 2 eps max|logit| on every probability, plus K eps from the sum.
    relative = 4 * EPS * (num_actions + 2 * max_abs_logit(ref_probs, rewards, eta))
    for row in range(ref_probs.shape[0]):
        expected, expected_log_z = naive_gibbs(ref_probs[row].tolist(), rewards[row].tolist(), eta)
        expected = t(expected)
        assert torch.all((probs[row] - expected).abs() <= relative[row] * expected)
        assert abs(log_z[row].item() - expected_log_z) <= relative[row].item()
        on_support = expected > 0
        assert torch.all(
            (log_probs[row][on_support] - expected[on_support].log()).abs() <= relative[row]
        )
        assert torch.all(log_probs[row][~on_support] == -torch.inf)


def test_gibbs_policy_hand_computed_example():
    ref = t([0.5, 0.25, 0.25])
    rewards = t([0.0, math.log(2.0), 0.0])  # exp(r/eta) = (1, 2, 1) at eta = 1
    assert torch.allclose(gibbs_policy(ref, rewards, 1.0), t([0.4, 0.4, 0.2]), rtol=0, atol=4 * EPS)
    assert math.isclose(log_partition(ref, rewards, 1.0).item(), math.log(1.25), abs_tol=4 * EPS)


@given(gibbs_problems())
def test_probabilities_are_finite_and_sum_to_one_over_the_whole_eta_range(problem):
    ref_probs, rewards, eta = problem
    num_actions = ref_probs.shape[-1]
    probs = gibbs_policy(ref_probs, rewards, eta)
    assert probs.dtype == F64 and probs.shape == ref_probs.shape
    assert torch.isfinite(probs).all() and (probs >= 0).all()
    assert torch.all((probs.sum(-1) - 1).abs() <= 4 * num_actions * EPS)
    assert torch.all(probs[ref_probs == 0] == 0)  # zero outside the support of pi0, exactly
    log_probs = gibbs_log_policy(ref_probs, rewards, eta)
    assert torch.all(log_probs[ref_probs == 0] == -torch.inf)
    assert not torch.isnan(log_probs).any()
    assert torch.isfinite(log_partition(ref_probs, rewards, eta)).all()


def test_zero_probability_outside_the_support_whatever_the_reward():
    ref = t([0.0, 0.5, 0.5, 0.0])
    rewards = t([1e3, 0.0, 1.0, -1e3])
    for eta in [1e-6, 1e-2, 1.0, 1e8]:
        probs = gibbs_policy(ref, rewards, eta)
        assert probs[0] == 0 and probs[3] == 0
        assert torch.isfinite(gibbs_log_policy(ref, rewards, eta)[1:3]).all()
    # the best reward off the support does not attract mass even as eta -> 0
    assert torch.equal(gibbs_policy(ref, rewards, 1e-6), t([0.0, 0.0, 1.0, 0.0]))


def test_dtype_of_float32_inputs_is_kept():
    ref = torch.tensor([0.25, 0.75], dtype=torch.float32)
    rewards = torch.tensor([1.0, 0.0], dtype=torch.float32)
    assert gibbs_policy(ref, rewards, 1.0).dtype == torch.float32


# --- limits in eta -----------------------------------------------------------------------------


@given(gibbs_problems(eta_range=(1e8, 1e8)))
def test_large_eta_limit_is_the_reference_policy(problem):
    ref_probs, rewards, eta = problem
    probs = gibbs_policy(ref_probs, rewards, eta)
    # pi_r / pi0 = exp(r/eta) / E_pi0 exp(r/eta) lies in [exp(-osc/eta), exp(osc/eta)], osc the
    # reward range on the support; hence |pi_r - pi0| <= pi0 expm1(osc/eta) (+ round-off).
    support = ref_probs > 0
    osc = (torch.where(support, rewards, -math.inf).amax(-1)
           - torch.where(support, rewards, math.inf).amin(-1))
    bound = ref_probs * torch.expm1(osc / eta).unsqueeze(-1)
    roundoff = 4 * EPS * (ref_probs.shape[-1] + 2 * max_abs_logit(ref_probs, rewards, eta))
    assert torch.all((probs - ref_probs).abs() <= bound + roundoff.unsqueeze(-1) * ref_probs)
    assert torch.all((probs - ref_probs).abs() <= 1e-6)


def test_small_eta_limit_keeps_the_ratios_of_pi0_over_tied_maximisers():
    # Three maximisers (r = 1) with different pi0: the limit is pi0 restricted and renormalised,
    # NOT uniform over the maximisers ("uniform" holds only for a uniform pi0).
    ref = t([0.1, 0.2, 0.3, 0.4])
    rewards = t([1.0, 0.5, 1.0, 1.0])
    expected = t([0.125, 0.0, 0.375, 0.5])
    probs = gibbs_policy(ref, rewards, 1e-6)
    assert torch.allclose(probs, expected, rtol=0, atol=8 * EPS)
    assert not torch.allclose(probs, t([1 / 3, 0.0, 1 / 3, 1 / 3]), atol=1e-3)
    assert torch.allclose(small_eta_limit(ref, rewards), expected, rtol=0, atol=8 * EPS)
    # A maximiser outside the support of pi0 is ignored: argmax is taken on the support.
    ref = t([0.0, 0.3, 0.7])
    rewards = t([5.0, 1.0, 1.0])
    assert torch.allclose(gibbs_policy(ref, rewards, 1e-6), t([0.0, 0.3, 0.7]), atol=8 * EPS)
    assert torch.allclose(small_eta_limit(ref, rewards), t([0.0, 0.3, 0.7]), atol=8 * EPS)


@given(st.data())
def test_small_eta_limit_on_random_instances_with_ties(data):
    ref_probs, _, _ = data.draw(gibbs_problems(max_actions=6))
    # Integer rewards: ties are frequent and the gap to the runner-up is >= 1, so at eta = 1e-6
    # the non-maximisers get a factor exp(-1e6) = 0 exactly in float64.
    rewards = t(data.draw(st.lists(st.lists(st.integers(-2, 2), min_size=ref_probs.shape[1],
                                            max_size=ref_probs.shape[1]),
                                   min_size=ref_probs.shape[0], max_size=ref_probs.shape[0])))
    support_max = torch.where(ref_probs > 0, rewards, -math.inf).amax(-1, keepdim=True)
    restricted = torch.where((rewards == support_max) & (ref_probs > 0), ref_probs, 0.0)
    expected = restricted / restricted.sum(-1, keepdim=True)
    probs = gibbs_policy(ref_probs, rewards, 1e-6)
    # relative error of a softmax whose surviving logits are log pi0 + r/eta, |r/eta| <= 2e6
    relative = 4 * EPS * (ref_probs.shape[-1] + 2 * max_abs_logit(ref_probs, rewards, 1e-6))
    assert torch.all((probs - expected).abs() <= relative.unsqueeze(-1) * expected)
    assert torch.all(probs[expected == 0] == 0)
    assert torch.allclose(small_eta_limit(ref_probs, rewards), expected, rtol=1e-14, atol=0)


@given(gibbs_problems(eta_range=(1e-3, 1e3), reward_scale=1.0))
def test_limit_bounds_on_total_variation_hold(problem):
    ref_probs, rewards, eta = problem
    probs = gibbs_policy(ref_probs, rewards, eta)
    slack = 16 * ref_probs.shape[-1] * EPS
    assert torch.all(total_variation(probs, ref_probs)
                     <= large_eta_tv_bound(ref_probs, rewards, eta) + slack)
    assert torch.all(total_variation(probs, small_eta_limit(ref_probs, rewards))
                     <= small_eta_tv_bound(ref_probs, rewards, eta) + slack)


def test_total_variation_against_naive_sum():
    p, q = t([0.1, 0.6, 0.3]), t([0.5, 0.0, 0.5])
    assert math.isclose(total_variation(p, q).item(), 0.5 * (0.4 + 0.6 + 0.2), abs_tol=4 * EPS)
    assert total_variation(p, p).item() == 0


# --- derivative of the optimal value -------------------------------------------------------


@given(gibbs_problems(eta_range=(0.1, 1e3), reward_scale=1.0, max_rows=1))
def test_gradient_of_eta_log_partition_is_the_gibbs_policy(problem):
    ref_probs, rewards, eta = problem
    ref, rewards = ref_probs[0], rewards[0]
    num_actions = ref.shape[0]

    def f(r):
        return eta * log_partition(ref, r, eta).item()

    probs = gibbs_policy(ref, rewards, eta)
    h = 1e-4 * eta
    value_error = eta * 4 * EPS * (num_actions + abs(f(rewards)) / eta
                                   + max_abs_logit(ref, rewards, eta).item())
    # central difference: truncation h^2/6 |f'''| with |f'''| <= 1/eta^2 (a third cumulant of a
    # [0,1] variable, over eta^2), plus round-off 2 * value_error / (2h).
    tolerance = h**2 / (6 * eta**2) + value_error / h
    for action in range(num_actions):
        step = torch.zeros(num_actions, dtype=F64)
        step[action] = h
        derivative = (f(rewards + step) - f(rewards - step)) / (2 * h)
        if ref[action] == 0:
            assert derivative == 0
        else:
            assert abs(derivative - probs[action].item()) <= tolerance


# --- KL divergence -----------------------------------------------------------------------------


@given(gibbs_problems(max_actions=6))
def test_kl_divergence_matches_naive_loop(problem):
    p, q, _ = problem
    q = q.softmax(-1)  # a full-support q from the rewards
    q = torch.where(torch.arange(q.shape[-1]) == 0, 0.0, q)  # ... then one zero in q
    q = q / q.sum(-1, keepdim=True) if q.shape[-1] > 1 else torch.ones_like(q)
    kl = kl_divergence(p, q)
    for row in range(p.shape[0]):
        expected = naive_kl(p[row].tolist(), q[row].tolist())
        if math.isinf(expected):
            assert kl[row].item() == math.inf
        else:
            magnitude = (torch.xlogy(p[row], p[row]).abs()
                         + torch.xlogy(p[row], q[row]).abs()).sum()
            assert abs(kl[row].item() - expected) <= sum_tolerance(p.shape[-1], magnitude + 1)


@given(gibbs_problems(), st.data())
def test_kl_is_nonnegative_up_to_roundoff_and_zero_on_the_diagonal(problem, data):
    p, _, _ = problem
    q = data.draw(policies_on_support(p))  # KL(q || p) finite
    assert torch.equal(kl_divergence(p, p), torch.zeros(p.shape[0], dtype=F64))
    kl = kl_divergence(q, p)
    magnitude = (torch.xlogy(q, q).abs() + torch.xlogy(q, p).abs()).sum(-1)
    assert torch.all(kl >= -sum_tolerance(p.shape[-1], magnitude))
    assert torch.isfinite(kl).all()


def test_kl_conventions_and_broadcasting():
    p = t([0.0, 0.5, 0.5])
    q = t([0.5, 0.5, 0.0])
    assert kl_divergence(t([0.0, 1.0]), t([0.5, 0.5])).item() == pytest.approx(math.log(2))
    assert kl_divergence(p, q).item() == math.inf  # p > 0 = q
    assert kl_divergence(t([0.0, 1.0]), t([1.0, 0.0])).item() == math.inf
    batch = torch.stack([p, t([1 / 3] * 3)])
    assert kl_divergence(batch, t([1 / 3] * 3)).shape == (2,)
    assert torch.equal(kl_divergence(batch, t([1 / 3] * 3))[1], torch.tensor(0.0, dtype=F64))


# --- the regularised objective: gap identity and optimality ------------------------------------


@given(gibbs_problems(eta_range=(0.1, 1e3)), st.data())
def test_gap_identity_on_random_policies(problem, data):
    """J_r(pi_r) - J_r(pi) = eta KL(pi || pi_r) and J_r(pi_r) = eta log Z, exactly."""
    ref_probs, rewards, eta = problem
    policy = data.draw(policies_on_support(ref_probs))
    gibbs = gibbs_policy(ref_probs, rewards, eta)
    gap = (regularized_value(gibbs, ref_probs, rewards, eta)
           - regularized_value(policy, ref_probs, rewards, eta))
    kl = kl_divergence(policy, gibbs)
    num_actions = ref_probs.shape[-1]
    scale = (value_magnitude(gibbs, ref_probs, rewards, eta)
             + value_magnitude(policy, ref_probs, rewards, eta)
             + value_magnitude(policy, gibbs, torch.zeros_like(rewards), eta)
             + eta * max_abs_logit(ref_probs, rewards, eta) + eta * num_actions
             + rewards.abs().amax(-1))
    tolerance = 4 * sum_tolerance(num_actions, scale)
    assert torch.all((gap - eta * kl).abs() <= tolerance)
    optimal = regularized_value(gibbs, ref_probs, rewards, eta)
    assert torch.all((optimal - eta * log_partition(ref_probs, rewards, eta)).abs() <= tolerance)


@given(gibbs_problems(), st.data())
def test_gibbs_policy_maximises_the_regularised_value(problem, data):
    ref_probs, rewards, eta = problem
    policy = data.draw(policies_on_support(ref_probs))
    gibbs = gibbs_policy(ref_probs, rewards, eta)
    optimal = regularized_value(gibbs, ref_probs, rewards, eta)
    other = regularized_value(policy, ref_probs, rewards, eta)
    assert torch.isfinite(optimal).all()
    num_actions = ref_probs.shape[-1]
    scale = (value_magnitude(gibbs, ref_probs, rewards, eta)
             + value_magnitude(policy, ref_probs, rewards, eta)
             + eta * max_abs_logit(ref_probs, rewards, eta) + eta * num_actions
             + rewards.abs().amax(-1))
    assert torch.all(optimal >= other - 4 * sum_tolerance(num_actions, scale))
    # and the reference policy, the other natural candidate
    assert torch.all(optimal >= regularized_value(ref_probs, ref_probs, rewards, eta)
                     - 4 * sum_tolerance(num_actions, scale + value_magnitude(
                         ref_probs, ref_probs, rewards, eta)))


def test_policy_outside_the_support_has_value_minus_infinity():
    ref = t([0.0, 1.0])
    value = regularized_value(t([0.5, 0.5]), ref, t([1.0, 0.0]), 1.0)
    assert value.item() == -math.inf


@given(gibbs_problems(eta_range=(0.05, 1e4), max_actions=5), st.data())
def test_regularized_value_matches_naive_formula(problem, data):
    ref_probs, rewards, eta = problem
    policy = data.draw(policies_on_support(ref_probs))
    value = regularized_value(policy, ref_probs, rewards, eta)
    magnitude = value_magnitude(policy, ref_probs, rewards, eta)
    for row in range(ref_probs.shape[0]):
        expected = naive_value(policy[row].tolist(), ref_probs[row].tolist(),
                               rewards[row].tolist(), eta)
        assert abs(value[row].item() - expected) <= 2 * sum_tolerance(
            ref_probs.shape[-1], magnitude[row] + eta)


# --- batching and broadcasting -----------------------------------------------------------------


def random_problem(seed: int, shape: tuple[int, ...], zeros: bool = True):
    generator = torch.Generator().manual_seed(seed)
    ref = torch.rand(shape, dtype=F64, generator=generator)
    if zeros:
        ref[..., 0] = 0.0  # action 0 outside the support everywhere
    ref = ref / ref.sum(-1, keepdim=True)
    rewards = torch.randn(shape, dtype=F64, generator=generator)
    policy = torch.rand(shape, dtype=F64, generator=generator) * (ref > 0)
    return ref, rewards, policy / policy.sum(-1, keepdim=True)


@pytest.mark.parametrize("function", [gibbs_policy, gibbs_log_policy, log_partition])
def test_batching_over_leading_dimensions_equals_per_row_computation(function):
    ref, rewards, _ = random_problem(0, (3, 4, 5))
    batched = function(ref, rewards, 0.7)
    assert batched.shape == ((3, 4, 5) if function is not log_partition else (3, 4))
    for i in range(3):
        for j in range(4):
            torch.testing.assert_close(batched[i, j], function(ref[i, j], rewards[i, j], 0.7),
                                       rtol=2 * EPS, atol=0)


def test_batching_of_kl_and_regularized_value_equals_per_row_computation():
    ref, rewards, policy = random_problem(1, (2, 3, 6))
    kl = kl_divergence(policy, ref)
    value = regularized_value(policy, ref, rewards, 0.3)
    assert kl.shape == value.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(kl[i, j], kl_divergence(policy[i, j], ref[i, j]),
                                       rtol=2 * EPS, atol=0)
            torch.testing.assert_close(
                value[i, j], regularized_value(policy[i, j], ref[i, j], rewards[i, j], 0.3),
                rtol=2 * EPS, atol=0)


def test_shared_reference_broadcasts_against_batched_rewards():
    ref, rewards, _ = random_problem(2, (4, 5))
    shared = ref[0]
    batched = gibbs_policy(shared, rewards, 0.5)
    assert batched.shape == (4, 5)
    for i in range(4):
        torch.testing.assert_close(batched[i], gibbs_policy(shared, rewards[i], 0.5),
                                   rtol=2 * EPS, atol=0)


def test_eta_tensor_gives_one_eta_per_row_and_broadcasts_outwards():
    ref, rewards, policy = random_problem(3, (3, 4))
    etas_per_row = t([0.1, 1.0, 10.0])
    per_row = gibbs_policy(ref, rewards, etas_per_row)
    for i, eta in enumerate(etas_per_row.tolist()):
        torch.testing.assert_close(per_row[i], gibbs_policy(ref[i], rewards[i], eta),
                                   rtol=2 * EPS, atol=0)
    # an eta grid [E, 1] against rows [3, K] gives [E, 3, K]
    grid = t([[0.01], [1.0], [100.0]])
    for function in (gibbs_policy, gibbs_log_policy, log_partition):
        out = function(ref, rewards, grid)
        assert out.shape[:2] == (3, 3)
        for e, eta in enumerate(grid.squeeze(-1).tolist()):
            torch.testing.assert_close(out[e], function(ref, rewards, eta), rtol=2 * EPS, atol=0)
    values = regularized_value(policy, ref, rewards, etas_per_row)
    for i, eta in enumerate(etas_per_row.tolist()):
        torch.testing.assert_close(values[i],
                                   regularized_value(policy[i], ref[i], rewards[i], eta),
                                   rtol=2 * EPS, atol=0)


# --- mirror ascent and the objective gradient -------------------------------------------------


@examples(30)  # 12 mirror steps per example
@given(gibbs_problems(eta_range=(0.05, 20.0), reward_scale=1.0, min_prob=1e-6), st.data(),
       st.floats(0.1, 1.0))
def test_mirror_ascent_contracts_the_log_ratio_to_the_gibbs_policy(problem, data, alpha):
    """With step alpha/eta, log pi_{k+1} = (1 - alpha) log pi_k + alpha log pi_r + const."""
    ref_probs, rewards, eta = problem
    initial = data.draw(policies_on_support(ref_probs, allow_zeros=False, min_prob=1e-6))
    num_steps = 12
    last, iterates = mirror_ascent(objective_gradient(ref_probs, rewards, eta), initial,
                                   alpha / eta, num_steps)
    assert len(iterates) == num_steps + 1
    assert torch.equal(iterates[0], initial) and torch.equal(iterates[-1], last)
    support = ref_probs > 0
    log_gibbs = gibbs_log_policy(ref_probs, rewards, eta)

    def centred_log_ratio(probs):
        ratio = torch.where(support, probs.log() - log_gibbs, 0.0)
        mean = ratio.sum(-1, keepdim=True) / support.sum(-1, keepdim=True)
        return torch.where(support, ratio - mean, 0.0).abs().amax(-1)

    start = centred_log_ratio(initial)
    # per-step round-off of the update, of size eps * (largest log-probability or logit), damped
    # by the contraction: it accumulates to at most per_step / alpha.
    logs = torch.where(support, initial.log().abs() + log_gibbs.abs()
                       + ref_probs.log().abs() + rewards.abs() / eta, 0.0).amax(-1)
    roundoff = 16 * EPS * (ref_probs.shape[-1] + logs) / alpha
    values = [regularized_value(p, ref_probs, rewards, eta) for p in iterates]
    for k, probs in enumerate(iterates):
        assert torch.all(probs[~support] == 0)  # zeros outside the support stay zero
        assert torch.all(centred_log_ratio(probs) <= (1 - alpha) ** k * start + roundoff)
    # and the objective never decreases (the iterates move along the e-geodesic to pi_r)
    scale = value_magnitude(initial, ref_probs, rewards, eta) + eta * logs + rewards.abs().amax(-1)
    for before, after in zip(values, values[1:], strict=False):
        assert torch.all(after >= before - 4 * sum_tolerance(ref_probs.shape[-1], scale))


def test_mirror_ascent_is_stable_for_tiny_eta():
    # Regression: probabilities that underflow to 0 inside the support used to turn the gradient
    # into +inf and the next iterate into NaN (log 0 + inf).
    ref, rewards = t([0.2, 0.3, 0.5]), t([1.0, -1.0, 0.5])
    for eta in [1e-3, 1e-4, 1e-6]:
        last, iterates = mirror_ascent(objective_gradient(ref, rewards, eta), ref, 0.5 / eta, 60)
        assert all(torch.isfinite(p).all() for p in iterates)
        torch.testing.assert_close(last, gibbs_policy(ref, rewards, eta), rtol=0, atol=1e-12)


def test_mirror_ascent_with_a_constant_gradient_is_an_exponential_tilt():
    ref = t([[0.1, 0.2, 0.7], [0.5, 0.0, 0.5]])
    direction = t([1.0, -2.0, 0.5])
    last, iterates = mirror_ascent(lambda probs: direction.expand_as(probs), ref, 0.25, 4)
    # after k steps pi_k ∝ pi0 exp(k * 0.25 * c): the Gibbs policy of c at eta = 1/(0.25 k)
    for k, probs in enumerate(iterates[1:], start=1):
        expected = ref * torch.exp(0.25 * k * direction)
        expected = expected / expected.sum(-1, keepdim=True)
        torch.testing.assert_close(probs, expected, rtol=8 * EPS, atol=8 * EPS)


def test_objective_gradient_formula_and_support():
    ref, rewards, eta = t([0.0, 0.4, 0.6]), t([5.0, 1.0, -1.0]), 0.5
    probs = t([0.0, 0.7, 0.3])
    grad = objective_gradient(ref, rewards, eta)(probs)
    assert grad[0] == 0  # off the support: 0 instead of inf - inf
    expected = [r - eta * (math.log(p / q) + 1) for p, q, r in [(0.7, 0.4, 1.0), (0.3, 0.6, -1.0)]]
    torch.testing.assert_close(grad[1:], t(expected), rtol=4 * EPS, atol=4 * EPS)


@given(gibbs_problems(eta_range=(0.1, 10.0), reward_scale=1.0, max_rows=1, allow_zeros=False,
                      min_prob=0.05),
       st.data())
def test_objective_gradient_matches_directional_finite_differences(problem, data):
    ref_probs, rewards, eta = problem
    ref, rewards = ref_probs[0], rewards[0]
    num_actions = ref.shape[0]
    assume(num_actions > 1)
    policy = data.draw(policies_on_support(ref_probs, allow_zeros=False, min_prob=0.05))[0]
    target = data.draw(policies_on_support(ref_probs, allow_zeros=False, min_prob=0.05))[0]
    direction = (target - policy) / 2  # tangent to the simplex: sums to 0, policy +- v >= 0
    h = 1e-5

    def value(probs):
        return regularized_value(probs, ref, rewards, eta).item()

    derivative = (value(policy + h * direction) - value(policy - h * direction)) / (2 * h)
    expected = (objective_gradient(ref, rewards, eta)(policy) * direction).sum().item()
    # J''' along v is -2 eta sum v^3/pi^2 (bounded on [policy - hv, policy + hv] by doubling it)
    third = 4 * eta * (direction.abs() ** 3 / (policy / 2) ** 2).sum().item()
    roundoff = sum_tolerance(num_actions, value_magnitude(policy, ref, rewards, eta) + eta).item()
    assert abs(derivative - expected) <= h**2 / 6 * third + 2 * roundoff / h


# --- the reward-KL frontier --------------------------------------------------------------------


def on_a_grid(rewards):
    """Rewards rounded to multiples of 1e-3: distinct rewards differ by >= 1e-3, so the whole
    KL range is reached for eta inside the bisection's bracket [1e-12, 1e12]."""
    return torch.round(rewards * 1000) / 1000


def kl_of_small_eta_limit(ref_probs, rewards):
    """KL(lim_{eta->0} pi_eta || pi0) = -log pi0(maximisers on the support)."""
    support_max = torch.where(ref_probs > 0, rewards, -math.inf).amax(-1, keepdim=True)
    mass = torch.where((rewards == support_max) & (ref_probs > 0), ref_probs, 0.0).sum(-1)
    return -mass.log()


@examples(25)  # a bisection per example
@given(gibbs_problems(reward_scale=1.0, allow_zeros=True, min_prob=1e-3), st.floats(0.05, 0.95))
def test_frontier_eta_reaches_the_target_kl(problem, fraction):
    ref_probs, rewards, _ = problem
    rewards = on_a_grid(rewards)
    kl_max = kl_of_small_eta_limit(ref_probs, rewards)
    assume(bool((kl_max > 1e-3).all()))
    target = fraction * kl_max
    # 64 halvings of the log-eta bracket (width 55) reach 3e-18, below float64 resolution
    eta = gibbs_frontier_eta(ref_probs, rewards, target, num_bisections=64)
    assert eta.shape == target.shape
    reached = kl_divergence(gibbs_policy(ref_probs, rewards, eta), ref_probs)
    assert torch.all((reached - target).abs() <= 1e-9 * (1 + target))


@examples(25)  # a bisection per example
@given(gibbs_problems(reward_scale=1.0, min_prob=1e-3), st.data())
def test_gibbs_family_is_the_reward_kl_frontier(problem, data):
    """No policy with KL(pi||pi0) <= KL(pi_eta||pi0) has a larger expected reward; beyond that
    budget, extra reward costs at least eta per nat of KL."""
    ref_probs, rewards, _ = problem
    rewards = on_a_grid(rewards)
    policy = data.draw(policies_on_support(ref_probs, min_prob=1e-3))
    kl_policy = kl_divergence(policy, ref_probs)
    # the budget: pi's own KL, kept inside the reachable range [0, KL of the eta -> 0 limit)
    target = torch.minimum(kl_policy, 0.99 * kl_of_small_eta_limit(ref_probs, rewards))
    eta = gibbs_frontier_eta(ref_probs, rewards, target, num_bisections=64)
    gibbs = gibbs_policy(ref_probs, rewards, eta)
    kl_gibbs = kl_divergence(gibbs, ref_probs)
    reward_policy = (policy * rewards).sum(-1)
    reward_gibbs = (gibbs * rewards).sum(-1)
    # exact: E_pi r - E_g r <= eta (KL(pi) - KL(g)); the measured KLs agree to ~1e-9 and any
    # leftover is paid at the frontier's slope eta; round-off of the sums on top.
    kl_terms = (torch.xlogy(policy, policy).abs() + torch.xlogy(policy, ref_probs).abs()
                + torch.xlogy(gibbs, gibbs).abs() + torch.xlogy(gibbs, ref_probs).abs()).sum(-1)
    slack = eta * (kl_policy - kl_gibbs).clamp_min(0) + 4 * sum_tolerance(
        ref_probs.shape[-1], rewards.abs().amax(-1) + eta * kl_terms)
    assert torch.all(reward_policy <= reward_gibbs + slack)


def test_frontier_kl_is_monotone_in_eta_and_extreme_targets_hit_the_ends():
    ref, rewards, _ = random_problem(4, (6,))
    grid = torch.logspace(-4, 4, 81, dtype=F64).unsqueeze(-1)
    kl = kl_divergence(gibbs_policy(ref, rewards, grid), ref)
    assert torch.all(kl[1:] <= kl[:-1] + 1e-15)  # KL decreases as eta grows
    kl_max = kl_of_small_eta_limit(ref, rewards)
    assert gibbs_frontier_eta(ref, rewards, 2 * kl_max).item() < 1e-11  # beyond reach: low end
    # KL 0 means eta -> infinity; the bisection stops where the computed KL reaches round-off
    eta_zero = gibbs_frontier_eta(ref, rewards, 0.0)
    assert eta_zero.item() > 1e6
    assert kl_divergence(gibbs_policy(ref, rewards, eta_zero), ref).item() <= 1e-12


def test_frontier_eta_broadcasts_targets_and_rows():
    ref, rewards, _ = random_problem(5, (3, 5))
    targets = t([0.05, 0.1, 0.2])
    batched = gibbs_frontier_eta(ref, rewards, targets)
    for i in range(3):
        single = gibbs_frontier_eta(ref[i], rewards[i], targets[i])
        torch.testing.assert_close(batched[i], single, rtol=1e-12, atol=0)
    grid = gibbs_frontier_eta(ref[0], rewards[0], targets)
    assert grid.shape == (3,)
    assert torch.all(grid[1:] < grid[:-1])  # larger KL budget, smaller eta


# --- bad input: ValueError naming the argument ------------------------------------------------

GOOD_REF = [0.2, 0.3, 0.5]
GOOD_REWARDS = [1.0, 0.0, -1.0]

BAD_GIBBS_INPUTS = [
    ({"eta": 0.0}, "eta"),
    ({"eta": -1.0}, "eta"),
    ({"eta": math.nan}, "eta"),
    ({"eta": math.inf}, "eta"),
    ({"eta": -math.inf}, "eta"),
    ({"eta": "abc"}, "eta"),
    ({"eta": t([1.0, -1.0, 2.0])}, "eta"),
    ({"ref_probs": [[0.2, 0.3, 0.5]] * 2, "rewards": [[1.0, 0.0, -1.0]] * 2,
      "eta": t([1.0, 2.0, 3.0])}, "eta"),
    ({"rewards": [1.0, 0.0, -1.0, 2.0]}, "ref_probs.*rewards"),
    ({"ref_probs": [[0.2, 0.3, 0.5]] * 2, "rewards": [[1.0, 0.0, -1.0]] * 3}, "ref_probs.*rewards"),
    ({"ref_probs": [-0.1, 0.6, 0.5]}, "ref_probs must be non-negative"),
    ({"ref_probs": [math.nan, 0.5, 0.5]}, "ref_probs must be finite"),
    ({"ref_probs": [math.inf, 0.5, 0.5]}, "ref_probs must be finite"),
    ({"ref_probs": [0.2, 0.3, 0.6]}, "ref_probs must sum to 1"),
    ({"ref_probs": [0.2, 0.3, 0.5 + 1e-5]}, "ref_probs must sum to 1"),
    ({"ref_probs": [0.0, 0.0, 0.0]}, "ref_probs must sum to 1"),
    ({"ref_probs": 1.0}, "ref_probs must have an action dimension"),
    ({"ref_probs": [], "rewards": []}, "ref_probs must hold at least one distribution"),
    ({"ref_probs": "abc"}, "ref_probs must be a tensor"),
    ({"rewards": [math.nan, 0.0, 0.0]}, "rewards must be finite"),
    ({"rewards": [math.inf, 0.0, 0.0]}, "rewards must be finite"),
    ({"rewards": 1.0}, "rewards must have an action dimension"),
]


@pytest.mark.parametrize("function", [gibbs_policy, gibbs_log_policy, log_partition])
@pytest.mark.parametrize(("overrides", "match"), BAD_GIBBS_INPUTS)
def test_bad_input_raises_value_error_naming_the_argument(function, overrides, match):
    arguments = {"ref_probs": GOOD_REF, "rewards": GOOD_REWARDS, "eta": 0.5} | overrides
    if isinstance(arguments["ref_probs"], list):
        arguments["ref_probs"] = t(arguments["ref_probs"])
    with pytest.raises(ValueError, match=f"^{match}"):
        function(**arguments)


def test_rounding_level_unnormalisation_is_accepted():
    almost = t([0.2, 0.3, 0.5 + 1e-12])
    assert torch.isfinite(gibbs_policy(almost, t(GOOD_REWARDS), 1.0)).all()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: kl_divergence(t([-0.1, 1.1]), t([0.5, 0.5])), "^p must be non-negative"),
        (lambda: kl_divergence(t([0.5, 0.5]), t([0.5, 0.6])), "^q must sum to 1"),
        (lambda: kl_divergence(t([0.5, 0.5]), t([math.nan, 0.5])), "^q must be finite"),
        (lambda: kl_divergence(t([0.5, 0.5]), t([0.2, 0.3, 0.5])), "p .*q"),
        (lambda: regularized_value(t([0.5, 0.6]), t([0.5, 0.5]), t([0.0, 0.0]), 1.0), "policy"),
        (lambda: regularized_value(t([0.5, 0.5]), t([0.5, 0.6]), t([0.0, 0.0]), 1.0),
         "ref_probs"),
        (lambda: regularized_value(t([0.5, 0.5]), t([0.5, 0.5]), t([math.nan, 0.0]), 1.0),
         "rewards"),
        (lambda: regularized_value(t([0.5, 0.5]), t([0.5, 0.5]), t([0.0, 0.0]), 0.0), "eta"),
        (lambda: regularized_value(t([0.5, 0.5]), t([0.5, 0.5]), t([0.0, 0.0, 0.0]), 1.0),
         "policy.*rewards"),
        (lambda: regularized_value(t([0.5, 0.5]), t([0.2, 0.3, 0.5]), t([0.0, 0.0]), 1.0),
         "policy.*ref_probs"),
        (lambda: regularized_value(t([[0.5, 0.5]] * 2), t([0.5, 0.5]), t([0.0, 0.0]),
                                   t([1.0, 2.0, 3.0])), "eta"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), 0.0, 3), "step_size"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), -1.0, 3), "step_size"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), math.nan, 3), "step_size"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), math.inf, 3), "step_size"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), 0.1, 0), "num_steps"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), 0.1, 2.5), "num_steps"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.5]), 0.1, True), "num_steps"),
        (lambda: mirror_ascent(lambda p: p, t([0.5, 0.6]), 0.1, 3), "initial_probs"),
        (lambda: objective_gradient(t([0.5, 0.5]), t([0.0, 0.0, 0.0]), 1.0), "ref_probs.*rewards"),
        (lambda: objective_gradient(t([0.5, 0.5]), t([0.0, 0.0]), -1.0), "eta"),
        (lambda: objective_gradient(t([[0.5, 0.5]] * 2), t([0.0, 0.0]), t([1.0, 2.0, 3.0])),
         "eta"),
        (lambda: gibbs_frontier_eta(t([0.5, 0.5]), t([0.0, 1.0]), -0.1), "kl_target"),
        (lambda: gibbs_frontier_eta(t([0.5, 0.5]), t([0.0, 1.0]), math.nan), "kl_target"),
        (lambda: gibbs_frontier_eta(t([0.5, 0.5]), t([0.0, 1.0]), math.inf), "kl_target"),
        (lambda: gibbs_frontier_eta(t([[0.5, 0.5]] * 2), t([0.0, 1.0]), t([0.1, 0.2, 0.3])),
         "kl_target"),
        (lambda: gibbs_frontier_eta(t([0.5, 0.6]), t([0.0, 1.0]), 0.1), "ref_probs"),
    ],
)
def test_bad_input_of_the_other_functions(call, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        call()


@given(etas(), rewards_like((4,), scale=100.0))
def test_constant_shift_of_rewards_does_not_change_the_policy(eta, rewards):
    """pi_r is invariant to r -> r + c, and log Z shifts by exactly c/eta (up to round-off)."""
    ref = t([0.1, 0.2, 0.3, 0.4])
    shift = 3.0
    base = gibbs_policy(ref, rewards, eta)
    shifted = gibbs_policy(ref, rewards + shift, eta)
    largest_logit = max_abs_logit(ref, rewards.abs() + shift, eta)
    relative = 4 * EPS * (4 + 2 * largest_logit)
    assert torch.all((base - shifted).abs() <= relative * torch.maximum(base, shifted) + 1e-300)
    log_z = log_partition(ref, rewards, eta)
    log_z_shifted = log_partition(ref, rewards + shift, eta)
    assert abs((log_z_shifted - log_z).item() - shift / eta) <= relative.item()


def test_an_empty_batch_of_distributions_is_a_value_error():
    with pytest.raises(ValueError, match="ref_probs must hold at least one distribution"):
        gibbs_policy(torch.zeros(0, 3, dtype=torch.float64), torch.zeros(0, 3), 1.0)


def test_gap_identity_magnitude_by_hand():
    """|E_pi r| terms, eta sum pi (|log pi| + |log pi0| + |log pi_r|), |eta log Z| and
    sum pi_r |r|, summed with plain Python."""
    ref = [0.5, 0.3, 0.2]
    rewards = [1.0, -2.0, 0.5]
    policy = [0.2, 0.2, 0.6]
    eta = 0.7
    weights = [p * math.exp(r / eta) for p, r in zip(ref, rewards, strict=True)]
    gibbs = [w / sum(weights) for w in weights]
    expected = (sum(abs(p * r) for p, r in zip(policy, rewards, strict=True))
                + eta * sum(p * (abs(math.log(p)) + abs(math.log(q)) + abs(math.log(g)))
                            for p, q, g in zip(policy, ref, gibbs, strict=True))
                + abs(eta * math.log(sum(weights)))
                + sum(g * abs(r) for g, r in zip(gibbs, rewards, strict=True)))
    value = gap_identity_magnitude(torch.tensor(policy, dtype=torch.float64),
                                   torch.tensor(ref, dtype=torch.float64),
                                   torch.tensor(rewards, dtype=torch.float64), eta)
    assert value.item() == pytest.approx(expected, rel=1e-13)


def test_frontier_excess_on_and_below_the_frontier():
    """Gibbs policies lie on the frontier (|excess| <= 1 round-off unit) and random policies
    below it; KL and reward are returned as computed by hand."""
    generator = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    on = gibbs_policy(ref, rewards, torch.tensor([[0.1], [1.0], [10.0]], dtype=torch.float64))
    excess, kl, reward = frontier_excess(ref, rewards, on)
    assert (excess.abs() <= 1).all()
    assert torch.allclose(kl, (on * (on / ref).log()).sum(-1))
    assert torch.allclose(reward, on @ rewards)
    below = torch.softmax(3 * torch.randn(20, 5, dtype=torch.float64, generator=generator), -1)
    excess, _, _ = frontier_excess(ref, rewards, below)
    assert (excess <= 1).all() and (excess < -1).any()


def test_argmax_mass_by_enumeration_with_ties_and_zeros():
    """pi0's mass on the maximisers of r among the actions pi0 supports, per row: a tie counts
    both actions, an action outside the support (even with the largest reward) does not."""
    from gsfh_utils.gibbs import argmax_mass

    ref = t([[0.2, 0.3, 0.5, 0.0], [0.1, 0.4, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]])
    rewards = t([[1.0, 2.0, 0.5, 9.0], [3.0, 1.0, 3.0, -1.0], [0.0, 0.0, 0.0, 0.0]])
    expected = []
    for p, r in zip(ref.tolist(), rewards.tolist(), strict=True):
        best = max(value for value, mass in zip(r, p, strict=True) if mass > 0)
        expected.append(sum(mass for value, mass in zip(r, p, strict=True)
                            if mass > 0 and value == best))
    assert argmax_mass(ref, rewards).tolist() == pytest.approx(expected, abs=1e-15)
    assert argmax_mass(ref[0], rewards[0]).shape == ()


def test_eta_limits_are_the_two_distances_and_their_bounds():
    """Each entry for each eta of a column [E, 1]: TV to pi0 and to the small-eta limit written
    out as half the L1 distance, next to the two bounds, which hold."""
    from gsfh_utils.gibbs import eta_limits

    generator = torch.Generator().manual_seed(21)
    ref = torch.softmax(torch.randn(3, 5, dtype=F64, generator=generator), -1)
    rewards = torch.randn(3, 5, dtype=F64, generator=generator)
    etas_column = t([[0.05], [1.0], [20.0]])
    limits = eta_limits(ref, rewards, etas_column)
    assert set(limits) == {"tv_to_reference", "large_eta_bound", "tv_to_argmax_limit",
                           "small_eta_bound"}
    limit = small_eta_limit(ref, rewards)
    for row, eta in enumerate(etas_column.flatten().tolist()):
        policy = gibbs_policy(ref, rewards, eta)
        to_reference = 0.5 * (policy - ref).abs().sum(-1)
        to_limit = 0.5 * (policy - limit).abs().sum(-1)
        assert torch.allclose(limits["tv_to_reference"][row], to_reference, atol=1e-14)
        assert torch.allclose(limits["tv_to_argmax_limit"][row], to_limit, atol=1e-14)
        assert torch.allclose(limits["large_eta_bound"][row],
                              large_eta_tv_bound(ref, rewards, eta), rtol=1e-14)
        assert torch.allclose(limits["small_eta_bound"][row],
                              small_eta_tv_bound(ref, rewards, eta), rtol=1e-14)
    assert (limits["tv_to_reference"] <= limits["large_eta_bound"] + 1e-12).all()
    assert (limits["tv_to_argmax_limit"] <= limits["small_eta_bound"] + 1e-12).all()


def test_limit_bounds_by_hand_over_two_batch_dimensions():
    """Both bounds written out per row for a batch [2, 3, K] with actions outside the support:
    large eta, (exp(osc/eta) - 1)/2 with osc the reward range on the support; small eta,
    pi0(not M)/pi0(M) exp(-gap/eta) with M the maximisers on the support and gap the distance to
    the next supported reward (an unsupported action in between does not count)."""
    generator = torch.Generator().manual_seed(22)
    ref = torch.softmax(torch.randn(2, 3, 5, dtype=F64, generator=generator), -1)
    ref[0, 1, 4] = ref[1, 2, 0] = ref[1, 0, 3] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    rewards = torch.randn(2, 3, 5, dtype=F64, generator=generator)
    rewards[0, 1, 4] = rewards[0, 1].max() - 1e-3  # unsupported, just below the maximum
    eta = 0.7
    large, small = large_eta_tv_bound(ref, rewards, eta), small_eta_tv_bound(ref, rewards, eta)
    assert large.shape == small.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            on_support = [(p, r) for p, r in zip(ref[i, j].tolist(), rewards[i, j].tolist(),
                                                  strict=True) if p > 0]
            values = [r for _, r in on_support]
            best = max(values)
            others = [r for r in values if r < best]
            gap = best - max(others) if others else math.inf
            mass_best = sum(p for p, r in on_support if r == best)
            expected_small = (1 - mass_best) / mass_best * math.exp(-gap / eta)
            expected_large = 0.5 * math.expm1((best - min(values)) / eta)
            assert large[i, j].item() == pytest.approx(expected_large, rel=1e-13)
            assert small[i, j].item() == pytest.approx(expected_small, rel=1e-12, abs=1e-300)
    magnitude = gap_identity_magnitude(ref, ref, rewards, eta)
    assert magnitude.shape == (2, 3) and torch.isfinite(magnitude).all()
    for i in range(2):
        assert torch.allclose(magnitude[i], gap_identity_magnitude(ref[i], ref[i], rewards[i],
                                                                   eta), rtol=1e-15)


@pytest.mark.parametrize("call, message", [
    (lambda p, r: small_eta_limit(-p, r), "ref_probs must be non-negative"),
    (lambda p, r: small_eta_limit(p, r[:3]),
     r"ref_probs \(shape \(4,\)\) and rewards \(shape \(3,\)\) must"),
    (lambda p, r: small_eta_limit(p.expand(2, 4), r[:3]),
     r"ref_probs \(shape \(2, 4\)\) and rewards \(shape \(3,\)\) must"),
    (lambda p, r: frontier_excess(-p, r, p.unsqueeze(0)), "ref_probs must be non-negative"),
    (lambda p, r: frontier_excess(p, r, -p.unsqueeze(0)), "policies must be non-negative"),
    (lambda p, r: gap_identity_magnitude(-p, p, r, 1.0), "policy must be non-negative"),
    (lambda p, r: gap_identity_magnitude(p, -p, r, 1.0), "ref_probs must be non-negative"),
    (lambda p, r: total_variation(-p, p), "p must be non-negative"),
    (lambda p, r: total_variation(p, -p), "q must be non-negative"),
    (lambda p, r: total_variation(p, p[:3] / p[:3].sum()),
     r"p \(shape \(4,\)\) and q \(shape \(3,\)\) must"),
    (lambda p, r: total_variation(p.expand(2, 4), t([0.5, 0.5])),
     r"p \(shape \(2, 4\)\) and q \(shape \(2,\)\) must"),
    (lambda p, r: gibbs_policy(p, r[:3], 1.0),
     r"ref_probs \(shape \(4,\)\) and rewards \(shape \(3,\)\) must"),
    (lambda p, r: kl_divergence(p, p[:3] / p[:3].sum()),
     r"p \(shape \(4,\)\) and q \(shape \(3,\)\) must"),
    (lambda p, r: objective_gradient(-p, r, 1.0), "ref_probs must be non-negative"),
    (lambda p, r: objective_gradient(p, r[:3], 1.0),
     r"ref_probs \(shape \(4,\)\) and rewards \(shape \(3,\)\) must"),
    (lambda p, r: regularized_value(p, p, r[:3], 1.0),
     r"policy \(shape \(4,\)\) and rewards \(shape \(3,\)\) must"),
    (lambda p, r: regularized_value(p, p[:3] / p[:3].sum(), r, 1.0),
     r"policy \(shape \(4,\)\) and ref_probs \(shape \(3,\)\) must"),
    (lambda p, r: gibbs_frontier_eta(p.expand(2, 3, 4), r, torch.zeros(5)),
     r"kl_target \(shape \(5,\)\) must broadcast against the leading dimensions \(2, 3\) "
     r"of ref_probs$"),
])
def test_helpers_name_their_arguments(call, message):
    ref, rewards = t([0.1, 0.2, 0.3, 0.4]), t([1.0, 0.0, -1.0, 2.0])
    with pytest.raises(ValueError, match=f"^{message}"):
        call(ref, rewards)


# --- dtypes and a second batch dimension of eta -----------------------------------------------


@pytest.mark.parametrize("call", [
    lambda p, r, pi, eta: regularized_value(pi, p, r, eta),
    lambda p, r, pi, eta: objective_gradient(p, r, eta)(pi),
    lambda p, r, pi, eta: small_eta_tv_bound(p, r, eta),
    lambda p, r, pi, eta: large_eta_tv_bound(p, r, eta),
], ids=["regularized_value", "objective_gradient", "small_eta_tv_bound", "large_eta_tv_bound"])
@pytest.mark.parametrize("eta", [0.3, [0.3, 1.7]], ids=["scalar", "per-row"])
def test_float32_inputs_give_float32_results_like_gibbs_policy(call, eta):
    """As for ``gibbs_policy``, float32 inputs keep their dtype (eta, a Python float or a float64
    tensor of one eta per row, is read in the inputs' dtype), and the values are the float64 ones
    to float32 precision."""
    ref, rewards, policy = random_problem(6, (2, 4))
    eta = eta if isinstance(eta, float) else t(eta)
    single = [x.to(torch.float32) for x in (ref, rewards, policy)]
    result = call(*single, eta)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, call(ref, rewards, policy, eta).to(torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_eta_batched_over_two_leading_dimensions_is_one_eta_per_row():
    """``eta [2, 3]`` against ``pi0 [2, 3, K]``: the regularised value and the objective gradient
    of each row are those of the unbatched call with that row's eta."""
    ref, rewards, policy = random_problem(7, (2, 3, 4))
    eta = t([[0.1, 0.5, 2.0], [3.0, 0.7, 1.3]])
    values = regularized_value(policy, ref, rewards, eta)
    gradients = objective_gradient(ref, rewards, eta)(policy)
    assert values.shape == (2, 3) and gradients.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            row_eta = eta[i, j].item()
            torch.testing.assert_close(
                values[i, j], regularized_value(policy[i, j], ref[i, j], rewards[i, j], row_eta),
                rtol=2 * EPS, atol=0)
            torch.testing.assert_close(
                gradients[i, j], objective_gradient(ref[i, j], rewards[i, j], row_eta)(
                    policy[i, j]), rtol=2 * EPS, atol=0)


@pytest.mark.parametrize("kl_target", [0.1, [0.1, 1 / 3]], ids=["float", "list"])
def test_frontier_eta_reads_a_python_kl_target_in_float64(kl_target):
    """A Python float or list target is read in float64: the Gibbs policy at the returned eta has
    KL to pi0 equal to the target to round-off (0.1 and 1/3 are not exact in float32, whose
    rounding would move the KL by about 1e-8 relative)."""
    ref, rewards, _ = random_problem(8, (5,), zeros=False)
    eta = gibbs_frontier_eta(ref, rewards, kl_target)
    kl = kl_divergence(gibbs_policy(ref, rewards, eta), ref)
    torch.testing.assert_close(kl, t(kl_target), rtol=1e-12, atol=0)


def test_frontier_excess_is_negative_below_the_frontier_when_eta_kl_exceeds_the_rewards():
    """Two policies that split the two equal-reward actions unequally, unlike every Gibbs policy
    of these rewards, lie below the frontier: their excess is negative beyond the round-off
    allowance (< -1). The best action is rare, so the matched ``eta`` is moderate and the KL
    large: for the first, ``eta KL(pi || pi0)`` (1.12) exceeds ``max |r| = 1``."""
    ref, rewards = t([0.01, 0.495, 0.495]), t([1.0, -1.0, -1.0])
    policies = t([[0.88, 0.02, 0.10], [0.5, 0.45, 0.05]])
    excess, kl, _ = frontier_excess(ref, rewards, policies)
    assert gibbs_frontier_eta(ref, rewards, kl[0]) * kl[0] > 1.1
    assert (excess < -1).all()


def test_frontier_eta_beyond_reach_is_the_lower_end_of_the_bracket():
    """A KL target above the largest reachable KL (that of the small-eta limit) returns the lower
    end of the documented bracket [1e-12, 1e12] (to 1e-6: the end is ``exp(-12 log 10)`` with
    ``log 10`` taken in float32, 4e-7 relative)."""
    ref, rewards, _ = random_problem(9, (2, 5))
    eta = gibbs_frontier_eta(ref, rewards, 2 * kl_of_small_eta_limit(ref, rewards))
    torch.testing.assert_close(eta, t([1e-12, 1e-12]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("seed", [0, 11])
@pytest.mark.parametrize("spread", [1.0, 10.0])
def test_frontier_excess_of_gibbs_policies_is_within_roundoff(seed, spread):
    """Gibbs policies lie on the frontier for every eta, so their excess is at most one round-off
    unit in absolute value, from eta = 1e-2 to 1e5 (KL down to 1e-13), also when pi0 puts 1e-5
    on some actions (logits of spread 10). An allowance of ``eta KL`` alone, relative to the KL
    rather than to the logarithms it is computed from, flagged these by up to 1.2e4 units, one
    without the ``u`` each logarithm takes from its rounded argument by up to 16 units, and a KL
    computed slightly below 0 (seed 11, spread 10) was refused by the bisection."""
    generator = torch.Generator().manual_seed(seed)
    ref = torch.softmax(spread * torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    on = gibbs_policy(ref, rewards, torch.logspace(-2, 5, 8, dtype=torch.float64)[:, None])
    excess, _, _ = frontier_excess(ref, rewards, on.reshape(-1, 5))
    assert (excess.abs() <= 1).all(), excess.tolist()


def test_frontier_excess_of_each_policy_is_its_own():
    """The excess of a policy, its KL and its reward do not depend on the other policies of the
    batch (each has its own matched eta and its own round-off allowance), and one policy [K]
    gives the same as a batch of one."""
    generator = torch.Generator().manual_seed(1)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    policies = torch.cat([gibbs_policy(ref, rewards, t([[1e-2], [1e4]])).reshape(2, 5),
                          torch.softmax(3 * torch.randn(2, 5, dtype=torch.float64,
                                                        generator=generator), -1)])
    batched = frontier_excess(ref, rewards, policies)
    for row, policy in enumerate(policies):
        alone = frontier_excess(ref, rewards, policy)
        for of_batch, of_one in zip(batched, alone, strict=True):
            torch.testing.assert_close(of_batch[row], of_one, rtol=1e-6, atol=1e-9)


def test_frontier_excess_flags_policies_off_a_frontier_of_one_point():
    """With constant rewards every eta gives pi0, so the frontier is one point and a policy of
    positive KL lies below it by ``eta KL``: far more than round-off (KL 13 and 28 here), also
    for a policy with zeros and mass on an action that pi0 gives 1e-12 (where the allowance's
    terms are largest relative to the KL)."""
    ref = t([1e-12, 0.5 - 5e-13, 0.5 - 5e-13])
    policies = t([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]])
    excess, kl, reward = frontier_excess(ref, torch.zeros(3, dtype=torch.float64), policies)
    assert (excess < -1e6).all(), excess.tolist()
    by_hand = t([math.log(1e12), 0.5 * math.log(0.5e12) + 0.5 * math.log(0.5)])
    torch.testing.assert_close(kl, by_hand, rtol=1e-9, atol=0)
    assert (reward == 0).all()


def test_frontier_excess_of_float32_gibbs_policies_is_within_the_allowance():
    """Gibbs policies computed in float32 and read in float64 sum to 1 - 7e-8 (within what
    check_probs accepts); the gap identity then moves by up to |delta| (eta + max |r|), which
    the allowance includes: they stay within 1 unit of the frontier (a policy flagged +6e6
    units at eta = 1 without that term), while the uniform policy in float32 (sum 1 + 1.5e-8)
    lies far below it."""
    generator = torch.Generator().manual_seed(0)
    ref = torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), -1)
    rewards = torch.randn(5, dtype=torch.float64, generator=generator)
    etas = t([[0.1], [1.0], [10.0], [1e3]])
    single = gibbs_policy(ref.float(), rewards.float(), etas.float()).double().reshape(4, 5)
    excess, _, _ = frontier_excess(ref, rewards, single)
    assert (excess.abs() <= 1).all(), excess.tolist()
    uniform = torch.full((1, 5), 0.2, dtype=torch.float32).double()
    below, _, _ = frontier_excess(ref, rewards, uniform)
    assert (below < -1e3).all(), below.tolist()
