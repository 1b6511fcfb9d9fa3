"""The paper's language-model experiment in miniature (Xiong et al., arXiv:2312.11456,
section 6; notebook 05).

Everything a CPU can train in seconds, with nothing downloaded:

- ``SyntheticLanguage``: a prompt-conditioned first-order Markov "language" over a small
  vocabulary (token ``EOS = 0`` ends a response; responses hold 1 to ``max_len - 1`` content
  tokens), with exact log-probabilities, a *gold* sequence-level reward (mean token quality plus
  mean bigram coherence: averages, with no term that grows with length) and its Bradley-Terry
  preference oracle.
  The language ends a response sooner after a poor token than after a good one, so in its own
  samples length and gold reward are correlated: the spurious feature a reward model can learn.
- ``SequencePolicy``: a tiny GRU policy ``pi(y|x)`` whose structural mask (no empty response, an
  end token at the last position) matches the language; ``sequence_logprob`` (masked sum of
  per-token log-softmax), ``sample`` (batched, with temperature and an explicit generator).
- ``train_sft`` (supervised learning of pi0 on the language) and ``train_dpo`` (sequence-level
  DPO with the reference fixed at pi0, reusing ``gsfh_utils.dpo.dpo_loss``).
- ``TokenReward`` / ``fit_proxy_reward``: a bag-of-tokens reward model
  ``r(x, y) = sum_t w[x, y_t]`` fitted by the ridge Bradley-Terry MLE to a limited preference set.
  It cannot represent the gold mean, and being a *sum* it pays for length.
- Samplers over responses: exact rejection sampling of ``pi exp(r/eta)`` from the proposal
  policy ``pi`` itself (``rejection_sample_sequences``, with the exact bound
  ``TokenReward.max_reward``; exact for that target only), RSO's finite-pool sampler and
  best-of-n / worst-of-n pairs (reusing ``gsfh_utils.sampling`` and
  ``gsfh_utils.dpo.select_pairs``). The experiment that strings them together (offline DPO, RSO,
  multi-step rejection sampling, iterative GSHF-DPO) is ``gsfh_utils.lm.experiment.run_seed``.

Responses are ``LongTensor [B, T]`` with ``T <= max_len``: content tokens, then ``EOS``, then
``EOS`` padding. Bad input (a response longer than the model's maximum, a token outside the
vocabulary, a prompt outside the prompt set) raises ``ValueError`` naming the argument.

Randomness is always an explicit ``torch.Generator``; models are initialised under
``torch.random.fork_rng`` from a seed, so the global RNG is neither used nor disturbed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import check_generator, check_positive_int, check_positive_number
from ..dpo import dpo_loss, select_pairs
from ..estimation import fit_bt_mle
from ..kl_estimators import kl_estimates
from ..sampling import rso_select

EOS = 0


def check_prompts(prompts, num_prompts: int, name: str = "prompts") -> torch.Tensor:
    """A 1-D integer tensor of prompt ids in ``[0, num_prompts)``."""
    prompts = torch.as_tensor(prompts)
    if prompts.ndim != 1 or prompts.dtype not in (torch.int64, torch.int32, torch.int16):
        raise ValueError(f"{name} must be a 1-D integer tensor, got {prompts.dtype} "
                         f"{tuple(prompts.shape)}")
    if prompts.numel() and (prompts.min() < 0 or prompts.max() >= num_prompts):
        raise ValueError(f"{name} must lie in [0, {num_prompts}), got values in "
                         f"[{int(prompts.min())}, {int(prompts.max())}]")
    return prompts.long()


def check_responses(responses, vocab_size: int, max_len: int, name: str = "responses",
                    num_rows: int | None = None) -> torch.Tensor:
    """Validate ``[B, T]`` responses: ``T <= max_len``, tokens in ``[0, vocab_size)``, at least
    one content token, an ``EOS`` in every row and only ``EOS`` after the first one."""
    responses = torch.as_tensor(responses)
    if responses.ndim != 2 or responses.dtype not in (torch.int64, torch.int32, torch.int16):
        raise ValueError(f"{name} must be a 2-D integer tensor [batch, length], got "
                         f"{responses.dtype} {tuple(responses.shape)}")
    if num_rows is not None and responses.shape[0] != num_rows:
        raise ValueError(f"{name} has {responses.shape[0]} rows, expected {num_rows} (one per "
                         "prompt)")
    if responses.shape[1] > max_len:
        raise ValueError(f"{name} are {responses.shape[1]} tokens long, longer than the model's "
                         f"maximum max_len={max_len}")
    if responses.numel() and (responses.min() < 0 or responses.max() >= vocab_size):
        raise ValueError(f"{name} hold tokens outside the vocabulary [0, {vocab_size}): values "
                         f"in [{int(responses.min())}, {int(responses.max())}]")
    responses = responses.long()
    if responses.shape[1] < 2:
        raise ValueError(f"{name} must hold at least one content token and the end token")
    is_end = responses == EOS
    if not bool(is_end.any(-1).all()):
        raise ValueError(f"{name}: every row must contain the end token EOS={EOS}")
    if bool(is_end[:, 0].any()):
        raise ValueError(f"{name}: a response must hold at least one content token before EOS")
    after_end = is_end.long().cumsum(-1) > 0
    if bool((after_end & ~is_end).any()):
        raise ValueError(f"{name}: only EOS padding may follow the first EOS")
    return responses


def response_lengths(responses: torch.Tensor) -> torch.Tensor:
    """Number of content tokens (the end token not counted) of canonical responses."""
    return (responses != EOS).sum(-1)


def token_mask(responses: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` float mask of the scored positions: content tokens and the first EOS."""
    lengths = response_lengths(responses)
    positions = torch.arange(responses.shape[1])
    return (positions <= lengths.unsqueeze(-1)).to(torch.float32)


