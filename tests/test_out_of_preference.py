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


def test_pair_diffs_against_a_loop():
    """``features(x_i, chosen_i) - features(x_i, rejected_i)``, entry by entry."""
    g = torch.Generator().manual_seed(10)
    features = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=g)
    chosen = torch.randint(0, 4, (2, 3), generator=g)
    rejected = (chosen + 1) % 4
    expected = torch.stack([torch.stack([features[s, i, chosen[s, i]] -
                                         features[s, i, rejected[s, i]] for i in range(3)])
                            for s in range(2)])
    assert torch.equal(oop._pair_diffs(features, chosen, rejected), expected)


def _routes_by_hand(bandit, evaluation, *, seed, num_pairs, extra_prompts, policy_dim, reg):
    """Every route of ``compare_routes`` recomputed step by step from the same draws (prompts,
    pairs, then the extra prompts), with the pair differences and labels written out."""
    from gsfh_utils.estimation import fit_bt_mle
    from gsfh_utils.policy_optimization import log_linear_policy, optimize_policy

    g = torch.Generator().manual_seed(seed)
    contexts = bandit.sample_contexts(num_pairs, g)
    first, second, uniforms = bandit.draw_pairs(num_pairs, g)
    extra = bandit.sample_contexts(max(extra_prompts), g)
    features = bandit.features(contexts)
    rewards = bandit.rewards(features)
    prefer_first = uniforms < torch.sigmoid(rewards.gather(-1, first[..., None])[..., 0] -
                                            rewards.gather(-1, second[..., None])[..., 0])
    chosen = torch.where(prefer_first, first, second)
    rejected = torch.where(prefer_first, second, first)
    seeds = torch.arange(bandit.num_seeds)[:, None]
    prompts = torch.arange(num_pairs)[None, :]
    diffs = features[seeds, prompts, chosen] - features[seeds, prompts, rejected]
    theta_hat = fit_bt_mle(diffs, torch.ones(diffs.shape[:-1], dtype=torch.float64), reg)
    psi_eval = evaluation[..., :policy_dim]
    ref_eval = bandit.prompt_ref_probs(evaluation.shape[1])

    def value(w):
        return bandit.suboptimality(log_linear_policy(ref_eval, policy_features=psi_eval, w=w),
                                    evaluation)

    def optimised(prompt_features):
        return optimize_policy(bandit.rewards(prompt_features, theta_hat),
                               ref_probs=bandit.prompt_ref_probs(prompt_features.shape[1]),
                               eta=bandit.eta, policy_features=prompt_features[..., :policy_dim],
                               tol=1e-10).w

    expected = {"rm_po": value(optimised(features))}
    all_features = torch.cat([features, bandit.features(extra)], 1)
    for m in extra_prompts:
        expected[f"rm_po+{m}"] = value(optimised(all_features[:, :num_pairs + m]))
    return expected, theta_hat


def test_routes_against_a_computation_by_hand():
    """Misspecified (d' = 2 < d = 5), so that every route differs: each reward-model route is
    the BT MLE on the hand-written pair differences, optimised from scratch on its prompts; in
    the well-specified class DPO's policy is the Gibbs policy of that same MLE."""
    bandit, g = _bandit(11, num_seeds=3, dim=5)
    evaluation = bandit.features(bandit.sample_contexts(40, g))
    arguments = dict(num_pairs=25, extra_prompts=[15, 5], policy_dim=2, reg=1.0)
    result = oop.compare_routes(bandit, evaluation=evaluation, tol=1e-10,
                                generator=torch.Generator().manual_seed(12), **arguments)
    expected, _ = _routes_by_hand(bandit, evaluation, seed=12, **arguments)
    assert result.coincidence_gap.shape == (3,)
    assert list(result.suboptimality) == ["dpo", "rm_po", "rm_po+5", "rm_po+15"]
    assert abs(expected["rm_po+15"] - expected["rm_po"]).min() > 1e-4  # the prompts matter
    for name, values in expected.items():
        assert torch.allclose(result.suboptimality[name], values, atol=1e-8, rtol=0), name
    arguments["policy_dim"] = 5  # well specified: DPO = Gibbs policy of the BT MLE
    result = oop.compare_routes(bandit, evaluation=evaluation, tol=1e-10,
                                generator=torch.Generator().manual_seed(12), **arguments)
    _, theta_hat = _routes_by_hand(bandit, evaluation, seed=12, **arguments)
    ref_eval = bandit.prompt_ref_probs(40)
    gibbs = gibbs_policy(ref_eval, bandit.rewards(evaluation, theta_hat), bandit.eta)
    assert torch.allclose(result.suboptimality["dpo"], bandit.suboptimality(gibbs, evaluation),
                          atol=1e-8, rtol=0)


