"""The miniature language-model experiment of notebook 05 (Xiong et al., arXiv:2312.11456,
section 6): one seed of every method (``run_seed``), many seeds (``run_seeds``), and the
summaries and tests behind the notebook's claims.

``run_seed`` builds a random ``SyntheticLanguage``, trains ``pi0`` on it by supervised learning
(every prompt), draws ``num_gold_pairs`` gold-labelled preference pairs from ``pi0`` on the
training prompts (all but the last ``held_out_prompts``, which no pair of any method uses), fits
a (length-biased) bag-of-tokens proxy reward on them, and trains and evaluates every method:

- ``sft``: ``pi0`` itself;
- ``offline_dpo``: DPO on the gold-labelled pairs at ``eta``; the offline-DPO *curve* repeats it
  at ``eta * f`` for every ``f`` of ``frontier_factors``, which traces its reward-KL trade-off;
- ``rso``: RSO pairs (``gsfh_utils.sampling.rso_select`` over a pool of ``rso_pool`` pi0
  responses per prompt, two accepted) labelled by the proxy, then DPO at ``eta``;
- ``multi_step_rs``: rejection sampling through a decreasing schedule of ``eta``, each stage
  proposing from the model ``q`` distilled (by supervised learning) from the previous stage's
  accepted draws (``q = pi0`` in the first): a stage's draws are exact for its own target
  ``q exp(r_proxy/tau)`` (``tau`` from ``sampling.stage_temperatures``), not for
  ``pi0 exp(r_proxy/eta_k)``, so the last model approximates ``pi0 exp(r_proxy/eta)`` only as far
  as every distillation is exact;
- ``gshf``: iterative GSHF-DPO, the hybrid variant: start from offline DPO after one round of
  ``dpo_steps`` steps; each of ``gshf_iterations`` iterations samples ``best_of_n`` responses per
  prompt from the current policy, pairs best-of-n against worst-of-n by the proxy, appends them
  to the data, and runs ``dpo_steps`` more DPO steps on all data so far, warm-started from the
  current policy, with the reference fixed at ``pi0``;
- ``gshf_pi0``: the control of ``gshf`` with its best-of-n candidates drawn from ``pi0`` instead
  of the current policy (the same start, rounds, steps, gold pairs and number of proxy-labelled
  pairs): GSHF against it separates exploring with the current policy from iterating on more
  data.

The final policies (``FINAL``) are also evaluated on the held-out prompts and compared with each
other by gold Bradley-Terry labels (``sequence.gold_win_counts``, on the evaluation responses).

DPO is trained in *rounds* of ``dpo_steps`` steps, each with a fresh Adam optimiser (GSHF's
schedule). GSHF takes ``1 + gshf_iterations`` rounds; with ``matched_steps`` every offline-DPO
and RSO policy takes as many (on its fixed data), so that every DPO-trained policy has the same
number of gradient steps and GSHF differs only in its data; without it, they take one round.
``budget`` lists what each method consumes: the same gold labels for all, not the same pairs.

A seed's randomness comes from independent streams (``stream``): the setup, each method's
training and the evaluation. So a seed's results do not depend on the other seeds, on the order
they run in or on the number of worker processes, and changing one method's knob (or the
evaluation size) leaves the other methods' policies as they were.
"""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from multiprocessing import get_context

import pandas as pd
import torch
from scipy import stats as scipy_stats

from .._validation import check_positive_int, check_positive_number
from ..lab import stats
from ..sampling import geometric_schedule, stage_temperatures
from . import sequence as sq


@dataclass(frozen=True)
class MiniatureConfig:
    """Every knob of one seed of the experiment (the notebook's parameters)."""

    num_prompts: int = 8          # prompts of the language, the held-out ones included
    held_out_prompts: int = 2     # the last prompts: in pi0's corpus, in no pair (off-distribution)
    vocab_size: int = 16
    max_len: int = 12
    hidden_dim: int = 48
    language_samples: int = 4096  # SFT corpus size
    sft_steps: int = 200
    num_gold_pairs: int = 512     # gold-labelled comparisons (the limited preference set)
    proxy_reg: float = 1.0
    eta: float = 1.0              # KL coefficient of every method
    frontier_factors: tuple = (2.0, 1.0, 0.5, 0.25)  # offline-DPO curve at eta * factor
    dpo_steps: int = 50           # DPO steps per round
    dpo_batch: int = 64
    dpo_lr: float = 2e-3          # Adam's learning rate in every DPO round
    matched_steps: bool = True    # offline DPO and RSO take as many rounds as GSHF
    num_generated: int = 512      # proxy-labelled pairs (RSO, GSHF) / accepted draws (MS-RS)
    rso_pool: int = 16
    ms_stages: int = 4
    ms_eta_start_factor: float = 4.0
    ms_sft_steps: int = 40
    gshf_iterations: int = 3
    best_of_n: int = 8
    eval_per_prompt: int = 1024
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
        if self.held_out_prompts >= self.num_prompts:
            raise ValueError(f"held_out_prompts ({self.held_out_prompts}) must be smaller than "
                             f"num_prompts ({self.num_prompts})")
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
    def train_prompts(self) -> int:
        """Prompts ``0 .. train_prompts - 1`` are the only ones of any preference pair."""
        return self.num_prompts - self.held_out_prompts

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


