"""Training objectives: each turns the policy's completion log-probs over one packed micro-batch into a loss and
metric sums; ``LearnerWorker.train_step`` runs the one loop they share (micro-batches padded to the same count on
every rank, backward, one optimizer step per update, grad norm, metric all-reduce).

An objective instance lives for one train step on one rank: ``prepare`` (collective) computes what the loss needs
besides the policy's log-probs (old, reference and sampling log-probs, global counts) and plans the updates;
``loss`` runs per micro-batch; ``metrics`` turns the sums, added over micro-batches and ranks, into the reported
means. Pure torch: the rank's collectives and policy are reached through ``LearnerOps``.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from rapo_ray.algo import PREFERENCE_LOSSES, policy_loss, preference_loss, sft_loss
from rapo_ray.config import AlgoConfig, LearnerSettings
from rapo_ray.learner.packing import MicroBatch, balanced_split, loss_token_count, seq_len, sequence_units
from rapo_ray.types import Sample


class LearnerOps(Protocol):
    """What an objective uses of its learner rank (``LearnerWorker``)."""

    rank: int
    world_size: int
    device: torch.device

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        """Element-wise sum (or max) over the ranks, as float64."""
        ...

    def logprobs(self, samples: Sequence[Sample], reference: bool = False,
                 temperature: float | None = None) -> list[torch.Tensor]:
        """Per-sample completion log-probs under the policy or the frozen reference (collective)."""
        ...


@dataclass
class Update:
    """One optimizer step: the packing units (sample indices that share a micro-batch) it trains on, and the loss
    normalizer (a global count over all ranks divided by the world size: DeepSpeed averages over ranks)."""

    units: list[list[int]]
    normalizer: float


class Objective(ABC):
    """One train step's loss on one rank (see the module docstring)."""

    temperature: float | None = None  # of the update's forward pass; None: the rollout's

    def __init__(self, cfg: LearnerSettings):
        self.cfg = cfg
        self.timings: dict[str, float] = {}  # seconds spent in ``prepare``, reported as metrics

    @property
    @abstractmethod
    def sum_keys(self) -> tuple[str, ...]:
        """The metric sums ``loss`` adds to (the same on every rank: they are all-reduced together)."""

    @abstractmethod
    def prepare(self, ops: LearnerOps, samples: Sequence[Sample], global_token_count: int | None,
                left_out: tuple[int, int] = (0, 0)) -> list[Update]:
        """Per-step inputs for this rank's ``samples`` (collective); the updates to run, the same number on every
        rank. ``left_out``: loss tokens and sequences of the batch's samples that no rank trains on (they carry no
        gradient) but that count in the loss normalizer (token objectives)."""

    @abstractmethod
    def loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor,
             normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of a (non-dummy) micro-batch from its log-probs and entropies [N], and what it adds to the
        metric sums."""

    @abstractmethod
    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The reported metrics from the metric sums over all micro-batches and ranks."""


# ----------------------------------------------------------------------------- token-level objectives

def old_logprob_source(algo: AlgoConfig) -> str:
    """Where the ratio's old log-probs come from: "vllm" (sampling), "learner" (recomputed) or "current"
    (the update's own detached log-probs)."""
    if algo.old_logprobs != "auto":
        return algo.old_logprobs
    if algo.max_staleness > 0:
        return "vllm"
    return "learner" if algo.updates_per_batch > 1 else "current"


def gradient_free(samples: Sequence[Sample], algo: AlgoConfig) -> list[int]:
    """Indices of the GRPO samples that ``algo.skip_zero_advantage`` leaves out of the update: those with no loss
    token or an advantage of exactly 0, whose per-token loss is 0 when there is no KL term (``kl_coef`` 0) and one
    update per batch (the mini-batches do not depend on them). No index when the option is off or not applicable, or
    when no sample would remain (the update then runs as before, its optimizer step included)."""
    if not algo.skip_zero_advantage or algo.kl_coef > 0 or algo.updates_per_batch > 1:
        return []
    idle = [i for i, s in enumerate(samples)
            if s.advantage == 0.0 or loss_token_count(s, algo.mask_truncated) == 0]
    return [] if len(idle) == len(samples) else idle