def test_each_extra_prompt_route_starts_from_the_previous_answer(monkeypatch):
    """The documented warm start and tolerances: the coincidence check at ``PO_TOLERANCE``,
    every route at the caller's ``tol``, each ``rm_po+m`` from the answer with fewer prompts."""
    calls = []
    real = oop.optimize_policy

    def spy(rewards, **kwargs):
        fit = real(rewards, **kwargs)
        calls.append((rewards.shape[1], kwargs["tol"], kwargs["initial_w"], fit.w))
        return fit

    monkeypatch.setattr(oop, "optimize_policy", spy)
    bandit, g = _bandit(13, num_seeds=2, dim=4)
    evaluation = bandit.features(bandit.sample_contexts(10, g))
    oop.compare_routes(bandit, num_pairs=8, extra_prompts=[3, 6], policy_dim=2, reg=1.0,
                       evaluation=evaluation, generator=g, tol=1e-6)
    assert [(prompts, tol) for prompts, tol, _, _ in calls] == [
        (8, oop.PO_TOLERANCE), (8, 1e-6), (11, 1e-6), (14, 1e-6)]
    assert calls[1][2] is None
    for previous, current in zip(calls[1:], calls[2:], strict=False):
        assert current[2] is previous[3]


def test_a_single_extra_prompt_and_a_one_dimensional_class_are_allowed():
    bandit, g = _bandit(14, num_seeds=2)
    evaluation = bandit.features(bandit.sample_contexts(5, g))
    result = oop.compare_routes(bandit, num_pairs=4, extra_prompts=[1], policy_dim=1, reg=1.0,
                                evaluation=evaluation, generator=g)
    assert list(result.suboptimality) == ["dpo", "rm_po", "rm_po+1"]


def test_random_draws_what_its_docstring_says():
    """Replayed from the same generator: A_a = N(0, 1/p), b_a = N(0, 1), theta* on the sphere of
    radius B, pi0 = softmax(T N(0, I)); the default temperature is 1."""
    arguments = dict(num_seeds=2, context_dim=3, num_actions=4, dim=5, norm_bound=2.0, eta=0.5)
    bandit = oop.ContinuousBandit.random(generator=torch.Generator().manual_seed(15),
                                         **arguments)
    g = torch.Generator().manual_seed(15)

    def normal(*shape):
        return torch.randn(2, *shape, dtype=torch.float64, generator=g)

    assert torch.equal(bandit.projections, normal(4, 5, 3) / math.sqrt(3))
    assert torch.equal(bandit.offsets, normal(4, 5))
    theta = normal(5)
    assert torch.allclose(bandit.theta_star, 2.0 * theta / theta.norm(dim=-1, keepdim=True),
                          atol=1e-15)
    assert torch.allclose(bandit.ref_probs, torch.softmax(normal(4), -1), atol=1e-15)
    hot = oop.ContinuousBandit.random(generator=torch.Generator().manual_seed(15),
                                      ref_temperature=3.0, **arguments)
    assert torch.allclose(hot.ref_probs, torch.softmax(3.0 * torch.log(bandit.ref_probs), -1),
                          atol=1e-12)


def test_draws_are_float64_and_bad_counts_are_named():
    bandit, g = _bandit(16)
    assert bandit.draw_pairs(3, g)[2].dtype == torch.float64
    with pytest.raises(ValueError, match="^num_pairs"):
        bandit.draw_pairs(0, g)
    with pytest.raises(ValueError, match="^num_contexts"):
        bandit.sample_contexts(0, g)
    for name in ("context_dim", "num_actions"):
        arguments = dict(num_seeds=2, context_dim=3, num_actions=4, dim=3, norm_bound=1.0,
                         eta=1.0, generator=g)
        arguments[name] = 0
        with pytest.raises(ValueError, match=f"^{name}"):
            oop.ContinuousBandit.random(**arguments)


def test_tabular_coincidence_for_any_batch_of_seeds():
    """Data sets batched as [2, 2] and one without a batch dimension: entry (i, j) of the batched
    gap is the call on data set (i, j) alone (to the solvers' tolerances; two entries checked),
    within its bound. And a context law with zeros (no data on the last two prompts): the
    oracle is pi0 there, like DPO, and the identity holds."""
    from gsfh_utils import LinearBTBandit, Preferences

    g = torch.Generator().manual_seed(11)
    finite = LinearBTBandit.random(num_contexts=4, num_actions=5, dim=3, norm_bound=2.0,
                                   eta=0.4, generator=g)
    data = finite.sample_preferences(8, finite.ref_probs, finite.ref_probs, g, (2, 2))
    gap, bound = oop.tabular_coincidence(finite, data, reg=0.5)
    assert gap.shape == bound.shape == (2, 2)
    for i, j in [(0, 1), (1, 0)]:
        one = Preferences(data.contexts[i, j], data.first_actions[i, j],
                          data.second_actions[i, j], data.labels[i, j], data.feature_diffs[i, j])
        single_gap, single_bound = oop.tabular_coincidence(finite, one, reg=0.5)
        assert single_gap.shape == ()
        assert single_gap.item() == pytest.approx(gap[i, j].item(), abs=1e-12)
        assert single_gap <= single_bound < 1e-7
    sparse = LinearBTBandit(finite.features, finite.theta_star, finite.ref_probs,
                            torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64), 0.4)
    data = sparse.sample_preferences(8, sparse.ref_probs, sparse.ref_probs, g, (3,))
    gap, bound = oop.tabular_coincidence(sparse, data, reg=0.5)
    assert (gap <= bound).all() and (bound < 1e-7).all()
