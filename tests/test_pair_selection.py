"""Best-of-n against worst-of-n ranked by a reward model (``dpo.sample_ranked_pairs``,
``dpo.best_of_n_probs``, ``dpo.reward_model``), the oracle's labels (``label_pairs``), and the
places that use them (``iterative_dpo(ranking=...)``, ``run_online(method="best_worst")``)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import gsfh_utils as gu
from gsfh_utils import dpo, estimation, online
from gsfh_utils.lab import stats
from gsfh_utils.sampling import sample_categorical


def _best_worst(values):
    """The tie rule of ``sample_ranked_pairs`` with ``"max_min"`` written out in plain Python:
    the first best and the first worst position; when every score ties, the first and the
    last."""
    best = max(range(len(values)), key=lambda i: (values[i], -i))
    worst = max(range(len(values)), key=lambda i: (-values[i], -i))
    return (best, len(values) - 1) if best == worst else (best, worst)


def _enumerated_laws(probs, scores, n):
    """Laws of the kept best and worst response by enumerating all K^n tuples of draws."""
    best_law, worst_law = [0.0] * len(probs), [0.0] * len(probs)
    for draws in itertools.product(range(len(probs)), repeat=n):
        weight = math.prod(probs[a] for a in draws)
        best, worst = _best_worst([scores[a] for a in draws])
        best_law[draws[best]] += weight
        worst_law[draws[worst]] += weight
    return torch.tensor(best_law, dtype=torch.float64), torch.tensor(worst_law,
                                                                     dtype=torch.float64)


@pytest.mark.parametrize("scores", [
    [0.3, -1.0, 2.0, 0.5, 0.1],  # no ties
    [1.0, 1.0, 0.0, 2.0, 0.0],  # ties at two levels
    [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: the kept draw is a plain draw
])
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_best_of_n_law_against_enumeration(scores, n):
    probs = [0.1, 0.25, 0.05, 0.4, 0.2]
    best, worst = _enumerated_laws(probs, scores, n)
    probs_t, scores_t = torch.tensor(probs, dtype=torch.float64), torch.tensor(scores)
    assert torch.allclose(dpo.best_of_n_probs(probs_t, scores_t, n), best, atol=1e-14)
    assert torch.allclose(dpo.best_of_n_probs(probs_t, scores_t, n, worst=True), worst,
                          atol=1e-14)


def test_sample_ranked_pairs_tie_rule():
    """The kept pair against the plain-Python tie rule, response by response, on a stream
    replayed by hand: scores with a tie between two actions at one prompt and all tied at the
    other (where the pair must be the first and the last draw, not one draw twice)."""
    generator = torch.Generator().manual_seed(0)
    scores = torch.tensor([[0.0, 1.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    policy = torch.full((2, 4), 0.25, dtype=torch.float64)
    contexts = torch.tensor([0, 1]).repeat(500)
    replay = torch.Generator().manual_seed(0)
    first, second = dpo.sample_ranked_pairs(policy, scores, contexts=contexts,
                                            responses_per_prompt=4, selector="max_min",
                                            generator=generator)
    responses = sample_categorical(policy[contexts], 4, replay)
    for i, (x, row) in enumerate(zip(contexts.tolist(), responses.tolist(), strict=True)):
        best, worst = _best_worst([float(scores[x, a]) for a in row])
        assert (first[i].item(), second[i].item()) == (row[best], row[worst])


@given(st.lists(st.floats(0.01, 1.0), min_size=2, max_size=7),
       st.lists(st.integers(-2, 2), min_size=8, max_size=8), st.integers(1, 12))
def test_best_of_n_law_properties(weights, levels, n):
    """A distribution with the KL of Beirami et al. as an upper bound (ties only lower it); no
    mass outside the base support; n = 1 is the base policy; best shifts mass up the ranking."""
    probs = torch.tensor(weights, dtype=torch.float64)
    probs = torch.cat([probs / probs.sum(), torch.zeros(1, dtype=torch.float64)])
    scores = torch.tensor(levels[:len(probs)], dtype=torch.float64)
    law = dpo.best_of_n_probs(probs, scores, n)
    assert torch.isclose(law.sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)
    assert law[-1] == 0
    assert gu.kl_divergence(law, probs) <= dpo.best_of_n_kl_bound(n) + 1e-12
    if n == 1:
        assert torch.allclose(law, probs, atol=1e-15)
    mean = (law * scores).sum()
    assert mean >= (probs * scores).sum() - 1e-12
    assert (dpo.best_of_n_probs(probs, scores, n, worst=True) * scores).sum() <= mean + 1e-12


def test_best_of_n_kl_approaches_the_bound_without_ties():
    """Uniform over K distinct scores: the law is ((i/K)^n - ((i-1)/K)^n), whose KL tends to
    log n - (n-1)/n as K grows (the continuous case, where the formula is exact); the gap shrinks
    about a hundredfold per tenfold K (a Riemann sum's O(1/K^2)), so K = 1000 is far below 1e-3."""
    for n in (2, 4, 16):
        gaps = []
        for size in (10, 100, 1000):
            probs = torch.full((size,), 1 / size, dtype=torch.float64)
            law = dpo.best_of_n_probs(probs, torch.arange(size, dtype=torch.float64), n)
            i = torch.arange(1, size + 1, dtype=torch.float64)
            assert torch.allclose(law, (i / size) ** n - ((i - 1) / size) ** n, atol=1e-15)
            gaps.append(float(dpo.best_of_n_kl_bound(n) - gu.kl_divergence(law, probs)))
        assert gaps[0] > gaps[1] > gaps[2] > 0 and gaps[2] < 1e-3
    assert float(dpo.best_of_n_kl_bound(1)) == 0.0


def test_best_of_n_bad_inputs():
    probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="^num_responses"):
        dpo.best_of_n_probs(probs, torch.zeros(2), 0)
    with pytest.raises(ValueError, match="^probs"):
        dpo.best_of_n_probs(torch.tensor([0.5, 0.6]), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="^scores"):
        dpo.best_of_n_probs(probs, torch.zeros(3), 2)
    with pytest.raises(ValueError, match="^scores"):
        dpo.best_of_n_probs(probs, torch.tensor([0.0, math.nan]), 2)
    with pytest.raises(ValueError, match="^num_responses"):
        dpo.best_of_n_kl_bound(0)


