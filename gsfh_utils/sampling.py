"""Samplers of the Gibbs policy ``pi0 exp(r/eta) / Z`` of a reward.

- ``rejection_sample``: exact one-step rejection from pi0 (the RSO view): propose ``a ~ pi0(.|x)``
  and accept with probability ``exp((r(x,a) - r_max(x))/eta)``. Accepted draws follow the Gibbs
  policy exactly; the acceptance rate is ``E_{pi0} exp((r - r_max)/eta) = Z_r(x) exp(-r_max/eta)``
  (``acceptance_rate``). ``r_max(x)`` is the largest reward on the support of pi0 (actions outside
  it are never proposed), which gives the largest valid acceptance rate.
- ``sample_categorical``: independent draws from each row of a batch of distributions.
- ``rso_sample`` / ``rso_select``: RSO's practical finite-pool sampler (Liu et al. 2023,
  arXiv:2309.06657, Appendix A.1, Algorithm 1), batched over rows (seeds, contexts).
- ``multi_step_rejection_sample``: rejection sampling through a decreasing schedule
  ``eta_1 > ... > eta_N = eta``, each stage proposing from the previous stage's law (the paper's
  multi-step proposal for small ``eta``).
"""

from __future__ import annotations

import math

import torch

from ._validation import check_generator, check_positive_int, check_probs, check_rewards
from .gibbs import checked_log_tilt, gibbs_policy

#: Above this many expected proposals per context, exact one-step rejection is refused.
MAX_EXPECTED_PROPOSALS = 10**8


def sample_categorical(probs, num_samples: int, generator: torch.Generator) -> torch.Tensor:
    """``num_samples`` independent draws (with replacement) from each row of ``probs [..., K]``:
    action indices of shape ``[..., num_samples]``."""
    probs = check_probs(probs, "probs")
    check_positive_int(num_samples, "num_samples")
    check_generator(generator)
    draws = torch.multinomial(probs.reshape(-1, probs.shape[-1]), num_samples, replacement=True,
                              generator=generator)
    return draws.reshape(*probs.shape[:-1], num_samples)


def acceptance_rate(ref_probs, rewards, eta) -> torch.Tensor:
    """Exact acceptance rate ``Z_r(x) exp(-r_max(x)/eta)`` of the one-step rejection sampler.

    Computed as ``logsumexp(log pi0 + (r - r_max)/eta)``, finite for any positive ``eta``.
    """
    ref_probs, log_accept, _, _ = checked_log_tilt(ref_probs, rewards, eta)
    return torch.logsumexp(torch.log(ref_probs) + log_accept, dim=-1).exp()


