"""The miniature language-model helpers (gsfh_utils.lm.sequence), against independent computations.

Tiny problems (vocabulary 3 or 4, at most 3 content tokens) are enumerated exactly: sequence
probabilities are recomputed by a hand-written GRU loop, sampling frequencies are tested against
them by Pearson's chi-square test, and the exact rejection sampler against its Gibbs target.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from conftest import background, examples, prestart
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils.lab.stats import chi_square_pvalue
from gsfh_utils.lm import sequence as sq

#: Level of each goodness-of-fit test: a correct sampler fails one with probability 1e-3.
LEVEL = 1e-3


def tiny_policy(seed=0, vocab_size=3, max_len=4, num_prompts=2):
    policy = sq.SequencePolicy.create(seed, num_prompts, vocab_size=vocab_size, max_len=max_len,
                                      embed_dim=5, hidden_dim=7)
    with torch.no_grad():  # sharpen the distribution so that the tests see unequal probabilities
        policy.head.weight.mul_(4.0)
    return policy


def manual_logprob(policy, prompt, response, temperature=1.0):
    """log pi(y|x) by the GRU equations written out (PyTorch's gate order r, z, n), one token at
    a time, with the structural rules (no EOS first, EOS forced last) applied by hand."""
    gru = policy.gru
    w_ih, w_hh, b_ih, b_hh = gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0
    hidden_size = gru.hidden_size
    h = torch.tanh(policy.prompt_embedding.weight[prompt])
    previous = policy.vocab_size  # BOS
    total = 0.0
    for position, token in enumerate(response.tolist()):
        x = policy.token_embedding.weight[previous]
        gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:hidden_size] + gh[:hidden_size])
        z = torch.sigmoid(gi[hidden_size:2 * hidden_size] + gh[hidden_size:2 * hidden_size])
        n = torch.tanh(gi[2 * hidden_size:] + r * gh[2 * hidden_size:])
        h = (1 - z) * n + z * h
        logits = (policy.head.weight @ h + policy.head.bias) / temperature
        allowed = [v for v in range(policy.vocab_size)
                   if not (position == 0 and v == sq.EOS)
                   and not (position == policy.max_len - 1 and v != sq.EOS)]
        log_norm = torch.logsumexp(logits[allowed], 0)
        total += (logits[token] - log_norm).item()
        if token == sq.EOS:
            break
        previous = token
    return total


def exact_probs(policy, prompt, responses, temperature=1.0):
    return torch.tensor([math.exp(manual_logprob(policy, prompt, y, temperature))
                         for y in responses], dtype=torch.float64)


def index_of(responses, table):
    """Row of ``table`` equal to each row of ``responses``."""
    matches = (responses.unsqueeze(1) == table.unsqueeze(0)).all(-1)
    assert bool(matches.any(-1).all())
    return matches.float().argmax(-1)


# --------------------------------------------------------------------------------------------


def test_enumeration_counts_and_validity():
    table = sq.enumerate_responses(4, 4)
    assert table.shape == (3 + 9 + 27, 4)
    sq.check_responses(table, 4, 4)
    assert torch.unique(table, dim=0).shape[0] == table.shape[0]


def test_padding_is_masked():
    policy = tiny_policy(vocab_size=4)
    table = sq.enumerate_responses(4, 4)
    short = table[:3, :2]  # one content token + EOS, without padding
    with torch.no_grad():
        padded = sq.sequence_logprob(policy, torch.zeros(3, dtype=torch.long), table[:3])
        unpadded = sq.sequence_logprob(policy, torch.zeros(3, dtype=torch.long), short)
        tokens = sq.token_logprobs(policy, torch.zeros(3, dtype=torch.long), table[:3])
    torch.testing.assert_close(padded, unpadded)
    assert bool((tokens[:, 2:] == 0).all())  # positions after the end token carry nothing


# Property tests over random tiny policies: any seed, vocabulary of 2 to 4 tokens, responses of
# up to 3 content tokens, either prompt.
tiny_shapes = st.tuples(st.integers(0, 10**6), st.integers(2, 4), st.integers(2, 4),
                        st.integers(0, 1))


@given(tiny_shapes)
def test_property_probabilities_are_normalised(shape):
    """sum_y pi(y | x) = 1 over every valid response, enumerated."""
    seed, vocab_size, max_len, prompt = shape
    policy = tiny_policy(seed, vocab_size=vocab_size, max_len=max_len)
    table = sq.enumerate_responses(vocab_size, max_len)
    with torch.no_grad():
        logps = sq.sequence_logprob(policy, torch.full((table.shape[0],), prompt), table)
    assert abs(logps.double().exp().sum().item() - 1) < 1e-5


@examples(20)  # a Python GRU loop over every response per example
@given(tiny_shapes)
def test_property_log_probabilities_match_a_step_by_step_loop(shape):
    """sequence_logprob (one batched GRU pass, masked sum) against the hand-written GRU loop,
    token by token, on every valid response."""
    seed, vocab_size, max_len, prompt = shape
    policy = tiny_policy(seed, vocab_size=vocab_size, max_len=max_len)
    table = sq.enumerate_responses(vocab_size, max_len)
    with torch.no_grad():
        batched = sq.sequence_logprob(policy, torch.full((table.shape[0],), prompt), table)
    manual = torch.tensor([manual_logprob(policy, prompt, y) for y in table])
    torch.testing.assert_close(batched, manual.float(), atol=2e-5, rtol=0)


@examples(20)  # 8000 sampled responses per example
@given(st.integers(0, 10**6))
def test_property_k1_and_k3_estimate_the_exact_sequence_kl(seed):
    """evaluate_policy's k1 and k3 means (one response per prompt) against KL(pi || pi_ref)
    computed exactly by enumerating every response: both estimators are unbiased here (the two
    policies share the structural support), so each mean lies within 5 of its standard errors
    (Chebyshev: a correct estimator fails with probability at most 1/25 per estimator, far less
    for these light-tailed sums of 4000 draws)."""
    policy, reference = tiny_policy(seed), tiny_policy(seed + 1)
    table = sq.enumerate_responses(3, 4)
    with torch.no_grad():
        log_p = sq.sequence_logprob(policy, torch.ones(table.shape[0], dtype=torch.long), table)
        log_q = sq.sequence_logprob(reference, torch.ones(table.shape[0], dtype=torch.long),
                                    table)
    log_p, log_q = log_p.double(), log_q.double()
    exact = float((log_p.exp() * (log_p - log_q)).sum())
    language = sq.SyntheticLanguage.random(torch.Generator().manual_seed(seed), num_prompts=2,
                                           vocab_size=3, max_len=4)
    draws = 4000
    result = sq.evaluate_policy(policy, reference, language, torch.ones(draws, dtype=torch.long),
                                torch.Generator().manual_seed(seed))
    for name in ("kl_k1", "kl_k3"):
        standard_error = result[f"{name}_std"] / math.sqrt(draws)
        assert abs(result[name] - exact) <= 5 * standard_error + 1e-5


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_sampling_frequencies_match_probabilities(temperature):
    policy = tiny_policy(seed=3)
    table = sq.enumerate_responses(3, 4)
    prompt = 1
    probs = exact_probs(policy, prompt, table, temperature)
    probs = probs / probs.sum()  # float32 model: renormalise the round-off away
    generator = torch.Generator().manual_seed(11)
    draws = sq.sample(policy, torch.full((20000,), prompt), generator, temperature)
    counts = torch.bincount(index_of(draws, table), minlength=table.shape[0]).double()
    assert chi_square_pvalue(counts, probs).item() >= LEVEL


def test_sampling_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    first = sq.SequencePolicy.create(5, 3)
    second = sq.SequencePolicy.create(5, 3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)
    prompts = torch.tensor([0, 1, 2, 0])
    draw = [sq.sample(first, prompts, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(draw[0], draw[1])
    assert torch.equal(torch.random.get_rng_state(), state)
    sq.check_responses(draw[0], first.vocab_size, first.max_len)


# --------------------------------------------------------------------------------------------


def tiny_language(seed=0):
    return sq.SyntheticLanguage.random(torch.Generator().manual_seed(seed), num_prompts=2,
                                       vocab_size=3, max_len=4, mean_length=2.0)


def test_language_probabilities_and_samples():
    language = tiny_language()
    table = sq.enumerate_responses(3, 4)
    prompts = torch.zeros(table.shape[0], dtype=torch.long)
    probs = language.log_prob(prompts, table).exp()
    assert abs(probs.sum().item() - 1) < 1e-12
    draws = language.sample(torch.zeros(20000, dtype=torch.long), torch.Generator().manual_seed(2))
    counts = torch.bincount(index_of(draws, table), minlength=table.shape[0]).double()
    assert chi_square_pvalue(counts, probs).item() >= LEVEL


def test_default_language_properties():
    generator = torch.Generator().manual_seed(0)
    language = sq.SyntheticLanguage.random(generator)
    assert (language.num_prompts, language.vocab_size, language.max_len) == (8, 16, 12)
    prompts = torch.randint(0, 8, (4000,), generator=generator)
    draws = language.sample(prompts, generator)
    sq.check_responses(draws, 16, 12)
    lengths = sq.response_lengths(draws).double()
    gold = language.gold_reward(prompts, draws)
    assert 1 <= lengths.min() and lengths.max() <= 11
    assert 2.5 < lengths.mean() < 6  # mean_length=4 for an average token, fewer after poor ones
    # Longer samples are better on average (the spurious feature), although the reward is
    # length-neutral: a response repeating one token has the same reward at every length >= 2.
    assert torch.corrcoef(torch.stack([lengths, gold]))[0, 1] > 0.2
    repeated = torch.stack([sq.pad_responses(torch.full((1, k), 5), 12)[0] for k in range(2, 12)])
    rewards = language.gold_reward(torch.zeros(10, dtype=torch.long), repeated)
    torch.testing.assert_close(rewards, rewards[:1].expand(10))
    expected = (language.quality_weight * language.token_quality[0, 5]
                + language.coherence_weight * language.coherence[5, 5])
    torch.testing.assert_close(rewards[0], expected)


def test_gold_reward_by_hand_and_preference_oracle():
    language = tiny_language(1)
    y = torch.tensor([[1, 2, 2, 0]])
    q, c = language.token_quality[1], language.coherence
    by_hand = (language.quality_weight * (q[1] + 2 * q[2]) / 3
               + language.coherence_weight * (c[1, 2] + c[2, 2]) / 2)
    torch.testing.assert_close(language.gold_reward(torch.tensor([1]), y)[0], by_hand)
    n = 40000
    first, second = y.expand(n, 4), torch.tensor([[2, 0, 0, 0]]).expand(n, 4)
    prompts = torch.ones(n, dtype=torch.long)
    p = language.preference_probability(prompts, first, second)[0].item()
    labels = language.label(prompts, first, second, torch.Generator().manual_seed(4)).double()
    z = (labels.mean().item() - p) / math.sqrt(p * (1 - p) / n)
    assert abs(z) < 3.29  # two-sided level 1e-3


# --------------------------------------------------------------------------------------------


def test_token_reward_and_its_exact_maximum():
    weights = torch.tensor([[0.0, -0.5, 0.3], [0.0, -0.2, -0.7]], dtype=torch.float64)
    reward = sq.TokenReward(weights, 4)
    table = sq.enumerate_responses(3, 4)
    for prompt in (0, 1):
        prompts = torch.full((table.shape[0],), prompt)
        values = reward(prompts, table)
        features = sq.token_count_features(prompts, table, 2, 3)
        torch.testing.assert_close(values, features @ weights.reshape(-1))
        torch.testing.assert_close(reward.max_reward(torch.tensor([prompt]))[0], values.max())


def test_fit_proxy_reward_recovers_a_token_reward():
    generator = torch.Generator().manual_seed(0)
    true = sq.TokenReward(torch.tensor([[0.0, 1.0, -1.0, 0.5]], dtype=torch.float64), 5)
    n = 4000
    table = sq.enumerate_responses(4, 5)
    prompts = torch.zeros(n, dtype=torch.long)
    first = table[torch.randint(0, table.shape[0], (n,), generator=generator)]
    second = table[torch.randint(0, table.shape[0], (n,), generator=generator)]
    p = torch.sigmoid(true(prompts, first) - true(prompts, second))
    labels = (torch.rand(n, dtype=torch.float64, generator=generator) < p).long()
    pairs = sq.PreferencePairs.from_labels(prompts, first, second, labels)
    fitted = sq.fit_proxy_reward(pairs, 1, 4, 5, reg=1e-3)
    assert (fitted.weights - true.weights).abs().max() < 0.15


def test_exact_rejection_sampler_hits_the_gibbs_target():
    policy = tiny_policy(seed=7)
    reward = sq.TokenReward(torch.tensor([[0.0, 0.8, -0.4]] * 2, dtype=torch.float64), 4)
    table = sq.enumerate_responses(3, 4)
    prompt, eta = 0, 0.5
    ref = exact_probs(policy, prompt, table)
    target = ref * torch.exp(reward(torch.zeros(len(table), dtype=torch.long), table) / eta)
    target = target / target.sum()
    draws, rate = sq.rejection_sample_sequences(policy, torch.full((6000,), prompt), reward, eta,
                                                torch.Generator().manual_seed(9))
    counts = torch.bincount(index_of(draws, table), minlength=table.shape[0]).double()
    assert chi_square_pvalue(counts, target).item() >= LEVEL
    bound = reward.max_reward(torch.tensor([prompt]))[0]
    exact_rate = (ref / ref.sum() * torch.exp(
        (reward(torch.zeros(len(table), dtype=torch.long), table) - bound) / eta)).sum().item()
    assert abs(rate - exact_rate) < 0.05 * exact_rate + 0.01


def test_pair_selection():
    reward = sq.TokenReward(torch.tensor([[0.0, 1.0, -1.0]], dtype=torch.float64), 4)
    responses = torch.tensor([[[1, 2, 0, 0], [1, 1, 0, 0], [2, 2, 2, 0]]])
    prompts = torch.zeros(1, dtype=torch.long)
    pairs = sq.best_worst_pairs(responses, prompts, reward, torch.Generator().manual_seed(0))
    assert pairs.chosen.tolist() == [[1, 1, 0, 0]] and pairs.rejected.tolist() == [[2, 2, 2, 0]]
    pool = responses.expand(5, 3, 4)
    rso = sq.rso_pairs(pool, torch.zeros(5, dtype=torch.long), reward, 0.5,
                       torch.Generator().manual_seed(1))
    prompts5 = torch.zeros(5, dtype=torch.long)
    assert bool((reward(prompts5, rso.chosen) >= reward(prompts5, rso.rejected)).all())


def test_dpo_training_starts_at_log2_and_learns_the_preference():
    reference = tiny_policy(seed=2)
    policy = reference.clone()
    prompts = torch.zeros(64, dtype=torch.long)
    chosen = torch.tensor([[1, 1, 0, 0]]).expand(64, 4)
    rejected = torch.tensor([[2, 0, 0, 0]]).expand(64, 4)
    pairs = sq.PreferencePairs(prompts, chosen, rejected)
    losses = sq.train_dpo(policy, reference, pairs, 1.0, 30, torch.Generator().manual_seed(0),
                          batch_size=16, lr=1e-2)
    assert abs(losses[0] - math.log(2)) < 1e-6
    assert losses[-1] < 0.5 * losses[0]
    sft_losses = sq.train_sft(reference.clone(), prompts, chosen, 30,
                              torch.Generator().manual_seed(0), batch_size=16, lr=1e-2)
    assert sft_losses[-1] < sft_losses[0]


# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("responses, match", [
    (torch.zeros(2, 13, dtype=torch.long), "longer than the model's maximum"),
    (torch.tensor([[1, 16, 0]]), "outside the vocabulary"),
    (torch.tensor([[1, -1, 0]]), "outside the vocabulary"),
    (torch.tensor([[1, 2, 3]]), "end token"),
    (torch.tensor([[0, 0, 0]]), "at least one content token"),
    (torch.tensor([[1, 0, 2]]), "only EOS padding"),
    (torch.tensor([1, 0]), "2-D integer tensor"),
    (torch.tensor([[1.0, 0.0]]), "2-D integer tensor"),
])
def test_bad_responses_raise_value_error_naming_the_argument(responses, match):
    policy = sq.SequencePolicy.create(0, 2)
    prompts = torch.zeros(responses.shape[0] if responses.ndim else 1, dtype=torch.long)
    with pytest.raises(ValueError, match=match) as info:
        sq.sequence_logprob(policy, prompts, responses)
    assert "responses" in str(info.value)


def test_other_bad_inputs():
    policy = sq.SequencePolicy.create(0, 2)
    language = tiny_language()
    good = torch.tensor([[1, 0]])
    with pytest.raises(ValueError, match="prompts"):
        sq.sequence_logprob(policy, torch.tensor([2]), good)
    with pytest.raises(ValueError, match="prompts"):
        language.gold_reward(torch.tensor([5]), good)
    with pytest.raises(ValueError, match="responses .*rows"):
        language.gold_reward(torch.tensor([0, 1]), good)
    with pytest.raises(ValueError, match="max_len"):
        language.log_prob(torch.tensor([0]), torch.tensor([[1, 1, 1, 1, 0]]))
    with pytest.raises(ValueError, match="temperature"):
        sq.sample(policy, torch.tensor([0]), torch.Generator(), temperature=0.0)
    with pytest.raises(ValueError, match="generator"):
        sq.sample(policy, torch.tensor([0]), None)
    with pytest.raises(ValueError, match="eta"):
        sq.rejection_sample_sequences(policy, torch.tensor([0]),
                                      sq.TokenReward(torch.zeros(2, 16, dtype=torch.float64), 12),
                                      -1.0, torch.Generator())


# --------------------------------------------------------------------------------------------
# The experiment of notebook 05 (gsfh_utils.lm.experiment): the runs at toy size, then the
# summaries and tests against hand computations and scipy.


def toy_config(**changes):
    from gsfh_utils.lm.experiment import MiniatureConfig

    sizes = dict(num_prompts=3, held_out_prompts=1, vocab_size=4, max_len=5, hidden_dim=8,
                 language_samples=64,
                 sft_steps=4, num_gold_pairs=32, dpo_steps=3, dpo_batch=16, num_generated=12,
                 rso_pool=4, ms_stages=2, ms_sft_steps=2, gshf_iterations=2, best_of_n=3,
                 eval_per_prompt=8, one_step_rate_samples=64, frontier_factors=(2.0, 1.0, 0.5))
    return MiniatureConfig(**{**sizes, **changes})


@functools.cache
def _toy_run(seed):
    from gsfh_utils.lm import experiment as mini

    return mini.run_seed(toy_config(), seed)


def toy_run(seed):
    """``run_seed(toy_config(), seed)``, computed once for the tests that only read it (a copy
    each time, so that no test sees another's changes)."""
    return copy.deepcopy(_toy_run(seed))


def test_run_seed_is_deterministic_and_complete():
    from gsfh_utils.lm import experiment as mini

    # Two runs of one seed are equal (the second is kept for the tests that read a run).
    first, second = mini.run_seed(toy_config(), 1), toy_run(1)
    assert first == second
    assert set(first["evaluations"]) == set(mini.METHODS)
    assert list(first["held_out"]) == list(mini.FINAL) == list(first["wins"])
    # The held-out evaluation uses the last prompt only, the others the two training prompts.
    assert first["held_out"]["gshf"]["num_pairs"] == 8
    assert first["wins"]["sft"]["gshf"]["num_pairs"] == 16
    assert len(first["gshf_pi0_trajectory"]) == 4 and len(first["offline_rounds"]) == 3
    assert first["offline_rounds"][0] == first["evaluations"]["gshf_start"]
    assert first["offline_rounds"][-1] == first["evaluations"]["offline_dpo"]
    assert first["gshf_pi0_trajectory"][:2] == first["gshf_trajectory"][:2]  # shared start
    assert first["gshf_pi0_trajectory"][-1] == first["evaluations"]["gshf_pi0"]
    assert len(first["gshf_trajectory"]) == 2 + 2  # pi0, offline start, two iterations
    assert first["gshf_trajectory"][-1] == first["evaluations"]["gshf"]
    assert [point["factor"] for point in first["frontier"]] == [2.0, 1.0, 0.5]
    # The factor-1 point of the curve is offline DPO at eta itself.
    assert {k: v for k, v in first["frontier"][1].items() if k != "factor"} == \
        first["evaluations"]["offline_dpo"]
    sft = first["evaluations"]["sft"]
    assert sft["kl_k3"] == 0.0 and sft["kl_k1"] == 0.0 and sft["num_pairs"] == 16
    assert len(first["diagnostics"]["gshf_pairs_length_signs"]) == 2
    assert len(first["diagnostics"]["gshf_gold_ranked_length_signs"]) == 2


def test_run_seed_without_iterations_and_with_one_round():
    from gsfh_utils.lm import experiment as mini

    run = mini.run_seed(toy_config(gshf_iterations=0, matched_steps=False), 1)
    assert len(run["gshf_trajectory"]) == 2 and len(run["gshf_pi0_trajectory"]) == 2
    assert len(run["offline_rounds"]) == 1
    assert run["wins"]["gshf_pi0"]["gshf"]["num_pairs"] == 16
    assert run["diagnostics"]["gshf_pairs_length_signs"] == []
    assert run["diagnostics"]["gshf_gold_ranked_length_signs"] == []


@prestart
def two_worker_run():
    """``run_seeds`` of seeds 5 and 6 in two spawned worker processes, started after collection
    (the workers import torch while the tests before this one run)."""
    from gsfh_utils.lm import experiment as mini

    return background(mini.run_seeds, toy_config(), [5, 6], workers=2)


def test_run_seeds_does_not_depend_on_the_number_of_workers(two_worker_run):
    from gsfh_utils.lm import experiment as mini

    config = toy_config()
    assert two_worker_run.result(timeout=300) == mini.run_seeds(config, [5, 6])
    with pytest.raises(ValueError, match="workers"):
        mini.run_seeds(config, [5], workers=0)
    with pytest.raises(ValueError, match="seeds"):
        mini.run_seeds(config, [])


@pytest.mark.parametrize("changes, match", [
    (dict(eta=0.0), "eta"), (dict(dpo_steps=0), "dpo_steps"), (dict(hidden_dim=2.5), "hidden_dim"),
    (dict(gshf_iterations=-1), "gshf_iterations"), (dict(frontier_factors=(1.0,)),
                                                    "frontier_factors"),
    (dict(frontier_factors=(1.0, -0.5)), "frontier_factors"),
    (dict(frontier_factors=(1.0, 1.0)), "frontier_factors"), (dict(best_of_n=1), "best_of_n"),
    (dict(num_generated=1, gshf_iterations=2), "num_generated"),
    (dict(ms_eta_start_factor=0.5), "ms_eta_start_factor"), (dict(dpo_lr=-1e-3), "dpo_lr"),
])
def test_bad_config_raises_value_error_naming_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        toy_config(**changes)


def test_config_rounds_and_budget():
    from gsfh_utils.lm import experiment as mini

    config = toy_config(num_generated=13)
    assert (config.rounds, config.baseline_rounds, config.pairs_per_iteration) == (3, 3, 6)
    assert toy_config(matched_steps=False).baseline_rounds == 1
    table = mini.budget(config).set_index("method")
    assert table.loc["offline_dpo", "gradient_steps"] == 3 * 3
    assert table.loc["gshf", "gradient_steps"] == 3 * 3
    assert table.loc["gshf", "proxy_labelled_pairs"] == 12  # 2 iterations of 13 // 2 pairs
    assert table.loc["gshf", "generated_responses"] == 12 * 3
    assert table.loc["rso", "generated_responses"] == 13 * 4
    assert table.loc["multi_step_rs", "gradient_steps"] == 2 * 2
    assert (table["gold_labels"] == 32).all()
    # Trained on: the gold pairs, the proxy-labelled ones, or both (GSHF and its pi0 variant).
    assert table["training_pairs"].to_dict() == {"offline_dpo": 32, "rso": 13, "multi_step_rs": 0,
                                                 "gshf_pi0": 32 + 12, "gshf": 32 + 12}
    assert (table.loc["gshf_pi0"] == table.loc["gshf"]).all()
    assert config.train_prompts == 2
    with pytest.raises(ValueError, match="held_out_prompts"):
        toy_config(held_out_prompts=3)
    with pytest.raises(ValueError, match="held_out_prompts"):
        toy_config(held_out_prompts=0)


def evaluation(gold, gold_std, n, **more):
    return {"gold": gold, "gold_std": gold_std, "num_pairs": n, **more}


def test_difference_test_matches_scipy():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm.experiment import difference_test

    result = difference_test(evaluation(1.0, 2.0, 100), baseline=evaluation(0.5, 1.0, 50))
    z = 0.5 / math.sqrt(4 / 100 + 1 / 50)
    assert abs(result.p_value - scipy_stats.norm.sf(z)) < 1e-12
    assert result.effect == pytest.approx(0.5)
    less = difference_test(evaluation(1.0, 2.0, 100), baseline=evaluation(0.5, 1.0, 50),
                           alternative="less")
    assert abs(less.p_value - scipy_stats.norm.cdf(z)) < 1e-12
    with pytest.raises(ValueError, match="length"):
        difference_test(evaluation(1.0, 2.0, 100), baseline=evaluation(0.5, 1.0, 50),
                        metric="length")


def fake_run(seed, gshf, offline, curve, trajectory=None, signs=None, gold_signs=None):
    """A run with the structure of ``run_seed``'s, from (gold, gold_std, kl) triples."""
    def point(gold, std, kl, **more):
        return {**evaluation(gold, std, 400), "kl_k1": kl, "kl_k1_std": 2.0, "kl_k3": kl,
                "kl_k3_std": 3.0, "wins": 240, "length": 5.0, "length_std": 2.0, **more}

    evaluations = {name: point(*values) for name, values in
                   [("gshf", gshf), ("offline_dpo", offline), ("rso", offline),
                    ("multi_step_rs", offline), ("sft", (0.0, 1.0, 0.0)),
                    ("gshf_start", offline)]}
    return {"seed": seed, "evaluations": evaluations,
            "frontier": [{"factor": f, **point(*values)} for f, values in curve],
            "gshf_trajectory": trajectory or [evaluations["sft"], evaluations["gshf_start"],
                                              evaluations["gshf"]],
            "diagnostics": {"gshf_pairs_length_signs": signs or [[30, 10]],
                            "gshf_gold_ranked_length_signs": gold_signs or [[20, 20]],
                            "gold_pairs_length_signs": [12, 8]}}


def test_interpolate_by_hand():
    from gsfh_utils.lm.experiment import interpolate

    # Points given out of order; 2.5 lies between kl 2 (value 1.0) and kl 4 (value 2.0).
    result = interpolate(kls=[4.0, 1.0, 2.0], values=[2.0, 0.0, 1.0],
                         standard_errors=[0.3, 0.1, 0.2], at=2.5)
    weight = 0.25
    assert result["value"] == pytest.approx(1.0 + weight * 1.0)
    assert result["standard_error"] == pytest.approx(math.sqrt((0.75 * 0.2) ** 2
                                                               + (0.25 * 0.3) ** 2))
    assert (result["lower"], result["upper"], result["inside"]) == (2, 0, True)
    assert result["slope"] == pytest.approx(0.5)
    at_point = interpolate(kls=[4.0, 1.0, 2.0], values=[2.0, 0.0, 1.0],
                           standard_errors=[0.3, 0.1, 0.2], at=2.0)
    assert at_point["value"] == pytest.approx(1.0) and at_point["standard_error"] == \
        pytest.approx(0.2)
    beyond = interpolate(kls=[4.0, 1.0, 2.0], values=[2.0, 0.0, 1.0],
                         standard_errors=[0.3, 0.1, 0.2], at=9.0)
    assert (beyond["value"], beyond["standard_error"], beyond["inside"]) == (2.0, 0.3, False)
    below = interpolate(kls=[4.0, 1.0, 2.0], values=[2.0, 0.0, 1.0],
                        standard_errors=[0.3, 0.1, 0.2], at=0.5)
    assert (below["value"], below["standard_error"], below["inside"]) == (0.0, 0.1, False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kls=[1.0], values=[1.0], standard_errors=[0.1]), "length >= 2"),
    (dict(kls=[1.0, 2.0], values=[1.0], standard_errors=[0.1, 0.1]), "same length"),
    (dict(kls=[1.0, 1.0], values=[1.0, 2.0], standard_errors=[0.1, 0.1]), "distinct"),
    (dict(kls=[1.0, float("nan")], values=[1.0, 2.0], standard_errors=[0.1, 0.1]), "finite"),
    (dict(kls=[1.0, 2.0], values=[1.0, 2.0], standard_errors=[0.1, -0.1]), "standard_errors"),
])
def test_interpolate_rejects_bad_input(kwargs, match):
    from gsfh_utils.lm.experiment import interpolate

    with pytest.raises(ValueError, match=match):
        interpolate(**kwargs, at=1.5)
    with pytest.raises(ValueError, match="at"):
        interpolate(kls=[1.0, 2.0], values=[1.0, 2.0], standard_errors=[0.1, 0.1],
                    at=float("inf"))


