"""The miniature language-model experiment of notebook 05 (Xiong et al., arXiv:2312.11456,
section 6): one seed of every method (``run_seed``), many seeds (``run_seeds``), and the
summaries and tests behind the notebook's claims.

``run_seed`` builds a random ``SyntheticLanguage``, trains ``pi0`` on it by supervised learning,
draws ``num_gold_pairs`` gold-labelled preference pairs from ``pi0``, fits a (length-biased)
bag-of-tokens proxy reward on them, and trains and evaluates every method:

- ``sft``: ``pi0`` itself;
- ``offline_dpo``: DPO on the gold-labelled pairs at ``eta``; the offline-DPO *curve* repeats it
  at ``eta * f`` for every ``f`` of ``frontier_factors``, which traces its reward-KL trade-off;
- ``rso``: RSO pairs (``gsfh_utils.sampling.rso_select`` over a pool of ``rso_pool`` pi0
  responses per prompt, two accepted) labelled by the proxy, then DPO at ``eta``;
- ``multi_step_rs``: exact rejection sampling through a decreasing schedule of ``eta``, each
  stage proposing from the model distilled (by supervised learning) from the previous stage's
  accepted draws, so that the last model approximates ``pi0 exp(r_proxy/eta)``;
- ``gshf``: iterative GSHF-DPO, the hybrid variant: start from offline DPO after one round of
  ``dpo_steps`` steps; each of ``gshf_iterations`` iterations samples ``best_of_n`` responses per
  prompt from the current policy, pairs best-of-n against worst-of-n by the proxy, appends them
  to the data, and runs ``dpo_steps`` more DPO steps on all data so far, warm-started from the
  current policy, with the reference fixed at ``pi0``.

DPO is trained in *rounds* of ``dpo_steps`` steps, each with a fresh Adam optimiser (GSHF's
schedule). GSHF takes ``1 + gshf_iterations`` rounds; with ``matched_steps`` every offline-DPO
and RSO policy takes as many (on its fixed data), so that every DPO-trained policy has the same
number of gradient steps and GSHF differs only in its data; without it, they take one round.
``budget`` lists what each method consumes.

Every run draws its randomness from one generator seeded by its seed: a seed's results do not
depend on the other seeds, on the order they run in, or on the number of worker processes.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context

import pandas as pd
import torch

from .._validation import check_positive_int, check_positive_number
from ..lab import stats
from ..sampling import geometric_schedule, stage_temperatures
from . import sequence as sq


@dataclass(frozen=True)
class MiniatureConfig:
    """Every knob of one seed of the experiment (the notebook's parameters)."""

    num_prompts: int = 8
    vocab_size: int = 16
    max_len: int = 12
    hidden_dim: int = 48
    language_samples: int = 4096  # SFT corpus size
    sft_steps: int = 200
    num_gold_pairs: int = 512     # gold-labelled comparisons (the limited preference set)
    proxy_reg: float = 1.0
    eta: float = 1.0              # KL coefficient of every method
    frontier_factors: tuple = (1.0, 0.5, 0.25, 0.125)  # offline-DPO curve at eta * factor
    dpo_steps: int = 150          # DPO steps per round
    dpo_batch: int = 64
    matched_steps: bool = True    # offline DPO and RSO take as many rounds as GSHF
    num_generated: int = 512      # proxy-labelled pairs (RSO, GSHF) / accepted draws (MS-RS)
    rso_pool: int = 16
    ms_stages: int = 4
    ms_eta_start_factor: float = 4.0
    ms_sft_steps: int = 40
    gshf_iterations: int = 3
    best_of_n: int = 8
    eval_per_prompt: int = 256
    one_step_rate_samples: int = 8192

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if item.type == "int" and item.name != "gshf_iterations":
                check_positive_int(value, item.name)
            elif item.type == "float":
                check_positive_number(value, item.name)
        if isinstance(self.gshf_iterations, bool) or not isinstance(self.gshf_iterations, int) \
                or self.gshf_iterations < 0:
            raise ValueError(f"gshf_iterations must be a non-negative integer, got "
                             f"{self.gshf_iterations!r}")
        factors = tuple(check_positive_number(f, "frontier_factors")
                        for f in self.frontier_factors)
        if len(factors) < 2 or len(set(factors)) != len(factors):
            raise ValueError(f"frontier_factors must hold at least 2 distinct positive numbers, "
                             f"got {self.frontier_factors!r}")
        object.__setattr__(self, "frontier_factors", factors)
        if self.best_of_n < 2 or self.rso_pool < 2:
            raise ValueError(f"best_of_n and rso_pool must be at least 2, got {self.best_of_n}, "
                             f"{self.rso_pool}")
        if self.gshf_iterations > self.num_generated:
            raise ValueError(f"num_generated ({self.num_generated}) must be at least "
                             f"gshf_iterations ({self.gshf_iterations})")
        if self.ms_eta_start_factor < 1:
            raise ValueError(f"ms_eta_start_factor must be at least 1, got "
                             f"{self.ms_eta_start_factor!r}")

    @property
    def rounds(self) -> int:
        """DPO rounds of GSHF: its offline start and one per iteration."""
        return 1 + self.gshf_iterations

    @property
    def baseline_rounds(self) -> int:
        """DPO rounds of every offline-DPO and RSO policy."""
        return self.rounds if self.matched_steps else 1

    @property
    def pairs_per_iteration(self) -> int:
        """Proxy-labelled pairs GSHF adds per iteration (``num_generated // gshf_iterations``)."""
        return self.num_generated // self.gshf_iterations if self.gshf_iterations else 0


def length_signs(pairs: sq.PreferencePairs) -> list[int]:
    """``[pairs whose chosen response is longer, pairs whose chosen response is shorter]``
    (ties in length are left out: the counts of a sign test)."""
    chosen, rejected = sq.response_lengths(pairs.chosen), sq.response_lengths(pairs.rejected)
    return [int((chosen > rejected).sum()), int((chosen < rejected).sum())]


def _evaluate(policy, pi0, language, config, generator, proxy):
    prompts = torch.arange(config.num_prompts).repeat(config.eval_per_prompt)
    return sq.evaluate_policy(policy, pi0, language, prompts, generator, proxy)


def run_seed(config: MiniatureConfig, seed: int) -> dict:
    """Run every method on one seed (see the module docstring). Returns a JSON-ready dict:
    ``evaluations`` (one per method, from ``sequence.evaluate_policy``), ``frontier`` (the
    offline-DPO curve: one evaluation per factor, with its ``factor``), ``gshf_trajectory``
    (pi0, GSHF's start, then every iteration) and ``diagnostics``."""
    generator = torch.Generator().manual_seed(seed)
    language = sq.SyntheticLanguage.random(generator, num_prompts=config.num_prompts,
                                           vocab_size=config.vocab_size, max_len=config.max_len)

    def prompts(n):
        return torch.randint(0, config.num_prompts, (n,), generator=generator)

    def evaluate(policy):
        return _evaluate(policy, pi0, language, config, generator, proxy)

    # pi0: supervised learning on the language.
    corpus_prompts = prompts(config.language_samples)
    corpus = language.sample(corpus_prompts, generator)
    pi0 = sq.SequencePolicy.create(seed * 1000, config.num_prompts, vocab_size=config.vocab_size,
                                   max_len=config.max_len, hidden_dim=config.hidden_dim)
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
    proxy = sq.fit_proxy_reward(gold_pairs, config.num_prompts, config.vocab_size,
                                config.max_len, config.proxy_reg)
    diagnostics["gold_pairs_length_signs"] = length_signs(gold_pairs)
    evaluations = {"sft": evaluate(pi0)}

    def dpo_rounds(pairs, eta, rounds, start=None):
        """The policy after each of ``rounds`` rounds of DPO (fresh Adam each round)."""
        policy, snapshots = (pi0 if start is None else start).clone(), []
        for _ in range(rounds):
            sq.train_dpo(policy, pi0, pairs, eta, config.dpo_steps, generator,
                         batch_size=config.dpo_batch)
            snapshots.append(policy.clone())
        return snapshots

    # Offline DPO at eta (its first round is GSHF's start) and along its curve.
    at_eta = dpo_rounds(gold_pairs, config.eta, config.baseline_rounds)
    gshf_start = at_eta[0]
    evaluations["offline_dpo"] = evaluate(at_eta[-1])
    frontier = []
    for factor in config.frontier_factors:
        if factor == 1.0:
            evaluation = evaluations["offline_dpo"]
        else:
            policy = dpo_rounds(gold_pairs, config.eta * factor, config.baseline_rounds)[-1]
            evaluation = evaluate(policy)
        frontier.append({"factor": factor, **evaluation})

    # RSO: a pool of pi0 responses per prompt, two accepted by RSO's algorithm, proxy labels.
    rso_prompts = prompts(config.num_generated)
    pool = sq.sample_grouped(pi0, rso_prompts, config.rso_pool, generator)
    rso_data = sq.rso_pairs(pool, rso_prompts, proxy, config.eta, generator)
    evaluations["rso"] = evaluate(dpo_rounds(rso_data, config.eta, config.baseline_rounds)[-1])

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
    evaluations["multi_step_rs"] = evaluate(current)
    # The one-step acceptance rate E_pi0 exp((r - r_max)/eta), estimated from pi0 samples.
    rate_prompts = prompts(config.one_step_rate_samples)
    with torch.no_grad():
        draws = sq.sample(pi0, rate_prompts, generator)
        one_step = ((proxy(rate_prompts, draws) - proxy.max_reward(rate_prompts))
                    / config.eta).exp().mean().item()
    diagnostics.update(ms_schedule=schedule.tolist(), ms_stage_rates=stage_rates,
                       ms_proposals=sum(config.num_generated / rate for rate in stage_rates),
                       one_step_rate_estimate=one_step)

    # Iterative GSHF-DPO (hybrid start), best-of-n vs worst-of-n by the proxy.
    data, policy = gold_pairs, gshf_start
    trajectory = [evaluations["sft"], evaluate(gshf_start)]
    chosen_longer = []
    for _ in range(config.gshf_iterations):
        iteration_prompts = prompts(config.pairs_per_iteration)
        responses = sq.sample_grouped(policy, iteration_prompts, config.best_of_n, generator)
        new_pairs = sq.best_worst_pairs(responses, iteration_prompts, proxy, generator)
        chosen_longer.append(length_signs(new_pairs))
        data = data.concat(new_pairs)
        policy = dpo_rounds(data, config.eta, 1, start=policy)[-1]
        trajectory.append(evaluate(policy))
    evaluations["gshf"] = trajectory[-1]
    evaluations["gshf_start"] = trajectory[1]
    diagnostics["gshf_pairs_length_signs"] = chosen_longer
    return {"seed": seed, "config": asdict(config), "evaluations": evaluations,
            "frontier": frontier, "gshf_trajectory": trajectory, "diagnostics": diagnostics}


def _worker_init():
    torch.set_num_threads(1)


def run_seeds(config: MiniatureConfig, seeds, *, workers: int = 1) -> list[dict]:
    """``run_seed`` for every seed, in ``workers`` processes (one thread each; 1: in this
    process). The results are in the order of ``seeds`` and do not depend on ``workers``."""
    seeds = [int(seed) for seed in seeds]
    workers = check_positive_int(workers, "workers")
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if workers == 1 or len(seeds) == 1:
        return [run_seed(config, seed) for seed in seeds]
    with ProcessPoolExecutor(min(workers, len(seeds)), mp_context=get_context("spawn"),
                             initializer=_worker_init) as pool:
        return list(pool.map(run_seed, [config] * len(seeds), seeds))