#: The final policy of every method: held-out evaluations and gold comparisons (``wins``).
FINAL = ("sft", "offline_dpo", "rso", "multi_step_rs", "gshf_pi0", "gshf")

#: Independent random streams of one seed: the setup (language, pi0, gold pairs, proxy), each
#: method's training, and the evaluation. A knob of one method (``rso_pool``, the evaluation
#: size ...) then leaves every other method's policies unchanged.
STREAMS = ("setup", "offline_dpo", "rso", "multi_step_rs", "gshf", "evaluation", "gold_ranking",
           "gshf_pi0")


def stream(seed: int, name: str) -> torch.Generator:
    """The generator of the stream ``name`` of ``seed``: seeded ``8 seed + index`` (distinct for
    every seed and stream)."""
    return torch.Generator().manual_seed(8 * int(seed) + STREAMS.index(name))


def run_seed(config: MiniatureConfig, seed: int) -> dict:
    """Run every method on one seed (see the module docstring). Returns a JSON-ready dict:
    ``evaluations`` (one per method, from ``sequence.evaluate_policy``, on the training prompts),
    ``held_out`` (the final policies of ``FINAL`` on the held-out prompts), ``wins`` (gold
    comparisons of every two of them, ``sequence.gold_win_counts``, on the training prompts),
    ``frontier`` (the offline-DPO curve: one evaluation per factor, with its ``factor``),
    ``offline_rounds`` (offline DPO at ``eta`` after each round), ``gshf_trajectory`` and
    ``gshf_pi0_trajectory`` (pi0, the shared start, then every iteration) and ``diagnostics``."""
    setup, evaluation_stream = stream(seed, "setup"), stream(seed, "evaluation")
    language = sq.SyntheticLanguage.random(setup, num_prompts=config.num_prompts,
                                           vocab_size=config.vocab_size, max_len=config.max_len)

    def prompts(n, generator, limit=config.train_prompts):
        return torch.randint(0, limit, (n,), generator=generator)

    eval_prompts = torch.arange(config.train_prompts).repeat(config.eval_per_prompt)
    held_out_prompts = torch.arange(config.train_prompts, config.num_prompts).repeat(
        config.eval_per_prompt)
    samples = {}  # the evaluation responses of the final policies, for their gold comparisons

    def evaluate(policy, name=None):
        mine = sq.sample(policy, eval_prompts, evaluation_stream)
        if name is not None:
            samples[name] = mine
        return sq.evaluate_policy(policy, pi0, language, eval_prompts, evaluation_stream, proxy,
                                  responses=mine)

    # pi0: supervised learning on the language, every prompt included.
    corpus_prompts = prompts(config.language_samples, setup, config.num_prompts)
    corpus = language.sample(corpus_prompts, setup)
    pi0 = sq.SequencePolicy.create(seed * 1000, config.num_prompts, vocab_size=config.vocab_size,
                                   max_len=config.max_len, hidden_dim=config.hidden_dim)
    sft_losses = sq.train_sft(pi0, corpus_prompts, corpus, config.sft_steps, setup)
    held_prompts = prompts(2048, evaluation_stream, config.num_prompts)
    held = language.sample(held_prompts, evaluation_stream)
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
    pair_prompts = prompts(config.num_gold_pairs, setup)
    first = sq.sample(pi0, pair_prompts, setup)
    second = sq.sample(pi0, pair_prompts, setup)
    labels = language.label(pair_prompts, first, second, setup)
    gold_pairs = sq.PreferencePairs.from_labels(pair_prompts, first, second, labels)
    proxy = sq.fit_proxy_reward(gold_pairs, config.num_prompts, config.vocab_size,
                                config.max_len, config.proxy_reg)
    diagnostics["gold_pairs_length_signs"] = length_signs(gold_pairs)
    evaluations, final = {"sft": evaluate(pi0, "sft")}, {"sft": pi0}

    def dpo_rounds(pairs, eta, rounds, generator, start=None):
        """The policy after each of ``rounds`` rounds of DPO (fresh Adam each round)."""
        policy, snapshots = (pi0 if start is None else start).clone(), []
        for _ in range(rounds):
            sq.train_dpo(policy, pi0, pairs, eta, config.dpo_steps, generator,
                         batch_size=config.dpo_batch, lr=config.dpo_lr)
            snapshots.append(policy.clone())
        return snapshots

    # Offline DPO at eta (its first round is GSHF's start) and along its curve.
    offline = stream(seed, "offline_dpo")
    at_eta = dpo_rounds(gold_pairs, config.eta, config.baseline_rounds, offline)
    final["offline_dpo"] = at_eta[-1]
    evaluations["offline_dpo"] = evaluate(at_eta[-1], "offline_dpo")
    evaluations["gshf_start"] = evaluate(at_eta[0])
    # After each round: the first is the start, the last offline DPO (one round: both).
    offline_rounds = [evaluations["gshf_start"], *map(evaluate, at_eta[1:-1])][
        :config.baseline_rounds - 1] + [evaluations["offline_dpo"]]
    frontier = []
    for factor in config.frontier_factors:
        if factor == 1.0:
            evaluation = evaluations["offline_dpo"]
        else:
            evaluation = evaluate(dpo_rounds(gold_pairs, config.eta * factor,
                                             config.baseline_rounds, offline)[-1])
        frontier.append({"factor": factor, **evaluation})

    # RSO: a pool of pi0 responses per prompt, two accepted by RSO's algorithm, proxy labels.
    rso = stream(seed, "rso")
    rso_prompts = prompts(config.num_generated, rso)
    pool = sq.sample_grouped(pi0, rso_prompts, config.rso_pool, rso)
    rso_data = sq.rso_pairs(pool, rso_prompts, proxy, config.eta, rso)
    final["rso"] = dpo_rounds(rso_data, config.eta, config.baseline_rounds, rso)[-1]
    evaluations["rso"] = evaluate(final["rso"], "rso")

    # Multi-step rejection sampling, each stage distilled into a model that proposes the next.
    multi_step = stream(seed, "multi_step_rs")
    schedule = geometric_schedule(config.eta * config.ms_eta_start_factor, config.eta,
                                  config.ms_stages)
    current, stage_rates = pi0, []
    for temperature in stage_temperatures(schedule).tolist():
        stage_prompts = prompts(config.num_generated, multi_step)
        accepted, rate = sq.rejection_sample_sequences(current, stage_prompts, proxy,
                                                       temperature, multi_step)
        stage_rates.append(rate)
        current = current.clone()
        sq.train_sft(current, stage_prompts, accepted, config.ms_sft_steps, multi_step, lr=1e-3)
    final["multi_step_rs"] = current
    evaluations["multi_step_rs"] = evaluate(current, "multi_step_rs")
    # The one-step acceptance rate E_pi0 exp((r - r_max)/eta), estimated from pi0 samples.
    rate_prompts = prompts(config.one_step_rate_samples, evaluation_stream)
    with torch.no_grad():
        draws = sq.sample(pi0, rate_prompts, evaluation_stream)
        one_step = ((proxy(rate_prompts, draws) - proxy.max_reward(rate_prompts))
                    / config.eta).exp().mean().item()
    diagnostics.update(ms_schedule=schedule.tolist(), ms_stage_rates=stage_rates,
                       ms_proposals=sum(config.num_generated / rate for rate in stage_rates),
                       one_step_rate_estimate=one_step)

    def iterate(name, explore: bool, signs=None):
        """Iterative GSHF-DPO from the shared start, best-of-n vs worst-of-n by the proxy among
        responses of the current policy (``explore``) or of pi0, on the stream ``name``; returns
        the last policy and the evaluated path (pi0, start, iterates). ``signs``: lists for the
        length diagnostics and the gold-ranking generator."""
        generator = stream(seed, name)
        data, policy, path = gold_pairs, at_eta[0], [evaluations["sft"], evaluations["gshf_start"]]
        for _ in range(config.gshf_iterations):
            iteration_prompts = prompts(config.pairs_per_iteration, generator)
            responses = sq.sample_grouped(policy if explore else pi0, iteration_prompts,
                                          config.best_of_n, generator)
            new_pairs = sq.best_worst_pairs(responses, iteration_prompts, proxy, generator)
            if signs is not None:
                signs[0].append(length_signs(new_pairs))
                # The same candidates ranked by the gold reward (a diagnostic: not trained on).
                signs[1].append(length_signs(sq.best_worst_pairs(
                    responses, iteration_prompts, language.gold_reward, signs[2])))
            data = data.concat(new_pairs)
            policy = dpo_rounds(data, config.eta, 1, generator, start=policy)[-1]
            path.append(evaluate(policy, name))  # the last iterate's responses are kept
        return policy, path

    signs = ([], [], stream(seed, "gold_ranking"))
    final["gshf"], trajectory = iterate("gshf", True, signs)
    final["gshf_pi0"], pi0_trajectory = iterate("gshf_pi0", False)
    for name, path in (("gshf", trajectory), ("gshf_pi0", pi0_trajectory)):
        evaluations[name] = path[-1]
        if name not in samples:  # without iterations the final policy is the start
            samples[name] = sq.sample(final[name], eval_prompts, evaluation_stream)
    diagnostics["gshf_pairs_length_signs"], diagnostics["gshf_gold_ranked_length_signs"] = \
        signs[:2]
    # Off-distribution: the final policies on the held-out prompts; and every two compared.
    held_out = {name: sq.evaluate_policy(final[name], pi0, language, held_out_prompts,
                                         evaluation_stream, proxy) for name in FINAL}
    wins = sq.gold_win_counts(language, eval_prompts, {name: samples[name] for name in FINAL},
                              evaluation_stream)
    return {"seed": seed, "config": asdict(config), "evaluations": evaluations,
            "held_out": held_out, "wins": wins, "frontier": frontier,
            "offline_rounds": offline_rounds, "gshf_trajectory": trajectory,
            "gshf_pi0_trajectory": pi0_trajectory, "diagnostics": diagnostics}


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