def test_matched_kl_test_by_hand():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm import experiment as mini

    curve = [(2.0, (0.4, 1.0, 1.0)), (1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    run = fake_run(0, gshf=(1.1, 0.8, 3.0), offline=(0.8, 1.2, 2.0), curve=curve)
    result = mini.matched_kl_test(run)
    se = [s / 20 for s in (1.2, 1.4)]  # sqrt(400) = 20
    curve_gold, curve_se = 0.9, math.hypot(0.5 * se[0], 0.5 * se[1])
    z = (1.1 - 0.9) / math.hypot(0.8 / 20, curve_se)
    assert result.p_value == pytest.approx(scipy_stats.norm.sf(z), rel=1e-10)
    assert result.effect == pytest.approx(0.2)
    assert result.details["curve_gold"] == pytest.approx(curve_gold)
    assert result.details["inside"] and result.details["factors"] == [1.0, 0.5]
    assert result.details["kl_noise"] == pytest.approx(0.1 * 2.0 / 20)  # slope 0.1, se 0.1
    far = fake_run(1, gshf=(1.1, 0.8, 7.0), offline=(0.8, 1.2, 2.0), curve=curve)
    other = fake_run(2, gshf=(0.3, 0.8, 1.5), offline=(0.8, 1.2, 2.0), curve=curve)
    tests = [mini.matched_kl_test(r) for r in (run, far, other)]
    pooled = mini.matched_kl_over_seeds([run, far, other])
    assert pooled.details["outside"] == 1
    assert pooled.details["every_seed_p_value"] == max(t.p_value for t in tests)
    assert pooled.effect == pytest.approx(sum(t.effect for t in tests) / 3)
    assert mini.matched_kl_test(far).details["curve_gold"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kl"):
        mini.matched_kl_test(run, kl="kl_k2")


def test_pooling_over_seeds_by_hand():
    from scipy import stats as scipy_stats

    from gsfh_utils.lab.stats import TestResult
    from gsfh_utils.lm.experiment import over_seeds

    effects, errors = [0.3, 0.1, -0.05], [0.1, 0.05, 0.02]
    tests = [TestResult("z-test", scipy_stats.norm.sf(e / s), e, "difference", 1,
                        {"standard_error": s}) for e, s in zip(effects, errors, strict=True)]
    pooled = over_seeds(tests)
    mean, se = 0.35 / 3, math.sqrt(0.01 + 0.0025 + 0.0004) / 3
    assert pooled.effect == pytest.approx(mean)
    # the seed is the unit: a one-sample t-test of the per-seed differences
    t_p = scipy_stats.ttest_1samp(effects, 0.0, alternative="greater").pvalue
    assert pooled.p_value == pytest.approx(t_p)
    assert pooled.details["fixed_effect_p_value"] == pytest.approx(scipy_stats.norm.sf(mean / se))
    assert pooled.details["every_seed_p_value"] == pytest.approx(scipy_stats.norm.sf(-2.5))
    # z = 3 (p 0.0013), 2 (p 0.023) and -2.5 (p 0.0062 the other way round)
    assert (pooled.details["seeds_significant"], pooled.details["seeds_significant_opposite"]) \
        == (1, 1)
    assert over_seeds(tests, level=0.05).details["seeds_significant"] == 2
    with pytest.raises(ValueError, match="at least two"):
        over_seeds(tests[:1])


def test_every_seed_tests_against_scipy():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm import experiment as mini

    curve = [(1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    runs = [fake_run(0, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve),
            fake_run(1, (0.9, 0.8, 3.0), (0.8, 1.0, 2.0), curve)]
    combined = mini.compare_over_seeds(runs, method="gshf", baseline="offline_dpo")
    se = [math.hypot(0.8 / 20, 1.2 / 20), math.hypot(0.8 / 20, 1.0 / 20)]
    z = [0.3 / se[0], 0.1 / se[1]]
    assert combined.details["every_seed_p_value"] == pytest.approx(
        max(scipy_stats.norm.sf(v) for v in z))
    pooled_se = math.hypot(*se) / 2
    assert combined.details["fixed_effect_p_value"] == pytest.approx(
        scipy_stats.norm.sf(0.2 / pooled_se))
    assert combined.p_value == pytest.approx(
        scipy_stats.ttest_1samp([0.3, 0.1], 0.0, alternative="greater").pvalue)
    assert combined.effect == pytest.approx(0.2) and combined.num_samples == 2
    frame = mini.comparisons_frame(runs)
    assert list(frame["minus_offline_dpo"]) == pytest.approx([0.3, 0.1])
    assert frame["p_offline_dpo"].max() == pytest.approx(max(scipy_stats.norm.sf(v) for v in z))
    with pytest.raises(ValueError, match="baseline"):
        mini.compare_over_seeds(runs, method="gshf", baseline="ppo")
    wins = mini.win_rate_in_every_seed(runs)
    exact = scipy_stats.binomtest(240, 400, 0.5, alternative="greater").pvalue
    assert wins.p_value == pytest.approx(exact) and wins.effect == pytest.approx(0.6)
    longer = {**runs[0]["evaluations"]["gshf"], "length": 6.0}
    runs[0]["gshf_trajectory"] = [runs[0]["evaluations"]["sft"],
                                  runs[0]["evaluations"]["gshf_start"], longer]
    grows = mini.length_growth_in_every_seed(runs[:1])
    assert grows.p_value == pytest.approx(scipy_stats.norm.sf(1.0 / math.hypot(0.1, 0.1)))
    with pytest.raises(ValueError, match="iteration"):
        mini.length_growth_in_every_seed([{**runs[0], "gshf_trajectory": [longer, longer]}])


def test_proxy_length_test_against_scipy_on_per_seed_differences():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm import experiment as mini

    curve = [(1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    runs = [fake_run(0, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve, signs=[[30, 10], [25, 20]],
                     gold_signs=[[20, 20], [10, 10]]),
            fake_run(1, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve, signs=[[9, 5]],
                     gold_signs=[[6, 8]])]
    result = mini.proxy_length_test(runs)  # seed 0: 55/85 - 30/60; seed 1: 9/14 - 6/14
    differences = [55 / 85 - 0.5, 9 / 14 - 6 / 14]
    expected = scipy_stats.ttest_1samp(differences, 0.0, alternative="greater")
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.effect == pytest.approx(sum(differences) / 2)
    assert result.details["per_seed_differences"] == pytest.approx(differences)
    assert result.details["proxy_fraction_longer"] == pytest.approx(64 / 99)
    assert result.details["gold_ranked_fraction_longer"] == pytest.approx(36 / 74)
    assert result.details["gold_labelled_pairs_fraction_longer"] == pytest.approx(24 / 40)
    with pytest.raises(ValueError, match="two seeds"):
        mini.proxy_length_test(runs[:1])
    with pytest.raises(ValueError, match="unequal length"):
        mini.proxy_length_test([runs[0], fake_run(1, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve,
                                                  gold_signs=[[0, 0]])])


def test_evaluations_frame_and_summary_table():
    from gsfh_utils.lm import experiment as mini

    runs = [toy_run(seed) for seed in (1, 2)]
    frame = mini.evaluations_frame(runs)
    # methods, curve, start + 2 iterates of GSHF and of its variant, 3 offline rounds
    assert len(frame) == 2 * (len(mini.METHODS) + 3 + 3 + 3 + 3)
    assert sorted(frame.loc[frame["method"] == "offline_dpo_rounds", "round"].unique()) == [1, 2, 3]
    assert sorted(frame.loc[frame["method"] == "gshf_path", "iteration"].unique()) == [0, 1, 2]
    table = mini.summary_table(frame)
    assert list(table["method"]) == list(mini.METHODS.values()) + [
        "offline DPO, eta x 2", "offline DPO, eta x 0.5"]  # eta x 1 is the offline DPO row
    held_out = mini.held_out_frame(runs)
    assert len(held_out) == 2 * len(mini.FINAL)
    held_table = mini.summary_table(held_out)  # the methods it holds, no curve
    assert list(held_table["method"]) == [mini.METHODS[m] for m in mini.METHODS
                                          if m in mini.FINAL]
    golds = [run["evaluations"]["gshf"]["gold"] for run in runs]
    mean, std = sum(golds) / 2, abs(golds[0] - golds[1]) / math.sqrt(2)
    assert table.set_index("method").loc["GSHF-DPO (iterative)", "gold reward"] == \
        f"{mean:.3f} ± {std:.3f}"


def test_matched_kl_and_diagnostics_frames():
    from gsfh_utils.lm import experiment as mini

    curve = [(2.0, (0.4, 1.0, 1.0)), (1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    runs = [fake_run(0, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve),
            fake_run(1, (1.1, 0.8, 9.0), (0.8, 1.2, 2.0), curve)]
    frame = mini.matched_kl_frame(runs)
    assert list(frame["difference_k1"]) == pytest.approx([0.2, 0.1])
    assert list(frame["inside_k1"]) == [True, False]
    assert frame.loc[0, "p_k1"] == pytest.approx(mini.matched_kl_test(runs[0]).p_value)
    run = toy_run(2)
    diagnostics = mini.diagnostics_frame([run])
    longer, shorter = run["diagnostics"]["gold_pairs_length_signs"]
    assert diagnostics.loc[0, "gold_pairs_chosen_longer"] == pytest.approx(
        longer / max(longer + shorter, 1))
    assert len(diagnostics.loc[0, "ms_stage_rates"].split()) == 2


def test_streams_are_distinct_and_a_method_knob_leaves_the_others_alone():
    from gsfh_utils.lm import experiment as mini

    draws = {(seed, name): torch.rand(3, generator=mini.stream(seed, name)).tolist()
             for seed in (7, 8) for name in mini.STREAMS}
    assert len({tuple(v) for v in draws.values()}) == len(draws)
    base = toy_run(2)
    changed = mini.run_seed(toy_config(rso_pool=3, eval_per_prompt=9), 2)
    # The RSO pool and the evaluation size change neither offline DPO's nor GSHF's training:
    # only the evaluation draws differ, so compare what does not depend on them.
    assert base["diagnostics"]["gshf_pairs_length_signs"] == \
        changed["diagnostics"]["gshf_pairs_length_signs"]
    assert base["diagnostics"]["gold_pairs_length_signs"] == \
        changed["diagnostics"]["gold_pairs_length_signs"]
    assert base["diagnostics"]["gshf_gold_ranked_length_signs"] == \
        changed["diagnostics"]["gshf_gold_ranked_length_signs"]


def test_the_concave_envelope_bounds_a_concave_curve_from_above():
    from gsfh_utils.lm.experiment import interpolate

    kls = [0.0, 1.0, 2.0, 3.0]
    values = [math.sqrt(k) for k in kls]  # concave
    point = interpolate(kls=kls, values=values, standard_errors=[0.1] * 4, at=1.5)
    # chord through (1, 1), (2, sqrt 2); lines through (0, 0)-(1, 1) and (2, sqrt 2)-(3, sqrt 3)
    chord = 1 + 0.5 * (math.sqrt(2) - 1)
    right = math.sqrt(2) - 0.5 * (math.sqrt(3) - math.sqrt(2))
    assert point["value"] == pytest.approx(chord)
    assert point["concave_value"] == pytest.approx(min(1.5, right))
    assert point["value"] < math.sqrt(1.5) < point["concave_value"]
    # the line through (2, v2) and (3, v3) at 1.5: t = -1.5, value (1 + t) v3 - t v2
    assert point["concave_standard_error"] == pytest.approx(math.hypot(1.5 * 0.1, 0.5 * 0.1))
    edge = interpolate(kls=[0.0, 1.0], values=[0.0, 1.0], standard_errors=[0.1, 0.1], at=0.5)
    assert edge["concave_value"] == edge["value"]  # no neighbouring segment: the chord


def test_the_envelope_never_falls_below_the_chord_on_non_concave_points():
    from gsfh_utils.lm.experiment import interpolate

    # A step (0, 0), (1, 0), (2, 1), (3, 1): at 1.5 the chord is 0.5, the left segment's line 0,
    # the right one's 1; min(lines) = 0 lies below the chord, so max(chord, min(lines)) = chord.
    step = interpolate(kls=[0.0, 1.0, 2.0, 3.0], values=[0.0, 0.0, 1.0, 1.0],
                       standard_errors=[0.1, 0.2, 0.3, 0.4], at=1.5)
    assert step["value"] == pytest.approx(0.5)
    assert (step["concave_value"], step["concave_standard_error"]) == pytest.approx(
        (step["value"], step["standard_error"]))
    # Convex points k^2: both lines lie below the chord, which is kept.
    convex = interpolate(kls=[0.0, 1.0, 2.0, 3.0], values=[0.0, 1.0, 4.0, 9.0],
                         standard_errors=[0.1] * 4, at=1.5)
    assert convex["value"] == pytest.approx(2.5) and convex["concave_value"] == pytest.approx(2.5)
    # One line above, one below the chord (a kink): the chord again, never the lower line.
    kink = interpolate(kls=[0.0, 1.0, 2.0, 3.0], values=[0.0, 1.0, 1.5, 3.0],
                       standard_errors=[0.1] * 4, at=1.5)
    lines = [1.5, 1.5 - 0.5 * 1.5]  # (0,0)-(1,1) at 1.5; (2,1.5)-(3,3) at 1.5
    assert kink["value"] == pytest.approx(1.25)
    assert kink["concave_value"] == pytest.approx(max(1.25, min(lines)))


def test_evaluate_policy_on_given_responses_matches_drawing_them():
    language, policy = tiny_language(2), tiny_policy(1, vocab_size=3, max_len=4, num_prompts=2)
    reference = tiny_policy(2, vocab_size=3, max_len=4, num_prompts=2)
    prompts = torch.tensor([0, 1] * 50)
    drawn = sq.evaluate_policy(policy, reference, language, prompts,
                               torch.Generator().manual_seed(9))
    generator = torch.Generator().manual_seed(9)
    mine = sq.sample(policy, prompts, generator)
    given = sq.evaluate_policy(policy, reference, language, prompts, generator, responses=mine)
    assert given == drawn
    with pytest.raises(ValueError, match="rows"):
        sq.evaluate_policy(policy, reference, language, prompts, generator, responses=mine[:3])


def test_gold_win_counts_against_the_oracle():
    language = tiny_language(1)
    n = 20000
    prompts = torch.ones(n, dtype=torch.long)
    fixed = {"a": torch.tensor([[1, 2, 2, 0]]), "b": torch.tensor([[2, 0, 0, 0]]),
             "c": torch.tensor([[1, 1, 0, 0]])}
    responses = {name: y.expand(n, 4) for name, y in fixed.items()}
    counts = sq.gold_win_counts(language, prompts, responses, torch.Generator().manual_seed(3))
    assert list(counts) == ["a", "b", "c"] and counts["c"] == {}
    gold = {name: language.gold_reward(torch.ones(1, dtype=torch.long), y)[0].item()
            for name, y in fixed.items()}
    for first, second in (("a", "b"), ("a", "c"), ("b", "c")):
        cell = counts[first][second]
        p = 1 / (1 + math.exp(gold[second] - gold[first]))  # BT by hand
        assert cell["num_pairs"] == n and cell["probability"] == pytest.approx(p)
        z = (cell["wins"] / n - p) / math.sqrt(p * (1 - p) / n)
        assert abs(z) < 3.29  # two-sided level 1e-3
    with pytest.raises(ValueError, match="at least two"):
        sq.gold_win_counts(language, prompts, {"a": responses["a"]},
                           torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="responses\\['b'\\]"):
        sq.gold_win_counts(language, prompts, {"a": responses["a"], "b": responses["b"][:5]},
                           torch.Generator().manual_seed(3))


def test_win_rates_frame_against_scipy():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm import experiment as mini

    def cell(wins, probability):
        return {"wins": wins, "num_pairs": 100, "probability": probability}

    runs = [{"wins": {"x": {"y": cell(w_xy, 0.6), "z": cell(w_xz, 0.5)},
                      "y": {"z": cell(w_yz, 0.4)}, "z": {}}}
            for w_xy, w_xz, w_yz in ((60, 50, 30), (70, 40, 45), (65, 52, 41))]
    frame = mini.win_rates_frame(runs, confidence=0.9).set_index(["method", "opponent"])
    assert len(frame) == 6
    rates = [0.6, 0.7, 0.65]
    low, high = scipy_stats.t.interval(0.9, 2, loc=sum(rates) / 3,
                                       scale=scipy_stats.sem(rates))
    row = frame.loc[("x", "y")]
    assert row["win_rate"] == pytest.approx(0.65)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((low, high))
    assert row["p_value"] == pytest.approx(scipy_stats.ttest_1samp(rates, 0.5).pvalue)
    assert row["seeds_above_half"] == 3 and row["bt_probability"] == pytest.approx(0.6)
    flipped = frame.loc[("z", "y")]  # y's rates 0.30, 0.45, 0.41 against z, seen from z
    assert flipped["win_rate"] == pytest.approx(1 - (0.30 + 0.45 + 0.41) / 3)
    assert flipped["bt_probability"] == pytest.approx(0.6)
    assert flipped["seeds_above_half"] == 3
    for (method, opponent), values in frame.iterrows():  # symmetric: the rates add up to 1
        assert values["win_rate"] + frame.loc[(opponent, method), "win_rate"] == \
            pytest.approx(1.0)
    one_sided = mini.win_rate_test(runs, method="x", opponent="y")
    assert one_sided.p_value == pytest.approx(
        scipy_stats.ttest_1samp(rates, 0.5, alternative="greater").pvalue)
    assert one_sided.details["per_seed_win_rates"] == pytest.approx(rates)
    with pytest.raises(ValueError, match="'w' is not a compared policy"):
        mini.win_rate_test(runs, method="w", opponent="y")
    with pytest.raises(ValueError, match="differ"):
        mini.win_rate_test(runs, method="x", opponent="x")
    with pytest.raises(ValueError, match="confidence"):
        mini.win_rates_frame(runs, confidence=1.0)
    with pytest.raises(ValueError, match="runs"):
        mini.win_rates_frame(runs[:1])


def test_compare_over_seeds_on_held_out_prompts():
    from gsfh_utils.lm import experiment as mini

    curve = [(1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    runs = [fake_run(0, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve),
            fake_run(1, (0.9, 0.8, 3.0), (0.8, 1.0, 2.0), curve)]
    for run in runs:  # the held-out evaluations: the roles swapped
        run["held_out"] = {"gshf": run["evaluations"]["offline_dpo"],
                           "offline_dpo": run["evaluations"]["gshf"]}
    on_training = mini.compare_over_seeds(runs, method="gshf", baseline="offline_dpo")
    held_out = mini.compare_over_seeds(runs, method="gshf", baseline="offline_dpo",
                                       prompts="held_out", alternative="less")
    assert held_out.effect == pytest.approx(-on_training.effect)
    assert held_out.p_value == pytest.approx(on_training.p_value)
    with pytest.raises(ValueError, match="prompts"):
        mini.compare_over_seeds(runs, method="gshf", baseline="offline_dpo", prompts="test")
    with pytest.raises(ValueError, match="baseline"):
        mini.compare_over_seeds(runs, method="gshf", baseline="rso", prompts="held_out")


def test_comparisons_table_rows_are_the_seed_level_tests():
    import numpy as np
    from scipy import stats as scipy_stats

    from gsfh_utils.lm import experiment as mini

    curve = [(1.0, (0.8, 1.2, 2.0)), (0.5, (1.0, 1.4, 4.0))]
    runs = [fake_run(0, (1.1, 0.8, 3.0), (0.8, 1.2, 2.0), curve),
            fake_run(1, (0.9, 0.8, 3.0), (0.8, 1.0, 2.0), curve)]
    table = mini.comparisons_table(runs, [("gshf", "offline_dpo"), ("gshf", "sft")])
    for row, baseline in zip(table.itertuples(index=False), ("offline_dpo", "sft"), strict=True):
        test = mini.compare_over_seeds(runs, method="gshf", baseline=baseline)
        assert row[1] == mini.METHODS[baseline]
        assert (row[2], row[5]) == pytest.approx((test.effect, test.p_value))
        effects = test.details["per_seed_effects"]
        half = scipy_stats.t.ppf(0.975, 1) * scipy_stats.sem(effects)
        assert (row[3], row[4]) == pytest.approx((np.mean(effects) - half, np.mean(effects) + half))
        # two seeds: the sign-flip p-value is the share of the 4 assignments at least as large
        flips = [(a * effects[0] + b * effects[1]) / 2 for a in (1, -1) for b in (1, -1)]
        assert row[6] == pytest.approx(np.mean([f >= np.mean(effects) - 1e-12 for f in flips]))
    with pytest.raises(ValueError, match="pairs"):
        mini.comparisons_table(runs, [])
    lengths = mini.comparisons_table(runs, [("gshf", "offline_dpo")], metric="length")
    test = mini.compare_over_seeds(runs, method="gshf", baseline="offline_dpo", metric="length")
    assert lengths["mean length difference"].item() == pytest.approx(test.effect)
    # The matched-KL test of another method: offline DPO lies on its own curve (difference 0).
    pooled = mini.matched_kl_over_seeds(runs, method="offline_dpo")
    assert pooled.details["per_seed_effects"] == pytest.approx([0.0, 0.0])
