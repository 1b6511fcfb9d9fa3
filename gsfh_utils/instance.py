"""The linear Bradley-Terry contextual bandit of the paper's setting, with exact ground truth.

Contexts ``x ~ d0`` from a finite set, actions ``a`` in ``{0..K-1}``, features ``phi(x, a)`` with
``||phi|| <= 1``, reward ``r*(x, a) = <theta*, phi(x, a)>``, Bradley-Terry preferences
``P(a1 > a2 | x) = sigmoid(r*(x, a1) - r*(x, a2))``, a reference policy ``pi0`` and the
KL-regularised objective ``J(pi) = E_x [E_pi r* - eta KL(pi || pi0)]``. Everything is exact
(finite sums), so notebooks measure suboptimality without Monte-Carlo error.

The instance carries ``eta`` because it defines the objective ``J``; ``with_eta`` gives the same
bandit under another coefficient.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ._validation import (
    check_eta,
    check_generator,
    check_positive_int,
    check_positive_number,
    check_probs,
)
from .gibbs import gibbs_policy, kl_divergence, log_partition, regularized_value
from .sampling import sample_categorical

#: Families of reference policies ``pi0`` (see ``reference_policy``).
REFERENCE_FAMILIES = ("softmax", "zipf", "uniform")


def reference_policy(family: str, *, num_contexts: int, num_actions: int,
                     generator: torch.Generator, temperature: float = 1.0,
                     exponent: float = 1.0) -> torch.Tensor:
    """A reference policy ``pi0 [X, K]`` from a named family:

    - ``"softmax"``: ``softmax(temperature * N(0, I))`` per context (temperature 0 is uniform,
      large temperatures are nearly deterministic);
    - ``"zipf"``: ``pi0(a) ∝ rank(a)^-exponent`` with the ranks a random permutation per context
      (a heavy head and a long tail, like a language model's responses);
    - ``"uniform"``: ``1/K``.
    """
    check_positive_int(num_contexts, "num_contexts")
    check_positive_int(num_actions, "num_actions")
    shape = (num_contexts, num_actions)
    if family == "softmax":
        logits = temperature * torch.randn(shape, dtype=torch.float64, generator=generator)
        return torch.softmax(logits, -1)
    if family == "zipf":
        exponent = check_positive_number(exponent, "exponent")
        ranks = torch.argsort(torch.rand(shape, generator=generator), -1) + 1
        weights = ranks.to(torch.float64) ** -exponent
        return weights / weights.sum(-1, keepdim=True)
    if family == "uniform":
        return torch.full(shape, 1.0 / num_actions, dtype=torch.float64)
    raise ValueError(f"family must be one of {REFERENCE_FAMILIES}, got {family!r}")


@dataclass(frozen=True)
class Preferences:
    """A batch of labelled comparisons ``(x, a1, a2, y)``; ``y = 1`` when ``a1`` is preferred.

    Shapes: ``[..., n]`` for ``contexts``, ``first_actions``, ``second_actions``, ``labels``
    (float 0/1) and ``[..., n, d]`` for ``feature_diffs`` ``z = phi(x, a1) - phi(x, a2)``.
    """

    contexts: torch.Tensor
    first_actions: torch.Tensor
    second_actions: torch.Tensor
    labels: torch.Tensor
    feature_diffs: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[-1]

    def concat(self, other: Preferences) -> Preferences:
        """The two data sets one after the other along the pair dimension."""
        return Preferences(
            contexts=torch.cat([self.contexts, other.contexts], -1),
            first_actions=torch.cat([self.first_actions, other.first_actions], -1),
            second_actions=torch.cat([self.second_actions, other.second_actions], -1),
            labels=torch.cat([self.labels, other.labels], -1),
            feature_diffs=torch.cat([self.feature_diffs, other.feature_diffs], -2),
        )


@dataclass(frozen=True)
class LinearBTBandit:
    """Finite contextual bandit with a linear reward and Bradley-Terry preferences.

    Attributes: ``features`` ``[X, K, d]`` (``phi``), ``theta_star`` ``[d]``, ``ref_probs``
    ``[X, K]`` (``pi0``), ``context_probs`` ``[X]`` (``d0``), ``eta`` > 0. Validated at
    construction; stored as float64.
    """

    features: torch.Tensor
    theta_star: torch.Tensor
    ref_probs: torch.Tensor
    context_probs: torch.Tensor
    eta: float

    def __post_init__(self):
        features = torch.as_tensor(self.features, dtype=torch.float64)
        if features.ndim != 3:
            raise ValueError(f"features must have shape [X, K, d], got {tuple(features.shape)}")
        if not torch.isfinite(features).all():
            raise ValueError("features must be finite")
        if features.norm(dim=-1).max() > 1 + 1e-9:
            raise ValueError("features must satisfy ||phi(x, a)|| <= 1")
        num_contexts, num_actions, dim = features.shape
        theta_star = torch.as_tensor(self.theta_star, dtype=torch.float64)
        if theta_star.shape != (dim,):
            raise ValueError(f"theta_star must have shape [{dim}], got {tuple(theta_star.shape)}")
        if not torch.isfinite(theta_star).all():
            raise ValueError("theta_star must be finite")
        ref_probs = check_probs(torch.as_tensor(self.ref_probs, dtype=torch.float64), "ref_probs")
        if ref_probs.shape != (num_contexts, num_actions):
            raise ValueError(
                f"ref_probs must have shape [{num_contexts}, {num_actions}], "
                f"got {tuple(ref_probs.shape)}"
            )
        context_probs = check_probs(
            torch.as_tensor(self.context_probs, dtype=torch.float64), "context_probs"
        )
        if context_probs.shape != (num_contexts,):
            raise ValueError(
                f"context_probs must have shape [{num_contexts}], got {tuple(context_probs.shape)}"
            )
        check_eta(self.eta)
        for name, value in [("features", features), ("theta_star", theta_star),
                            ("ref_probs", ref_probs), ("context_probs", context_probs)]:
            object.__setattr__(self, name, value)
        object.__setattr__(self, "eta", float(self.eta))

    @classmethod
    def random(cls, *, num_contexts: int, num_actions: int, dim: int, norm_bound: float,
               eta: float, generator: torch.Generator, reference: str = "softmax",
               ref_temperature: float = 1.0, zipf_exponent: float = 1.0) -> LinearBTBandit:
        """A random instance: features uniform in direction with norms in [0.5, 1], ``theta*``
        of norm ``norm_bound``, ``pi0`` from the ``reference`` family (``reference_policy``),
        uniform ``d0``."""
        for name, value in [("num_contexts", num_contexts), ("num_actions", num_actions),
                            ("dim", dim)]:
            check_positive_int(value, name)
        directions = torch.randn(num_contexts, num_actions, dim, dtype=torch.float64,
                                 generator=generator)
        directions /= directions.norm(dim=-1, keepdim=True)
        norms = 0.5 + 0.5 * torch.rand(num_contexts, num_actions, 1, dtype=torch.float64,
                                       generator=generator)
        theta = torch.randn(dim, dtype=torch.float64, generator=generator)
        theta = norm_bound * theta / theta.norm()
        ref_probs = reference_policy(reference, num_contexts=num_contexts,
                                     num_actions=num_actions, generator=generator,
                                     temperature=ref_temperature, exponent=zipf_exponent)
        return cls(directions * norms, theta, ref_probs,
                   torch.full((num_contexts,), 1.0 / num_contexts, dtype=torch.float64), eta)

    def with_eta(self, eta: float) -> LinearBTBandit:
        """The same bandit under the KL coefficient ``eta`` (a new instance)."""
        return dataclasses.replace(self, eta=eta)

    def with_reference(self, ref_probs) -> LinearBTBandit:
        """The same bandit with another reference policy ``pi0 [X, K]`` (a new instance)."""
        return dataclasses.replace(self, ref_probs=ref_probs)

    @property
    def num_contexts(self) -> int:
        return self.features.shape[0]

    @property
    def num_actions(self) -> int:
        return self.features.shape[1]

    @property
    def dim(self) -> int:
        return self.features.shape[2]

    def rewards(self, theta: torch.Tensor | None = None) -> torch.Tensor:
        """``<theta, phi(x, a)>`` for ``theta`` of shape ``[..., d]`` (default ``theta*``):
        shape ``[..., X, K]``."""
        theta = self.theta_star if theta is None else torch.as_tensor(theta, dtype=torch.float64)
        if theta.shape[-1:] != (self.dim,):
            raise ValueError(f"theta must have last dimension {self.dim}, got {tuple(theta.shape)}")
        return torch.einsum("xkd,...d->...xk", self.features, theta)

    def value(self, policy: torch.Tensor) -> torch.Tensor:
        """Exact ``J(pi) = sum_x d0(x) [E_pi r* - eta KL(pi || pi0)]``, ``policy [..., X, K]``."""
        per_context = regularized_value(policy, self.ref_probs, self.rewards(), self.eta)
        return (per_context * self.context_probs).sum(-1)

    def optimal_policy(self) -> torch.Tensor:
        """``pi*``, the Gibbs policy of ``r*``: shape ``[X, K]``."""
        return gibbs_policy(self.ref_probs, self.rewards(), self.eta)

    def optimal_value(self) -> torch.Tensor:
        """``J(pi*) = eta E_x log Z_{r*}(x)`` (the gap identity with ``pi = pi*``)."""
        log_z = log_partition(self.ref_probs, self.rewards(), self.eta)
        return self.eta * (log_z * self.context_probs).sum(-1)

    def mean_features(self, policy: torch.Tensor) -> torch.Tensor:
        """``E_{x ~ d0, a ~ pi} phi(x, a)`` for ``policy [..., X, K]``: shape ``[..., d]``."""
        weights = torch.as_tensor(policy, dtype=torch.float64) * self.context_probs.unsqueeze(-1)
        return torch.einsum("...xk,xkd->...d", weights, self.features)

    def expected_kl(self, policy: torch.Tensor, other: torch.Tensor | None = None):
        """``E_{x ~ d0} KL(policy(.|x) || other(.|x))`` (``other`` defaults to ``pi0``)."""
        other = self.ref_probs if other is None else other
        return (kl_divergence(policy, other) * self.context_probs).sum(-1)

    def suboptimality(self, policy: torch.Tensor) -> torch.Tensor:
        """``J(pi*) - J(pi)`` (``= eta E_x KL(pi || pi*)`` by the gap identity)."""
        return self.optimal_value() - self.value(policy)

    def largest_suboptimality(self) -> float:
        """``sup_pi J(pi*) - J(pi) = eta E_x max_{a: pi0(a|x) > 0} log(1 / pi*(a|x))``: the
        suboptimality is ``eta E_x KL(pi || pi*)`` (gap identity), convex in ``pi``, so its
        largest value over policies absolutely continuous w.r.t. ``pi0`` is at a point mass on the
        action ``pi*`` likes least. A bound above this value says nothing."""
        # eta log(1/pi*(a|x)) = eta log Z(x) - r*(x, a) - eta log pi0(a|x), stable for small eta.
        rewards = self.rewards()
        scaled_log_z = self.eta * log_partition(self.ref_probs, rewards, self.eta)
        per_action = (scaled_log_z.unsqueeze(-1) - rewards - self.eta * self.ref_probs.log())
        worst = per_action.masked_fill(self.ref_probs == 0, -math.inf).max(-1).values
        return float((worst * self.context_probs).sum())

    def sample_contexts(self, num_pairs: int, generator: torch.Generator,
                        batch_shape: tuple[int, ...] = ()) -> torch.Tensor:
        """``x ~ d0``: integer tensor of shape ``[*batch_shape, num_pairs]``."""
        check_positive_int(num_pairs, "num_pairs")
        size = int(torch.Size(batch_shape).numel()) * num_pairs
        draws = torch.multinomial(self.context_probs, size, replacement=True, generator=generator)
        return draws.reshape(*batch_shape, num_pairs)

    def sample_preferences(self, num_pairs: int, first_policy: torch.Tensor,
                           second_policy: torch.Tensor, generator: torch.Generator,
                           batch_shape: tuple[int, ...] = ()) -> Preferences:
        """Draw ``x ~ d0``, ``a1 ~ first_policy(.|x)``, ``a2 ~ second_policy(.|x)`` and a
        Bradley-Terry label ``y ~ Bernoulli(sigmoid(r*(x,a1) - r*(x,a2)))``.

        Policies have shape ``[X, K]`` or ``[*batch_shape, X, K]`` (one per seed).
        """
        contexts = self.sample_contexts(num_pairs, generator, batch_shape)
        first = self._sample_actions(first_policy, contexts, generator, "first_policy")
        second = self._sample_actions(second_policy, contexts, generator, "second_policy")
        return self.label_pairs(contexts, first, second, generator)

    def label_pairs(self, contexts, first, second, generator: torch.Generator) -> Preferences:
        """Bradley-Terry labels ``y ~ Bernoulli(sigmoid(r*(x,a1) - r*(x,a2)))`` of given pairs
        (the oracle's, ``theta*``): ``contexts``, ``first``, ``second`` integer tensors of one
        shape ``[..., n]``. Returns the labelled ``Preferences``."""
        check_generator(generator)
        contexts, first, second = (torch.as_tensor(v) for v in (contexts, first, second))
        if not contexts.shape == first.shape == second.shape:
            raise ValueError("contexts, first and second must have one shape, got "
                             f"{[tuple(v.shape) for v in (contexts, first, second)]}")
        rewards = self.rewards()
        margin = rewards[contexts, first] - rewards[contexts, second]
        uniforms = torch.rand(margin.shape, dtype=torch.float64, generator=generator)
        labels = (uniforms < torch.sigmoid(margin)).to(torch.float64)
        feature_diffs = self.features[contexts, first] - self.features[contexts, second]
        return Preferences(contexts, first, second, labels, feature_diffs)

    def _sample_actions(self, policy, contexts, generator, name):
        policy = check_probs(policy, name)
        batch_shape = contexts.shape[:-1]
        if policy.shape not in {(self.num_contexts, self.num_actions),
                                (*batch_shape, self.num_contexts, self.num_actions)}:
            raise ValueError(
                f"{name} must have shape [X, K] or [*batch_shape, X, K] = "
                f"{(*batch_shape, self.num_contexts, self.num_actions)}, got {tuple(policy.shape)}"
            )
        policy = policy.expand(*batch_shape, self.num_contexts, self.num_actions)
        rows = torch.gather(
            policy, -2, contexts.unsqueeze(-1).expand(*contexts.shape, self.num_actions)
        )
        return sample_categorical(rows, 1, generator).squeeze(-1)


def random_policies(ref_probs: torch.Tensor, num_policies: int, generator: torch.Generator,
                    log10_scale: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Random policies on the support of ``ref_probs [..., K]``: shape ``[..., num_policies, K]``.

    Each is ``softmax(s * N(0, I))`` restricted to the support, with the scale ``s``
    log-uniform in ``10**log10_scale``: small scales give spread-out policies, large ones nearly
    deterministic policies.
    """
    ref_probs = check_probs(ref_probs, "ref_probs")
    check_positive_int(num_policies, "num_policies")
    shape = (*ref_probs.shape[:-1], num_policies, ref_probs.shape[-1])
    low, high = log10_scale
    scales = 10 ** (low + (high - low) * torch.rand(*shape[:-1], 1, dtype=torch.float64,
                                                       generator=generator))
    logits = scales * torch.randn(shape, dtype=torch.float64, generator=generator)
    logits = torch.where(ref_probs.unsqueeze(-2) > 0, logits, -torch.inf)
    return torch.softmax(logits, dim=-1)