# --------------------------------------------------------------------------------------------
# The budgets, the tidy results, the summary table.
# --------------------------------------------------------------------------------------------

#: Rows of the paper-shaped table, in order, with their labels.
METHODS = {
    "sft": "SFT (pi0)",
    "gshf_start": "offline DPO, one round (GSHF's start)",
    "offline_dpo": "offline DPO",
    "rso": "RSO",
    "multi_step_rs": "multi-step RS",
    "gshf_pi0": "GSHF-DPO, new pairs from pi0",
    "gshf": "GSHF-DPO (iterative)",
}
#: Columns of the table: metric and its label (each has a per-response ``<metric>_std``, except
#: the win rate, a proportion).
METRICS = {"gold": "gold reward", "win_rate": "win rate vs pi0", "kl_k1": "KL to pi0 (k1)",
           "kl_k3": "KL to pi0 (k3)", "length": "length"}


def budget(config: MiniatureConfig) -> pd.DataFrame:
    """What each method consumes on one seed, beyond what all share (the language corpus, the
    ``sft_steps`` of pi0, the evaluation): gold labels (the human budget: every method uses the
    same ``num_gold_pairs``, directly or through the proxy fitted on them), proxy-labelled pairs,
    the preference pairs its last DPO round trains on (gold and proxy-labelled), responses
    generated for training, and gradient steps (DPO, or supervised steps of multi-step RS's
    distillation). Multi-step RS's generated responses are its accepted draws; its proposals
    depend on the acceptance rates (measured per seed)."""
    dpo = config.baseline_rounds * config.dpo_steps
    gshf_pairs = config.gshf_iterations * config.pairs_per_iteration
    gshf = (config.num_gold_pairs, gshf_pairs, config.num_gold_pairs + gshf_pairs,
            gshf_pairs * config.best_of_n, config.rounds * config.dpo_steps, "DPO")
    rows = [
        ("offline_dpo", config.num_gold_pairs, 0, config.num_gold_pairs, 0, dpo, "DPO"),
        ("rso", config.num_gold_pairs, config.num_generated, config.num_generated,
         config.num_generated * config.rso_pool, dpo, "DPO"),
        ("multi_step_rs", config.num_gold_pairs, 0, 0, config.ms_stages * config.num_generated,
         config.ms_stages * config.ms_sft_steps, "supervised"),
        ("gshf_pi0", *gshf), ("gshf", *gshf),
    ]
    return pd.DataFrame(rows, columns=["method", "gold_labels", "proxy_labelled_pairs",
                                       "training_pairs", "generated_responses",
                                       "gradient_steps", "steps_of"])