def test_sample_ranked_pairs_follows_the_exact_laws():
    """Monte-Carlo frequencies of the kept responses against ``best_of_n_probs`` (with ties),
    within 5 binomial standard errors; batched over two policies."""
    generator = torch.Generator().manual_seed(3)
    policy = torch.tensor([[[0.1, 0.3, 0.2, 0.4]], [[0.25, 0.25, 0.25, 0.25]]],
                          dtype=torch.float64)  # [2, X=1, K=4]
    scores = torch.tensor([[1.0, 0.0, 1.0, -1.0]], dtype=torch.float64)  # shared, with a tie
    draws = 40000
    contexts = torch.zeros(2, draws, dtype=torch.long)
    first, second = dpo.sample_ranked_pairs(policy, scores, contexts=contexts,
                                            responses_per_prompt=3, selector="max_min",
                                            generator=generator)
    for kept, worst in ((first, False), (second, True)):
        frequencies = torch.stack([row.bincount(minlength=4) for row in kept]) / draws
        law = dpo.best_of_n_probs(policy[:, 0], scores[0], 3, worst=worst)
        error = 5 * (law * (1 - law) / draws).sqrt() + 1e-12
        assert ((frequencies - law).abs() <= error).all()


def test_sample_ranked_pairs_bad_inputs():
    generator = torch.Generator().manual_seed(0)
    policy = torch.full((2, 3), 1 / 3, dtype=torch.float64)
    contexts = torch.zeros(4, dtype=torch.long)
    kwargs = dict(contexts=contexts, selector="max_min", generator=generator)
    with pytest.raises(ValueError, match="^responses_per_prompt"):
        dpo.sample_ranked_pairs(policy, torch.zeros(2, 3), responses_per_prompt=1, **kwargs)
    with pytest.raises(ValueError, match="^scores"):
        dpo.sample_ranked_pairs(policy, torch.zeros(2, 4), responses_per_prompt=2, **kwargs)
    with pytest.raises(ValueError, match="^policy"):
        dpo.sample_ranked_pairs(policy * 2, torch.zeros(2, 3), responses_per_prompt=2, **kwargs)
    with pytest.raises(ValueError, match="^selector"):
        dpo.sample_ranked_pairs(policy, torch.zeros(2, 3), responses_per_prompt=2,
                                **{**kwargs, "selector": "best"})


