"""Tests of gsfh_utils.out_of_preference: the continuous-context bandit (features, labels, the
gap identity) and the routes from preferences to a policy (coincidence when well specified, the
class floor, nested extra prompts)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gsfh_utils import out_of_preference as oop
from gsfh_utils.gibbs import gibbs_policy, kl_divergence
from gsfh_utils.lab import stats


def _bandit(seed=0, *, num_seeds=6, dim=4, eta=0.5, num_actions=5):
    g = torch.Generator().manual_seed(seed)
    bandit = oop.ContinuousBandit.random(num_seeds=num_seeds, context_dim=3,
                                         num_actions=num_actions, dim=dim, norm_bound=3.0,
                                         eta=eta, generator=g)
    return bandit, g


def test_features_are_the_formula_and_bounded():
    bandit, g = _bandit()
    contexts = bandit.sample_contexts(7, g)
    features = bandit.features(contexts)
    s, n, a = 2, 4, 3
    expected = torch.tanh(bandit.projections[s, a] @ contexts[s, n] + bandit.offsets[s, a])
    assert torch.allclose(features[s, n, a], expected / math.sqrt(bandit.dim), atol=1e-15)
    assert features.shape == (6, 7, 5, 4)
    assert (features.norm(dim=-1) < 1).all()
    assert torch.allclose(bandit.theta_star.norm(dim=-1), torch.full((6,), 3.0,
                                                                     dtype=torch.float64))


def test_labels_follow_bradley_terry_and_responses_follow_pi0():
    bandit, g = _bandit(1, num_seeds=1, num_actions=3)
    context = bandit.sample_contexts(1, g).expand(1, 60000, 3)
    features = bandit.features(context)
    chosen, rejected = bandit.sample_pairs(features, g)
    rewards = bandit.rewards(features)[0, 0]
    ref = bandit.ref_probs[0]
    for a in range(3):
        for b in range(a + 1, 3):
            pair = ((chosen == a) & (rejected == b)) | ((chosen == b) & (rejected == a))
            trials = int(pair.sum())
            expected_pairs = 60000 * 2 * ref[a] * ref[b]
            assert abs(trials - expected_pairs) < 5 * math.sqrt(expected_pairs)
            wins = int(((chosen == a) & (rejected == b)).sum())
            p = torch.sigmoid(rewards[a] - rewards[b]).item()
            assert abs(wins - trials * p) < 5 * math.sqrt(trials * p * (1 - p))


@settings(max_examples=20)
@given(seed=st.integers(0, 10_000), eta=st.floats(0.05, 20.0))
def test_gap_identity_for_random_policies(seed, eta):
    bandit, g = _bandit(seed, eta=eta)
    features = bandit.features(bandit.sample_contexts(9, g))
    policy = torch.softmax(3 * torch.randn(6, 9, 5, dtype=torch.float64, generator=g), -1)
    gap = bandit.suboptimality(policy, features)
    assert torch.allclose(gap, bandit.value_gap(policy, features), atol=1e-12)
    optimal = gibbs_policy(bandit.prompt_ref_probs(9), bandit.rewards(features), eta)
    assert torch.allclose(gap, eta * kl_divergence(policy, optimal).mean(-1), atol=1e-14)
    assert torch.allclose(bandit.suboptimality(optimal, features), torch.zeros(6,
                          dtype=torch.float64), atol=1e-12)


def test_routes_coincide_when_the_class_is_well_specified():
    bandit, g = _bandit(2)
    evaluation = bandit.features(bandit.sample_contexts(50, g))
    result = oop.compare_routes(bandit, num_pairs=30, extra_prompts=[10, 40], policy_dim=4,
                                reg=1.0, evaluation=evaluation, generator=g, tol=1e-10)
    routes = torch.stack(list(result.suboptimality.values()))
    assert list(result.suboptimality) == ["dpo", "rm_po", "rm_po+10", "rm_po+40"]
    assert (routes - routes[0]).abs().max() < 1e-8
    assert result.coincidence_gap.max() < 1e-8


def test_misspecified_routes_differ_but_dpo_is_po_of_its_own_reward_model():
    bandit, g = _bandit(3, dim=6)
    evaluation = bandit.features(bandit.sample_contexts(50, g))
    result = oop.compare_routes(bandit, num_pairs=40, extra_prompts=[30], policy_dim=2,
                                reg=1.0, evaluation=evaluation, generator=g, tol=1e-10)
    assert (result.suboptimality["dpo"] - result.suboptimality["rm_po"]).abs().max() > 1e-4
    assert result.coincidence_gap.max() < 1e-8
    floor = oop.in_class_optimum(bandit, policy_dim=2, evaluation=evaluation)
    for values in result.suboptimality.values():  # the floor is the class's minimum
        assert (floor <= values + 1e-9).all()


def test_the_floor_is_zero_when_the_class_contains_pi_star():
    bandit, g = _bandit(4)
    evaluation = bandit.features(bandit.sample_contexts(30, g))
    floor = oop.in_class_optimum(bandit, policy_dim=4, evaluation=evaluation)
    assert floor.abs().max() < 1e-12


def test_subset_and_with_eta_give_the_same_instances():
    bandit, g = _bandit(5)
    one = bandit.subset(2)
    assert one.num_seeds == 1 and torch.equal(one.theta_star[0], bandit.theta_star[2])
    assert bandit.subset(slice(1, 3)).num_seeds == 2
    assert bandit.with_eta(2.0).eta == 2.0 and torch.equal(bandit.with_eta(2.0).offsets,
                                                           bandit.offsets)


@pytest.mark.parametrize("change, match", [
    (dict(num_pairs=0), "num_pairs"),
    (dict(policy_dim=0), "policy_dim"),
    (dict(policy_dim=5), "policy_dim"),
    (dict(extra_prompts=[0]), "extra_prompts"),
    (dict(extra_prompts=[True]), "extra_prompts"),
])
def test_bad_route_arguments_raise_value_errors(change, match):
    bandit, g = _bandit(6)
    evaluation = bandit.features(bandit.sample_contexts(5, g))
    arguments = dict(num_pairs=5, extra_prompts=[], policy_dim=2, reg=1.0,
                     evaluation=evaluation, generator=g)
    arguments.update(change)
    with pytest.raises(ValueError, match=f"^{match}"):
        oop.compare_routes(bandit, **arguments)


@pytest.mark.parametrize("change, match", [
    (dict(num_seeds=0), "num_seeds"), (dict(dim=0), "dim"), (dict(norm_bound=0.0), "norm_bound"),
    (dict(eta=-1.0), "eta"),
])
def test_bad_instance_arguments_raise_value_errors(change, match):
    arguments = dict(num_seeds=2, context_dim=3, num_actions=4, dim=3, norm_bound=1.0, eta=1.0,
                     generator=torch.Generator().manual_seed(0))
    arguments.update(change)
    with pytest.raises(ValueError, match=f"^{match}"):
        oop.ContinuousBandit.random(**arguments)


def test_equivalence_test_is_the_larger_of_two_one_sided_t_tests():
    from scipy import stats as scipy_stats

    values = torch.tensor([0.01, -0.02, 0.005, 0.0, 0.015, -0.01], dtype=torch.float64)
    result = stats.equivalence_test(values, 0.05)
    lower = scipy_stats.ttest_1samp(values.numpy(), -0.05, alternative="greater").pvalue
    upper = scipy_stats.ttest_1samp(values.numpy(), 0.05, alternative="less").pvalue
    assert result.p_value == pytest.approx(max(lower, upper), rel=1e-12)
    assert stats.equivalence_test(values + 1.0, 0.05).p_value > 0.5
    with pytest.raises(ValueError, match="^margin"):
        stats.equivalence_test(values, 0.0)


def test_routes_do_not_depend_on_the_chunk_of_seeds(monkeypatch):
    bandit, _ = _bandit(7, num_seeds=5, dim=5)
    evaluation = bandit.features(bandit.sample_contexts(20, torch.Generator().manual_seed(1)))
    arguments = dict(num_pairs=12, extra_prompts=[6], policy_dim=3, reg=1.0,
                     evaluation=evaluation, tol=1e-10)
    whole = oop.compare_routes(bandit, generator=torch.Generator().manual_seed(2), **arguments)
    monkeypatch.setattr(oop, "CHUNK_BYTES", 1)  # one seed per chunk
    chunked = oop.compare_routes(bandit, generator=torch.Generator().manual_seed(2), **arguments)
    # Equal up to the solvers' tolerance: the MLE and DPO trainers iterate until the slowest
    # problem of their batch converges, so a converged problem may take one more (tiny) step
    # in a larger chunk.
    for name, values in whole.suboptimality.items():
        assert torch.allclose(values, chunked.suboptimality[name], atol=1e-8, rtol=0)


def test_tabular_dpo_is_the_oracle_of_its_reward_model_on_the_preference_prompts():
    from gsfh_utils import LinearBTBandit

    g = torch.Generator().manual_seed(8)
    finite = LinearBTBandit.random(num_contexts=4, num_actions=5, dim=3, norm_bound=2.0,
                                   eta=0.4, generator=g)
    data = finite.sample_preferences(6, finite.ref_probs, finite.ref_probs, g, (3,))
    gap, bound = oop.tabular_coincidence(finite, data, reg=1.0)
    assert (gap <= bound).all() and (bound < 1e-7).all()


def test_tabular_coincidence_gap_and_bound_written_out():
    """Per seed: the gap is max |log pi_DPO - log pi_oracle|, with pi_DPO from train_dpo_tabular
    and pi_oracle the Gibbs policy of the tabular BT MLE (pi0 on the prompts without data), and
    the bound is 2 (g_DPO + g_MLE) / (reg eta) plus the round-off term of the docstring."""
    from gsfh_utils import LinearBTBandit, dpo
    from gsfh_utils.estimation import bt_gradient, fit_bt_mle

    g = torch.Generator().manual_seed(9)
    finite = LinearBTBandit.random(num_contexts=4, num_actions=5, dim=3, norm_bound=2.0,
                                   eta=0.4, generator=g)
    data = finite.sample_preferences(8, finite.ref_probs, finite.ref_probs, g, (3,))
    gap, bound = oop.tabular_coincidence(finite, data, reg=0.5)
    assert gap.shape == bound.shape == (3,)
    chosen, rejected = dpo.chosen_rejected(first=data.first_actions,
                                           second=data.second_actions, labels=data.labels)
    policy, fit = dpo.train_dpo_tabular(finite.ref_probs, contexts=data.contexts, chosen=chosen,
                                        rejected=rejected, eta=0.4, reg=0.5)
    z = dpo.pair_feature_diffs(dpo.one_hot_features(4, 5), contexts=data.contexts,
                               first=chosen, second=rejected)
    ones = torch.ones(3, 8, dtype=torch.float64)
    theta = fit_bt_mle(z, ones, 0.5)
    oracle = gibbs_policy(finite.ref_probs, theta.reshape(3, 4, 5), 0.4)
    assert torch.allclose(gap, (policy.log() - oracle.log()).abs().amax((-1, -2)), atol=1e-12)
    grad_mle = torch.stack([bt_gradient(theta[s], z[s], ones[s], 0.5).norm() for s in range(3)])
    roundoff = stats.roundoff_tolerance(5, oracle.log().abs().amax((-1, -2)) + 1)
    expected = 2 * (fit.grad_norm + grad_mle) / (0.5 * 0.4) + roundoff
    assert ((bound - expected).abs() <= 0.02 * roundoff).all() and (gap <= bound).all()