def evaluations_frame(runs: list[dict]) -> pd.DataFrame:
    """Every evaluated policy of every seed, one row each (tidy): ``seed``, ``method`` (a key of
    ``METHODS``, ``offline_dpo_curve`` for the points of the offline-DPO curve, ``gshf_path`` for
    GSHF's start and iterates), ``factor`` (of ``eta``, on the curve), ``iteration`` (on the path:
    0 is the start; ``gshf_pi0_path`` likewise for the variant drawing its pairs from pi0),
    ``offline_dpo_rounds`` (offline DPO at ``eta`` after each ``round``, from 1), and every
    number ``sequence.evaluate_policy`` returns."""
    rows = []
    for run in runs:
        for method in METHODS:
            rows.append({"seed": run["seed"], "method": method, **run["evaluations"][method]})
        for point in run["frontier"]:
            rows.append({"seed": run["seed"], "method": "offline_dpo_curve", **point})
        for method in ("gshf", "gshf_pi0"):
            for iteration, point in enumerate(run[f"{method}_trajectory"][1:]):
                rows.append({"seed": run["seed"], "method": f"{method}_path",
                             "iteration": iteration, **point})
        for number, point in enumerate(run["offline_rounds"], start=1):
            rows.append({"seed": run["seed"], "method": "offline_dpo_rounds", "round": number,
                         **point})
    return pd.DataFrame(rows)


def held_out_frame(runs: list[dict]) -> pd.DataFrame:
    """The final policies (``FINAL``) on the held-out prompts, one row per seed and method
    (tidy, as ``evaluations_frame``)."""
    return pd.DataFrame([{"seed": run["seed"], "method": method, **run["held_out"][method]}
                         for run in runs for method in FINAL])


def _win_rates(runs: list[dict], method: str, opponent: str) -> tuple[list, list]:
    """Per seed: the fraction of gold labels ``method`` wins against ``opponent`` and the mean
    exact BT probability, read from whichever order ``run["wins"]`` stores the pair in."""
    rates, probabilities = [], []
    for run in runs:
        wins = run["wins"]
        for name in (method, opponent):
            if name not in wins:
                raise ValueError(f"{name!r} is not a compared policy; choose from {list(wins)}")
        if method == opponent:
            raise ValueError(f"method and opponent must differ, got {method!r} twice")
        direct = opponent in wins[method]
        cell = wins[method][opponent] if direct else wins[opponent][method]
        rate, probability = cell["wins"] / cell["num_pairs"], cell["probability"]
        rates.append(rate if direct else 1 - rate)
        probabilities.append(probability if direct else 1 - probability)
    return rates, probabilities


def win_rate_test(runs: list[dict], *, method: str, opponent: str,
                  alternative: str = "greater") -> stats.TestResult:
    """One-sample t-test that ``method``'s per-seed gold win rate against ``opponent`` exceeds
    1/2 (``alternative``; the seed is the unit). Effect: the mean win rate."""
    if len(runs) < 2:
        raise ValueError("runs must hold at least two seeds (the seed is the unit)")
    rates, _ = _win_rates(runs, method, opponent)
    test = stats.mean_test(rates, 0.5, alternative)
    return stats.TestResult(test.test, test.p_value, test.effect, "mean gold win rate",
                            len(rates), {**test.details, "per_seed_win_rates": rates})