def _bandit(seed=5):
    generator = torch.Generator().manual_seed(seed)
    return gu.LinearBTBandit.random(num_contexts=3, num_actions=5, dim=3, norm_bound=2.0,
                                    eta=0.3, generator=generator), generator


def test_label_pairs_is_the_labelling_of_sample_preferences():
    bandit, _ = _bandit()
    data = bandit.sample_preferences(50, bandit.ref_probs, bandit.ref_probs,
                                     torch.Generator().manual_seed(1), (2,))
    replay = torch.Generator().manual_seed(1)
    contexts = bandit.sample_contexts(50, replay, (2,))
    first = bandit._sample_actions(bandit.ref_probs, contexts, replay, "first_policy")
    second = bandit._sample_actions(bandit.ref_probs, contexts, replay, "second_policy")
    labelled = bandit.label_pairs(contexts, first, second, replay)
    for name in ("contexts", "first_actions", "second_actions", "labels", "feature_diffs"):
        assert torch.equal(getattr(labelled, name), getattr(data, name))
    # labels are Bernoulli(sigmoid(r*(a1) - r*(a2))): a pair against itself is a fair coin
    same = torch.zeros(20000, dtype=torch.long)
    coin = bandit.label_pairs(same, same, same, replay).labels.mean()
    assert abs(float(coin) - 0.5) < 5 * 0.5 / math.sqrt(20000)
    with pytest.raises(ValueError, match="^contexts"):
        bandit.label_pairs(contexts, first[..., :3], second, replay)
    with pytest.raises(ValueError, match="^generator"):
        bandit.label_pairs(contexts, first, second, None)


def test_reward_model_is_the_mle_reward():
    bandit, generator = _bandit()
    data = bandit.sample_preferences(40, bandit.ref_probs, bandit.ref_probs, generator, (3,))
    theta = estimation.fit_bt_mle(data.feature_diffs, data.labels, 0.5)
    expected = torch.einsum("xkd,sd->sxk", bandit.features, theta)
    assert torch.allclose(dpo.reward_model(bandit.features, data, reg=0.5), expected,
                          atol=1e-12)


def test_iterative_dpo_rankings_coincide_for_the_linear_class():
    """With the linear class and a fixed reference the implicit reward is the reward model's
    (up to a constant per prompt), so both rankings collect the same data on one stream; with
    the tabular class they differ."""
    bandit, generator = _bandit(seed=9)
    start = bandit.sample_preferences(30, bandit.ref_probs, bandit.ref_probs, generator, (3,))
    loop = dict(num_iterations=2, pairs_per_iteration=12, responses_per_prompt=4,
                selector="max_min", reg=1.0)
    runs = {(ranking, name): dpo.iterative_dpo(
        bandit, start, **loop, ranking=ranking, features=features,
        generator=torch.Generator().manual_seed(4))
        for ranking in dpo.RANKINGS
        for name, features in (("linear", None), ("tabular", dpo.one_hot_features(3, 5)))}
    linear = [runs[r, "linear"].data for r in dpo.RANKINGS]
    assert torch.equal(linear[0].first_actions, linear[1].first_actions)
    assert torch.equal(linear[0].second_actions, linear[1].second_actions)
    tabular = [runs[r, "tabular"].data for r in dpo.RANKINGS]
    assert not torch.equal(tabular[0].first_actions, tabular[1].first_actions)
    with pytest.raises(ValueError, match="^ranking"):
        dpo.iterative_dpo(bandit, start, **loop, ranking="oracle", generator=generator)


