"""Sampling the Gibbs policy by rejection from pi0 (the RSO view, PAPER.md section 2).

Propose ``a ~ pi0(.|x)``, accept with probability ``exp((r(x,a) - r_max(x))/eta)``. Accepted
draws follow the Gibbs policy exactly; the acceptance rate is
``E_{pi0} exp((r - r_max)/eta) = Z_r(x) exp(-r_max(x)/eta)``.
Here ``r_max(x)`` is the largest reward on the support of pi0 (actions outside it are never
proposed), which gives the largest valid acceptance rate.
"""

from __future__ import annotations

import math

import torch

from ._validation import check_generator, check_positive_int
from .gibbs import checked_log_tilt

#: Above this many expected proposals per context, exact one-step rejection is refused.
MAX_EXPECTED_PROPOSALS = 10**8


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
    ``[...]`` (accepted / proposed over the rounds that were run; proposals come in rounds, all
    rows at once, until every row has ``num_samples`` accepted draws).

    Raises ``ValueError`` when a row needs more than ``MAX_EXPECTED_PROPOSALS`` expected
    proposals (tiny ``eta``): use the multi-step sampler then.
    """
    check_positive_int(num_samples, "num_samples")
    check_generator(generator)
    ref_probs, log_accept, _, _ = checked_log_tilt(ref_probs, rewards, eta)
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
    # Enough proposals per round that most rows finish in one or two rounds.
    per_round = min(max(math.ceil(1.2 * num_samples / worst_rate), num_samples),
                    2**22 // num_rows + 1)
    rows = torch.arange(num_rows).unsqueeze(-1)
    while (filled < num_samples).any():
        active = filled < num_samples
        proposals = torch.multinomial(ref_rows, per_round, replacement=True, generator=generator)
        uniforms = torch.rand(num_rows, per_round, dtype=torch.float64, generator=generator)
        is_accepted = (uniforms < accept_rows.gather(-1, proposals)) & active.unsqueeze(-1)
        proposed += active.to(torch.float64) * per_round
        accepted += is_accepted.sum(-1)
        slot = filled.unsqueeze(-1) + is_accepted.cumsum(-1) - 1
        keep = is_accepted & (slot < num_samples)
        samples[rows.expand_as(slot)[keep], slot[keep]] = proposals[keep]
        filled = torch.clamp(filled + is_accepted.sum(-1), max=num_samples)
    return samples.reshape(*leading, num_samples), (accepted / proposed).reshape(leading)