def win_rates_frame(runs: list[dict], *, confidence: float = 0.95) -> pd.DataFrame:
    """Gold win rates of every final policy against every other (``run["wins"]``), with the
    seed as the unit: per seed the fraction of gold BT labels ``method`` wins against
    ``opponent`` (``1 -`` the opponent's), then over seeds the mean, its Student-t confidence
    interval at ``confidence`` and the two-sided ``win_rate_test`` against 1/2, and the mean
    exact BT probability. One row per ordered pair (``method != opponent``)."""
    confidence = float(confidence)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if len(runs) < 2:
        raise ValueError("runs must hold at least two seeds (the seed is the unit)")
    names = list(runs[0]["wins"])  # every name is a key (the last one's dict is empty)
    rows = []
    for method in names:
        for opponent in (name for name in names if name != method):
            rates, probabilities = _win_rates(runs, method, opponent)
            test = win_rate_test(runs, method=method, opponent=opponent,
                                 alternative="two-sided")
            radius = test.details["standard_error"] * scipy_stats.t.ppf((1 + confidence) / 2,
                                                                        len(rates) - 1)
            rows.append({"method": method, "opponent": opponent, "win_rate": test.effect,
                         "ci_low": test.effect - radius, "ci_high": test.effect + radius,
                         "p_value": test.p_value, "seeds_above_half": sum(r > 0.5 for r in rates),
                         "bt_probability": sum(probabilities) / len(probabilities)})
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean ± standard deviation over seeds (``ddof = 1``; "nan" for one seed) of every metric
    of ``METRICS``, as strings ``"mean ± std"``: one row per method of ``METHODS``, then one per
    point of the offline-DPO curve other than ``eta`` itself, which is the ``offline_dpo`` row
    (``frame`` from ``evaluations_frame``; or ``held_out_frame``: the methods it holds)."""
    parts = [(METHODS[m], frame[frame["method"] == m]) for m in METHODS
             if (frame["method"] == m).any()]
    if "factor" in frame:
        curve = frame[(frame["method"] == "offline_dpo_curve") & (frame["factor"] != 1)]
        parts += [(f"offline DPO, eta x {factor:g}", part)
                  for factor, part in curve.groupby("factor", sort=False)]
    rows = []
    for label, part in parts:
        row = {"method": label}
        for metric, name in METRICS.items():
            values = part[metric].astype(float)
            row[name] = f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The tests behind the claims.
# --------------------------------------------------------------------------------------------


def standard_error(evaluation: dict, metric: str) -> float:
    """Standard error of the mean ``metric`` of one evaluation: ``<metric>_std / sqrt(n)``."""
    if metric + "_std" not in evaluation:
        raise ValueError(f"metric {metric!r} has no per-response standard deviation "
                         f"('{metric}_std') in the evaluation")
    return evaluation[metric + "_std"] / math.sqrt(evaluation["num_pairs"])


def difference_test(evaluation: dict, *, baseline: dict, metric: str = "gold",
                    alternative: str = "greater") -> stats.TestResult:
    """Large-sample z-test that ``evaluation`` has a larger mean ``metric`` than ``baseline``
    (``alternative="greater"``; both from ``sequence.evaluate_policy``, independent samples):
    the standard error is ``sqrt(s_a^2/n_a + s_b^2/n_b)`` (kept as
    ``details["standard_error"]``). Effect: the difference of the means."""
    spread = math.hypot(standard_error(evaluation, metric), standard_error(baseline, metric))
    result = stats.z_test(evaluation[metric], baseline[metric], spread, alternative)
    return stats.TestResult(result.test, result.p_value, result.effect, result.effect_name, 1,
                            {**result.details, "standard_error": spread})


def over_seeds(tests: list[stats.TestResult], alternative: str = "greater", *,
               level: float = 0.01) -> stats.TestResult:
    """The per-seed z-tests of one comparison (each with ``details["standard_error"]``), combined
    with the *seed* as the unit of replication: a one-sample t-test of the per-seed differences,
    which counts the training randomness (the language, pi0, the data and every method's
    training differ from seed to seed). ``details`` keeps the per-seed differences and p-values,
    the p-value of "in every seed" (``stats.every``, the intersection-union test), the number of
    seeds whose own test is at or below ``level`` in either direction, the 95% Student-t
    interval of the mean difference (``ci95``), the exact sign-flip p-value (``stats.
    sign_flip_test``, free of the t-test's normality; up to 20 seeds), and the fixed-effect
    z-test of the mean difference (``sqrt(sum se_i^2) / S``: conditional on the trained policies,
    so it ignores the training randomness and overstates the evidence for the method)."""
    if len(tests) < 2:
        raise ValueError("tests must hold at least two per-seed tests (the seed is the unit)")
    effects = [t.effect for t in tests]
    spread = math.sqrt(sum(t.details["standard_error"] ** 2 for t in tests)) / len(tests)
    fixed = stats.z_test(sum(effects) / len(tests), 0.0, spread, alternative)
    across = stats.mean_test(effects, 0.0, alternative)
    _, low, high = stats.mean_interval(effects, level=0.95)
    opposite = "less" if alternative == "greater" else "greater"
    below = sum(stats.z_test(t.effect, 0.0, t.details["standard_error"], opposite).p_value
                <= level for t in tests)
    details = {**across.details, "per_seed_effects": effects,
               "per_seed_p_values": [t.p_value for t in tests],
               "every_seed_p_value": stats.every(tests, "seeds").p_value,
               "seeds_significant": sum(t.p_value <= level for t in tests),
               "seeds_significant_opposite": below, "fixed_effect_p_value": fixed.p_value,
               "ci95": [low, high], "sign_flip_p_value": stats.sign_flip_test(
                   effects, 0.0, alternative).p_value if len(effects) <= 20 else None}
    return stats.TestResult(f"one-sample t-test of the per-seed differences ({tests[0].test} "
                            "within each seed)", across.p_value, across.effect,
                            f"mean {tests[0].effect_name}", len(tests), details)


def compare_over_seeds(runs: list[dict], *, method: str, baseline: str, metric: str = "gold",
                       alternative: str = "greater", level: float = 0.01,
                       prompts: str = "evaluations") -> stats.TestResult:
    """``difference_test`` of ``method`` against ``baseline`` in each seed, pooled by
    ``over_seeds``; on the training prompts (``prompts="evaluations"``) or on the held-out ones
    (``"held_out"``)."""
    if not runs:
        raise ValueError("runs must hold at least one seed")
    if prompts not in ("evaluations", "held_out"):
        raise ValueError(f"prompts must be 'evaluations' or 'held_out', got {prompts!r}")
    for name, value in (("method", method), ("baseline", baseline)):
        if value not in runs[0][prompts]:
            raise ValueError(f"{name} {value!r} is not an evaluated method; choose from "
                             f"{sorted(runs[0][prompts])}")
    return over_seeds([difference_test(run[prompts][method],
                                       baseline=run[prompts][baseline], metric=metric,
                                       alternative=alternative) for run in runs], alternative,
                      level=level)


def interpolate(*, kls, values, standard_errors, at: float) -> dict:
    """The piecewise-linear curve through the points ``(kls[i], values[i])`` (any order;
    distinct ``kls``) at ``at``, with its standard error from independent point errors:
    ``value = (1 - w) v_lo + w v_hi``, ``se = sqrt((1 - w)^2 se_lo^2 + w^2 se_hi^2)`` between
    the neighbours ``lo``, ``hi`` of ``at``. Outside the range of ``kls`` there is no
    extrapolation: the nearest endpoint is returned with ``inside = False``. Returns ``value``,
    ``standard_error``, ``inside``, ``lower``, ``upper`` (indices of the neighbours into the
    inputs), ``weight`` (``w``), ``slope``, and ``concave_value`` with its
    ``concave_standard_error``: ``max(chord, min(lines))``, the larger of the chord and the
    smallest of the neighbouring segments' lines extended to ``at``. For concave points the lines
    lie above the chord and their minimum bounds a concave curve through the points from above
    (the chord bounds it from below); for non-concave points a line can fall below the chord, and
    the chord is kept, so the value is never below the chord (the chord itself where no
    neighbouring segment exists)."""
    kls, values, errors = (torch.as_tensor(x, dtype=torch.float64).reshape(-1)
                           for x in (kls, values, standard_errors))
    if not kls.numel() >= 2 or kls.shape != values.shape or kls.shape != errors.shape:
        raise ValueError(f"kls, values and standard_errors must have the same length >= 2, got "
                         f"{kls.numel()}, {values.numel()}, {errors.numel()}")
    if not bool(torch.isfinite(torch.cat([kls, values, errors])).all()) or bool((errors < 0).any()):
        raise ValueError("kls, values and standard_errors must be finite, standard_errors >= 0")
    if torch.unique(kls).numel() != kls.numel():
        raise ValueError("kls must be distinct")
    at = float(at)
    if not math.isfinite(at):
        raise ValueError(f"at must be finite, got {at!r}")
    order = torch.argsort(kls)
    upper_position = min(max(int(torch.searchsorted(kls[order], at)), 1), kls.numel() - 1)
    lower, upper = int(order[upper_position - 1]), int(order[upper_position])
    inside = bool(kls[order[0]] <= at <= kls[order[-1]])
    slope = ((values[upper] - values[lower]) / (kls[upper] - kls[lower])).item()
    if inside:
        weight = ((at - kls[lower]) / (kls[upper] - kls[lower])).item()
    else:  # the nearest endpoint
        weight = 0.0 if at < kls[order[0]] else 1.0
    value = ((1 - weight) * values[lower] + weight * values[upper]).item()
    error = math.hypot((1 - weight) * errors[lower].item(), weight * errors[upper].item())
    concave = (value, error)
    if inside:
        lines = []  # the neighbouring segments' lines through (first, second), at ``at``
        for i in (upper_position - 1, upper_position + 1):
            if 1 <= i < kls.numel():
                first, second = order[i - 1], order[i]
                t = ((at - kls[second]) / (kls[second] - kls[first])).item()
                line = ((1 + t) * values[second] - t * values[first]).item()
                lines.append((line, math.hypot(t * errors[first].item(),
                                               (1 + t) * errors[second].item())))
        lowest = min(lines, default=concave)
        if lowest[0] > value:  # max(chord, min(lines)): never below the chord
            concave = lowest
    return {"value": value, "standard_error": error, "inside": inside, "lower": lower,
            "upper": upper, "weight": weight, "slope": slope, "concave_value": concave[0],
            "concave_standard_error": concave[1]}


def matched_kl_test(run: dict, *, kl: str = "kl_k1", alternative: str = "greater",
                    method: str = "gshf", envelope: bool = False) -> stats.TestResult:
    """z-test of ``method``'s gold reward against the offline-DPO curve of the same seed,
    linearly interpolated at ``method``'s KL (``kl``: ``"kl_k1"`` or ``"kl_k3"``); the standard
    error combines the method's with the interpolated one (``interpolate``). The chord lies
    below a concave curve, which favours ``method``; ``envelope=True`` compares with the
    neighbouring segments' lines instead, ``max(chord, min(lines))`` (``interpolate``): above a
    concave curve, so conservative when the curve's points are concave; never below the chord.
    Beyond the curve's range the comparison is with its nearest endpoint (``details["inside"]``
    is False). The noise of the KL coordinates is not propagated; ``details["kl_noise"]`` is its
    first-order size, ``|slope| * se(KL)``."""
    if kl not in ("kl_k1", "kl_k3"):
        raise ValueError(f"kl must be 'kl_k1' or 'kl_k3', got {kl!r}")
    curve, own = run["frontier"], run["evaluations"][method]
    point = interpolate(kls=[p[kl] for p in curve], values=[p["gold"] for p in curve],
                        standard_errors=[standard_error(p, "gold") for p in curve], at=own[kl])
    curve_gold, curve_error = ((point["concave_value"], point["concave_standard_error"])
                               if envelope else (point["value"], point["standard_error"]))
    spread = math.hypot(standard_error(own, "gold"), curve_error)
    result = stats.z_test(own["gold"], curve_gold, spread, alternative)
    details = {**result.details, "kl": own[kl], "curve_gold": curve_gold,
               "inside": point["inside"], "factors": [curve[point["lower"]]["factor"],
                                                     curve[point["upper"]]["factor"]],
               "kl_noise": abs(point["slope"]) * standard_error(own, kl),
               "standard_error": spread}
    return stats.TestResult(f"z-test against the offline-DPO curve at matched {kl[3:]} KL",
                            result.p_value, result.effect, "gold difference at matched KL", 1,
                            details)


def matched_kl_over_seeds(runs: list[dict], *, kl: str = "kl_k1", alternative: str = "greater",
                          level: float = 0.01, envelope: bool = False,
                          method: str = "gshf") -> stats.TestResult:
    """``matched_kl_test`` of ``method`` in every seed, pooled by ``over_seeds``; ``details``
    also counts the seeds where its KL lies outside the curve's range (``outside``)."""
    if not runs:
        raise ValueError("runs must hold at least one seed")
    tests = [matched_kl_test(run, kl=kl, alternative=alternative, envelope=envelope,
                             method=method) for run in runs]
    pooled = over_seeds(tests, alternative, level=level)
    details = {**pooled.details, "outside": sum(not t.details["inside"] for t in tests),
               "kl_noise": max(t.details["kl_noise"] for t in tests)}
    return stats.TestResult(pooled.test, pooled.p_value, pooled.effect, pooled.effect_name,
                            pooled.num_samples, details)


