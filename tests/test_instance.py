"""The linear Bradley-Terry bandit: validation, exact values against naive loops over contexts,
the gap identity, and preference sampling (shapes, determinism, frequencies at a stated level)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import EPS, etas, examples
from hypothesis import given
from hypothesis import strategies as st

from gsfh_utils import LinearBTBandit, Preferences, gibbs_policy, kl_divergence
from gsfh_utils.instance import REFERENCE_FAMILIES, reference_policy
from gsfh_utils.lab.stats import chi_square_pvalue, empirical_counts, normal_quantile

F64 = torch.float64
LEVEL = 1e-3  # level of each frequency test (a correct sampler fails it with this probability)


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_bandit(seed: int = 0, eta: float = 0.5, zeros: bool = True) -> LinearBTBandit:
    """4 contexts, 5 actions, d = 3; with ``zeros`` pi0 leaves one action out in two contexts
    and d0 is not uniform."""
    bandit = LinearBTBandit.random(num_contexts=4, num_actions=5, dim=3, norm_bound=2.0, eta=eta,
                                   generator=generator(seed))
    if not zeros:
        return bandit
    ref = bandit.ref_probs.clone()
    ref[0, 1] = 0.0
    ref[2, 4] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    return LinearBTBandit(bandit.features, bandit.theta_star, ref, t([0.1, 0.2, 0.3, 0.4]), eta)


def random_policies(bandit: LinearBTBandit, num: int, seed: int) -> torch.Tensor:
    """``[num, X, K]`` policies on the support of pi0."""
    logits = 2 * torch.randn(num, bandit.num_contexts, bandit.num_actions, dtype=F64,
                             generator=generator(seed))
    logits = torch.where(bandit.ref_probs > 0, logits, -torch.inf)
    return logits.softmax(-1)


# --- naive references (plain Python loops over contexts and actions) ----------------------


def naive_reward(bandit, x, a) -> float:
    return math.fsum(f * th for f, th in zip(bandit.features[x, a].tolist(),
                                             bandit.theta_star.tolist(), strict=True))


def naive_value(bandit: LinearBTBandit, policy: torch.Tensor) -> float:
    total = []
    for x in range(bandit.num_contexts):
        per_context = []
        for a in range(bandit.num_actions):
            p, q = policy[x, a].item(), bandit.ref_probs[x, a].item()
            if p == 0:
                continue
            per_context.append(p * naive_reward(bandit, x, a) - bandit.eta * p * math.log(p / q))
        total.append(bandit.context_probs[x].item() * math.fsum(per_context))
    return math.fsum(total)


def naive_optimal_value(bandit: LinearBTBandit) -> float:
    total = []
    for x in range(bandit.num_contexts):
        z = math.fsum(bandit.ref_probs[x, a].item() * math.exp(naive_reward(bandit, x, a)
                                                             / bandit.eta)
                      for a in range(bandit.num_actions))
        total.append(bandit.context_probs[x].item() * bandit.eta * math.log(z))
    return math.fsum(total)


def value_tolerance(bandit: LinearBTBandit, policy: torch.Tensor) -> float:
    """(n + 8) eps times the total size of the terms of J (n = X K terms)."""
    rewards = bandit.rewards()
    terms = ((policy * rewards).abs()
             + bandit.eta * (torch.xlogy(policy, policy).abs()
                             + torch.xlogy(policy, bandit.ref_probs).abs()))
    size = (terms.sum(-1) * bandit.context_probs).sum().item() + rewards.abs().max().item()
    return 4 * (bandit.num_contexts * bandit.num_actions + 8) * EPS * (size + bandit.eta)


# --- validation ---------------------------------------------------------------------------------


def good_fields():
    bandit = make_bandit()
    return {"features": bandit.features, "theta_star": bandit.theta_star,
            "ref_probs": bandit.ref_probs, "context_probs": bandit.context_probs, "eta": 0.5}


BAD_FIELDS = [
    ("features", lambda f: f[0], "features must have shape"),
    ("features", lambda f: f.unsqueeze(0), "features must have shape"),
    ("features", lambda f: torch.where(torch.arange(3) == 0, math.nan, f),
     "features must be finite"),
    ("features", lambda f: f * 3, r"features must satisfy \|\|phi"),
    ("theta_star", lambda th: th[:2], "theta_star must have shape"),
    ("theta_star", lambda th: th.unsqueeze(0), "theta_star must have shape"),
    ("theta_star", lambda th: th * math.inf, "theta_star must be finite"),
    ("ref_probs", lambda r: r[:3] / r[:3].sum(-1, keepdim=True), "ref_probs must have shape"),
    ("ref_probs", lambda r: r * 1.1, "ref_probs must sum to 1"),
    ("ref_probs", lambda r: torch.where(r > 0.2, -r, r), "ref_probs must be non-negative"),
    ("context_probs", lambda d: torch.ones(5, dtype=F64) / 5, "context_probs must have shape"),
    ("context_probs", lambda d: d * 2, "context_probs must sum to 1"),
    ("context_probs", lambda d: t([math.nan, 0.2, 0.3, 0.4]), "context_probs must be finite"),
    ("eta", lambda e: 0.0, "eta"),
    ("eta", lambda e: -1.0, "eta"),
    ("eta", lambda e: math.nan, "eta"),
    ("eta", lambda e: math.inf, "eta"),
]


@pytest.mark.parametrize(("field", "corrupt", "match"), BAD_FIELDS)
def test_each_bad_field_raises_value_error_naming_it(field, corrupt, match):
    fields = good_fields()
    fields[field] = corrupt(fields[field])
    with pytest.raises(ValueError, match=f"^{match}"):
        LinearBTBandit(**fields)


def test_fields_are_stored_as_float64_and_lists_are_accepted():
    fields = {key: value.tolist() if isinstance(value, torch.Tensor) else value
              for key, value in good_fields().items()}
    fields["eta"] = 1
    bandit = LinearBTBandit(**fields)
    for tensor in (bandit.features, bandit.theta_star, bandit.ref_probs, bandit.context_probs):
        assert isinstance(tensor, torch.Tensor) and tensor.dtype == F64
    assert isinstance(bandit.eta, float) and bandit.eta == 1.0
    assert (bandit.num_contexts, bandit.num_actions, bandit.dim) == (4, 5, 3)


def test_random_instance_satisfies_the_assumptions_and_is_reproducible():
    shape = dict(num_contexts=6, num_actions=7, dim=4)
    bandit = LinearBTBandit.random(**shape, norm_bound=3.0, eta=0.2, generator=generator(9))
    norms = bandit.features.norm(dim=-1)
    assert torch.all(norms >= 0.5 - 1e-12) and torch.all(norms <= 1 + 1e-12)
    assert math.isclose(bandit.theta_star.norm().item(), 3.0, rel_tol=1e-12)
    torch.testing.assert_close(bandit.context_probs, torch.full((6,), 1 / 6, dtype=F64))
    again = LinearBTBandit.random(**shape, norm_bound=3.0, eta=0.2, generator=generator(9))
    assert torch.equal(bandit.features, again.features)
    assert torch.equal(bandit.ref_probs, again.ref_probs)
    for name, bad in [("num_contexts", 0), ("num_actions", -1), ("dim", 1.5)]:
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
            LinearBTBandit.random(**{**shape, name: bad}, norm_bound=1.0, eta=1.0,
                                  generator=generator(0))


def test_with_eta_changes_only_the_coefficient():
    bandit = LinearBTBandit.random(num_contexts=3, num_actions=4, dim=2, norm_bound=1.0,
                                   eta=0.5, generator=generator(10))
    other = bandit.with_eta(2.0)
    assert other.eta == 2.0 and bandit.eta == 0.5
    assert torch.equal(other.features, bandit.features)
    expected = gibbs_policy(bandit.ref_probs, bandit.rewards(), 2.0)
    assert torch.equal(other.optimal_policy(), expected)
    with pytest.raises(ValueError, match="eta"):
        bandit.with_eta(0.0)


@pytest.mark.parametrize("family", REFERENCE_FAMILIES)
def test_reference_families(family):
    probs = reference_policy(family, num_contexts=5, num_actions=6, generator=generator(11),
                             temperature=2.0, exponent=1.5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5, dtype=F64))
    if family == "uniform":
        assert torch.equal(probs, torch.full((5, 6), 1 / 6, dtype=F64))
    if family == "zipf":  # each context: the ranks 1..K in some order, weights rank^-1.5
        expected = torch.arange(1, 7, dtype=F64) ** -1.5
        expected = expected / expected.sum()
        torch.testing.assert_close(probs.sort(-1, descending=True).values,
                                   expected.expand(5, 6))
    with pytest.raises(ValueError, match="family"):
        reference_policy("gaussian", num_contexts=5, num_actions=6, generator=generator(11))


def test_mean_features_and_expected_kl_by_hand():
    bandit = make_bandit()
    policy = torch.softmax(torch.randn(4, 5, dtype=F64, generator=generator(12)), -1)
    mean = sum(bandit.context_probs[x] * policy[x, a] * bandit.features[x, a]
               for x in range(4) for a in range(5))
    torch.testing.assert_close(bandit.mean_features(policy), mean)
    ref = bandit.ref_probs
    kl = sum(bandit.context_probs[x] * policy[x, a] * math.log(policy[x, a] / ref[x, a])
             for x in range(4) for a in range(5))
    assert math.isclose(bandit.expected_kl(policy).item(), float(kl), rel_tol=1e-12)
    assert bandit.expected_kl(policy, policy).item() == 0.0


# --- exact values -------------------------------------------------------------------------------


def test_rewards_against_naive_dot_products_and_batched_theta():
    bandit = make_bandit()
    rewards = bandit.rewards()
    assert rewards.shape == (4, 5)
    for x in range(4):
        for a in range(5):
            assert math.isclose(rewards[x, a].item(), naive_reward(bandit, x, a),
                                rel_tol=0, abs_tol=16 * EPS)
    thetas = torch.randn(2, 3, dtype=F64, generator=generator(1))
    batched = bandit.rewards(thetas)
    assert batched.shape == (2, 4, 5)
    for s in range(2):
        torch.testing.assert_close(batched[s], bandit.features @ thetas[s], rtol=0,
                                   atol=16 * EPS)
    with pytest.raises(ValueError, match="theta"):
        bandit.rewards(torch.zeros(4, dtype=F64))


@pytest.mark.parametrize("zeros", [False, True])
def test_value_and_optimal_value_against_naive_loops(zeros):
    bandit = make_bandit(zeros=zeros)
    policies = random_policies(bandit, 3, seed=2)
    values = bandit.value(policies)
    assert values.shape == (3,)
    for s in range(3):
        assert abs(values[s].item() - naive_value(bandit, policies[s])) <= value_tolerance(
            bandit, policies[s])
    optimal = bandit.optimal_value().item()
    assert abs(optimal - naive_optimal_value(bandit)) <= value_tolerance(
        bandit, bandit.optimal_policy())
    assert abs(optimal - naive_value(bandit, bandit.optimal_policy())) <= value_tolerance(
        bandit, bandit.optimal_policy())


@pytest.mark.parametrize("eta", [1e-3, 0.5, 50.0])
def test_suboptimality_is_eta_times_expected_kl_to_the_optimal_policy(eta):
    """Gap identity: J(pi*) - J(pi) = eta sum_x d0(x) KL(pi(.|x) || pi*(.|x)), exactly."""
    bandit = make_bandit(seed=3, eta=eta)
    policies = torch.cat([random_policies(bandit, 4, seed=4), bandit.ref_probs.unsqueeze(0)])
    gaps = bandit.suboptimality(policies)
    optimal = bandit.optimal_policy()
    for s in range(policies.shape[0]):
        expected = math.fsum(
            bandit.context_probs[x].item() * eta
            * kl_divergence(policies[s, x], optimal[x]).item()
            for x in range(bandit.num_contexts))
        tolerance = value_tolerance(bandit, policies[s]) + value_tolerance(bandit, optimal)
        kl_size = eta * (torch.xlogy(policies[s], policies[s]).abs()
                         + torch.xlogy(policies[s], optimal).abs()).sum().item()
        assert abs(gaps[s].item() - expected) <= tolerance + 64 * EPS * kl_size
        assert gaps[s].item() >= -tolerance
    assert abs(bandit.suboptimality(optimal).item()) <= 2 * value_tolerance(bandit, optimal)


def test_policy_outside_the_support_has_infinite_suboptimality():
    bandit = make_bandit()
    uniform = torch.full((4, 5), 0.2, dtype=F64)  # puts mass on pi0's zeros
    assert bandit.value(uniform).item() == -math.inf
    assert bandit.suboptimality(uniform).item() == math.inf


@pytest.mark.parametrize("eta", [1e-3, 0.5, 50.0])
def test_largest_suboptimality_against_every_deterministic_policy(eta):
    """Brute force: the suboptimality of every deterministic policy on pi0's support (400 of
    them); the largest equals the closed form, and random policies stay below it."""
    bandit = make_bandit(seed=5, eta=eta)
    supports = [torch.nonzero(bandit.ref_probs[x] > 0).flatten().tolist()
                for x in range(bandit.num_contexts)]
    deterministic = torch.stack([torch.nn.functional.one_hot(torch.tensor(actions), 5).to(F64)
                                 for actions in itertools.product(*supports)])
    largest = bandit.largest_suboptimality()
    brute = bandit.suboptimality(deterministic).max().item()
    assert abs(largest - brute) <= 1e-9 * max(1.0, abs(brute))
    assert bandit.suboptimality(random_policies(bandit, 16, seed=6)).max().item() <= largest
    assert bandit.largest_suboptimality() > 0


@examples(40)  # a brute force over up to 27 deterministic policies per example
@given(seed=st.integers(0, 10**6), num_contexts=st.integers(1, 3), num_actions=st.integers(1, 3),
       dim=st.integers(1, 3), eta=etas(1e-2, 1e2), family=st.sampled_from(REFERENCE_FAMILIES))
def test_property_exact_values_against_enumeration(seed, num_contexts, num_actions, dim, eta,
                                                   family):
    """On random instances of every shape and reference family: J, J(pi*), the mean features
    and the expected KL of a random policy against plain-Python sums over contexts and actions,
    and the largest suboptimality against every deterministic policy, enumerated."""
    bandit = LinearBTBandit.random(num_contexts=num_contexts, num_actions=num_actions, dim=dim,
                                   norm_bound=2.0, eta=eta, generator=generator(seed),
                                   reference=family)
    policy = random_policies(bandit, 1, seed=seed + 1)[0]
    assert abs(bandit.value(policy).item() - naive_value(bandit, policy)) <= value_tolerance(
        bandit, policy)
    assert abs(bandit.optimal_value().item() - naive_optimal_value(bandit)) <= value_tolerance(
        bandit, bandit.optimal_policy())
    pairs = list(itertools.product(range(num_contexts), range(num_actions)))
    weights = {(x, a): bandit.context_probs[x].item() * policy[x, a].item() for x, a in pairs}
    for i in range(dim):
        mean = math.fsum(weights[x, a] * bandit.features[x, a, i].item() for x, a in pairs)
        assert abs(bandit.mean_features(policy)[i].item() - mean) <= 1e-12
    kl = math.fsum(weights[x, a] * math.log(policy[x, a].item() / bandit.ref_probs[x, a].item())
                   for x, a in pairs if policy[x, a] > 0)
    assert abs(bandit.expected_kl(policy).item() - kl) <= 1e-10 * (1 + abs(kl))
    deterministic = torch.stack([
        torch.nn.functional.one_hot(torch.tensor(actions), num_actions).to(F64)
        for actions in itertools.product(range(num_actions), repeat=num_contexts)])
    brute = bandit.suboptimality(deterministic).max().item()
    assert abs(bandit.largest_suboptimality() - brute) <= 1e-9 * max(1.0, abs(brute))


# --- preference sampling ----------------------------------------------------------------------


def test_sample_preferences_shapes_and_consistency():
    bandit = make_bandit()
    policy = bandit.optimal_policy()
    prefs = bandit.sample_preferences(7, policy, bandit.ref_probs, generator(5), batch_shape=(2, 3))
    assert len(prefs) == 7
    for tensor in (prefs.contexts, prefs.first_actions, prefs.second_actions):
        assert tensor.shape == (2, 3, 7) and tensor.dtype == torch.long
    assert prefs.labels.shape == (2, 3, 7) and prefs.labels.dtype == F64
    assert set(prefs.labels.unique().tolist()) <= {0.0, 1.0}
    assert prefs.feature_diffs.shape == (2, 3, 7, 3)
    expected = (bandit.features[prefs.contexts, prefs.first_actions]
                - bandit.features[prefs.contexts, prefs.second_actions])
    assert torch.equal(prefs.feature_diffs, expected)
    # actions always inside the support of the policy that drew them
    assert torch.all(policy[prefs.contexts, prefs.first_actions] > 0)
    assert torch.all(bandit.ref_probs[prefs.contexts, prefs.second_actions] > 0)
    plain = bandit.sample_preferences(5, policy, policy, generator(5))
    assert plain.contexts.shape == (5,) and plain.feature_diffs.shape == (5, 3)


def test_sample_preferences_is_deterministic_for_a_seed():
    bandit = make_bandit()
    draws = [bandit.sample_preferences(50, bandit.ref_probs, bandit.optimal_policy(),
                                       generator(seed), batch_shape=(2,)) for seed in (6, 6, 7)]
    for name in ("contexts", "first_actions", "second_actions", "labels", "feature_diffs"):
        assert torch.equal(getattr(draws[0], name), getattr(draws[1], name))
    assert not torch.equal(draws[0].labels, draws[2].labels)


def test_one_policy_per_seed_in_a_batch():
    bandit = make_bandit(zeros=False)
    # seed 0 always plays action 0, seed 1 always action 3
    one_hot = torch.zeros(2, 4, 5, dtype=F64)
    one_hot[0, :, 0] = 1.0
    one_hot[1, :, 3] = 1.0
    prefs = bandit.sample_preferences(40, one_hot, bandit.ref_probs, generator(8), batch_shape=(2,))
    assert torch.all(prefs.first_actions[0] == 0) and torch.all(prefs.first_actions[1] == 3)


@pytest.mark.parametrize(
    "shape", [(5, 5), (4, 4), (3, 4, 5)],
)
def test_bad_policy_shape_names_the_policy(shape):
    bandit = make_bandit()
    bad = torch.full(shape, 1.0 / shape[-1], dtype=F64)
    with pytest.raises(ValueError, match="^first_policy"):
        bandit.sample_preferences(3, bad, bandit.ref_probs, generator(0), batch_shape=(2,))
    with pytest.raises(ValueError, match="^second_policy"):
        bandit.sample_preferences(3, bandit.ref_probs, bad, generator(0), batch_shape=(2,))
    with pytest.raises(ValueError, match="^first_policy"):
        bandit.sample_preferences(3, bandit.ref_probs * 2, bandit.ref_probs, generator(0))
    with pytest.raises(ValueError, match="^num_pairs"):
        bandit.sample_preferences(0, bandit.ref_probs, bandit.ref_probs, generator(0))


def one_context_two_actions(margin_features=(0.6, -0.2), theta=(2.0, 0.0)) -> LinearBTBandit:
    features = t([[[margin_features[0], 0.0], [margin_features[1], 0.0]]])
    return LinearBTBandit(features, t(theta), t([[0.5, 0.5]]), t([1.0]), eta=1.0)


def test_label_frequency_matches_bradley_terry_within_a_binomial_bound():
    """r = (1.2, -0.4): P(a1 = 0 preferred to a2 = 1) = sigmoid(1.6); n = 20000 labels, the
    binomial z bound at two-sided level LEVEL."""
    bandit = one_context_two_actions()
    first, second = t([[1.0, 0.0]]), t([[0.0, 1.0]])
    num_pairs = 20_000
    z = normal_quantile(1 - LEVEL / 2)
    for a, b, probability in [(first, second, 1 / (1 + math.exp(-1.6))),
                              (second, first, 1 / (1 + math.exp(1.6))),
                              (first, first, 0.5)]:
        prefs = bandit.sample_preferences(num_pairs, a, b, generator(10))
        rate = prefs.labels.mean().item()
        assert abs(rate - probability) <= z * math.sqrt(probability * (1 - probability) / num_pairs)


def test_contexts_and_actions_follow_d0_and_the_policies():
    bandit = make_bandit(seed=11)
    policy = bandit.optimal_policy()
    prefs = bandit.sample_preferences(20_000, policy, bandit.ref_probs, generator(12))
    context_counts = empirical_counts(prefs.contexts, bandit.num_contexts)
    pvalues = [chi_square_pvalue(context_counts, bandit.context_probs).item()]
    for x in range(bandit.num_contexts):
        in_x = prefs.contexts == x
        for actions, probs in [(prefs.first_actions, policy), (prefs.second_actions,
                                                                bandit.ref_probs)]:
            counts = empirical_counts(actions[in_x], bandit.num_actions)
            pvalues.append(chi_square_pvalue(counts, probs[x]).item())
    assert min(pvalues) >= LEVEL / len(pvalues)  # Bonferroni over the 9 tests


def test_preferences_concat():
    bandit = make_bandit()
    first = bandit.sample_preferences(3, bandit.ref_probs, bandit.ref_probs, generator(13),
                                      batch_shape=(2,))
    second = bandit.sample_preferences(5, bandit.ref_probs, bandit.ref_probs, generator(14),
                                       batch_shape=(2,))
    both = first.concat(second)
    assert isinstance(both, Preferences) and len(both) == 8
    assert both.feature_diffs.shape == (2, 8, 3)
    for name in ("contexts", "first_actions", "second_actions", "labels"):
        assert torch.equal(getattr(both, name)[..., :3], getattr(first, name))
        assert torch.equal(getattr(both, name)[..., 3:], getattr(second, name))
    assert torch.equal(both.feature_diffs[:, :3], first.feature_diffs)
    assert torch.equal(both.feature_diffs[:, 3:], second.feature_diffs)


# --- replays of the samplers and the remaining messages (in answer to mutation testing) --------


def test_random_instance_replays_its_docstring():
    """LinearBTBandit.random against the construction by hand on the same stream: directions
    N(0, I) normalised, norms uniform in [0.5, 1], theta* N(0, I) scaled to norm_bound, pi0 from
    reference_policy with the given temperature or exponent (defaults 1), d0 exactly uniform."""
    for reference, options, family_options in [
            ("softmax", {}, dict(temperature=1.0)),
            ("softmax", dict(ref_temperature=3.0), dict(temperature=3.0)),
            ("zipf", {}, dict(exponent=1.0)),
            ("zipf", dict(zipf_exponent=2.5), dict(exponent=2.5))]:
        bandit = LinearBTBandit.random(num_contexts=3, num_actions=4, dim=2, norm_bound=1.5,
                                       eta=0.3, generator=generator(15), reference=reference,
                                       **options)
        replay = generator(15)
        directions = torch.randn(3, 4, 2, dtype=F64, generator=replay)
        directions = directions / directions.norm(dim=-1, keepdim=True)
        norms = 0.5 + 0.5 * torch.rand(3, 4, 1, dtype=F64, generator=replay)
        theta = torch.randn(2, dtype=F64, generator=replay)
        ref = reference_policy(reference, num_contexts=3, num_actions=4, generator=replay,
                               **family_options)
        torch.testing.assert_close(bandit.features, directions * norms, rtol=1e-15, atol=0)
        torch.testing.assert_close(bandit.theta_star, 1.5 * theta / theta.norm(), rtol=1e-15,
                                   atol=0)
        assert torch.equal(bandit.ref_probs, ref)
        assert torch.equal(bandit.context_probs, torch.full((3,), 1 / 3, dtype=F64))


def test_reference_policy_defaults_temperatures_and_names():
    """softmax(temperature N(0, I)) by hand; the temperature and exponent default to 1; bad
    sizes and exponents are named."""
    shape = dict(num_contexts=3, num_actions=4)
    probs = reference_policy("softmax", **shape, generator=generator(16), temperature=2.5)
    logits = 2.5 * torch.randn(3, 4, dtype=F64, generator=generator(16))
    torch.testing.assert_close(probs, logits.exp() / logits.exp().sum(-1, keepdim=True),
                               rtol=1e-14, atol=0)
    for family, option in [("softmax", dict(temperature=1.0)), ("zipf", dict(exponent=1.0))]:
        assert torch.equal(reference_policy(family, **shape, generator=generator(17)),
                           reference_policy(family, **shape, generator=generator(17), **option))
    for changes, name in [(dict(num_contexts=0), "num_contexts"),
                          (dict(num_actions=0), "num_actions")]:
        with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
            reference_policy("uniform", **(shape | changes), generator=generator(0))
    with pytest.raises(ValueError, match="^exponent must be positive"):
        reference_policy("zipf", **shape, generator=generator(0), exponent=-1.0)


def test_random_policies_replay_their_docstring():
    """softmax(s N(0, I)) on the support of pi0, s log-uniform in 10**log10_scale, one scale per
    policy, for a pi0 with two batch dimensions and zeros; bad arguments are named."""
    from gsfh_utils.instance import random_policies

    ref = torch.softmax(torch.randn(2, 3, 5, dtype=F64, generator=generator(18)), -1)
    ref[0, 1, 2] = ref[1, 2, 0] = 0.0
    ref = ref / ref.sum(-1, keepdim=True)
    policies = random_policies(ref, 4, generator(19), log10_scale=(-0.5, 1.5))
    replay = generator(19)
    scales = 10 ** (-0.5 + 2.0 * torch.rand(2, 3, 4, 1, dtype=F64, generator=replay))
    logits = scales * torch.randn(2, 3, 4, 5, dtype=F64, generator=replay)
    weights = logits.exp() * (ref > 0).unsqueeze(-2)
    torch.testing.assert_close(policies, weights / weights.sum(-1, keepdim=True), rtol=1e-13,
                               atol=0)
    with pytest.raises(ValueError, match="^ref_probs"):
        random_policies(-ref, 4, generator(0))
    with pytest.raises(ValueError, match="^num_policies must be a positive integer"):
        random_policies(ref, 0, generator(0))


def test_feature_norm_limit_and_theta_given_as_a_list():
    """Features of norm 1 (up to 1e-9) are allowed and a norm of 1.5 is not; ``rewards`` reads
    a list ``theta`` as float64; non-finite features are named."""
    fields = good_fields()
    features = fields["features"] / fields["features"].norm(dim=-1).max()
    bandit = LinearBTBandit(**(fields | dict(features=features * (1 + 1e-10))))
    with pytest.raises(ValueError, match=r"^features must satisfy \|\|phi"):
        LinearBTBandit(**(fields | dict(features=features * 1.5)))
    rewards = bandit.rewards([0.5, -1.0, 2.0])
    expected = torch.einsum("xkd,d->xk", bandit.features, t([0.5, -1.0, 2.0]))
    assert rewards.dtype == F64 and torch.allclose(rewards, expected, rtol=1e-15, atol=0)


def test_sample_preferences_replays_its_docstring():
    """Contexts from d0, one action from each policy's row, label 1 when a float64 uniform is
    below sigmoid(r*(x, a1) - r*(x, a2)), on the same stream."""
    from gsfh_utils.sampling import sample_categorical

    bandit = make_bandit(seed=3)
    policy = bandit.optimal_policy()
    prefs = bandit.sample_preferences(30, bandit.ref_probs, policy, generator(20), (2,))
    replay = generator(20)
    contexts = bandit.sample_contexts(30, replay, (2,))
    first = sample_categorical(bandit.ref_probs[contexts], 1, replay).squeeze(-1)
    second = sample_categorical(policy[contexts], 1, replay).squeeze(-1)
    rewards = bandit.rewards()
    margin = rewards[contexts, first] - rewards[contexts, second]
    labels = torch.rand(margin.shape, dtype=F64, generator=replay) < torch.sigmoid(margin)
    assert torch.equal(prefs.labels, labels.to(F64)) and torch.equal(prefs.second_actions, second)


def test_preferences_without_a_batch_dimension_concat():
    bandit = make_bandit()
    first, second = (bandit.sample_preferences(n, bandit.ref_probs, bandit.ref_probs,
                                               generator(n)) for n in (2, 3))
    both = first.concat(second)
    assert both.labels.shape == (5,) and both.feature_diffs.shape == (5, 3)
    for name in ("contexts", "first_actions", "second_actions", "labels"):
        assert torch.equal(getattr(both, name), torch.cat([getattr(first, name),
                                                           getattr(second, name)]))


def test_mean_features_reads_a_list_policy_in_float64():
    """A policy given as nested Python lists is read in float64 (as the class stores its fields):
    entries such as 1/3 and 1/7, not exact in float32, give the float64 mean to round-off."""
    bandit = make_bandit(zeros=False)
    policy = [[1 / 3, 1 / 3, 1 / 7, 1 / 7, 1 - 2 / 3 - 2 / 7]] * 4
    mean = sum(bandit.context_probs[x] * policy[x][a] * bandit.features[x, a]
               for x in range(4) for a in range(5))
    result = bandit.mean_features(policy)
    assert result.dtype == F64
    torch.testing.assert_close(result, mean, rtol=1e-14, atol=1e-15)