def sampling_logprobs(samples: Sequence[Sample], device: torch.device) -> list[torch.Tensor]:
    """The samples' sampling (vLLM) log-probs as tensors; each sample must carry one per completion token."""
    out = []
    for s in samples:
        if len(s.sampling_logprobs) != len(s.completion_ids):
            raise ValueError(f"sample {s.prompt_id}#{s.sample_index}: {len(s.sampling_logprobs)} sampling "
                             f"log-probs for {len(s.completion_ids)} completion tokens (old_logprobs=vllm)")
        out.append(torch.tensor(s.sampling_logprobs, dtype=torch.float32, device=device))
    return out


class TokenObjective(Objective):
    """A loss over completion tokens normalized by the global loss-token (token_mean) or sequence (seq_mean) count
    of its update; unscored samples, and with ``algo.mask_truncated`` truncated ones, have no loss tokens (so no
    policy or KL term, and no share of the normalizer). The samples are split into
    ``n_updates`` mini-batches balanced by tokens, one optimizer step each. Also reports the mean
    |log-prob - sampling log-prob| over the loss tokens of samples that carry sampling log-probs."""

    mean_keys: tuple[str, ...] = ("entropy",)  # reported as means over the loss tokens
    n_updates: int = 1
    token_mean: bool = True
    # set by ``prepare``, per sample of the shard
    ops: LearnerOps
    samples: Sequence[Sample]
    n_loss: list[int]  # loss tokens
    old: list[torch.Tensor] | None  # old log-probs of the ratio (None: the update's own, detached)
    ref: list[torch.Tensor] | None  # reference log-probs (None: no reference)
    sampler: list[torch.Tensor | None]  # sampling log-probs, where the sample carries them

    @property
    def sum_keys(self) -> tuple[str, ...]:
        return (*self.mean_keys, "tokens", "sampler_abs_diff", "sampler_tokens")

    def old_logprobs(self) -> list[torch.Tensor] | None:
        """The old log-probs of the ratio; None: the update's own, detached."""
        return None

    def ref_logprobs(self) -> list[torch.Tensor] | None:
        """Reference log-probs; None: no reference."""
        return None

    @abstractmethod
    def token_loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                   normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss and per-call metrics (``tokens`` and the ``mean_keys`` as means over masked tokens)."""

    def prepare(self, ops: LearnerOps, samples: Sequence[Sample], global_token_count: int | None,
                left_out: tuple[int, int] = (0, 0)) -> list[Update]:
        self.ops, self.samples = ops, samples
        self.n_loss = [loss_token_count(s, self.cfg.algo.mask_truncated) for s in samples]
        total = ops.all_reduce([sum(self.n_loss)])[0] + left_out[0]
        if global_token_count is not None and int(total) != int(global_token_count):
            raise ValueError(f"global_token_count {global_token_count} != loss tokens over all ranks {int(total)}")
        t = time.perf_counter()
        self.old = self.old_logprobs()
        self.timings["old_logprob_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.ref = self.ref_logprobs()
        self.timings["ref_s"] = time.perf_counter() - t
        self.sampler = [torch.tensor(s.sampling_logprobs, dtype=torch.float32, device=ops.device)
                        if len(s.sampling_logprobs) == len(s.completion_ids) else None for s in samples]
        parts = balanced_split([seq_len(s) for s in samples], self.n_updates)
        counts = ops.all_reduce([c for part in parts for c in (sum(self.n_loss[i] for i in part),
                                                               sum(1 for i in part if self.n_loss[i] > 0))])
        lc = self.cfg.learner
        updates = []
        if self.n_updates == 1:  # the batch's gradient-free samples still count in its one normalizer
            counts = [counts[0] + left_out[0], counts[1] + left_out[1]]
        elif left_out != (0, 0):
            raise ValueError("samples can be left out of the update only with one update per batch")
        for part, tokens, seqs in zip(parts, counts[0::2], counts[1::2]):
            if tokens == 0:
                continue  # every rank sees the same global counts, so every rank skips
            updates.append(Update(sequence_units(samples, part, lc.prompt_sharing, lc.micro_batch_tokens),
                                  (tokens if self.token_mean else seqs) / ops.world_size))
        return updates

    def seq_ids(self, mb: MicroBatch) -> torch.Tensor:
        """Each completion token's member index within the micro-batch (for ``seq_mean``)."""
        device = self.ops.device
        return torch.repeat_interleave(torch.arange(len(mb.members), device=device),
                                       torch.tensor(mb.counts, device=device))

    def per_token(self, mb: MicroBatch, value: Callable[[int], float]) -> torch.Tensor:
        """``value(sample index)`` repeated over each member's completion tokens."""
        return torch.cat([torch.full((n,), float(value(i)), device=self.ops.device)
                          for i, n in zip(mb.members, mb.counts)])

    def loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor,
             normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        mask = self.per_token(mb, lambda i: self.n_loss[i] > 0)
        loss, m = self.token_loss(mb, logprobs, entropy, mask, normalizer)
        sums = {k: m[k] * m["tokens"] for k in self.mean_keys}
        sums["tokens"] = m["tokens"]
        sampled = [self.sampler[i] for i in mb.members]
        if all(x is not None for x in sampled):
            sums["sampler_abs_diff"] = ((logprobs.detach() - torch.cat(sampled)).abs() * mask).sum().item()
            sums["sampler_tokens"] = mask.sum().item()
        return loss, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n_tok = max(sums["tokens"], 1.0)
        out = {"tokens": sums["tokens"], **{k: sums[k] / n_tok for k in self.mean_keys}}
        if sums["sampler_tokens"]:
            out["sampler_abs_diff"] = sums["sampler_abs_diff"] / sums["sampler_tokens"]
        return out