def length_growth_in_every_seed(runs: list[dict]) -> stats.TestResult:
    """z-tests that GSHF's last iterate writes longer responses than its start (offline DPO
    after one round), in every seed (``stats.every``)."""
    if not runs or len(runs[0]["gshf_trajectory"]) < 3:
        raise ValueError("runs must hold at least one seed with at least one GSHF iteration")
    return stats.every([difference_test(run["gshf_trajectory"][-1],
                                        baseline=run["gshf_trajectory"][1], metric="length")
                        for run in runs], "seeds")


def win_rate_in_every_seed(runs: list[dict], method: str = "gshf") -> stats.TestResult:
    """Exact one-sided binomial tests that ``method`` wins more than half of its gold-labelled
    comparisons with pi0, in every seed (``stats.every``)."""
    if not runs:
        raise ValueError("runs must hold at least one seed")
    return stats.every([stats.binomial_test(run["evaluations"][method]["wins"],
                                            run["evaluations"][method]["num_pairs"])
                        for run in runs], "seeds")


def proxy_length_test(runs: list[dict]) -> stats.TestResult:
    """Does the proxy pick the longer response more often than the gold reward would, among the
    same candidates? Per seed (each fits its own proxy), the fraction of GSHF's pairs of unequal
    length whose chosen (best-of-n) response is the longer, by the proxy, minus the same
    fraction when the same candidates are ranked by the gold reward; a one-sample t-test of the
    per-seed differences (the seed is the unit). ``details`` holds the pooled fractions, the
    per-seed differences and the fraction on the gold-labelled pi0 pairs."""
    def counts(run, key):
        return torch.tensor(run["diagnostics"][key], dtype=torch.long).reshape(-1, 2).sum(0)

    keys = ("gshf_pairs_length_signs", "gshf_gold_ranked_length_signs")
    per_seed = [[counts(run, key) for key in keys] for run in runs]
    if len(runs) < 2 or min(int(c.sum()) for seed in per_seed for c in seed) == 0:
        raise ValueError("runs must hold at least two seeds, each with a GSHF pair of unequal "
                         "length under both rankings")
    differences = [float(proxy[0] / proxy.sum() - gold[0] / gold.sum()) for proxy, gold in per_seed]
    test = stats.mean_test(differences, 0.0, "greater")
    pooled = [torch.stack([seed[i] for seed in per_seed]).sum(0) for i in range(2)]
    labelled = torch.tensor([run["diagnostics"]["gold_pairs_length_signs"] for run in runs],
                            dtype=torch.long).sum(0)
    details = {**test.details, "per_seed_differences": differences,
               "proxy_fraction_longer": float(pooled[0][0] / pooled[0].sum()),
               "gold_ranked_fraction_longer": float(pooled[1][0] / pooled[1].sum()),
               "gold_labelled_pairs_fraction_longer": float(labelled[0] / labelled.sum())}
    return stats.TestResult("one-sample t-test of the per-seed differences", test.p_value,
                            test.effect, "mean difference of the fractions chosen longer "
                            "(proxy minus gold ranking)", len(runs), details)


