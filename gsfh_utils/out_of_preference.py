"""DPO against reward-model policy optimisation, with and without out-of-preference prompts, on
continuous-context linear Bradley-Terry bandits, computed exactly (beyond the paper; notebook 06).

Li, Xu and Yu (arXiv:2312.10584) compare three routes from preferences to a policy: DPO;
reward-model-based policy optimisation (RMB-PO: fit a reward model, then optimise the policy
against it on the preference prompts); and RMB-PO+ (the same, with extra prompts that carry no
preference). Here every route ends in the same log-linear class
``pi_w(a|x) ∝ pi0(a) exp(<w, psi(x, a)>)`` whose features ``psi`` are the first ``d'`` of the
reward's ``d`` features ``phi`` (``d' = d``: well specified; ``d' < d``: misspecified):

- ``"dpo"``: ``dpo.train_dpo_linear`` on the preference pairs (the BT MLE of a reward in the span
  of ``psi``, then its Gibbs policy, notebook 04);
- ``"rm_po"``: the BT MLE on ``phi`` (``estimation.fit_bt_mle``), then
  ``policy_optimization.optimize_policy`` on the preference prompts;
- ``"rm_po+m"``: the same on the preference prompts and ``m`` preference-free prompts;
- the class's best policy, ``optimize_policy`` with the true reward on the evaluation contexts
  (it uses ``theta*``: a floor for reference, not a method).

The instance, batched over seeds: contexts ``x ~ N(0, I_p)``, features
``phi(x, a) = tanh(A_a x + b_a) / sqrt(d)`` (so ``||phi|| < 1``) with ``A_a``, ``b_a`` Gaussian,
``theta*`` of norm ``B``, a prompt-independent ``pi0`` and the coefficient ``eta``. Values are
averages over a fixed sample of evaluation contexts, independent of every prompt and exact over
actions; the suboptimality is ``J(pi*) - J(pi) = eta E_x KL(pi || pi*)`` (the gap identity).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ._validation import check_eta, check_positive_int, check_positive_number
from .dpo import (
    chosen_rejected,
    one_hot_features,
    pair_feature_diffs,
    train_dpo_linear,
    train_dpo_tabular,
)
from .estimation import CHUNK_BYTES, bt_gradient, fit_bt_mle
from .gibbs import gibbs_policy, kl_divergence, log_partition, regularized_value
from .policy_optimization import PO_TOLERANCE, log_linear_policy, optimize_policy
from .sampling import sample_categorical


@dataclass(frozen=True)
class ContinuousBandit:
    """Seeds of a continuous-context linear BT bandit (module docstring).

    ``projections [S, K, d, p]`` (``A_a``), ``offsets [S, K, d]`` (``b_a``), ``theta_star [S, d]``,
    ``ref_probs [S, K]`` (``pi0``, the same for every prompt), ``eta``.
    """

    projections: torch.Tensor
    offsets: torch.Tensor
    theta_star: torch.Tensor
    ref_probs: torch.Tensor
    eta: float

    @classmethod
    def random(cls, *, num_seeds: int, context_dim: int, num_actions: int, dim: int,
               norm_bound: float, eta: float, generator: torch.Generator,
               ref_temperature: float = 1.0) -> ContinuousBandit:
        """``num_seeds`` independent instances: ``A_a`` with N(0, 1/p) entries, ``b_a`` N(0, 1),
        ``theta*`` uniform on the sphere of radius ``norm_bound``, ``pi0 = softmax(T N(0, I))``."""
        for name, value in [("num_seeds", num_seeds), ("context_dim", context_dim),
                            ("num_actions", num_actions), ("dim", dim)]:
            check_positive_int(value, name)
        norm_bound = check_positive_number(norm_bound, "norm_bound")
        check_eta(eta)

        def normal(*shape):
            return torch.randn(num_seeds, *shape, dtype=torch.float64, generator=generator)

        projections = normal(num_actions, dim, context_dim) / math.sqrt(context_dim)
        offsets = normal(num_actions, dim)
        theta = normal(dim)
        theta = norm_bound * theta / theta.norm(dim=-1, keepdim=True)
        ref_probs = torch.softmax(ref_temperature * normal(num_actions), -1)
        return cls(projections, offsets, theta, ref_probs, float(eta))

    def with_eta(self, eta: float) -> ContinuousBandit:
        """The same instances under the KL coefficient ``eta``."""
        check_eta(eta)
        return dataclasses.replace(self, eta=float(eta))

    def subset(self, seeds) -> ContinuousBandit:
        """The instances ``seeds`` (an index or slice of the seed dimension)."""
        def take(tensor):
            return tensor[seeds] if isinstance(seeds, slice) else tensor[seeds].unsqueeze(0)
        return dataclasses.replace(self, projections=take(self.projections),
                                   offsets=take(self.offsets), theta_star=take(self.theta_star),
                                   ref_probs=take(self.ref_probs))

    @property
    def num_seeds(self) -> int:
        return self.theta_star.shape[0]

    @property
    def num_actions(self) -> int:
        return self.ref_probs.shape[-1]

    @property
    def context_dim(self) -> int:
        return self.projections.shape[-1]

    @property
    def dim(self) -> int:
        return self.theta_star.shape[-1]

    def sample_contexts(self, num_contexts: int, generator: torch.Generator) -> torch.Tensor:
        """``x ~ N(0, I_p)``: ``[S, num_contexts, p]``."""
        check_positive_int(num_contexts, "num_contexts")
        return torch.randn(self.num_seeds, num_contexts, self.context_dim, dtype=torch.float64,
                           generator=generator)

    def features(self, contexts: torch.Tensor) -> torch.Tensor:
        """``phi(x, a) = tanh(A_a x + b_a) / sqrt(d)``: ``[S, n, p] -> [S, n, K, d]``."""
        linear = torch.einsum("skdp,snp->snkd", self.projections, contexts)
        return torch.tanh(linear + self.offsets.unsqueeze(1)) / math.sqrt(self.dim)

    def rewards(self, features: torch.Tensor, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``<theta, phi(x, a)>`` (default ``theta*``): ``[S, n, K, d] -> [S, n, K]``."""
        theta = self.theta_star if theta is None else theta
        return torch.einsum("snkd,sd->snk", features, theta)

    def prompt_ref_probs(self, num_contexts: int) -> torch.Tensor:
        """``pi0`` on ``num_contexts`` prompts: ``[S, n, K]``."""
        return self.ref_probs.unsqueeze(1).expand(-1, num_contexts, -1)

    def draw_pairs(self, num_pairs: int, generator: torch.Generator):
        """The randomness of ``num_pairs`` comparisons per seed: two responses from ``pi0``
        ``[S, n]`` each, and the uniforms ``[S, n]`` that decide the labels."""
        check_positive_int(num_pairs, "num_pairs")
        first, second = sample_categorical(self.prompt_ref_probs(num_pairs), 2,
                                           generator).unbind(-1)
        return first, second, torch.rand(first.shape, dtype=torch.float64, generator=generator)

    def label_pairs(self, features: torch.Tensor, first, second, uniforms):
        """Bradley-Terry labels under ``r*``: the first response wins when
        ``uniform < sigmoid(r*(x, first) - r*(x, second))``; returns ``(chosen, rejected)``."""
        rewards = self.rewards(features)
        margin = (rewards.gather(-1, first.unsqueeze(-1)) -
                  rewards.gather(-1, second.unsqueeze(-1))).squeeze(-1)
        prefer_first = uniforms < torch.sigmoid(margin)
        return torch.where(prefer_first, first, second), torch.where(prefer_first, second, first)

    def sample_pairs(self, features: torch.Tensor, generator: torch.Generator):
        """Two responses per prompt of ``features [S, n, K, d]`` from ``pi0`` and a label:
        ``(chosen, rejected)`` action indices ``[S, n]``."""
        return self.label_pairs(features, *self.draw_pairs(features.shape[1], generator))

    def suboptimality(self, policy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``eta E_x KL(pi || pi*)`` over the contexts of ``features`` (policy ``[S, n, K]``)."""
        optimal = gibbs_policy(self.prompt_ref_probs(features.shape[1]), self.rewards(features),
                               self.eta)
        return self.eta * kl_divergence(policy, optimal).mean(-1)

    def value_gap(self, policy: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """``J(pi*) - J(pi)`` from the two values (``J(pi*) = eta E_x log Z``): the gap identity
        says it equals ``suboptimality``."""
        ref, rewards = self.prompt_ref_probs(features.shape[1]), self.rewards(features)
        optimal = self.eta * log_partition(ref, rewards, self.eta)
        return (optimal - regularized_value(policy, ref, rewards, self.eta)).mean(-1)


def _pair_diffs(features, chosen, rejected):
    """``features(x_i, chosen_i) - features(x_i, rejected_i)``: ``[S, n, K, d] -> [S, n, d]``."""
    def take(actions):
        index = actions[..., None, None].expand(*actions.shape, 1, features.shape[-1])
        return features.gather(-2, index).squeeze(-2)
    return take(chosen) - take(rejected)


@dataclass(frozen=True)
class RouteResult:
    """Suboptimality per seed ``[S]`` of each route (``"dpo"``, ``"rm_po"``, ``"rm_po+m"``), and
    the largest gap in probability between DPO and reward-model policy optimisation whose reward
    model is fit in DPO's own reward class (the coincidence identity of notebook 06)."""

    suboptimality: dict[str, torch.Tensor]
    coincidence_gap: torch.Tensor


def compare_routes(bandit: ContinuousBandit, *, num_pairs: int, extra_prompts: list[int],
                   policy_dim: int, reg: float, evaluation: torch.Tensor,
                   generator: torch.Generator, tol: float = PO_TOLERANCE) -> RouteResult:
    """One draw of ``num_pairs`` preference pairs per seed and every route on it (module
    docstring), evaluated on the contexts whose features are ``evaluation [S, M, K, d]``.

    The extra prompts are nested: the first ``m`` of the largest set, so the routes for
    different ``m`` differ only by the prompts added. ``tol``: the stopping tolerance of every
    policy optimisation (``optimize_policy``). All randomness is drawn first; the computation
    then runs over chunks of seeds whose features stay in cache, with the same result for any
    chunk size.
    """
    check_positive_int(num_pairs, "num_pairs")
    if not 1 <= policy_dim <= bandit.dim:
        raise ValueError(f"policy_dim must lie in [1, {bandit.dim}], got {policy_dim!r}")
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in extra_prompts):
        raise ValueError(f"extra_prompts must be positive integers, got {extra_prompts!r}")
    extra_prompts = sorted(extra_prompts)
    contexts = bandit.sample_contexts(num_pairs, generator)
    pairs = bandit.draw_pairs(num_pairs, generator)
    if extra_prompts:
        contexts = torch.cat([contexts, bandit.sample_contexts(extra_prompts[-1], generator)], 1)
    per_seed = contexts.shape[1] * bandit.num_actions * bandit.dim * 8
    chunk = max(1, CHUNK_BYTES // per_seed)
    parts = [_routes(bandit.subset(slice(start, start + chunk)), contexts[start:start + chunk],
                     [tensor[start:start + chunk] for tensor in pairs],
                     evaluation[start:start + chunk], num_pairs=num_pairs,
                     extra_prompts=extra_prompts, policy_dim=policy_dim, reg=reg, tol=tol)
             for start in range(0, bandit.num_seeds, chunk)]
    return RouteResult({name: torch.cat([part.suboptimality[name] for part in parts])
                        for name in parts[0].suboptimality},
                       torch.cat([part.coincidence_gap for part in parts]))


def _routes(bandit, contexts, pairs, evaluation, *, num_pairs, extra_prompts, policy_dim, reg,
            tol) -> RouteResult:
    """``compare_routes`` on one chunk of seeds, its randomness given."""
    eta = bandit.eta
    all_features = bandit.features(contexts)
    features = all_features[:, :num_pairs]
    chosen, rejected = bandit.label_pairs(features, *pairs)
    psi_eval = evaluation[..., :policy_dim]
    ref_eval = bandit.prompt_ref_probs(evaluation.shape[1])

    def suboptimality(w):
        policy = log_linear_policy(ref_eval, policy_features=psi_eval, w=w)
        return bandit.suboptimality(policy, evaluation)

    def policy_optimisation(theta, prompt_features, feature_dim, initial_w=None, tol=tol):
        fit = optimize_policy(bandit.rewards(prompt_features[..., :feature_dim], theta),
                              ref_probs=bandit.prompt_ref_probs(prompt_features.shape[1]),
                              eta=eta, policy_features=prompt_features[..., :policy_dim],
                              initial_w=initial_w, tol=tol)
        return fit.w

    psi_pairs = _pair_diffs(features[..., :policy_dim], chosen, rejected)
    w_dpo = train_dpo_linear(psi_pairs, eta=eta, reg=reg).w
    labels = torch.ones(psi_pairs.shape[:-1], dtype=torch.float64)  # chosen first
    # The coincidence check at the tight default tolerance (a few steps: the class contains
    # the Gibbs policy of this reward model).
    w_psi = policy_optimisation(fit_bt_mle(psi_pairs, labels, reg), features, policy_dim,
                                tol=PO_TOLERANCE)
    gap = (log_linear_policy(ref_eval, policy_features=psi_eval, w=w_dpo) -
           log_linear_policy(ref_eval, policy_features=psi_eval, w=w_psi))
    theta_hat = fit_bt_mle(_pair_diffs(features, chosen, rejected), labels, reg)
    w = policy_optimisation(theta_hat, features, bandit.dim)
    results = {"dpo": suboptimality(w_dpo), "rm_po": suboptimality(w)}
    for m in extra_prompts:  # each started from the answer with fewer prompts
        w = policy_optimisation(theta_hat, all_features[:, :num_pairs + m], bandit.dim,
                                initial_w=w)
        results[f"rm_po+{m}"] = suboptimality(w)
    return RouteResult(results, gap.abs().amax(dim=(-2, -1)))


def in_class_optimum(bandit: ContinuousBandit, *, policy_dim: int,
                     evaluation: torch.Tensor) -> torch.Tensor:
    """The smallest suboptimality the class reaches on the evaluation contexts ``[S]``: policy
    optimisation with the true reward on those contexts (uses ``theta*``)."""
    psi = evaluation[..., :policy_dim]
    ref = bandit.prompt_ref_probs(evaluation.shape[1])
    fit = optimize_policy(bandit.rewards(evaluation), ref_probs=ref, eta=bandit.eta,
                          policy_features=psi)
    return bandit.suboptimality(fit.policy, evaluation)


def tabular_coincidence(bandit, data, *, reg: float):
    """DPO in the tabular class against the oracle applied to the tabular BT MLE on the
    preference prompts (``bandit``: a finite ``LinearBTBandit``; ``data``: its ``Preferences``,
    batched over seeds). Returns ``(gap, bound)``, each ``[S]``: the largest
    ``|log pi_DPO - log pi_oracle|`` over prompts and actions, and what the solvers' tolerances
    allow, as in ``dpo.dpo_mle_agreement``: both objectives are ``reg``-strongly convex in the
    logits times ``eta``, so the two are within ``(g_DPO + g_MLE) / reg`` there, which moves a
    log-probability by at most twice that over ``eta``; plus float64 round-off."""
    from .lab.stats import roundoff_tolerance  # the package does not import lab at load time

    chosen, rejected = chosen_rejected(first=data.first_actions, second=data.second_actions,
                                       labels=data.labels)
    dpo_policy, fit = train_dpo_tabular(bandit.ref_probs, contexts=data.contexts, chosen=chosen,
                                        rejected=rejected, eta=bandit.eta, reg=reg)
    one_hot = one_hot_features(bandit.num_contexts, bandit.num_actions)
    z = pair_feature_diffs(one_hot, contexts=data.contexts, first=chosen, second=rejected)
    labels = torch.ones(z.shape[:-1], dtype=torch.float64)
    theta = fit_bt_mle(z, labels, reg)
    prompt_counts = torch.nn.functional.one_hot(data.contexts, bandit.num_contexts).sum(-2)
    oracle = optimize_policy(theta.reshape(*theta.shape[:-1], bandit.num_contexts,
                                           bandit.num_actions),
                             ref_probs=bandit.ref_probs, eta=bandit.eta, policy_class="tabular",
                             context_weights=prompt_counts)
    log_gap = (torch.log(dpo_policy) - torch.log(oracle.policy)).abs().amax((-1, -2))
    gradients = fit.grad_norm + bt_gradient(theta, z, labels, reg).norm(dim=-1)
    magnitude = torch.log(oracle.policy).abs().amax((-1, -2)) + 1
    return log_gap, (2 * gradients / (reg * bandit.eta) +
                     roundoff_tolerance(bandit.num_actions, magnitude))
