"""The miniature language-model helpers (gsfh_utils.lm.sequence), against independent computations.

Tiny problems (vocabulary 3 or 4, at most 3 content tokens) are enumerated exactly: sequence
probabilities are recomputed by a hand-written GRU loop, sampling frequencies are tested against
them by Pearson's chi-square test, and the exact rejection sampler against its Gibbs target.
"""

from __future__ import annotations

import math

import pytest
import torch

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


def test_sequence_logprob_matches_manual_gru_loop():
    policy = tiny_policy(vocab_size=4)
    table = sq.enumerate_responses(4, 4)
    prompts = torch.ones(table.shape[0], dtype=torch.long)
    with torch.no_grad():
        batched = sq.sequence_logprob(policy, prompts, table)
    manual = torch.tensor([manual_logprob(policy, 1, y) for y in table])
    torch.testing.assert_close(batched, manual.float(), atol=2e-5, rtol=0)


def test_probabilities_sum_to_one_and_padding_is_masked():
    policy = tiny_policy(vocab_size=4)
    table = sq.enumerate_responses(4, 4)
    for prompt in (0, 1):
        prompts = torch.full((table.shape[0],), prompt)
        with torch.no_grad():
            logps = sq.sequence_logprob(policy, prompts, table).double()
        assert abs(logps.exp().sum().item() - 1) < 1e-5
    short = table[:3, :2]  # one content token + EOS, without padding
    with torch.no_grad():
        padded = sq.sequence_logprob(policy, torch.zeros(3, dtype=torch.long), table[:3])
        unpadded = sq.sequence_logprob(policy, torch.zeros(3, dtype=torch.long), short)
        tokens = sq.token_logprobs(policy, torch.zeros(3, dtype=torch.long), table[:3])
    torch.testing.assert_close(padded, unpadded)
    assert bool((tokens[:, 2:] == 0).all())  # positions after the end token carry nothing


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
# The experiment of notebook 05 (gsfh_utils.lm.experiment), at toy size.


def toy_config():
    from gsfh_utils.lm.experiment import MiniatureConfig

    return MiniatureConfig(num_prompts=2, vocab_size=4, max_len=5, hidden_dim=8,
                           language_samples=64, sft_steps=4, num_gold_pairs=32, dpo_steps=3,
                           dpo_batch=16, num_generated=12, rso_pool=4, ms_stages=2,
                           ms_sft_steps=2, gshf_iterations=2, best_of_n=3, eval_per_prompt=8,
                           one_step_rate_samples=64)


def test_run_seed_is_deterministic_and_complete():
    from gsfh_utils.lm import experiment as mini

    first, second = mini.run_seed(toy_config(), 3), mini.run_seed(toy_config(), 3)
    assert first == second
    assert set(first["evaluations"]) == set(mini.METHODS)
    assert len(first["gshf_trajectory"]) == 2 + 2  # pi0, offline start, two iterations
    sft = first["evaluations"]["sft"]
    assert sft["kl_k3"] == 0.0 and sft["num_pairs"] == 16
    rows = mini.aggregate([first, second])
    assert [row["method"] for row in rows] == list(mini.METHODS)
    assert rows[0]["gold_std"] == 0.0
    assert mini.markdown_table(rows).count("\n") == len(rows) + 1


def test_z_test_matches_scipy():
    from scipy import stats as scipy_stats

    from gsfh_utils.lm.experiment import z_test_greater

    p = z_test_greater(1.0, 2.0, 100, 0.5, 1.0, 50)
    z = 0.5 / math.sqrt(4 / 100 + 1 / 50)
    assert abs(p - scipy_stats.norm.sf(z)) < 1e-12