class GRPO(TokenObjective):
    """The clipped policy-gradient loss (``rapo_ray.algo.policy_loss``) on the samples' advantages, at the rollout
    temperature, with a KL penalty to the frozen reference when ``algo.kl_coef`` > 0; ``algo.updates_per_batch``
    optimizer steps."""

    def __init__(self, cfg: LearnerSettings):
        super().__init__(cfg)
        a = cfg.algo
        self.n_updates, self.token_mean = a.updates_per_batch, a.loss_agg == "token_mean"
        self.mean_keys = ("clip_frac", "clip_frac_low", "clip_frac_high", "approx_kl",
                          *(("kl_ref",) if a.kl_coef > 0 else ()), "entropy")

    def old_logprobs(self) -> list[torch.Tensor] | None:
        source = old_logprob_source(self.cfg.algo)
        if source == "vllm":
            return sampling_logprobs(self.samples, self.ops.device)
        return self.ops.logprobs(self.samples) if source == "learner" else None

    def ref_logprobs(self) -> list[torch.Tensor] | None:
        return self.ops.logprobs(self.samples, reference=True) if self.cfg.algo.kl_coef > 0 else None

    def token_loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                   normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        a = self.cfg.algo
        cat = lambda xs: torch.cat([xs[i] for i in mb.members])  # noqa: E731
        return policy_loss(logprobs, cat(self.old) if self.old is not None else logprobs.detach(),
                           self.per_token(mb, lambda i: self.samples[i].advantage), mask, a.clip_low, a.clip_high,
                           a.loss_agg, ref_logprobs=cat(self.ref) if self.ref is not None else None,
                           kl_coef=a.kl_coef, kl_estimator=a.kl_estimator, seq_ids=self.seq_ids(mb),
                           normalizer=normalizer, entropy=entropy)


class SFT(TokenObjective):
    """Supervised fine-tuning: one optimizer step on the NLL of the completion tokens at temperature 1 (the prompt
    is never a target; no old or reference log-probs, advantages ignored): the mean over all tokens
    (``algo.loss_agg`` token_mean), or over sequences of each one's mean (seq_mean: a long answer weighs what a
    short one does; ``sft.loss_agg`` sets it for ``rapo-ray sft``)."""

    temperature = 1.0

    def __init__(self, cfg: LearnerSettings):
        super().__init__(cfg)
        self.token_mean = cfg.algo.loss_agg == "token_mean"

    def token_loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor, mask: torch.Tensor,
                   normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        return sft_loss(logprobs, mask, normalizer=normalizer, entropy=entropy, loss_agg=self.cfg.algo.loss_agg,
                        seq_ids=None if self.token_mean else self.seq_ids(mb))


# ----------------------------------------------------------------------------- preference objectives