def structural_mask(max_len: int, vocab_size: int) -> torch.Tensor:
    """``[max_len, vocab_size]`` boolean: which tokens are allowed at each position. Position 0
    forbids EOS (no empty response); the last position allows only EOS."""
    allowed = torch.ones(max_len, vocab_size, dtype=torch.bool)
    allowed[0, EOS] = False
    allowed[-1] = False
    allowed[-1, EOS] = True
    return allowed


def pad_responses(responses: torch.Tensor, max_len: int) -> torch.Tensor:
    """Right-pad ``[B, T]`` responses with EOS to ``[B, max_len]``."""
    return F.pad(responses, (0, max_len - responses.shape[1]), value=EOS)


def enumerate_responses(vocab_size: int, max_len: int) -> torch.Tensor:
    """Every valid response (for tiny vocabularies, in tests): ``[N, max_len]``, with
    ``N = sum_{l=1}^{max_len-1} (vocab_size-1)^l``."""
    contents = torch.arange(1, vocab_size)
    rows = []
    for length in range(1, max_len):
        grids = torch.cartesian_prod(*([contents] * length)).reshape(-1, length)
        rows.append(pad_responses(grids, max_len))
    return torch.cat(rows)


# --------------------------------------------------------------------------------------------
# The synthetic language, the gold reward and the preference oracle.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticLanguage:
    """A prompt-conditioned Markov language with a gold reward (all float64, exact).

    ``first_logits [P, V]`` (EOS masked), ``transition_logits [P, V, V]`` (row = previous token;
    the EOS column holds the end logit), ``token_quality [P, V]`` in ``[-1, 1]`` and
    ``coherence [V, V]`` in ``[-1, 1]``. The gold reward of a response ``y`` of length ``L`` is

    ``r*(x, y) = quality_weight * mean_t q[x, y_t]``
    ``+ coherence_weight * mean_{t>=2} c[y_{t-1}, y_t]``

    (the second mean is 0, by convention, for ``L = 1``). It is length-neutral in a limited
    sense: both terms are averages, so no term grows with ``L`` and a response repeating one
    token has the same reward at every length ``L >= 2``; but appending a token moves each
    average towards the new token's (or bigram's) value, raising the reward when both beat the
    current averages and lowering it when both fall short, and one-token responses get the
    coherence value 0 whatever their token. Preferences are Bradley-Terry:
    ``P(y1 > y2 | x) = sigmoid(r*(x, y1) - r*(x, y2))``.
    """

    first_logits: torch.Tensor
    transition_logits: torch.Tensor
    token_quality: torch.Tensor
    coherence: torch.Tensor
    max_len: int
    quality_weight: float
    coherence_weight: float

    @property
    def num_prompts(self) -> int:
        return self.first_logits.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.first_logits.shape[1]

    @classmethod
    def random(cls, generator: torch.Generator, num_prompts: int = 8, vocab_size: int = 16,
               max_len: int = 12, mean_length: float = 4.0, length_quality_slope: float = 2.0,
               quality_weight: float = 3.0, coherence_weight: float = 1.5) -> SyntheticLanguage:
        """A random language. The end probability after token ``v`` is
        ``sigmoid(b - length_quality_slope * q[x, v])`` with ``b`` set so that a response
        continues with probability ``1 - 1/mean_length`` after an average token: good tokens
        tend to be followed by more tokens, so longer samples are better on average."""
        check_generator(generator)
        for value, name in [(num_prompts, "num_prompts"), (vocab_size, "vocab_size"),
                            (max_len, "max_len")]:
            check_positive_int(value, name)
        if vocab_size < 3 or max_len < 2:
            raise ValueError("need vocab_size >= 3 and max_len >= 2")
        mean_length = check_positive_number(mean_length, "mean_length")
        if mean_length <= 1:
            raise ValueError(f"mean_length must exceed 1, got {mean_length!r}")
        shape_pv = (num_prompts, vocab_size)
        quality = torch.tanh(1.2 * torch.randn(shape_pv, dtype=torch.float64, generator=generator))
        quality[:, EOS] = 0.0
        coherence = torch.tanh(
            1.2 * torch.randn(vocab_size, vocab_size, dtype=torch.float64, generator=generator))
        first = 1.0 * torch.randn(shape_pv, dtype=torch.float64, generator=generator)
        first[:, EOS] = -math.inf
        transition = 1.0 * torch.randn(num_prompts, vocab_size, vocab_size, dtype=torch.float64,
                                       generator=generator)
        # End logit relative to the content tokens: log-odds of ending after token v.
        content = torch.logsumexp(transition[:, :, 1:], dim=-1)  # [P, V]
        base = math.log(1 / (mean_length - 1))
        transition[:, :, EOS] = content + base - length_quality_slope * quality
        return cls(first, transition, quality, coherence, max_len, float(quality_weight),
                   float(coherence_weight))

    def _check(self, prompts, responses, name="responses"):
        prompts = check_prompts(prompts, self.num_prompts)
        responses = check_responses(responses, self.vocab_size, self.max_len, name,
                                    num_rows=prompts.shape[0])
        return prompts, responses

    def _step_logits(self, prompts, previous, position):
        """Next-token logits ``[B, V]`` (float64) with the structural mask applied."""
        if position == 0:
            logits = self.first_logits[prompts]
        else:
            logits = self.transition_logits[prompts, previous]
        allowed = structural_mask(self.max_len, self.vocab_size)[position]
        return logits.masked_fill(~allowed, -math.inf)

    def sample(self, prompts, generator: torch.Generator) -> torch.Tensor:
        """Responses ``[B, max_len]`` drawn from the language."""
        check_generator(generator)
        prompts = check_prompts(prompts, self.num_prompts)
        batch = prompts.shape[0]
        out = torch.full((batch, self.max_len), EOS, dtype=torch.long)
        previous = torch.zeros(batch, dtype=torch.long)
        done = torch.zeros(batch, dtype=torch.bool)
        for position in range(self.max_len):
            probs = torch.softmax(self._step_logits(prompts, previous, position), -1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
            token = torch.where(done, EOS, token)
            out[:, position] = token
            done = done | (token == EOS)
            previous = token
            if bool(done.all()):
                break
        return out

    def log_prob(self, prompts, responses) -> torch.Tensor:
        """Exact ``log p(y | x)`` under the language (float64, shape ``[B]``)."""
        prompts, responses = self._check(prompts, responses)
        responses = pad_responses(responses, self.max_len)
        mask = token_mask(responses).to(torch.float64)
        previous = torch.cat([torch.zeros_like(responses[:, :1]), responses[:, :-1]], dim=1)
        total = torch.zeros(responses.shape[0], dtype=torch.float64)
        for position in range(self.max_len):
            logits = self._step_logits(prompts, previous[:, position], position)
            logp = torch.log_softmax(logits, -1)
            token_logp = logp.gather(-1, responses[:, position:position + 1]).squeeze(-1)
            total = total + torch.where(mask[:, position] > 0, token_logp, 0.0)
        return total

    def gold_reward(self, prompts, responses) -> torch.Tensor:
        """``r*(x, y)`` (float64, shape ``[B]``), see the class docstring."""
        prompts, responses = self._check(prompts, responses)
        content = responses != EOS
        lengths = content.sum(-1).to(torch.float64)
        quality = (self.token_quality[prompts.unsqueeze(-1), responses] * content).sum(-1)
        bigram_valid = content[:, 1:] & content[:, :-1]
        bigrams = self.coherence[responses[:, :-1], responses[:, 1:]] * bigram_valid
        num_bigrams = (lengths - 1).clamp_min(1.0)
        return (self.quality_weight * quality / lengths
                + self.coherence_weight * bigrams.sum(-1) / num_bigrams)

    def preference_probability(self, prompts, first, second) -> torch.Tensor:
        """Gold Bradley-Terry ``P(first > second | x) = sigmoid(r*(x, first) - r*(x, second))``."""
        return torch.sigmoid(self.gold_reward(prompts, first) - self.gold_reward(prompts, second))

    def label(self, prompts, first, second, generator: torch.Generator) -> torch.Tensor:
        """Gold preference labels (1 when ``first`` is preferred), drawn from the BT oracle."""
        check_generator(generator)
        probs = self.preference_probability(prompts, first, second)
        return (torch.rand(probs.shape, dtype=torch.float64, generator=generator) < probs).long()


# --------------------------------------------------------------------------------------------
# The policy.
# --------------------------------------------------------------------------------------------


class SequencePolicy(nn.Module):
    """A tiny autoregressive GRU policy ``pi(y | x)`` over responses.

    The prompt sets the initial hidden state; the input at position ``t`` is the previous token
    (a begin-of-sequence embedding at ``t = 0``); the output is a softmax over the vocabulary
    restricted by ``structural_mask``. Float32.
    """

    def __init__(self, num_prompts: int, vocab_size: int = 16, max_len: int = 12,
                 embed_dim: int = 32, hidden_dim: int = 64):
        super().__init__()
        for value, name in [(num_prompts, "num_prompts"), (vocab_size, "vocab_size"),
                            (max_len, "max_len"), (embed_dim, "embed_dim"),
                            (hidden_dim, "hidden_dim")]:
            check_positive_int(value, name)
        if vocab_size < 2 or max_len < 2:
            raise ValueError("need vocab_size >= 2 and max_len >= 2")
        self.num_prompts, self.vocab_size, self.max_len = num_prompts, vocab_size, max_len
        self.prompt_embedding = nn.Embedding(num_prompts, hidden_dim)
        self.token_embedding = nn.Embedding(vocab_size + 1, embed_dim)  # last index: BOS
        self.gru = nn.GRU(embed_dim, hidden_dim, batch_first=True)
        self.head = nn.Linear(hidden_dim, vocab_size)
        self.register_buffer("allowed", structural_mask(max_len, vocab_size), persistent=False)

    @classmethod
    def create(cls, seed: int, num_prompts: int, **kwargs) -> SequencePolicy:
        """A freshly initialised policy, its parameters drawn from ``seed`` without touching the
        global RNG (``torch.random.fork_rng``)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(num_prompts, **kwargs)

    def clone(self) -> SequencePolicy:
        twin = type(self)(self.num_prompts, self.vocab_size, self.max_len,
                          self.token_embedding.embedding_dim, self.gru.hidden_size)
        twin.load_state_dict(self.state_dict())
        return twin

    def logits(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """Masked next-token logits ``[B, T, V]`` for (validated) responses ``[B, T]``."""
        bos = torch.full_like(responses[:, :1], self.vocab_size)
        inputs = torch.cat([bos, responses[:, :-1]], dim=1)
        hidden0 = torch.tanh(self.prompt_embedding(prompts)).unsqueeze(0)
        outputs, _ = self.gru(self.token_embedding(inputs), hidden0)
        logits = self.head(outputs)
        return logits.masked_fill(~self.allowed[: responses.shape[1]], -math.inf)

    def step(self, tokens: torch.Tensor, hidden: torch.Tensor, position: int):
        """One sampling step: logits ``[B, V]`` after input ``tokens [B]`` and the new hidden."""
        outputs, hidden = self.gru(self.token_embedding(tokens).unsqueeze(1), hidden)
        logits = self.head(outputs.squeeze(1))
        return logits.masked_fill(~self.allowed[position], -math.inf), hidden


def token_logprobs(policy: SequencePolicy, prompts, responses) -> torch.Tensor:
    """``[B, T]`` log-probabilities of each token, zero after the first EOS (masked)."""
    prompts = check_prompts(prompts, policy.num_prompts)
    responses = check_responses(responses, policy.vocab_size, policy.max_len,
                                num_rows=prompts.shape[0])
    width = responses.shape[1]
    if responses.shape[0]:  # positions after every row's end token are not computed
        responses = responses[:, : int(response_lengths(responses).max()) + 1]
    logp = torch.log_softmax(policy.logits(prompts, responses), dim=-1)
    picked = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)
    picked = torch.where(token_mask(responses) > 0, picked, 0.0)
    return F.pad(picked, (0, width - responses.shape[1]))


def sequence_logprob(policy: SequencePolicy, prompts, responses) -> torch.Tensor:
    """``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over content tokens and the end token
    (shape ``[B]``; differentiable)."""
    return token_logprobs(policy, prompts, responses).sum(-1)


@torch.no_grad()
def sample(policy: SequencePolicy, prompts, generator: torch.Generator,
           temperature: float = 1.0) -> torch.Tensor:
    """Responses ``[B, max_len]`` drawn from ``softmax(logits / temperature)``, batched."""
    check_generator(generator)
    temperature = check_positive_number(temperature, "temperature")
    prompts = check_prompts(prompts, policy.num_prompts)
    batch = prompts.shape[0]
    out = torch.full((batch, policy.max_len), EOS, dtype=torch.long)
    tokens = torch.full((batch,), policy.vocab_size, dtype=torch.long)
    hidden = torch.tanh(policy.prompt_embedding(prompts)).unsqueeze(0)
    done = torch.zeros(batch, dtype=torch.bool)
    for position in range(policy.max_len):
        logits, hidden = policy.step(tokens, hidden, position)
        probs = torch.softmax(logits.double() / temperature, -1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(done, EOS, token)
        out[:, position] = token
        done = done | (token == EOS)
        tokens = token
        if bool(done.all()):
            break
    return out


# --------------------------------------------------------------------------------------------
# Training: supervised fine-tuning and sequence-level DPO.
# --------------------------------------------------------------------------------------------


def _batches(num_items: int, batch_size: int, num_steps: int, generator: torch.Generator):
    """Indices of ``num_steps`` mini-batches: shuffled epochs, drawn from ``generator``."""
    batch_size = min(batch_size, num_items)
    order = torch.empty(0, dtype=torch.long)
    for _ in range(num_steps):
        if order.numel() < batch_size:
            order = torch.cat([order, torch.randperm(num_items, generator=generator)])
        yield order[:batch_size]
        order = order[batch_size:]


def train_sft(policy: SequencePolicy, prompts, responses, num_steps: int, generator,
              batch_size: int = 256, lr: float = 3e-3) -> list[float]:
    """Maximum likelihood (mean negative log-likelihood per response) by Adam, in place.
    Returns the loss of each step."""
    check_generator(generator)
    check_positive_int(num_steps, "num_steps")
    prompts = check_prompts(prompts, policy.num_prompts)
    responses = check_responses(responses, policy.vocab_size, policy.max_len,
                                num_rows=prompts.shape[0])
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    losses = []
    for index in _batches(prompts.shape[0], batch_size, num_steps, generator):
        loss = -sequence_logprob(policy, prompts[index], responses[index]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@dataclass
class PreferencePairs:
    """Preference data: prompts ``[N]``, chosen and rejected responses ``[N, max_len]``."""

    prompts: torch.Tensor
    chosen: torch.Tensor
    rejected: torch.Tensor

    def __len__(self) -> int:
        return self.prompts.shape[0]

    def concat(self, other: PreferencePairs) -> PreferencePairs:
        return PreferencePairs(torch.cat([self.prompts, other.prompts]),
                               torch.cat([self.chosen, other.chosen]),
                               torch.cat([self.rejected, other.rejected]))

    @classmethod
    def from_labels(cls, prompts, first, second, labels) -> PreferencePairs:
        """Chosen = ``first`` where ``labels == 1``, else ``second``."""
        keep = torch.as_tensor(labels).bool().unsqueeze(-1)
        return cls(prompts, torch.where(keep, first, second), torch.where(keep, second, first))


def train_dpo(policy: SequencePolicy, reference: SequencePolicy, pairs: PreferencePairs,
              eta: float, num_steps: int, generator, batch_size: int = 128, lr: float = 1e-3,
              loss_type: str = "sigmoid") -> list[float]:
    """Sequence-level DPO (Rafailov et al. 2023) by Adam, in place: mean over a mini-batch of
    ``dpo_loss(log pi(y_w), log pi(y_l), log pi_ref(y_w), log pi_ref(y_l), eta)`` with exact
    masked sequence log-probabilities; the reference stays fixed. Returns the loss per step."""
    check_generator(generator)
    check_positive_int(num_steps, "num_steps")
    eta = check_positive_number(eta, "eta")
    with torch.no_grad():
        ref_chosen = sequence_logprob(reference, pairs.prompts, pairs.chosen)
        ref_rejected = sequence_logprob(reference, pairs.prompts, pairs.rejected)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    losses = []
    for index in _batches(len(pairs), batch_size, num_steps, generator):
        prompts = pairs.prompts[index]
        both = torch.cat([pairs.chosen[index], pairs.rejected[index]])
        logps = sequence_logprob(policy, torch.cat([prompts, prompts]), both)
        chosen, rejected = logps.split(index.shape[0])
        loss = dpo_loss(chosen, rejected, ref_chosen[index], ref_rejected[index], eta,
                        loss_type=loss_type).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


# --------------------------------------------------------------------------------------------
# The proxy reward model.
# --------------------------------------------------------------------------------------------


def token_count_features(prompts, responses, num_prompts: int, vocab_size: int) -> torch.Tensor:
    """``[B, num_prompts * vocab_size]`` counts of each (prompt, token) among content tokens."""
    content = (responses != EOS).to(torch.float64)
    counts = torch.zeros(responses.shape[0], vocab_size, dtype=torch.float64)
    counts.scatter_add_(-1, responses, content)
    features = torch.zeros(responses.shape[0], num_prompts, vocab_size, dtype=torch.float64)
    features[torch.arange(responses.shape[0]), prompts] = counts
    return features.reshape(responses.shape[0], -1)


@dataclass(frozen=True)
class TokenReward:
    """Bag-of-tokens reward ``r(x, y) = sum_t weights[x, y_t]`` over content tokens."""

    weights: torch.Tensor  # [P, V], float64, weights[:, EOS] = 0
    max_len: int

    def __call__(self, prompts, responses) -> torch.Tensor:
        prompts = check_prompts(prompts, self.weights.shape[0])
        responses = check_responses(responses, self.weights.shape[1], self.max_len,
                                    num_rows=prompts.shape[0])
        content = responses != EOS
        return (self.weights[prompts.unsqueeze(-1), responses] * content).sum(-1)

    def max_reward(self, prompts) -> torch.Tensor:
        """Exact ``max_y r(x, y)`` over all valid responses: the best token repeated
        ``max_len - 1`` times if its weight is positive, else once."""
        prompts = check_prompts(prompts, self.weights.shape[0])
        best = self.weights[prompts, 1:].amax(-1)
        return torch.where(best > 0, (self.max_len - 1) * best, best)


def fit_proxy_reward(pairs: PreferencePairs, num_prompts: int, vocab_size: int, max_len: int,
                     reg: float) -> TokenReward:
    """Ridge Bradley-Terry MLE (``gsfh_utils.estimation.fit_bt_mle``) of a ``TokenReward`` on
    preference pairs (chosen vs rejected)."""
    chosen = token_count_features(pairs.prompts, pairs.chosen, num_prompts, vocab_size)
    rejected = token_count_features(pairs.prompts, pairs.rejected, num_prompts, vocab_size)
    theta = fit_bt_mle(chosen - rejected, torch.ones(len(pairs), dtype=torch.float64), reg)
    weights = theta.reshape(num_prompts, vocab_size).clone()
    weights[:, EOS] = 0.0
    return TokenReward(weights, max_len)


# --------------------------------------------------------------------------------------------
# Samplers over responses.
# --------------------------------------------------------------------------------------------


def sample_grouped(policy: SequencePolicy, prompts, num_per_prompt: int, generator,
                   temperature: float = 1.0) -> torch.Tensor:
    """``num_per_prompt`` responses for each prompt: ``[len(prompts), num_per_prompt, max_len]``."""
    check_positive_int(num_per_prompt, "num_per_prompt")
    prompts = check_prompts(prompts, policy.num_prompts)
    flat = sample(policy, prompts.repeat_interleave(num_per_prompt), generator, temperature)
    return flat.reshape(prompts.shape[0], num_per_prompt, -1)


def rejection_sample_sequences(proposal: SequencePolicy, prompts, reward, eta: float,
                               generator, max_proposals: int = 2_000_000,
                               chunk: int = 4096):
    """Exact draws of ``proposal(y|x) exp(r(x,y)/eta) / Z`` by rejection, one per prompt.

    Propose ``y ~ proposal(.|x)`` and accept with probability
    ``exp((r(x,y) - reward.max_reward(x))/eta)``; ``max_reward`` is the exact maximum over all
    responses, so accepted draws follow the target exactly (notebook 01). Proposals are
    made in chunks for all still-unfilled prompts. Returns ``(responses [B, max_len],
    acceptance_rate)``; raises ``ValueError`` if more than ``max_proposals`` would be needed.
    """
    check_generator(generator)
    eta = check_positive_number(eta, "eta")
    prompts = check_prompts(prompts, proposal.num_prompts)
    bound = reward.max_reward(prompts)
    out = torch.full((prompts.shape[0], proposal.max_len), EOS, dtype=torch.long)
    filled = torch.zeros(prompts.shape[0], dtype=torch.bool)
    proposed = accepted = 0
    while not bool(filled.all()):
        waiting = (~filled).nonzero().squeeze(-1)
        repeats = max(1, chunk // waiting.numel())
        rows = waiting.repeat(repeats)
        draws = sample(proposal, prompts[rows], generator)
        log_accept = (reward(prompts[rows], draws) - bound[rows]) / eta
        keep = torch.rand(rows.shape, dtype=torch.float64, generator=generator) < log_accept.exp()
        proposed += rows.numel()
        accepted += int(keep.sum())
        # The earliest accepted draw of each waiting row (a choice that ignores the draws'
        # values, so the kept draw is still an exact sample of the target).
        none = rows.numel()
        first = torch.full((prompts.shape[0],), none, dtype=torch.long)
        first.scatter_reduce_(0, rows[keep], torch.arange(none)[keep], reduce="amin")
        newly = (first < none) & ~filled
        out[newly] = draws[first[newly]]
        filled = filled | newly
        if proposed > max_proposals:
            raise ValueError(f"eta={eta} needs more than max_proposals={max_proposals} proposals "
                             f"(acceptance rate so far {accepted / proposed:.3g}); use "
                             "multi-step rejection sampling")
    return out, accepted / proposed


def rso_pairs(pool: torch.Tensor, prompts, reward, eta: float, generator) -> PreferencePairs:
    """RSO (Liu et al. 2023): from a pool ``[B, M, max_len]`` of pi0 responses per prompt, accept
    two by ``gsfh_utils.sampling.rso_select`` on the reward at ``eta`` and label the pair by the
    same reward (chosen = higher)."""
    rewards = reward(prompts.repeat_interleave(pool.shape[1]),
                     pool.reshape(-1, pool.shape[-1])).reshape(pool.shape[:2])
    picked = rso_select(rewards, 2, eta, generator)
    rows = torch.arange(pool.shape[0])
    first, second = pool[rows, picked[:, 0]], pool[rows, picked[:, 1]]
    labels = rewards[rows, picked[:, 0]] >= rewards[rows, picked[:, 1]]
    return PreferencePairs.from_labels(prompts, first, second, labels)


def best_worst_pairs(responses: torch.Tensor, prompts, reward, generator) -> PreferencePairs:
    """Best-of-n vs worst-of-n by ``reward`` among ``responses [B, n, max_len]``
    (``gsfh_utils.dpo.select_pairs(..., "max_min")``): chosen = best, rejected = worst."""
    scores = reward(prompts.repeat_interleave(responses.shape[1]),
                    responses.reshape(-1, responses.shape[-1])).reshape(responses.shape[:2])
    best, worst = select_pairs(scores, "max_min", generator)
    rows = torch.arange(responses.shape[0])
    return PreferencePairs(prompts, responses[rows, best], responses[rows, worst])


# --------------------------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_policy(policy: SequencePolicy, reference: SequencePolicy,
                    language: SyntheticLanguage, prompts, generator, proxy=None,
                    responses=None) -> dict:
    """Gold reward, KL to the reference (k3 estimate), length and gold win rate against the
    reference, from one response of ``policy`` and one of ``reference`` per prompt
    (``responses``: the policy's, already drawn from it for ``prompts``; by default drawn here).

    KL: ``k1 = log(p/q)`` and ``k3 = q/p - 1 - log(q/p)`` at ``y ~ p = policy``, ``q = reference``
    with exact sequence log-probabilities (both unbiased; ``k3 >= 0`` but far noisier than ``k1``
    at a few nats), each with its per-sample standard deviation (``ddof = 1``). Win rate: a gold
    BT label per pair (policy response first), so the count of wins is binomial.
    """
    prompts = check_prompts(prompts, policy.num_prompts)
    mine = (sample(policy, prompts, generator) if responses is None else
            check_responses(responses, policy.vocab_size, policy.max_len,
                            num_rows=prompts.shape[0]))
    theirs = sample(reference, prompts, generator)
    estimates = kl_estimates(sequence_logprob(policy, prompts, mine).double(),
                             sequence_logprob(reference, prompts, mine).double())
    gold = language.gold_reward(prompts, mine)
    wins = language.label(prompts, mine, theirs, generator)
    lengths = response_lengths(mine).double()
    result = {
        "gold": gold.mean().item(),
        "gold_std": gold.std().item(),
        "kl_k3": estimates["k3"].mean().item(),
        "kl_k3_std": estimates["k3"].std().item(),
        "kl_k1": estimates["k1"].mean().item(),
        "kl_k1_std": estimates["k1"].std().item(),
        "length": lengths.mean().item(),
        "length_std": lengths.std().item(),
        "win_rate": wins.double().mean().item(),
        "wins": int(wins.sum()),
        "num_pairs": int(wins.numel()),
        "win_probability": language.preference_probability(prompts, mine, theirs).mean().item(),
    }
    if proxy is not None:
        result["proxy"] = proxy(prompts, mine).mean().item()
    return result


@torch.no_grad()
def gold_win_counts(language: SyntheticLanguage, prompts, responses: dict, generator) -> dict:
    """Gold comparisons of every two policies: ``responses`` maps a name to ``[B, max_len]``
    responses of that policy to ``prompts`` (independent draws). For every two names ``a``
    before ``b`` (in the order of ``responses``), one gold Bradley-Terry label per prompt
    (``language.label``, ``a``'s response first). Returns ``{a: {b: {"wins": a's wins,
    "num_pairs": B, "probability": mean P(a's response > b's)}}}`` (JSON-ready)."""
    check_generator(generator)
    names = list(responses)
    if len(names) < 2:
        raise ValueError(f"responses must map at least two policies to responses, got {names}")
    prompts = check_prompts(prompts, language.num_prompts)
    for name in names:
        check_responses(responses[name], language.vocab_size, language.max_len,
                        name=f"responses[{name!r}]", num_rows=prompts.shape[0])
    counts = {}
    for i, first in enumerate(names):
        counts[first] = {}
        for second in names[i + 1:]:
            a, b = responses[first], responses[second]
            wins = language.label(prompts, a, b, generator)
            counts[first][second] = {
                "wins": int(wins.sum()), "num_pairs": int(wins.numel()),
                "probability": language.preference_probability(prompts, a, b).mean().item()}
    return counts
