"""gsfh_utils: the tested package behind the executable companion to *Gibbs Sampling from Human
Feedback* (Xiong et al., arXiv:2312.11456; ICML 2024 as *Iterative Preference Learning from
Human Feedback*).

The paper's mathematics, one module per idea:

- ``gibbs``: the Gibbs policy of a reward, ``log Z``, KL and TV, the KL-regularised value, mirror
  ascent, the two ``eta`` limits and the reward-KL frontier.
- ``sampling``: samplers of the Gibbs policy: exact rejection from pi0, RSO's finite pool,
  multi-step rejection sampling.
- ``instance``: ``LinearBTBandit``, the linear Bradley-Terry contextual bandit with exact values
  and preference sampling; reference-policy families; random policies.
- ``estimation``: the batched Bradley-Terry MLE, the design matrix, the slope bound ``gamma``, the
  confidence radius ``beta`` (and its parametric bootstrap), ``Sigma``-norms.
- ``offline``: pointwise and expected pessimism, their bounds, the coverage-dial instance.
- ``online``: the online loop (main agent, enhancer over the KL-budget set, baselines), the
  elliptical potential, the under-covered instance.
- ``dpo``: the DPO loss and its variants, DPO trainers, pair selectors, iterative DPO, RSO.
- ``kl_estimators``: the k1, k2, k3 estimators of KL with their exact moments.

Beyond the paper:

- ``policy_optimization``: the Gibbs oracle as practitioners run it, KL-regularised policy
  optimisation over a tabular or log-linear policy class on a set of prompts.
- ``out_of_preference``: continuous-context bandits and the routes from preferences to a policy
  (DPO, reward-model policy optimisation with and without preference-free prompts).

Three subpackages:

- ``gsfh_utils.lm``: the paper's language-model experiment in miniature (``sequence``: the
  synthetic language, the GRU policy, training, the proxy reward, samplers; ``experiment``: one
  seed of every method, and the summaries).
- ``gsfh_utils.sweep``: sweeps over parameter grids on ``dask.distributed`` (specs, experiments,
  a resumable Parquet store, phase-diagram helpers; ``python -m gsfh_utils.sweep SPEC.yaml``).
- ``gsfh_utils.lab``: the experiment machinery (notebook runs, claims, statistics, figures,
  results files, the runner); see its docstring.

The functions a script needs most are importable from here.
"""

from .dpo import dpo_loss
from .estimation import confidence_radius, fit_bt_mle, slope_bound
from .gibbs import (
    gibbs_log_policy,
    gibbs_policy,
    kl_divergence,
    log_partition,
    mirror_ascent,
    regularized_value,
    total_variation,
)
from .instance import LinearBTBandit, Preferences, random_policies
from .sampling import acceptance_rate, rejection_sample

__all__ = [
    "LinearBTBandit",
    "Preferences",
    "acceptance_rate",
    "confidence_radius",
    "dpo_loss",
    "fit_bt_mle",
    "gibbs_log_policy",
    "gibbs_policy",
    "kl_divergence",
    "log_partition",
    "mirror_ascent",
    "random_policies",
    "regularized_value",
    "rejection_sample",
    "slope_bound",
    "total_variation",
]
