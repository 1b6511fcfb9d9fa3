"""Online iterative learning with batch exploration, and the hybrid start (Xiong et al.,
arXiv:2312.11456, section 4 "Online Iterative Learning with Batch Exploration"; notebook 03).

For ``t = 1..T`` (batched over independent seeds, one instance):

- ``theta_hat`` = ridge MLE on all pairs so far (``estimation.fit_bt_mle``), ``Sigma_t =
  reg I + sum z z^T`` over the same pairs;
- main agent ``pi1_t`` = Gibbs policy of ``<theta_hat, phi>`` (``gibbs.gibbs_policy``);
- enhancer ``pi2_t`` = a maximiser of ``Gamma_t(pi) = beta ||v(pi)||_{Sigma_t^{-1}}``,
  ``v(pi) = E_x[E_{pi1_t} phi - E_pi phi]``, over the KL-budget set
  ``Pi_t = {pi : eta E_x KL(pi || pi1_t) <= Gamma_t(pi)}`` (``enhancer_policy``);
- a batch of ``m`` pairs ``x ~ d0, a1 ~ pi1_t, a2 ~ pi2_t`` labelled by Bradley-Terry.

The accuracy measured is ``target = J(pi*) - J(pi1) + eta E_x KL(pi* || pi1)``, which for a
Gibbs policy of ``theta_hat`` equals ``<theta* - theta_hat, E_x[E_{pi*} phi - E_{pi1} phi]>``
(evaluation only: no method sees ``theta*``).

Why tilts suffice for the enhancer. ``||v||_{Sigma^{-1}} = max_{||g||_Sigma <= 1} <g, v>``. Take
any ``pi`` in ``Pi_t`` and its dual direction ``g = Sigma^{-1} v(pi) / ||v(pi)||_{Sigma^{-1}}``.
Among all policies with ``E_x KL(. || pi1) <= E_x KL(pi || pi1)``, ``<g, v(.)>`` is maximised by
an exponential tilt ``pi1 exp(-s <g, phi>)`` (Gibbs variational principle), so that tilt has
``Gamma >= Gamma(pi) >= eta KL(pi || pi1) >= eta KL(tilt || pi1)``: it lies in ``Pi_t`` and is at
least as good. Hence ``max_{Pi_t} Gamma`` is attained in the closure of the tilt family
``{pi1 exp(<u, phi>)}``, and the search runs over it: several starting directions, a grid of
scales, and fixed-point refinements ``u <- -Sigma^{-1} v(pi_best)`` (each refinement cannot lower
``Gamma`` at a fixed KL, by the same argument). Every candidate's constraint is evaluated
exactly and only feasible ones are kept; ``pi1`` itself (``Gamma = KL = 0``) is the fallback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validation import as_float64, check_generator, check_positive_int, check_positive_number
from .dpo import best_of_n_probs, sample_ranked_pairs
from .estimation import fit_bt_mle, whitener
from .gibbs import gibbs_policy
from .instance import LinearBTBandit, Preferences

#: Pair-sampling options of ``run_online``: which policies draw ``(a1, a2)`` in each batch.
METHODS = ("enhancer", "reference", "on_policy", "offline")
#: Pair samplers of ``run_online`` that rank several on-policy responses by the reward model
#: (the first two responses of a pair are then not independent draws of two policies).
RANKED_METHODS = ("best_worst",)

#: Default scale grid of the enhancer's tilts ``pi1 exp(s <u, phi>)`` with ``||u|| = 1`` (so
#: ``|s <u, phi>| <= s``): from a gentle tilt to a practically deterministic one.
DEFAULT_SCALES = tuple(float(s) for s in torch.logspace(-1, 2.5, 8, dtype=torch.float64))

#: Bisection steps of the enhancer's scale search between two grid scales, and how many of
#: each seed's best directions are refined so.
NUM_BISECTIONS = 8
BISECTED_DIRECTIONS = 4
#: How many of each seed's best directions the fixed-point refinement rounds carry on.
REFINED_DIRECTIONS = 6

#: Relative feasibility margin of the (float32) enhancer search: a tilt is a candidate only if
#: ``eta KL <= (1 - margin) Gamma``; float32 round-off (about 1e-6 relative) stays far below it.
SEARCH_MARGIN = 1e-3


def _whitened_norm(vectors, whitening) -> torch.Tensor:
    """``||v||_{Sigma^{-1}} = ||L^{-1} v||`` given ``whitening = L^{-1}`` (``Sigma = L L^T``);
    ``vectors [..., d]`` broadcast against ``whitening [..., d, d]``."""
    return torch.einsum("...ij,...j->...i", whitening, vectors).norm(dim=-1)


def policy_uncertainty(bandit: LinearBTBandit, policy, *, main, sigma, beta) -> torch.Tensor:
    """``Gamma(pi) = beta ||E_x[E_{pi1} phi - E_pi phi]||_{Sigma^{-1}}`` with ``pi1 = main``
    (batched over the leading dimensions of ``policy``, ``main`` and ``sigma``)."""
    diff = bandit.mean_features(main) - bandit.mean_features(policy)
    return as_float64(beta) * _whitened_norm(diff, whitener(sigma))


def target_accuracy(bandit: LinearBTBandit, main) -> torch.Tensor:
    """``J(pi*) - J(pi1) + eta E_x KL(pi* || pi1)`` for policies ``main [..., X, K]`` (exact).

    The quantity the paper's online guarantee bounds; zero only at ``pi1 = pi*``.
    """
    main = as_float64(main)
    return (bandit.suboptimality(main)
            + bandit.eta * bandit.expected_kl(bandit.optimal_policy(), main))


@dataclass(frozen=True)
class EnhancerSearch:
    """The enhancer returned by ``enhancer_policy`` (leading dimensions = those of ``main``).

    ``policy [..., X, K]``, ``gamma`` = ``Gamma_t(policy)``, ``kl`` = ``E_x KL(policy || pi1)``,
    ``slack = gamma - eta kl`` (>= 0: the budget constraint, verified), ``direction [..., d]``
    and ``scale`` of the tilt ``pi1 exp(scale <direction, phi>)`` (scale 0: ``pi1`` itself).
    """

    policy: torch.Tensor
    gamma: torch.Tensor
    kl: torch.Tensor
    slack: torch.Tensor
    direction: torch.Tensor
    scale: torch.Tensor


def _tilts(log_main, features, context_probs, directions, scales):
    """Tilted policies ``pi1 exp(s <u, phi>)`` for every direction and scale.

    ``log_main [S, X, K]``, ``directions [S, D, d]`` (unit), ``scales [G]`` or ``[S, D, G]``,
    all of one dtype
    (the search runs in float32 for speed; the returned policy is re-verified in float64).
    Returns policies ``[S, D, G, X, K]``, their mean features ``[S, D, G, d]`` and
    ``E_x KL(. || pi1)`` ``[S, D, G]``. The KL is computed as ``sum_a pi (s <u, phi> - log Z)``,
    finite even where ``pi1`` is zero.
    """
    projections = torch.einsum("xkd,sud->suxk", features, directions)  # [S, D, X, K]
    if scales.ndim == 1:
        scales = scales.view(1, 1, -1)
    shift = projections.unsqueeze(2) * scales[..., None, None]  # [S, D, G, X, K]
    logits = shift + log_main.unsqueeze(1).unsqueeze(1)
    # log Z = m + log sum exp(logits - m), m the row maximum (finite: pi1 has some mass).
    row_max = logits.amax(-1, keepdim=True)
    weights = logits.sub_(row_max).exp_()
    total = weights.sum(-1, keepdim=True)
    policy = weights.div_(total)
    log_norm = (row_max + total.log_()).squeeze(-1)
    # KL(pi || pi1) = sum_a pi (shift - log Z), as sum_a pi = 1.
    per_context = (torch.linalg.vecdot(policy, shift) - log_norm).clamp_min_(0.0)
    kl = per_context @ context_probs
    weighted = (policy * context_probs.unsqueeze(-1)).flatten(-2)  # [S, D, G, X K]
    means = weighted @ features.flatten(0, 1)
    return policy, means, kl


def enhancer_policy(bandit: LinearBTBandit, main, *, sigma, beta: float,
                    generator: torch.Generator, num_random_directions: int = 8,
                    num_refinements: int = 2, scales=DEFAULT_SCALES) -> EnhancerSearch:
    """The enhancer ``pi2 = argmax_{pi in Pi_t} Gamma_t(pi)``, searched over tilts of ``pi1``.

    ``main`` ``pi1 [S, X, K]`` (one main agent per seed), ``sigma [S, d, d]``, ``beta > 0``; the
    bandit gives ``phi``, ``d0`` and ``eta`` (never ``theta*``). Directions: ``+-`` the
    eigenvectors of ``Sigma`` (the least-covered ones matter most), plus
    ``num_random_directions`` draws ``Sigma^{-1/2} xi``; for each, every scale on the grid (then
    a bisection on the scale for the best few, where the budget binds); then
    ``num_refinements`` rounds in which the ``REFINED_DIRECTIONS`` best directions are replaced
    by the dual direction ``-Sigma^{-1} v`` of their best feasible tilt. The search runs in
    float32 and keeps a candidate only if ``eta E_x KL(pi || pi1) <= (1 - SEARCH_MARGIN)
    Gamma_t(pi)``; the best one (largest ``Gamma``) is rebuilt in float64 and its constraint
    verified there; ``pi1`` itself (always feasible) is returned where no candidate passes.
    See the module docstring for why tilts suffice. ``main`` must be ``[S, X, K]``.
    """
    check_generator(generator)
    main, sigma = as_float64(main), as_float64(sigma)
    features, context_probs, eta = bandit.features, bandit.context_probs, bandit.eta
    beta = check_positive_number(beta, "beta")
    if num_random_directions < 0 or num_refinements < 0:
        raise ValueError("num_random_directions and num_refinements must be non-negative")
    if main.ndim != 3 or main.shape[1:] != features.shape[:2]:
        raise ValueError(f"main must have shape [S, X, K] with [X, K] = "
                         f"{tuple(features.shape[:2])}, got {tuple(main.shape)}")
    num_seeds = main.shape[0]
    dim = features.shape[-1]
    scales = as_float64(scales)
    if scales.ndim != 1 or not (scales > 0).all():
        raise ValueError("scales must be a 1-d sequence of positive numbers")
    whitening = whitener(sigma)  # [S, d, d]
    mean_main = bandit.mean_features(main)  # [S, d]

    _, eigenvectors = torch.linalg.eigh(sigma)  # columns, ascending eigenvalues
    starts = [eigenvectors.transpose(-1, -2), -eigenvectors.transpose(-1, -2)]
    if num_random_directions:
        noise = torch.randn(num_seeds, num_random_directions, dim, dtype=torch.float64,
                            generator=generator)
        # Sigma^{-1/2}-shaped draws: L^{-T} xi has covariance Sigma^{-1}.
        starts.append(torch.einsum("sji,suj->sui", whitening, noise))
    directions = torch.cat(starts, 1)
    directions = directions / directions.norm(dim=-1, keepdim=True)

    # The search runs in float32 (it only proposes a direction and a scale); a candidate counts
    # as feasible with a relative margin SEARCH_MARGIN, far above float32 round-off, and the
    # returned policy is rebuilt and verified in float64 below.
    single = torch.float32
    log_main32 = torch.log(main).to(single)
    features32, context32 = features.to(single), context_probs.to(single)
    scales32, whitener32, mean32 = scales.to(single), whitening.to(single), mean_main.to(single)
    best_gamma = torch.zeros(num_seeds, dtype=single)
    best_direction = torch.zeros(num_seeds, dim, dtype=torch.float64)
    best_scale = torch.zeros(num_seeds, dtype=torch.float64)
    seeds = torch.arange(num_seeds)
    for round_index in range(num_refinements + 1):
        directions32 = directions.to(single)

        def evaluate(scale_values, directions32):
            _, means, kl = _tilts(log_main32, features32, context32, directions32, scale_values)
            diffs = mean32[:, None, None, :] - means  # [S, D, G, d]
            whitened = diffs.flatten(1, 2) @ whitener32.transpose(-1, -2)  # rows L^{-1} v
            gamma = beta * whitened.norm(dim=-1).view_as(kl)
            feasible = eta * kl <= (1 - SEARCH_MARGIN) * gamma
            return torch.where(feasible, gamma, -torch.inf), diffs

        score, diffs = evaluate(scales32, directions32)  # [S, D, G]
        per_direction, scale_index = score.max(-1)  # [S, D]
        direction_scale = torch.where(torch.isfinite(per_direction), scales32[scale_index], 0.0)
        chosen = diffs.gather(2, scale_index[:, :, None, None].expand(-1, -1, 1, dim)).squeeze(2)
        # Bisection, for the BISECTED_DIRECTIONS best directions of each seed, between the best
        # feasible grid scale and the next one up (or between 0 and the smallest grid scale):
        # where the budget binds, the best tilt sits on its boundary.
        top = per_direction.topk(min(BISECTED_DIRECTIONS, per_direction.shape[1]), -1).indices
        top_directions = directions32.gather(1, top[..., None].expand(-1, -1, dim))
        top_score = per_direction.gather(1, top)
        low = direction_scale.gather(1, top)
        upper_index = torch.where(torch.isfinite(top_score), scale_index.gather(1, top) + 1, 0)
        high = scales32[upper_index.clamp_max(len(scales) - 1)]
        refine = upper_index < len(scales)
        if bool(refine.any()):
            for _ in range(NUM_BISECTIONS):
                middle = (low + high) / 2
                middle_score, _ = evaluate(middle.unsqueeze(-1), top_directions)
                ok = torch.isfinite(middle_score.squeeze(-1))
                low = torch.where(ok, middle, low)
                high = torch.where(ok, high, middle)
            low_score, low_diffs = evaluate(low.unsqueeze(-1), top_directions)
            low_score = torch.where(refine, low_score.squeeze(-1), -torch.inf)
            improve = low_score > top_score
            per_direction = per_direction.scatter(1, top, torch.where(improve, low_score,
                                                                       top_score))
            direction_scale = direction_scale.scatter(
                1, top, torch.where(improve, low, direction_scale.gather(1, top)))
            chosen = chosen.scatter(
                1, top[..., None].expand(-1, -1, dim),
                torch.where(improve.unsqueeze(-1), low_diffs.squeeze(2),
                            chosen.gather(1, top[..., None].expand(-1, -1, dim))))

        candidate, direction_index = per_direction.max(-1)  # [S]
        better = candidate > best_gamma
        best_gamma = torch.where(better, candidate, best_gamma)
        best_direction = torch.where(better[:, None], directions[seeds, direction_index],
                                     best_direction)
        best_scale = torch.where(better, direction_scale[seeds, direction_index].to(torch.float64),
                                 best_scale)
        if round_index == num_refinements:
            break
        # Refinement: the REFINED_DIRECTIONS best directions of each seed are replaced by the dual
        # direction -Sigma^{-1} v of their best feasible tilt; the others are dropped.
        keep = per_direction.topk(min(REFINED_DIRECTIONS, per_direction.shape[1]), -1).indices
        kept_score = per_direction.gather(1, keep)
        kept = chosen.gather(1, keep[..., None].expand(-1, -1, dim)).to(torch.float64)
        directions = directions.gather(1, keep[..., None].expand(-1, -1, dim))
        dual = torch.einsum("sji,suj->sui", whitening,
                            torch.einsum("sij,suj->sui", whitening, kept))
        norms = dual.norm(dim=-1, keepdim=True)
        usable = torch.isfinite(kept_score).unsqueeze(-1) & (norms > 0)
        directions = torch.where(usable, -dual / norms.clamp_min(1e-300), directions)
    # The returned policy, rebuilt in float64 and verified: eta E_x KL(pi2 || pi1) <= Gamma(pi2).
    return _verified_tilt(bandit, main, sigma, beta, best_direction, best_scale)


def _verified_tilt(bandit, main, sigma, beta, direction, scale):
    """``pi1 exp(scale <direction, phi>)`` in float64, with its Gamma, KL and slack; where the
    constraint fails as computed here (never expected, see SEARCH_MARGIN) it returns ``pi1``."""
    eta = bandit.eta
    shift = scale[:, None, None] * torch.einsum("xkd,sd->sxk", bandit.features, direction)
    policy = torch.softmax(torch.log(main) + shift, -1)
    gamma = policy_uncertainty(bandit, policy, main=main, sigma=sigma, beta=beta)
    kl = bandit.expected_kl(policy, main)
    keep = (eta * kl <= gamma) & (scale > 0)
    policy = torch.where(keep[:, None, None], policy, main)
    gamma = torch.where(keep, gamma, 0.0)
    kl = torch.where(keep, kl, 0.0)
    scale = torch.where(keep, scale, 0.0)
    return EnhancerSearch(policy, gamma, kl, gamma - eta * kl, direction, scale)


@dataclass(frozen=True)
class OnlineRun:
    """Everything ``run_online`` measured; ``S`` seeds, ``T`` batches of ``m`` pairs.

    Index ``k = 0..T`` counts the batches collected: ``theta_hat[k]`` is the MLE on the initial
    data plus the first ``k`` batches (``k m`` online comparisons), ``target[k]`` the accuracy of
    its Gibbs policy ``pi1``, the main agent (the algorithm's output after ``k`` batches). Batch
    ``t`` (``1..T``) is drawn by ``pi1 = Gibbs(theta_hat[t-1])`` and the second policy; its
    statistics are at index ``t - 1``.

    - ``theta_hat [T+1, S, d]``, ``sigma [T+1, S, d, d]`` (``Sigma_k``), ``target [T+1, S]``,
      ``log_det [T+1, S]`` (``log det Sigma_k``),
      ``estimation_error [T+1, S]`` (``||theta_hat_k - theta*||_{Sigma_k}``, evaluation only);
    - ``gamma``, ``kl``, ``slack`` ``[T, S]`` of the second policy (``Gamma_t``,
      ``E_x KL(pi2 || pi1)``, ``Gamma_t - eta KL``; for the baselines too, for comparison);
    - ``batch_potential [T, S]``: ``log(1 + m ||zbar_t||^2_{Sigma_{t-1}^{-1}})`` with ``zbar_t`` the
      batch mean of ``z`` (a lower bound on the growth of ``log det``);
    - ``main_policies [T+1, S, X, K]``, ``second_policies [T, S, X, K]``, ``data`` (all pairs,
      initial data first).
    """

    method: str
    batch_size: int
    initial_size: int
    beta: float
    theta_hat: torch.Tensor
    sigma: torch.Tensor
    target: torch.Tensor
    log_det: torch.Tensor
    estimation_error: torch.Tensor
    gamma: torch.Tensor
    kl: torch.Tensor
    slack: torch.Tensor
    batch_potential: torch.Tensor
    second_policies: torch.Tensor
    main_policies: torch.Tensor
    data: Preferences

    @property
    def comparisons(self) -> torch.Tensor:
        """Online comparisons after ``k`` batches, ``k = 0..T``."""
        return self.batch_size * torch.arange(self.target.shape[0], dtype=torch.float64)


def _fit(data: Preferences | None, reg: float, num_seeds: int, dim: int) -> torch.Tensor:
    if data is None or len(data) == 0:
        return torch.zeros(num_seeds, dim, dtype=torch.float64)  # the ridge MLE without data
    return fit_bt_mle(data.feature_diffs, data.labels, reg)


def _sigma(data: Preferences | None, reg: float, num_seeds: int, dim: int) -> torch.Tensor:
    sigma = reg * torch.eye(dim, dtype=torch.float64).expand(num_seeds, dim, dim).clone()
    if data is not None and len(data) > 0:
        sigma = sigma + data.feature_diffs.transpose(-1, -2) @ data.feature_diffs
    return sigma


def run_online(bandit: LinearBTBandit, *, method: str, num_batches: int, batch_size: int,
               num_seeds: int, beta: float, reg: float, generator: torch.Generator,
               initial_data: Preferences | None = None, num_random_directions: int = 8,
               num_refinements: int = 2, scales=DEFAULT_SCALES,
               responses_per_prompt: int = 8) -> OnlineRun:
    """Online iterative learning (the paper's section 4), batched over ``num_seeds`` seeds.

    ``method`` picks the pairs of each batch (the others share the loop and budget):

    - ``"enhancer"``: ``a1 ~ pi1_t`` (main agent), ``a2 ~ pi2_t`` (``enhancer_policy``);
    - ``"reference"``: ``a1 ~ pi1_t``, ``a2 ~ pi0`` (enhancer replaced by the reference);
    - ``"on_policy"``: both from ``pi1_t`` (random on-policy pairs; the paper's practical
      pairing ranks several on-policy responses, see ``gsfh_utils.dpo``);
    - ``"offline"``: both from ``pi0`` (no interaction: the data never depend on the estimate);
    - ``"best_worst"``: the enhancer as practitioners run it: ``responses_per_prompt`` responses
      from ``pi1_t`` per prompt, best-of-n against worst-of-n as ranked by the reward model
      ``<theta_hat_t, phi>`` (the MLE on the labels so far, never ``theta*``;
      ``dpo.sample_ranked_pairs``). Its "policies" are the exact laws of the two kept responses
      (``dpo.best_of_n_probs``), which give the recorded ``gamma`` and ``kl``.

    ``initial_data`` (``Preferences`` with batch shape ``[num_seeds]``) is the hybrid start: it
    enters the MLE and ``Sigma_0``. ``beta`` is the confidence radius used by ``Gamma_t``;
    ``reg`` the ridge ``lambda``. The output after ``k`` batches is the main agent ``pi1_k``.
    Raises ``ValueError`` for a non-positive batch size, number of batches or seeds, an unknown
    method, a bad ``beta``/``reg`` or initial data of the wrong shape.
    """
    if method not in METHODS + RANKED_METHODS:
        raise ValueError(f"method must be one of {METHODS + RANKED_METHODS}, got {method!r}")
    check_positive_int(num_batches, "num_batches")
    check_positive_int(batch_size, "batch_size")
    check_positive_int(num_seeds, "num_seeds")
    check_generator(generator)
    beta = check_positive_number(beta, "beta")
    reg = check_positive_number(reg, "reg")
    dim = bandit.dim
    if initial_data is not None:
        if initial_data.labels.shape[:-1] != (num_seeds,):
            raise ValueError(
                f"initial_data must have batch shape [{num_seeds}], got "
                f"{tuple(initial_data.labels.shape[:-1])}"
            )
        if initial_data.feature_diffs.shape[-1] != dim:
            raise ValueError(f"initial_data must have {dim} features")
    initial_size = 0 if initial_data is None else len(initial_data)
    ref = bandit.ref_probs
    data = initial_data
    thetas, sigmas, mains, seconds = [], [], [], []
    gammas, kls, slacks, potentials = [], [], [], []
    for batch in range(num_batches + 1):
        theta = _fit(data, reg, num_seeds, dim)
        sigma = _sigma(data, reg, num_seeds, dim)
        thetas.append(theta)
        sigmas.append(sigma)
        main = gibbs_policy(ref, bandit.rewards(theta), bandit.eta)  # [S, X, K]
        mains.append(main)
        if batch == num_batches:
            break
        if method == "enhancer":
            second = enhancer_policy(bandit, main, sigma=sigma, beta=beta, generator=generator,
                                     num_random_directions=num_random_directions,
                                     num_refinements=num_refinements, scales=scales).policy
        elif method == "on_policy":
            second = main
        elif method == "best_worst":  # the reward model: the MLE on the labels so far
            scores = bandit.rewards(theta)
            second = best_of_n_probs(main, scores, responses_per_prompt, worst=True)
        else:
            second = ref.expand_as(main)
        if method == "offline":
            first = ref.expand_as(main)
        elif method == "best_worst":
            first = best_of_n_probs(main, scores, responses_per_prompt)
        else:
            first = main
        gamma = policy_uncertainty(bandit, second, main=first, sigma=sigma, beta=beta)
        kl = bandit.expected_kl(second, first)
        gammas.append(gamma)
        kls.append(kl)
        slacks.append(gamma - bandit.eta * kl)
        seconds.append(second)
        if method == "best_worst":
            contexts = bandit.sample_contexts(batch_size, generator, (num_seeds,))
            pairs = bandit.label_pairs(contexts, *sample_ranked_pairs(
                main, scores, contexts=contexts, responses_per_prompt=responses_per_prompt,
                selector="max_min", generator=generator), generator)
        else:
            pairs = bandit.sample_preferences(batch_size, first, second, generator, (num_seeds,))
        mean_z = pairs.feature_diffs.mean(-2)
        potentials.append(torch.log1p(batch_size * _whitened_norm(mean_z, whitener(sigma)) ** 2))
        data = pairs if data is None else data.concat(pairs)

    theta_hat = torch.stack(thetas)
    sigma_all = torch.stack(sigmas)
    main_policies = torch.stack(mains)
    error = theta_hat - bandit.theta_star
    return OnlineRun(
        method=method, batch_size=batch_size, initial_size=initial_size, beta=beta,
        theta_hat=theta_hat, sigma=sigma_all, target=target_accuracy(bandit, main_policies),
        log_det=torch.linalg.slogdet(sigma_all)[1],
        estimation_error=torch.einsum("...i,...ij,...j->...", error, sigma_all, error).sqrt(),
        gamma=torch.stack(gammas), kl=torch.stack(kls), slack=torch.stack(slacks),
        batch_potential=torch.stack(potentials), second_policies=torch.stack(seconds),
        main_policies=main_policies, data=data,
    )


def elliptical_potentials(feature_diffs, reg: float, initial_sigma=None) -> torch.Tensor:
    """``||z_s||^2_{Sigma_{s-1}^{-1}}`` for the pairs in order, with
    ``Sigma_s = Sigma_{s-1} + z_s z_s^T`` from ``Sigma_0 = initial_sigma`` (default ``reg I``):
    ``feature_diffs [..., n, d]`` -> ``[..., n]``. Sherman-Morrison updates of ``Sigma^{-1}``,
    batched over leading dimensions.

    The elliptical potential lemma: ``sum_s min(1, ||z_s||^2_{Sigma_{s-1}^{-1}}) <=
    2 log(det Sigma_n / det Sigma_0)`` (since ``min(1, u) <= 2 log(1 + u)`` and
    ``det Sigma_s = det Sigma_{s-1} (1 + ||z_s||^2_{Sigma_{s-1}^{-1}})``).
    """
    reg = check_positive_number(reg, "reg")
    z = as_float64(feature_diffs)
    if z.ndim < 2:
        raise ValueError(f"feature_diffs must have shape [..., n, d], got {tuple(z.shape)}")
    dim = z.shape[-1]
    if initial_sigma is None:
        inverse = torch.eye(dim, dtype=torch.float64) / reg
        inverse = inverse.expand(*z.shape[:-2], dim, dim).clone()
    else:
        inverse = torch.linalg.inv(as_float64(initial_sigma))
        inverse = inverse.expand(*z.shape[:-2], dim, dim).clone()
    out = []
    for s in range(z.shape[-2]):
        zs = z[..., s, :]
        scaled = torch.einsum("...ij,...j->...i", inverse, zs)
        quad = (zs * scaled).sum(-1)
        out.append(quad)
        outer = torch.einsum("...i,...j->...ij", scaled, scaled)
        inverse = inverse - outer / (1 + quad)[..., None, None]
    return torch.stack(out, -1)


def log_det_bound(num_pairs, *, dim: int, reg: float, feature_diff_bound: float = 2.0):
    """``log(det Sigma_n / det Sigma_0) <= d log(1 + n L^2 / (d reg))`` for ``n`` pairs with
    ``||z|| <= L`` and ``Sigma_0 = reg I`` (AM-GM on the eigenvalues: the trace is at most
    ``d reg + n L^2``)."""
    num_pairs = as_float64(num_pairs)
    return dim * torch.log1p(num_pairs * feature_diff_bound**2 / (dim * reg))


def undercovered_instance(*, num_contexts: int, num_actions: int, dim: int, num_rare: int,
                          rare_mass: float, norm_bound: float, eta: float,
                          generator: torch.Generator, rare_weight: float = 0.8) -> LinearBTBandit:
    """A bandit where ``pi0`` under-covers the optimal directions (notebook 03).

    The first ``d - d/2`` coordinates are *common*, the last ``d/2`` *rare*. ``num_rare`` actions
    per context (the first ones) are rare, with ``phi = rho [sqrt(1 - w^2) e_c, w e_r]``, ``e_c``,
    ``e_r`` uniform unit vectors of the two blocks, ``w = rare_weight`` and ``rho`` uniform in
    [0.5, 1]; common actions load only the common block (``phi = rho [e_c, 0]``). ``pi0`` gives the
    rare actions total mass ``rare_mass`` (softmax of normal logits within each group), ``d0`` is
    uniform, ``theta* = B [e / sqrt 2, f / sqrt 2]`` with unit ``e``, ``f`` in each block: half of
    the reward sits in directions that only rare actions reveal.
    """
    for name, value in [("num_contexts", num_contexts), ("num_actions", num_actions),
                        ("dim", dim), ("num_rare", num_rare)]:
        check_positive_int(value, name)
    if dim < 2:
        raise ValueError(f"dim must be at least 2, got {dim!r}")
    if not num_rare < num_actions:
        raise ValueError(f"num_rare must be below num_actions, got {num_rare!r}")
    if not 0 < rare_mass < 1:
        raise ValueError(f"rare_mass must be in (0, 1), got {rare_mass!r}")
    if not 0 < rare_weight <= 1:
        raise ValueError(f"rare_weight must be in (0, 1], got {rare_weight!r}")
    rare_dim = dim // 2
    common_dim = dim - rare_dim

    def unit(*shape):
        draw = torch.randn(*shape, dtype=torch.float64, generator=generator)
        return draw / draw.norm(dim=-1, keepdim=True)

    common = unit(num_contexts, num_actions, common_dim)
    rare = unit(num_contexts, num_actions, rare_dim)
    is_rare = torch.zeros(num_contexts, num_actions, 1, dtype=torch.bool)
    is_rare[:, :num_rare] = True
    rare_features = torch.cat([math.sqrt(1 - rare_weight**2) * common, rare_weight * rare], -1)
    common_features = torch.cat([common, torch.zeros_like(rare)], -1)
    radius = 0.5 + 0.5 * torch.rand(num_contexts, num_actions, 1, dtype=torch.float64,
                                    generator=generator)
    features = radius * torch.where(is_rare, rare_features, common_features)
    theta_star = norm_bound * torch.cat([unit(common_dim), unit(rare_dim)]) / math.sqrt(2)
    logits = torch.randn(num_contexts, num_actions, dtype=torch.float64, generator=generator)
    mask = is_rare.squeeze(-1)
    rare_probs = torch.softmax(logits.masked_fill(~mask, -torch.inf), -1)
    common_probs = torch.softmax(logits.masked_fill(mask, -torch.inf), -1)
    ref_probs = rare_mass * rare_probs + (1 - rare_mass) * common_probs
    context_probs = torch.full((num_contexts,), 1.0 / num_contexts, dtype=torch.float64)
    return LinearBTBandit(features, theta_star, ref_probs, context_probs, eta)


def batches_to_reach(curve, level) -> torch.Tensor:
    """First index ``k`` with ``curve[k] <= level`` (``curve [T+1, ...]``, index = batches
    collected), ``inf`` where it is never reached: shape ``[...]`` (float64)."""
    curve = as_float64(curve)
    reached = curve <= as_float64(level)
    index = torch.arange(curve.shape[0], dtype=torch.float64).view(-1, *([1] * (curve.ndim - 1)))
    return torch.where(reached, index, torch.inf).amin(0)


def paper_batch_schedule(*, dim: int, gamma: float, epsilon: float) -> tuple[int, int]:
    """The batch size and number of batches of the paper's online guarantee, with the constants of
    its ``O~`` set to 1: ``m = ceil(d / (gamma^2 eps^2))`` pairs per batch and ``T`` the smallest
    integer ``T >= d`` with ``T >= d log T`` (the inequality also holds at ``T = 1``, where
    ``log T = 0``, outside the regime of the argument). Returns ``(m, T)``."""
    check_positive_int(dim, "dim")
    gamma = check_positive_number(gamma, "gamma")
    epsilon = check_positive_number(epsilon, "epsilon")
    batches = dim
    while batches < dim * math.log(batches):
        batches += 1
    return math.ceil(dim / (gamma**2 * epsilon**2)), batches
