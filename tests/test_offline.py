"""Tests of gsfh_utils.offline (pessimistic policies, bounds, the trap instance, the grid helpers).


Independent computations: explicit matrix inverses, brute force over a grid of the simplex,
mirror ascent on the simplex (for the expected-pessimism solver), the value-difference theorem
itself on random instances (bounds), scipy's own routines (statistics).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import estimation, offline


def small_problem(seed, num_contexts=3, num_actions=4, dim=3, batch=(), scale=2.0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_contexts, num_actions, dim, dtype=torch.float64,
                           generator=generator)
    features = features / features.norm(dim=-1, keepdim=True).clamp_min(1.0)
    ref = torch.softmax(torch.randn(num_contexts, num_actions, dtype=torch.float64,
                                    generator=generator), -1)
    context_probs = torch.softmax(torch.randn(num_contexts, dtype=torch.float64,
                                              generator=generator), -1)
    theta_hat = scale * torch.randn(*batch, dim, dtype=torch.float64, generator=generator)
    root = torch.randn(*batch, dim, dim, dtype=torch.float64, generator=generator)
    sigma = root @ root.transpose(-1, -2) + 0.5 * torch.eye(dim, dtype=torch.float64)
    nu = estimation.reference_vectors(features, ref)
    return features, ref, context_probs, nu, theta_hat, sigma


def test_pointwise_rewards_closed_form():
    features, ref, _, nu, theta_hat, sigma = small_problem(0, batch=(2,))
    rewards = offline.pointwise_pessimistic_rewards(features, nu, theta_hat, sigma, 0.7)
    inverse = torch.linalg.inv(sigma)
    for b in range(2):
        for x in range(3):
            for a in range(4):
                diff = features[x, a] - nu[x]
                expected = theta_hat[b] @ features[x, a] - 0.7 * torch.sqrt(
                    diff @ inverse[b] @ diff)
                assert math.isclose(rewards[b, x, a].item(), expected.item(), abs_tol=1e-12)


def test_pointwise_policy_without_pessimism_is_mle_gibbs():
    features, ref, _, nu, theta_hat, sigma = small_problem(1, batch=(3,))
    policy = offline.pointwise_pessimistic_policy(features, ref, nu, theta_hat, sigma, 0.0, 0.3)
    expected = gu.gibbs_policy(ref, torch.einsum("xkd,bd->bxk", features, theta_hat), 0.3)
    assert torch.allclose(policy, expected, atol=1e-14)


def test_pointwise_policy_beats_every_grid_policy():
    # Brute force: K = 3, one context; the pointwise policy maximises E_pi r_hat - eta KL.
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(2, num_contexts=1,
                                                                       num_actions=3)
    eta, beta = 0.4, 1.3
    rewards = offline.pointwise_pessimistic_rewards(features, nu, theta_hat, sigma, beta)
    policy = offline.pointwise_pessimistic_policy(features, ref, nu, theta_hat, sigma, beta, eta)
    grid = simplex_grid(3, 200)
    values = gu.regularized_value(grid.unsqueeze(1), ref, rewards, eta).squeeze(-1)
    best = gu.regularized_value(policy, ref, rewards, eta)
    assert (values <= best + 1e-12).all()


def simplex_grid(num_actions, steps):
    assert num_actions == 3
    points = [(i / steps, j / steps, (steps - i - j) / steps)
              for i in range(steps + 1) for j in range(steps + 1 - i)]
    return torch.tensor(points, dtype=torch.float64)


def test_expected_pessimism_brute_force_on_a_grid():
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(3, num_contexts=1,
                                                                       num_actions=3, scale=3.0)
    eta, beta = 0.5, 0.8
    solution = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                                 sigma, beta, eta)
    grid = simplex_grid(3, 300).unsqueeze(1)  # [points, X=1, K]
    values = offline.expected_pessimism_objective(grid, features, ref, context_probs, nu,
                                                  theta_hat, sigma, beta, eta)
    best = offline.expected_pessimism_objective(solution.policy, features, ref, context_probs,
                                                nu, theta_hat, sigma, beta, eta)
    assert (values <= best + 1e-12).all()
    assert values.max() >= best - 1e-3  # the grid is fine enough to come close


@pytest.mark.parametrize("seed,beta", [(4, 0.3), (5, 1.0), (6, 2.5)])
def test_expected_pessimism_agrees_with_mirror_ascent(seed, beta):
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(seed, batch=(2,),
                                                                       scale=4.0)
    eta = 0.5
    solution = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                                 sigma, beta, eta)
    mirror = offline.expected_pessimism_mirror_ascent(features, ref, context_probs, nu,
                                                      theta_hat, sigma, beta, eta,
                                                      step_size=0.2, num_steps=3000)
    args = (features, ref, context_probs, nu, theta_hat, sigma, beta, eta)
    f_solver = offline.expected_pessimism_objective(solution.policy, *args)
    f_mirror = offline.expected_pessimism_objective(mirror, *args)
    assert (f_solver >= f_mirror - 1e-10).all()  # the certified solver is at least as good
    assert (f_solver - f_mirror <= 1e-6).all()  # and both find the same maximum
    assert torch.allclose(solution.policy, mirror, atol=1e-3)
    assert (solution.duality_gap <= 1e-9).all() and (solution.duality_gap >= 0).all()


def test_expected_pessimism_structure():
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(7, batch=(4,), scale=3.0)
    distance = estimation.sigma_norm(theta_hat, sigma)
    # Radius above ||theta_hat||_Sigma: theta = 0 is in the ellipsoid, the answer is pi0.
    inside = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                               sigma, distance + 0.1, 0.5)
    assert torch.allclose(inside.policy, ref.expand_as(inside.policy), atol=1e-15)
    assert (inside.parameter == 0).all()
    # Radius below it: the pessimistic parameter is on the boundary of the ellipsoid and the
    # policy is its Gibbs policy.
    beta = distance / 3
    active = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                               sigma, beta, 0.5)
    on_boundary = estimation.sigma_norm(active.parameter - theta_hat, sigma)
    assert torch.allclose(on_boundary, beta, rtol=1e-10)
    gibbs = gu.gibbs_policy(ref, torch.einsum("xkd,bd->bxk", features, active.parameter), 0.5)
    assert torch.allclose(active.policy, gibbs, atol=1e-15)
    # Radius 0: no pessimism, the MLE's Gibbs policy.
    zero = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                             sigma, 0.0, 0.5)
    mle = gu.gibbs_policy(ref, torch.einsum("xkd,bd->bxk", features, theta_hat), 0.5)
    assert torch.allclose(zero.policy, mle, atol=1e-9)


def test_dual_upper_bounds_the_objective():
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(8, scale=2.0)
    generator = torch.Generator().manual_seed(8)
    policies = torch.softmax(torch.randn(50, 3, 4, dtype=torch.float64, generator=generator), -1)
    beta = 0.9
    for _ in range(5):  # random feasible dual points
        u = torch.randn(3, dtype=torch.float64, generator=generator)
        u = beta * torch.rand((), dtype=torch.float64, generator=generator) * u / (
            estimation.sigma_norm(u, sigma))
        dual = offline.expected_pessimism_dual(theta_hat + u, features, ref, context_probs, nu,
                                               0.5)
        primal = offline.expected_pessimism_objective(policies, features, ref, context_probs, nu,
                                                      theta_hat, sigma, beta, 0.5)
        assert (primal <= dual + 1e-12).all()


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), eta=st.floats(0.05, 5.0), beta=st.floats(0.05, 3.0),
       fraction=st.floats(0.0, 1.0))
def test_bounds_hold_on_the_confidence_event(seed, eta, beta, fraction):
    """The theorem of notebook 02: if ||theta_hat - theta*||_Sigma <= beta, both pessimistic
    policies are within their bound of any comparator (here pi* and a random policy)."""
    features, ref, context_probs, nu, theta_star, sigma = small_problem(seed, scale=2.0)
    generator = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(3, dtype=torch.float64, generator=generator)
    theta_hat = theta_star + fraction * beta * u / estimation.sigma_norm(u, sigma)
    bandit = gu.LinearBTBandit(features, theta_star, ref, context_probs, eta)
    comparators = torch.stack([
        bandit.optimal_policy(),
        torch.softmax(torch.randn(3, 4, dtype=torch.float64, generator=generator), -1)])
    pointwise = offline.pointwise_pessimistic_policy(features, ref, nu, theta_hat, sigma, beta,
                                                     eta)
    expected = offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                                 sigma, beta, eta)
    gap_pointwise = bandit.value(comparators) - bandit.value(pointwise)
    gap_expected = bandit.value(comparators) - bandit.value(expected.policy)
    bound_pointwise = offline.pointwise_bound(comparators, features, context_probs, nu, sigma,
                                              beta)
    bound_expected = offline.expected_bound(comparators, features, context_probs, nu, sigma,
                                            beta) + expected.duality_gap
    assert (gap_pointwise <= bound_pointwise + 1e-12).all()
    assert (gap_expected <= bound_expected + 1e-12).all()
    # The MLE's own bound holds too (it depends on the MLE policy).
    mle = offline.pointwise_pessimistic_policy(features, ref, nu, theta_hat, sigma, 0.0, eta)
    assert (bandit.value(comparators) - bandit.value(mle)
            <= offline.mle_bound(comparators, mle, features, context_probs, nu, sigma, beta)
            + 1e-12).all()
    # Jensen: the expected bound is never larger than the pointwise bound.
    assert (offline.expected_bound(comparators, features, context_probs, nu, sigma, beta)
            <= bound_pointwise + 1e-12).all()


def test_bound_closed_forms():
    features, ref, context_probs, nu, _, sigma = small_problem(9)
    comparator = torch.softmax(torch.ones(3, 4, dtype=torch.float64), -1)
    inverse = torch.linalg.inv(sigma)
    diffs = features - nu.unsqueeze(1)
    bonus = torch.einsum("xki,ij,xkj->xk", diffs, inverse, diffs).sqrt()
    expected_point = 2 * 0.5 * (context_probs.unsqueeze(-1) * comparator * bonus).sum()
    assert math.isclose(offline.pointwise_bound(comparator, features, context_probs, nu, sigma,
                                                0.5).item(), expected_point.item(), rel_tol=1e-12)
    v = torch.einsum("x,xk,xkd->d", context_probs, comparator, diffs)
    expected_norm = 2 * 0.5 * torch.sqrt(v @ inverse @ v)
    assert math.isclose(offline.expected_bound(comparator, features, context_probs, nu, sigma,
                                               0.5).item(), expected_norm.item(), rel_tol=1e-12)


def test_offline_bad_inputs():
    features, ref, context_probs, nu, theta_hat, sigma = small_problem(10)
    with pytest.raises(ValueError, match="beta"):
        offline.pointwise_pessimistic_rewards(features, nu, theta_hat, sigma, -1.0)
    with pytest.raises(ValueError, match="eta"):
        offline.pointwise_pessimistic_policy(features, ref, nu, theta_hat, sigma, 1.0, 0.0)
    with pytest.raises(ValueError, match="theta_hat"):
        offline.pointwise_pessimistic_rewards(features, nu, theta_hat[:2], sigma, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        offline.expected_pessimism_policy(features, ref, context_probs, nu, theta_hat,
                                          sigma[:2, :2], 1.0, 0.5)
    with pytest.raises(ValueError, match="nu"):
        offline.pointwise_pessimistic_rewards(features, nu[:2], theta_hat, sigma, 1.0)
    with pytest.raises(ValueError, match="features"):
        offline.pointwise_pessimistic_rewards(features[0], nu, theta_hat, sigma, 1.0)


def test_trap_instance_is_as_specified():
    generator = torch.Generator().manual_seed(11)
    trap = offline.trap_instance(6, 7, 5, 2, norm_bound=4.0, trap_weight=3.0, eta=0.5,
                                 generator=generator, ref_trap_mass=0.25)
    bandit = trap.bandit
    assert math.isclose(bandit.theta_star.norm().item(), 4.0, rel_tol=1e-12)
    assert bandit.theta_star[-1].item() == -3.0
    assert (bandit.features.norm(dim=-1) <= 1 + 1e-12).all()
    ordinary = ~trap.trap_mask
    assert (bandit.features[ordinary][:, -1] == 0).all()
    assert torch.allclose((bandit.ref_probs * trap.trap_mask).sum(-1),
                          torch.full((6,), 0.25, dtype=torch.float64))
    # Traps look good through the ordinary coordinates but are bad in truth.
    rewards = bandit.rewards()
    lure = torch.einsum("xkd,d->xk", bandit.features[..., :-1], bandit.theta_star[:-1])
    assert (lure[trap.trap_mask] > 0).all() and (rewards[trap.trap_mask] < 0).all()
    for mass in (0.0, 0.01, 2 / 7, 1.0):
        mu = trap.behaviour(mass)
        assert torch.allclose(mu.sum(-1), torch.ones(6, dtype=torch.float64))
        assert torch.allclose((mu * trap.trap_mask).sum(-1),
                              torch.full((6,), mass, dtype=torch.float64))
    assert torch.allclose(trap.behaviour(2 / 7), torch.full((6, 7), 1 / 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="trap_mass"):
        trap.behaviour(1.5)
    with pytest.raises(ValueError, match="num_traps"):
        offline.trap_instance(6, 7, 5, 7, 4.0, 3.0, 0.5, generator)
    with pytest.raises(ValueError, match="trap_weight"):
        offline.trap_instance(6, 7, 5, 2, 4.0, 5.0, 0.5, generator)


def test_grid_helpers_are_deterministic_and_consistent():
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        trap = offline.trap_instance(4, 5, 4, 1, 3.0, 2.0, 0.5, generator)
        fits = offline.fit_offline_grid(trap, [0.05, 0.2], [20, 60], 6, 1.0, generator)
        return trap, fits, offline.evaluate_offline(trap, fits, [0.5, 50.0], 0.5)

    trap, fits, results = run(3)
    _, fits_again, results_again = run(3)
    assert torch.equal(fits.theta_hat, fits_again.theta_hat)
    for key in results:
        assert torch.equal(results[key], results_again[key])
    assert fits.theta_hat.shape == (2, 2, 6, 4) and fits.sigma.shape == (2, 2, 6, 4, 4)
    assert results["none"].shape == (2, 2, 6)
    assert results["pointwise"].shape == results["expected"].shape == (2, 2, 2, 6)
    assert (results["none"] >= -1e-12).all() and (results["pointwise"] >= -1e-12).all()
    error = estimation.sigma_norm(fits.theta_hat - trap.bandit.theta_star, fits.sigma)
    assert torch.allclose(error, fits.error_sigma)