def rejection_sample(ref_probs, rewards, eta, num_samples: int, generator: torch.Generator):
    """Exact draws from the Gibbs policy by rejection from ``ref_probs``.

    Returns ``(samples, empirical_rate)``: ``samples`` has shape ``[..., num_samples]`` (action
    indices, each row i.i.d. from the Gibbs policy of that row) and ``empirical_rate`` shape
    ``[...]`` (accepted / proposed over the rounds that were run; proposals come in rounds, for
    all rows still short of ``num_samples`` accepted draws at once, until none is).

    Raises ``ValueError`` when a row needs more than ``MAX_EXPECTED_PROPOSALS`` expected
    proposals (tiny ``eta``): use the multi-step sampler then.
    """
    check_positive_int(num_samples, "num_samples")
    check_generator(generator)
    ref_probs, log_accept, _, _ = checked_log_tilt(ref_probs, rewards, eta)
    ref_probs = ref_probs.expand_as(log_accept)  # eta may add leading dimensions
    leading = ref_probs.shape[:-1]
    num_actions = ref_probs.shape[-1]
    ref_rows = ref_probs.reshape(-1, num_actions)
    accept_rows = log_accept.reshape(-1, num_actions).exp()
    rates = (ref_rows * accept_rows).sum(-1)
    worst_rate = rates.min().item()
    if num_samples / max(worst_rate, 1e-300) > MAX_EXPECTED_PROPOSALS:
        raise ValueError(
            f"eta is too small for one-step rejection: acceptance rate {worst_rate:.3g} needs "
            f"about {num_samples / max(worst_rate, 1e-300):.3g} proposals; use multi-step "
            "rejection sampling through a decreasing eta schedule"
        )
    num_rows = ref_rows.shape[0]
    samples = torch.zeros(num_rows, num_samples, dtype=torch.long)
    filled = torch.zeros(num_rows, dtype=torch.long)
    proposed = torch.zeros(num_rows, dtype=torch.float64)
    accepted = torch.zeros(num_rows, dtype=torch.float64)
    while bool((filled < num_samples).any()):
        # Only the rows still short of draws propose, enough that most finish in this round.
        active = (filled < num_samples).nonzero().squeeze(-1)
        remaining = int((num_samples - filled[active]).max())
        per_round = min(max(math.ceil(1.2 * remaining / rates[active].min().item()), remaining),
                        2**22 // active.numel() + 1)
        proposals = torch.multinomial(ref_rows[active], per_round, replacement=True,
                                      generator=generator)
        uniforms = torch.rand(active.numel(), per_round, dtype=torch.float64, generator=generator)
        is_accepted = uniforms < accept_rows[active].gather(-1, proposals)
        proposed[active] += per_round
        accepted[active] += is_accepted.sum(-1)
        slot = filled[active].unsqueeze(-1) + is_accepted.cumsum(-1) - 1
        keep = is_accepted & (slot < num_samples)
        samples[active.unsqueeze(-1).expand_as(slot)[keep], slot[keep]] = proposals[keep]
        filled[active] = torch.clamp(filled[active] + is_accepted.sum(-1), max=num_samples)
    return samples.reshape(*leading, num_samples), (accepted / proposed).reshape(leading)

#: Proposals of ``multi_step_rejection_sample``.
PROPOSALS = ("gibbs", "empirical")


def rso_select(pool_rewards, num_samples: int, eta: float, generator: torch.Generator):
    """RSO's Algorithm 1 on given candidates: which pool positions are accepted, in order.

    ``pool_rewards [..., M]`` are the rewards of ``M`` candidates drawn from pi0. Algorithm 1
    (Liu et al. 2023) repeats, until ``num_samples`` are accepted: ``max_reward`` = the largest
    reward among the *remaining* candidates; go through the remaining candidates in order,
    accept each with probability ``exp((r - max_reward)/eta)`` (``u >= exp(...)``: skip), stop
    as soon as ``num_samples`` are accepted; remove the accepted ones from the pool. Each round
    accepts at least the best remaining candidate, so it ends after at most ``num_samples``
    rounds. Candidates are keyed by position (the reference code keys them by response text, which
    for language-model responses is the same thing: duplicates are rare).

    Returns positions ``[..., num_samples]`` into the pool, in acceptance order.
    """
    check_positive_int(num_samples, "num_samples")
    check_generator(generator)
    rewards = check_rewards(pool_rewards, "pool_rewards")
    pool_size = rewards.shape[-1]
    if pool_size < num_samples:
        raise ValueError(f"pool_size ({pool_size}) must be at least num_samples ({num_samples}): "
                         "RSO samples without replacement from the pool")
    eta = float(eta)
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"eta must be positive and finite, got {eta!r}")
    leading = rewards.shape[:-1]
    rows = rewards.reshape(-1, pool_size)
    num_rows = rows.shape[0]
    remaining = torch.ones(num_rows, pool_size, dtype=torch.bool)
    filled = torch.zeros(num_rows, dtype=torch.long)
    order = torch.full((num_rows, pool_size), pool_size, dtype=torch.long)  # acceptance rank
    positions = torch.arange(pool_size)
    while bool((filled < num_samples).any()):
        active = filled < num_samples
        max_reward = torch.where(remaining, rows, -torch.inf).amax(-1, keepdim=True)
        uniforms = torch.rand(num_rows, pool_size, dtype=torch.float64, generator=generator)
        accept_prob = torch.where(remaining, torch.exp((rows - max_reward) / eta), 0.0)
        accepted = remaining & (uniforms < accept_prob) & active.unsqueeze(-1)
        # Stop once num_samples are accepted: keep the first (num_samples - filled) in order.
        rank = filled.unsqueeze(-1) + accepted.cumsum(-1) - 1
        accepted = accepted & (rank < num_samples)
        order = torch.where(accepted, rank, order)
        remaining = remaining & ~accepted
        filled = filled + accepted.sum(-1)
    # Positions sorted by acceptance rank; the first num_samples are the accepted ones.
    sorted_positions = torch.argsort(order * (pool_size + 1) + positions, dim=-1)
    return sorted_positions[:, :num_samples].reshape(*leading, num_samples)