def test_run_online_best_worst_replays_its_docstring():
    """One batch written out: the MLE on the initial data is the reward model, prompts from d0,
    n responses from the Gibbs policy of the MLE, best against worst by that reward model, the
    oracle's labels; the recorded kl and gamma are those of the exact best/worst laws."""
    bandit, generator = _bandit(seed=7)
    initial = bandit.sample_preferences(20, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    run = online.run_online(bandit, method="best_worst", num_batches=1, batch_size=9,
                            num_seeds=2, beta=1.5, reg=1.0, initial_data=initial,
                            responses_per_prompt=3, generator=torch.Generator().manual_seed(6))
    replay = torch.Generator().manual_seed(6)
    theta = estimation.fit_bt_mle(initial.feature_diffs, initial.labels, 1.0)
    scores = bandit.rewards(theta)
    main = gu.gibbs_policy(bandit.ref_probs, scores, bandit.eta)
    contexts = bandit.sample_contexts(9, replay, (2,))
    first, second = dpo.sample_ranked_pairs(main, scores, contexts=contexts,
                                            responses_per_prompt=3, selector="max_min",
                                            generator=replay)
    batch = bandit.label_pairs(contexts, first, second, replay)
    assert torch.equal(run.data.first_actions[:, 20:], batch.first_actions)
    assert torch.equal(run.data.labels[:, 20:], batch.labels)
    best, worst = (dpo.best_of_n_probs(main, scores, 3, worst=w) for w in (False, True))
    assert torch.allclose(run.second_policies[0], worst)
    assert torch.allclose(run.kl[0], bandit.expected_kl(worst, best))
    gamma = online.policy_uncertainty(bandit, worst, main=best, sigma=run.sigma[0], beta=1.5)
    assert torch.allclose(run.gamma[0], gamma)
    default = online.run_online(bandit, method="best_worst", num_batches=1, batch_size=9,
                                num_seeds=2, beta=1.5, reg=1.0, initial_data=initial,
                                generator=torch.Generator().manual_seed(6))
    eight = dpo.best_of_n_probs(main, scores, 8, worst=True)  # the documented default n = 8
    assert torch.allclose(default.second_policies[0], eight)


def _pooled_tv_by_loops(samples, probs):
    """TV of the law of all runs' draws pooled, per prompt, counted with plain Python loops."""
    runs, prompts, n = samples.shape
    tvs = []
    for x in range(prompts):
        counts = [0] * probs.shape[-1]
        for run in range(runs):
            for i in range(n):
                counts[int(samples[run, x, i])] += 1
        tvs.append(0.5 * sum(abs(c / (runs * n) - float(q))
                             for c, q in zip(counts, probs[x], strict=True)))
    return torch.tensor(tvs, dtype=torch.float64)


@given(st.integers(1, 5), st.integers(1, 3), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_pooled_total_variation_against_loops(runs, prompts, n, seed):
    # the sampler's bias (notebook 09): the law of every run's draws pooled, against its target
    generator = torch.Generator().manual_seed(seed)
    probs = torch.rand(prompts, 5, generator=generator, dtype=torch.float64)
    probs = probs / probs.sum(-1, keepdim=True)
    samples = torch.randint(0, 5, (runs, prompts, n), generator=generator)
    tv = stats.pooled_total_variation(samples, probs)
    assert torch.allclose(tv, _pooled_tv_by_loops(samples, probs), atol=1e-12, rtol=0)
    assert torch.allclose(stats.pooled_law(samples, 5).sum(-1),
                          torch.ones(prompts, dtype=torch.float64))


def test_pooled_total_variation_is_not_the_mean_per_run_tv():
    # two runs that each repeat one response: each run is at TV 1/2 from the uniform law on
    # {0, 1}, their pool is exactly uniform (bias 0)
    samples = torch.tensor([[[0, 0]], [[1, 1]]])
    probs = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    assert stats.pooled_total_variation(samples, probs).item() == 0.0
    per_run = stats.empirical_total_variation(samples, probs.expand(2, 1, 2))
    assert torch.equal(per_run, torch.full((2, 1), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="samples"):
        stats.pooled_total_variation(torch.tensor([0, 1]), probs[0])
    with pytest.raises(ValueError, match="probs"):
        stats.pooled_total_variation(samples, torch.tensor([[0.5, 0.6]]))


def test_best_of_n_kl_bound_is_float64_for_integers():
    """``log n - (n - 1)/n`` in float64 for an integer and a list of integers (not the float32
    that ``torch.log`` of an integer tensor gives)."""
    for n in (3, [1, 2, 7]):
        bound = dpo.best_of_n_kl_bound(n)
        expected = [math.log(k) - (k - 1) / k for k in ([n] if isinstance(n, int) else n)]
        assert bound.dtype == torch.float64
        assert torch.allclose(bound.reshape(-1), torch.tensor(expected, dtype=torch.float64),
                              rtol=1e-15, atol=0)


def test_best_of_n_law_sums_to_one_when_probs_sum_above_one_by_round_off():
    """``probs`` summing to ``1 + 4.4e-16`` (accepted as a distribution): the best of a million
    draws still has a law summing to 1 (``G^n`` of the top level is clamped at 1; unclamped it
    would be ``(1 + 4.4e-16)^(10^6) = 1 + 4.4e-10``)."""
    probs = torch.tensor([0.25, 0.25, 0.25, 0.25 + 4.4e-16], dtype=torch.float64)
    assert float(probs.sum()) > 1.0
    law = dpo.best_of_n_probs(probs, torch.arange(4.0, dtype=torch.float64), 10**6)
    assert abs(float(law.sum()) - 1.0) <= 1e-13
    assert float(law[3]) == 1.0


def test_scores_given_as_python_floats_keep_their_float64_order():
    """Scores ``1`` and ``1 + 1e-12`` as Python floats are two levels (equal in float32): the
    best of two draws is the second response with probability ``1 - 1/4``, and best-of-n
    sampling never keeps the lower one as best against the higher one as worst."""
    probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    scores = [1.0, 1.0 + 1e-12]
    law = dpo.best_of_n_probs(probs, scores, 2)
    assert torch.allclose(law, torch.tensor([0.25, 0.75], dtype=torch.float64), atol=1e-15)
    contexts = torch.zeros(400, dtype=torch.long)
    first, second = dpo.sample_ranked_pairs(probs[None], [scores], contexts=contexts,
                                            responses_per_prompt=2, selector="max_min",
                                            generator=torch.Generator().manual_seed(0))
    assert not ((first == 0) & (second == 1)).any()
    assert ((first == 1) & (second == 0)).any()


def test_messages_name_the_argument_and_the_shapes():
    probs = torch.tensor([0.5, 0.5], dtype=torch.float64)
    with pytest.raises(ValueError, match="^scores must not contain NaN$"):
        dpo.best_of_n_probs(probs, torch.tensor([0.0, math.nan]), 2)
    policy = torch.full((2, 3, 4), 0.25, dtype=torch.float64)  # a batch of two [X, K] = [3, 4]
    kwargs = dict(contexts=torch.zeros(2, 5, dtype=torch.long), selector="max_min",
                  generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^scores must have the \[X, K\] = \(3, 4\) of policy"):
        dpo.sample_ranked_pairs(policy, torch.zeros(3, 5), responses_per_prompt=2, **kwargs)
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="^responses_per_prompt must be a positive integer"):
            dpo.sample_ranked_pairs(policy, torch.zeros(3, 4), responses_per_prompt=bad,
                                    **kwargs)


def test_reward_model_reads_listed_features_in_float64():
    bandit, generator = _bandit()
    data = bandit.sample_preferences(40, bandit.ref_probs, bandit.ref_probs, generator, (2,))
    from_list = dpo.reward_model(bandit.features.tolist(), data, reg=0.5)
    assert torch.equal(from_list, dpo.reward_model(bandit.features, data, reg=0.5))


def test_iterative_dpo_implicit_ranking_replays_its_docstring():
    """One iteration of the tabular class with a fixed reference written out: the implicit
    reward ``eta log(pi/pi0)`` is the tabular ridge MLE reward (``reward_model`` in one-hot
    features), prompts from d0, responses from the DPO policy ranked by it, best against worst,
    the oracle's labels. (The reward model in the bandit's features ranks differently here.)"""
    bandit, generator = _bandit(seed=9)
    start = bandit.sample_preferences(30, bandit.ref_probs, bandit.ref_probs, generator, (3,))
    one_hot = dpo.one_hot_features(3, 5)
    run = dpo.iterative_dpo(bandit, start, num_iterations=1, pairs_per_iteration=12,
                            responses_per_prompt=4, selector="max_min", reg=1.0,
                            features=one_hot, generator=torch.Generator().manual_seed(4))
    replay = torch.Generator().manual_seed(4)
    scores = dpo.reward_model(one_hot, start, reg=1.0)
    contexts = bandit.sample_contexts(12, replay, (3,))
    first, second = dpo.sample_ranked_pairs(run.policies[0], scores, contexts=contexts,
                                            responses_per_prompt=4, selector="max_min",
                                            generator=replay)
    batch = bandit.label_pairs(contexts, first, second, replay)
    for name in ("contexts", "first_actions", "second_actions", "labels"):
        assert torch.equal(getattr(run.data, name)[:, 30:], getattr(batch, name))
