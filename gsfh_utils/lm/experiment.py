"""One seed of the miniature language-model experiment of notebook 05 (the paper's section 6).

``run_seed`` builds a random ``SyntheticLanguage``, trains ``pi0`` on it by supervised learning,
draws a limited set of gold-labelled preference pairs from ``pi0``, fits a (length-biased)
bag-of-tokens proxy reward on them, and trains and evaluates every method against the same
budget:

- ``sft``: ``pi0`` itself;
- ``offline_dpo``: DPO on the gold-labelled pairs (``eta`` and, for a second point on its
  reward-KL curve, ``eta * low_eta_factor``);
- ``rso``: RSO pairs (``gsfh_utils.samplers.rso_select`` over a pool of pi0 responses per
  prompt) labelled by the proxy, then DPO (same two ``eta``);
- ``multi_step_rs``: exact rejection sampling through a decreasing schedule of ``eta``, each
  stage proposing from the model distilled (by supervised learning) from the previous stage's
  accepted draws, so the last model approximates ``pi0 exp(r_proxy/eta)``;
- ``gshf``: iterative GSHF-DPO, the hybrid variant: start from offline DPO, then each iteration
  samples ``n`` responses per prompt from the current policy, pairs best-of-n against
  worst-of-n by the proxy, appends, and retrains DPO on all data so far with the reference
  fixed at ``pi0`` (warm-started from the current policy).

Every method gets the same ``num_gold_pairs`` gold labels (directly, or through the proxy fitted
on them); RSO, multi-step RS and GSHF get the same number ``num_generated`` of proxy-labelled
(or proxy-accepted) responses in total. All DPO runs use the same number of gradient steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ..sampling import geometric_schedule, stage_temperatures
from . import sequence as sq


@dataclass(frozen=True)
class MiniatureConfig:
    num_prompts: int = 8
    vocab_size: int = 16
    max_len: int = 12
    hidden_dim: int = 48
    language_samples: int = 4096  # SFT corpus size
    sft_steps: int = 200
    num_gold_pairs: int = 512     # gold-labelled comparisons (the limited preference set)
    proxy_reg: float = 1.0
    eta: float = 1.0              # KL coefficient of every method
    low_eta_factor: float = 0.25  # second point of the offline DPO / RSO reward-KL curves
    dpo_steps: int = 150
    dpo_batch: int = 64
    num_generated: int = 512      # proxy-labelled pairs (RSO, GSHF) / accepted draws (MS-RS)
    rso_pool: int = 16
    ms_stages: int = 4
    ms_eta_start_factor: float = 4.0
    ms_sft_steps: int = 40
    gshf_iterations: int = 3
    best_of_n: int = 8
    eval_per_prompt: int = 256
    one_step_rate_samples: int = 8192


def length_signs(pairs: sq.PreferencePairs) -> list[int]:
    """``[pairs whose chosen response is longer, pairs whose chosen response is shorter]``
    (ties in length are left out: the counts of a sign test)."""
    chosen, rejected = sq.response_lengths(pairs.chosen), sq.response_lengths(pairs.rejected)
    return [int((chosen > rejected).sum()), int((chosen < rejected).sum())]


def _evaluate(policy, pi0, language, config, generator, proxy):
    prompts = torch.arange(config.num_prompts).repeat(config.eval_per_prompt)
    return sq.evaluate_policy(policy, pi0, language, prompts, generator, proxy)


def run_seed(config: MiniatureConfig, seed: int) -> dict:
    """Run every method on one seed; returns a JSON-ready dict (see the module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    language = sq.SyntheticLanguage.random(generator, num_prompts=config.num_prompts,
                                           vocab_size=config.vocab_size, max_len=config.max_len)
    num_prompts = config.num_prompts

    def prompts(n):
        return torch.randint(0, num_prompts, (n,), generator=generator)

    def new_policy(offset):
        return sq.SequencePolicy.create(seed * 1000 + offset, num_prompts,
                                        vocab_size=config.vocab_size, max_len=config.max_len,
                                        hidden_dim=config.hidden_dim)

    # pi0: supervised learning on the language.
    corpus_prompts = prompts(config.language_samples)
    corpus = language.sample(corpus_prompts, generator)
    pi0 = new_policy(0)
    sft_losses = sq.train_sft(pi0, corpus_prompts, corpus, config.sft_steps, generator)
    held_prompts = prompts(2048)
    held = language.sample(held_prompts, generator)
    with torch.no_grad():
        language_logp = language.log_prob(held_prompts, held)
        pi0_logp = sq.sequence_logprob(pi0, held_prompts, held).double()
    corpus_lengths = sq.response_lengths(corpus).double()
    corpus_gold = language.gold_reward(corpus_prompts, corpus)
    diagnostics = {
        "sft_final_loss": sft_losses[-1],
        "kl_language_to_pi0_k1": (language_logp - pi0_logp).mean().item(),
        "language_entropy": (-language_logp).mean().item(),
        "language_corr_length_gold": torch.corrcoef(
            torch.stack([corpus_lengths, corpus_gold]))[0, 1].item(),
    }

    # The limited gold-labelled preference set, from pi0, and the proxy fitted on it.
    pair_prompts = prompts(config.num_gold_pairs)
    first = sq.sample(pi0, pair_prompts, generator)
    second = sq.sample(pi0, pair_prompts, generator)
    labels = language.label(pair_prompts, first, second, generator)
    gold_pairs = sq.PreferencePairs.from_labels(pair_prompts, first, second, labels)
    proxy = sq.fit_proxy_reward(gold_pairs, num_prompts, config.vocab_size, config.max_len,
                                config.proxy_reg)
    diagnostics["gold_pairs_length_signs"] = length_signs(gold_pairs)

    evaluations = {"sft": _evaluate(pi0, pi0, language, config, generator, proxy)}
    etas = {"": config.eta, "_low_eta": config.eta * config.low_eta_factor}

    def dpo_from_pi0(pairs, eta, start=None):
        policy = (pi0 if start is None else start).clone()
        sq.train_dpo(policy, pi0, pairs, eta, config.dpo_steps, generator,
                     batch_size=config.dpo_batch)
        return policy

    offline = {}
    for suffix, eta in etas.items():
        offline[suffix] = dpo_from_pi0(gold_pairs, eta)
        evaluations["offline_dpo" + suffix] = _evaluate(offline[suffix], pi0, language, config,
                                                        generator, proxy)

    # RSO: a pool of pi0 responses per prompt, two accepted by RSO's algorithm, proxy labels.
    rso_prompts = prompts(config.num_generated)
    pool = sq.sample_grouped(pi0, rso_prompts, config.rso_pool, generator)
    for suffix, eta in etas.items():
        pairs = sq.rso_pairs(pool, rso_prompts, proxy, eta, generator)
        evaluations["rso" + suffix] = _evaluate(dpo_from_pi0(pairs, eta), pi0, language, config,
                                                generator, proxy)

    # Multi-step rejection sampling, each stage distilled into a model that proposes the next.
    schedule = geometric_schedule(config.eta * config.ms_eta_start_factor, config.eta,
                                  config.ms_stages)
    current, stage_rates = pi0, []
    for temperature in stage_temperatures(schedule).tolist():
        stage_prompts = prompts(config.num_generated)
        accepted, rate = sq.rejection_sample_sequences(current, stage_prompts, proxy,
                                                       temperature, generator)
        stage_rates.append(rate)
        current = current.clone()
        sq.train_sft(current, stage_prompts, accepted, config.ms_sft_steps, generator, lr=1e-3)
    evaluations["multi_step_rs"] = _evaluate(current, pi0, language, config, generator, proxy)
    # The one-step acceptance rate E_pi0 exp((r - r_max)/eta), estimated from pi0 samples.
    rate_prompts = prompts(config.one_step_rate_samples)
    with torch.no_grad():
        draws = sq.sample(pi0, rate_prompts, generator)
        one_step = ((proxy(rate_prompts, draws) - proxy.max_reward(rate_prompts))
                    / config.eta).exp().mean().item()
    diagnostics.update(ms_schedule=schedule.tolist(), ms_stage_rates=stage_rates,
                       one_step_rate_estimate=one_step)

    # Iterative GSHF-DPO (hybrid start from offline DPO), best-of-n vs worst-of-n by the proxy.
    per_iteration = config.num_generated // config.gshf_iterations
    data, policy = gold_pairs, offline[""]
    trajectory = [evaluations["sft"], evaluations["offline_dpo"]]
    chosen_longer = []
    for _ in range(config.gshf_iterations):
        iteration_prompts = prompts(per_iteration)
        responses = sq.sample_grouped(policy, iteration_prompts, config.best_of_n, generator)
        new_pairs = sq.best_worst_pairs(responses, iteration_prompts, proxy, generator)
        chosen_longer.append(length_signs(new_pairs))
        data = data.concat(new_pairs)
        policy = dpo_from_pi0(data, config.eta, start=policy)
        trajectory.append(_evaluate(policy, pi0, language, config, generator, proxy))
    evaluations["gshf"] = trajectory[-1]
    diagnostics["gshf_pairs_length_signs"] = chosen_longer
    return {"seed": seed, "config": asdict(config), "evaluations": evaluations,
            "gshf_trajectory": trajectory, "diagnostics": diagnostics}


# --------------------------------------------------------------------------------------------
# Summaries and the tests behind the claims.
# --------------------------------------------------------------------------------------------

#: Rows of the paper-shaped table, in order, with their labels.
METHODS = {
    "sft": "SFT (pi0)",
    "offline_dpo": "offline DPO",
    "offline_dpo_low_eta": "offline DPO (eta/4)",
    "rso": "RSO",
    "rso_low_eta": "RSO (eta/4)",
    "multi_step_rs": "multi-step RS",
    "gshf": "GSHF-DPO (iterative)",
}
METRICS = {"gold": "gold reward", "win_rate": "win rate vs pi0", "kl_k3": "KL to pi0 (k3)",
           "length": "length"}


def _mean_std(values):
    values = torch.tensor(values, dtype=torch.float64)
    std = values.std().item() if values.numel() > 1 else float("nan")
    return values.mean().item(), std


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds (``ddof = 1``; NaN for one seed) of every metric
    of every method: one row per method of ``METHODS``."""
    rows = []
    for method, label in METHODS.items():
        row = {"method": method, "label": label}
        for metric in METRICS:
            mean, std = _mean_std([run["evaluations"][method][metric] for run in runs])
            row[metric], row[metric + "_std"] = mean, std
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    """The table as Markdown: mean ± std over seeds."""
    lines = ["| method | " + " | ".join(METRICS.values()) + " |",
             "|---|" + "---:|" * len(METRICS)]
    for row in rows:
        cells = [f"{row[m]:.3f} ± {row[m + '_std']:.3f}" for m in METRICS]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def z_test_greater(mean_a, std_a, n_a, mean_b, std_b, n_b) -> float:
    """One-sided p-value of Welch's large-sample z-test that the law behind ``a`` has the larger
    mean (``a`` and ``b`` independent samples summarised by mean, standard deviation, size)."""
    spread = math.sqrt(std_a**2 / n_a + std_b**2 / n_b)
    z = (mean_a - mean_b) / spread
    return 0.5 * math.erfc(z / math.sqrt(2))


def compare(run: dict, method: str, baselines: list[str], metric: str = "gold") -> dict:
    """``method`` against the best (largest ``metric``) of ``baselines`` on one seed: the
    z-test p-value (conservative: the baseline is picked after seeing its mean) and both
    means."""
    evaluations = run["evaluations"]
    best = max(baselines, key=lambda name: evaluations[name][metric])
    a, b = evaluations[method], evaluations[best]
    p_value = z_test_greater(a[metric], a[metric + "_std"], a["num_pairs"],
                             b[metric], b[metric + "_std"], b["num_pairs"])
    return {"seed": run["seed"], "best_baseline": best, "method_value": a[metric],
            "baseline_value": b[metric], "p_value": p_value}