def rso_sample(ref_probs, rewards, eta, num_samples: int, pool_size: int,
               generator: torch.Generator):
    """RSO's finite-pool sampler of the Gibbs policy of ``rewards`` (batched over rows).

    For each row (context) draw ``pool_size`` candidates i.i.d. from ``ref_probs`` (pi0), then run
    ``rso_select`` on their rewards: ``num_samples`` candidates accepted without replacement,
    comparing against the best *remaining* reward. Returns the accepted actions
    ``[..., num_samples]``.

    Not exact: with ``pool_size == num_samples`` every candidate is returned (the law is pi0);
    as ``pool_size -> inf`` with ``num_samples`` fixed, the first round's maximum is the support
    maximum and the first ``num_samples`` acceptances are i.i.d. draws of the Gibbs policy, so
    the bias vanishes. Raises ``ValueError`` if ``pool_size < num_samples``.
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(pool_size, "pool_size")
    if pool_size < num_samples:
        raise ValueError(f"pool_size ({pool_size}) must be at least num_samples ({num_samples}): "
                         "RSO samples without replacement from the pool")
    check_generator(generator)
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    shape = torch.broadcast_shapes(ref_probs.shape, rewards.shape)
    ref_rows = ref_probs.expand(shape).reshape(-1, shape[-1])
    reward_rows = rewards.expand(shape).reshape(-1, shape[-1])
    pool = sample_categorical(ref_rows, pool_size, generator)
    picked = rso_select(reward_rows.gather(-1, pool), num_samples, eta, generator)
    return pool.gather(-1, picked).reshape(*shape[:-1], num_samples)


def geometric_schedule(eta_start: float, eta_end: float, num_stages: int) -> torch.Tensor:
    """``eta_1 = eta_start > ... > eta_N = eta_end``, evenly spaced in ``log eta``."""
    check_positive_int(num_stages, "num_stages")
    if not (0 < eta_end <= eta_start < math.inf):
        raise ValueError(f"need 0 < eta_end <= eta_start < inf, got {eta_start!r}, {eta_end!r}")
    if num_stages == 1:
        return torch.tensor([float(eta_end)], dtype=torch.float64)
    return torch.logspace(math.log10(eta_start), math.log10(eta_end), num_stages,
                          dtype=torch.float64)


def _stage_etas(etas):
    etas = torch.as_tensor(etas, dtype=torch.float64).reshape(-1)
    if etas.numel() == 0 or not torch.isfinite(etas).all() or (etas <= 0).any():
        raise ValueError("etas must be a non-empty sequence of positive finite numbers")
    if (etas[1:] >= etas[:-1]).any():
        raise ValueError(f"etas must be strictly decreasing, got {etas.tolist()}")
    return etas


def stage_temperatures(etas) -> torch.Tensor:
    """Per-stage ``eta_eff_k = 1/(1/eta_k - 1/eta_{k-1})`` (``eta_0 = inf``): stage ``k`` accepts
    a draw of ``pi_{k-1}`` with probability ``exp((r - r_max)/eta_eff_k)``, which turns
    ``pi0 exp(r/eta_{k-1})`` into ``pi0 exp(r/eta_k)``."""
    etas = _stage_etas(etas)
    inverse = 1 / etas
    previous = torch.cat([torch.zeros(1, dtype=torch.float64), inverse[:-1]])
    return 1 / (inverse - previous)


def multi_step_acceptance_rates(ref_probs, rewards, etas) -> torch.Tensor:
    """Exact acceptance rate of each stage when stage ``k`` proposes from the exact
    ``pi_{k-1} ∝ pi0 exp(r/eta_{k-1})``: shape ``[N, ...]``.

    Rate ``k`` is ``Z_k/Z_{k-1} exp(-r_max/eta_eff_k)`` and the product over stages telescopes to
    the one-step rate ``Z_N exp(-r_max/eta_N)``: the annealing splits one tiny acceptance rate
    into ``N`` moderate ones; it saves proposals only when each stage's proposals are cheap
    (a model trained on the previous stage's draws), not when stages are chained draw by draw.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    etas = _stage_etas(etas)
    temperatures = stage_temperatures(etas)
    rates = []
    proposal = ref_probs
    for eta_k, temperature in zip(etas.tolist(), temperatures.tolist(), strict=True):
        rates.append(acceptance_rate(proposal, rewards, temperature))
        proposal = gibbs_policy(ref_probs, rewards, eta_k)
    return torch.stack(rates)


def multi_step_rejection_sample(ref_probs, rewards, etas, num_samples: int,
                                generator: torch.Generator, proposal: str = "empirical"):
    """Multi-step rejection sampling of ``pi0 exp(r/eta_N)`` through ``etas`` (decreasing).

    Stage ``k`` draws ``num_samples`` accepted samples by rejection from a proposal with
    acceptance ``exp((r - r_max)/eta_eff_k)`` (``stage_temperatures``):

    - ``proposal="empirical"``: the proposal is the empirical law of stage ``k-1``'s accepted
      draws (stage 0: pi0), i.e. the tabular maximum-likelihood model "trained" on them. This is
      the practical procedure; its output is exact only as ``num_samples -> inf`` (an action
      unseen at one stage is never proposed again).
    - ``proposal="gibbs"``: the proposal is the exact ``pi_{k-1}`` (a perfectly trained
      intermediate model); every stage is exact.

    Returns ``(samples [..., num_samples], measured_rates [N, ...], proposals [...])``: the final
    stage's draws, each stage's measured acceptance rate and the total number of proposals used
    over all stages (``num_samples / rate`` summed over stages, as measured).
    """
    if proposal not in PROPOSALS:
        raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
    check_positive_int(num_samples, "num_samples")
    check_generator(generator)
    ref_probs = check_probs(ref_probs, "ref_probs")
    rewards = check_rewards(rewards)
    ref_probs, rewards = torch.broadcast_tensors(ref_probs, rewards)
    etas = _stage_etas(etas)
    temperatures = stage_temperatures(etas)
    num_actions = ref_probs.shape[-1]
    current = ref_probs
    rates, total = [], torch.zeros(ref_probs.shape[:-1], dtype=torch.float64)
    samples = None
    for eta_k, temperature in zip(etas.tolist(), temperatures.tolist(), strict=True):
        samples, rate = rejection_sample(current, rewards, temperature, num_samples, generator)
        rates.append(rate)
        total = total + num_samples / rate
        if proposal == "gibbs":
            current = gibbs_policy(ref_probs, rewards, eta_k)
        else:
            counts = torch.zeros(*samples.shape[:-1], num_actions, dtype=torch.float64)
            counts.scatter_add_(-1, samples, torch.ones_like(samples, dtype=torch.float64))
            current = counts / num_samples
    return samples, torch.stack(rates), total


def rso_bias(ref_probs, rewards, eta: float, *, num_samples: int, pool_size: int,
             num_runs: int, generator: torch.Generator):
    """The bias of RSO's finite-pool sampler, measured on ``num_runs`` independent runs (pools).

    Every run draws a pool of ``pool_size`` for each row (prompt) of ``ref_probs [X, K]`` and keeps
    ``num_samples`` by ``rso_select``. Returns ``(deficit, tv)``: ``deficit [num_runs]`` is
    ``E_{pi_r} r - mean reward of the accepted draws``, averaged over prompts, one independent
    value per run (draws within a run are dependent); ``tv`` the mean over prompts of the total
    variation between the law of all accepted draws and the Gibbs policy ``pi_r``.
    """
    from .gibbs import total_variation
    from .lab.stats import empirical_counts

    check_positive_int(num_runs, "num_runs")
    ref_probs, rewards = check_probs(ref_probs, "ref_probs"), check_rewards(rewards)
    target = gibbs_policy(ref_probs, rewards, eta)
    draws = rso_sample(ref_probs.expand(num_runs, *ref_probs.shape), rewards, eta, num_samples,
                       pool_size, generator).transpose(0, 1)  # [X, runs, n]
    accepted = rewards.gather(-1, draws.reshape(len(ref_probs), -1)).reshape(draws.shape)
    deficit = ((target * rewards).sum(-1, keepdim=True) - accepted.mean(-1)).mean(0)
    law = empirical_counts(draws.reshape(len(ref_probs), -1), ref_probs.shape[-1])
    return deficit, total_variation(law / law.sum(-1, keepdim=True), target).mean()