def matched_kl_frame(runs: list[dict]) -> pd.DataFrame:
    """The matched-KL comparison of every seed, with the ``k1`` and the ``k3`` estimate of KL:
    GSHF's KL and gold reward, the offline-DPO curve's gold at that KL, their difference, the
    z-score and one-sided p-value (``matched_kl_test``), whether the KL lies inside the curve's
    range, and the difference against the conservative envelope (``envelope=True``)."""
    rows = []
    for run in runs:
        row = {"seed": run["seed"], "gshf_gold": run["evaluations"]["gshf"]["gold"]}
        for kl in ("kl_k1", "kl_k3"):
            test, name = matched_kl_test(run, kl=kl), kl[3:]
            envelope = matched_kl_test(run, kl=kl, envelope=True)
            row.update({f"gshf_kl_{name}": test.details["kl"],
                        f"curve_gold_{name}": test.details["curve_gold"],
                        f"difference_{name}": test.effect, f"z_{name}": test.details["z"],
                        f"p_{name}": test.p_value, f"inside_{name}": test.details["inside"],
                        f"difference_{name}_envelope": envelope.effect})
        rows.append(row)
    return pd.DataFrame(rows)


def diagnostics_frame(runs: list[dict]) -> pd.DataFrame:
    """One row per seed: how well pi0 fits the language (``k1`` estimate of
    KL(language || pi0) per response, and the language's entropy), the correlation of length and
    gold reward in the language's own samples, the fraction of gold-labelled pi0 pairs (of
    unequal length) whose chosen response is longer, and multi-step RS's stage acceptance rates,
    total proposals and the estimated one-step rate from pi0."""
    rows = []
    for run in runs:
        d = run["diagnostics"]
        longer, shorter = d["gold_pairs_length_signs"]
        rows.append({"seed": run["seed"], "kl_language_to_pi0": d["kl_language_to_pi0_k1"],
                     "language_entropy": d["language_entropy"],
                     "corr_length_gold": d["language_corr_length_gold"],
                     "gold_pairs_chosen_longer": longer / max(longer + shorter, 1),
                     "ms_stage_rates": " ".join(f"{r:.3f}" for r in d["ms_stage_rates"]),
                     "ms_proposals": round(d["ms_proposals"]),
                     "one_step_rate": d["one_step_rate_estimate"]})
    return pd.DataFrame(rows)


