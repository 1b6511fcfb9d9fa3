"""gsfh_utils: the tested helpers behind the GSHF companion notebooks.

Modules follow the paper: ``gibbs`` (the Gibbs policy and the KL-regularised objective),
``sampling`` (rejection sampling of the Gibbs policy), ``instance`` (the linear Bradley-Terry
bandit with exact values), ``stats`` (tests behind the claims), ``claims`` (the claims
registry), ``plotting`` (style and ``savefig``), ``runner`` (papermill over the notebooks).
"""

from .claims import ClaimFailed, ClaimRegistry
from .dpo import dpo_loss
from .estimation import fit_bt_mle
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
from .plotting import savefig, set_style
from .profiles import sizes_for
from .sampling import acceptance_rate, rejection_sample

__all__ = [
    "ClaimFailed",
    "ClaimRegistry",
    "LinearBTBandit",
    "Preferences",
    "acceptance_rate",
    "dpo_loss",
    "fit_bt_mle",
    "gibbs_log_policy",
    "gibbs_policy",
    "kl_divergence",
    "log_partition",
    "mirror_ascent",
    "regularized_value",
    "random_policies",
    "rejection_sample",
    "savefig",
    "set_style",
    "sizes_for",
    "total_variation",
]