class Preference(Objective):
    """A DPO-family loss (``rapo_ray.algo.preference_loss``, ``pairs.beta``) on pairs: samples 2k (chosen) and
    2k + 1 (rejected), each pair packed whole into one micro-batch. Log-probs at temperature 1 (the model's own
    distribution), summed over completion tokens; ``pairs.rpo_alpha`` adds the chosen side's mean token NLL; one
    optimizer step normalized by the global pair count."""

    temperature = 1.0
    _means = ("accuracy", "margin", "chosen_reward", "rejected_reward", "chosen_nll")  # means over the pairs
    ref: list[torch.Tensor]  # reference log-probs per sample, set by ``prepare``

    def __init__(self, cfg: LearnerSettings, kind: Literal["dpo", "ipo"]):
        super().__init__(cfg)
        self.kind = kind

    @property
    def sum_keys(self) -> tuple[str, ...]:
        return (*self._means, "pairs", "tokens", "entropy")

    def prepare(self, ops: LearnerOps, samples: Sequence[Sample], global_token_count: int | None,
                left_out: tuple[int, int] = (0, 0)) -> list[Update]:
        """``global_token_count`` is unused: the loss is normalized by pairs."""
        if len(samples) % 2:
            raise ValueError(f"preference pairs need an even number of samples, got {len(samples)}")
        n_pairs = len(samples) // 2
        total = ops.all_reduce([n_pairs])[0]
        if total == 0:
            raise ValueError("no preference pairs on any learner rank")
        t = time.perf_counter()
        self.ref = self._reference(ops, samples)
        self.timings["ref_s"] = time.perf_counter() - t
        return [Update([[2 * k, 2 * k + 1] for k in range(n_pairs)], total / ops.world_size)]

    def _reference(self, ops: LearnerOps, samples: Sequence[Sample]) -> list[torch.Tensor]:
        """Reference log-probs per sample: those the samples carry (computed once before training), or, when any
        rank's samples lack them and ``pairs.reference`` is "frozen", the frozen starting weights'. The choice is
        made over all ranks, so the collectives stay matched."""
        missing = sum(len(s.ref_logprobs) != len(s.completion_ids) for s in samples)
        if ops.all_reduce([missing])[0] == 0:
            return [torch.tensor(s.ref_logprobs, dtype=torch.float32, device=ops.device) for s in samples]
        if self.cfg.pairs.reference != "frozen":
            raise ValueError(f"{missing} samples on rank {ops.rank} carry no reference log-probs (one per "
                             f"completion token); precompute them or set pairs.reference: frozen")
        return ops.logprobs(samples, reference=True, temperature=1.0)

    def loss(self, mb: MicroBatch, logprobs: torch.Tensor, entropy: torch.Tensor,
             normalizer: float) -> tuple[torch.Tensor, dict[str, float]]:
        seq = torch.stack([x.sum() for x in logprobs.split(mb.counts)])
        ref = torch.stack([self.ref[i].sum() for i in mb.members])
        counts = torch.tensor(mb.counts[0::2], dtype=seq.dtype, device=seq.device)
        loss, m = preference_loss(seq[0::2], seq[1::2], ref[0::2], ref[1::2], self.cfg.pairs.beta, self.kind,
                                  normalizer=normalizer, rpo_alpha=self.cfg.pairs.rpo_alpha, chosen_tokens=counts)
        sums = {k: m[k] * m["pairs"] for k in self._means}
        sums.update(pairs=m["pairs"], tokens=logprobs.numel(), entropy=entropy.sum().item())
        return loss, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        pairs = max(sums["pairs"], 1.0)
        return {"pairs": sums["pairs"], "tokens": sums["tokens"], "entropy": sums["entropy"] / max(sums["tokens"], 1.0),
                **{k: sums[k] / pairs for k in self._means}}


def make_objective(name: str, cfg: LearnerSettings) -> Objective:
    """The objective called ``name``: grpo, sft, dpo or ipo."""
    if name == "grpo":
        return GRPO(cfg)
    if name == "sft":
        return SFT(cfg)
    if name in PREFERENCE_LOSSES:
        return Preference(cfg, name)
    raise ValueError(f"unknown objective {name!r} (grpo, sft, dpo or ipo)")