def comparisons_frame(runs: list[dict], method: str = "gshf",
                      baselines=("offline_dpo", "rso", "multi_step_rs")) -> pd.DataFrame:
    """One row per seed: the difference of ``method``'s mean gold reward and each baseline's,
    with the one-sided p-value of its ``difference_test``."""
    rows = []
    for run in runs:
        row = {"seed": run["seed"]}
        for baseline in baselines:
            test = difference_test(run["evaluations"][method],
                                   baseline=run["evaluations"][baseline])
            row.update({f"minus_{baseline}": test.effect, f"p_{baseline}": test.p_value})
        rows.append(row)
    return pd.DataFrame(rows)


def comparisons_table(runs: list[dict], pairs, *, prompts: str = "evaluations",
                      level: float = 0.01, metric: str = "gold") -> pd.DataFrame:
    """One row per ``(method, baseline)`` of ``pairs``: ``compare_over_seeds`` of their gold
    rewards (or other ``metric``) on ``prompts`` (one-sided, ``method`` larger), with the mean
    difference and its 95% t-interval, the seed-level p-value, the exact sign-flip p-value and
    the number of seeds whose own test is at or below ``level`` in each direction."""
    rows = []
    for method, baseline in pairs:
        test = compare_over_seeds(runs, method=method, baseline=baseline, level=level,
                                  prompts=prompts, metric=metric)
        rows.append({"method": METHODS[method], "baseline": METHODS[baseline],
                     f"mean {metric} difference": test.effect,
                     "95% CI low": test.details["ci95"][0], "95% CI high": test.details["ci95"][1],
                     "seed-level p-value": test.p_value,
                     "sign-flip p-value": test.details["sign_flip_p_value"],
                     "seeds significant": test.details["seeds_significant"],
                     "seeds significant, opposite": test.details["seeds_significant_opposite"]})
    if not rows:
        raise ValueError("pairs must hold at least one (method, baseline) pair")
    return pd.DataFrame(rows)
