"""DeepSpeed learner group: K Ray actors forming one torch.distributed group, each with a DeepSpeed engine
(ZeRO stage 0-3) computing the GRPO loss on its shard of the batch.

Precision. ``learner.precision: auto`` resolves in each learner from its device (``rapo_ray.hardware``: bf16 where
it is computed natively, fp32 elsewhere). ``bf16`` runs the forward under ``torch.autocast(bfloat16)`` while the
parameters, gradients, gradient reductions and AdamW state stay float32: the float32 parameters *are* the
master weights. The same code path is used on CPU (autocast-cpu, AVX-512 BF16) and CUDA (autocast-cuda).
DeepSpeed's own ``bf16`` mode (bf16 parameters + a float32 master copy in the optimizer) would halve parameter
memory and ZeRO-3 all-gather traffic on GPUs, but it accumulates and reduces gradients in bf16 and makes the
gathered weights (what the rollout engines receive) bf16 roundings of the masters; autocast keeps one set of
float32 weights everywhere, at the price of 2x parameter memory, which is what we choose.

Micro-batches are packed by token count without padding: sequences are concatenated in one row and
``position_ids`` restart at 0 for each. With ``attention_mask=None`` transformers turns restarting positions
into a block-diagonal causal mask (sdpa/eager) or varlen attention (flash_attention_2), so packed sequences do
not attend to each other (tested: packed log-probs equal per-sequence ones). Only completion positions reach
the LM head, and their log-probs are computed in chunks (``rapo_ray.algo.chunked_token_logprobs``).
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
from torch import nn

from rapo_ray.algo import (PREFERENCE_LOSSES, chunked_token_logprobs, kl_estimate, lr_factor, pack_microbatches,
                           policy_loss, preference_loss, sft_loss)
from rapo_ray.config import JobConfig
from rapo_ray.hardware import key_extension_cache, resolve_precision
from rapo_ray.sync import LearnerSyncMixin, free_port
from rapo_ray.types import Sample

_TOKENIZER_FILES = ("special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json",
                    "chat_template.jinja", "chat_template.json")
log = logging.getLogger(__name__)
_DS_TAG = "state"
_CLIENT_KEY = "rapo_client_state"  # DeepSpeed mixes its own keys into the client state it returns


class LearnerError(RuntimeError):
    """A learner actor failed; the group cannot continue."""


# ----------------------------------------------------------------------------- sequences and micro-batches

def loss_token_count(s: Sample, mask_truncated: bool) -> int:
    """Completion tokens of a sample that count in the loss."""
    return 0 if (mask_truncated and s.truncated) else len(s.completion_ids)


def balanced_split(weights: Sequence[int], n: int) -> list[list[int]]:
    """Split indices 0..len(weights)-1 into ``n`` parts of balanced total weight (heaviest first onto the
    lightest part); each part keeps the original order."""
    load = [0] * n
    parts: list[list[int]] = [[] for _ in range(n)]
    for i in sorted(range(len(weights)), key=lambda i: -weights[i]):
        r = min(range(n), key=lambda r: (load[r], r))
        parts[r].append(i)
        load[r] += weights[i]
    return [sorted(p) for p in parts]


def shard_by_tokens(samples: Sequence[Sample], n: int, share_prompts: bool = False) -> list[list[int]]:
    """Sample indices for ``n`` ranks, balanced by the tokens the learner will process (prompt + completion; a
    prompt once per group when ``share_prompts``, whose samples then stay on one rank)."""
    units = prompt_units(samples, range(len(samples)), share_prompts)
    parts = balanced_split([unit_tokens(samples, u, share_prompts) for u in units], n)
    return [sorted(i for k in part for i in units[k]) for part in parts]


def _seq_len(s: Sample) -> int:
    return len(s.prompt_ids) + len(s.completion_ids)


def prompt_units(samples: Sequence[Sample], members: Iterable[int], share_prompts: bool) -> list[list[int]]:
    """The packing units of ``members``: one per sample, or with ``share_prompts`` one per distinct prompt (its
    samples in order, first appearance first), so a group's prompt is packed, and computed, once."""
    if not share_prompts:
        return [[i] for i in members]
    units: dict[tuple[int, ...], list[int]] = {}
    for i in members:
        units.setdefault(tuple(samples[i].prompt_ids), []).append(i)
    return list(units.values())


def unit_tokens(samples: Sequence[Sample], unit: Sequence[int], share_prompts: bool) -> int:
    if not share_prompts:
        return sum(_seq_len(samples[i]) for i in unit)
    return len(samples[unit[0]].prompt_ids) + sum(len(samples[i].completion_ids) for i in unit)


def split_unit(samples: Sequence[Sample], unit: list[int], max_tokens: int) -> list[list[int]]:
    """A shared-prompt unit cut into consecutive pieces that each fit ``max_tokens`` (a piece holds at least one
    sample, and repeats the prompt)."""
    pieces: list[list[int]] = []
    p = len(samples[unit[0]].prompt_ids)
    n = 0
    for i in unit:
        c = len(samples[i].completion_ids)
        if pieces and n + c <= max_tokens:
            pieces[-1].append(i)
            n += c
        else:
            pieces.append([i])
            n = p + c
    return pieces


def pair_shards(samples: Sequence[Sample], n: int) -> list[list[int]]:
    """Sample indices for ``n`` ranks when samples 2k and 2k + 1 form pair k (preference objectives): whole pairs,
    balanced by tokens, so a pair's two sequences stay on one rank."""
    if len(samples) % 2:
        raise ValueError(f"preference pairs need an even number of samples, got {len(samples)}")
    weights = [_seq_len(samples[2 * k]) + _seq_len(samples[2 * k + 1]) for k in range(len(samples) // 2)]
    return [[j for k in part for j in (2 * k, 2 * k + 1)] for part in balanced_split(weights, n)]


@dataclass
class MicroBatch:
    """One packed row: ``input_ids``/``position_ids`` [1, L]; ``index`` [N] the positions whose next token is a
    completion token, ``targets`` [N] those tokens; ``members`` the shard indices of its samples, in order,
    each contributing ``counts[i]`` of the N positions."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    members: list[int]
    counts: list[int]

    @classmethod
    def pack(cls, samples: Sequence[Sample], members: list[int], device: torch.device,
             share_prompts: bool = False) -> MicroBatch:
        """Concatenate ``members`` into one row. With ``share_prompts``, a member whose prompt equals the previous
        member's adds only its completion, with positions continuing from the prompt's length: the attention
        (``varlen_sdpa_attention``) lets it see that prompt and itself, never the other completions."""
        ids: list[int] = []
        pos: list[int] = []
        index: list[int] = []
        targets: list[int] = []
        root, root_prompt = 0, None  # where the last full sequence (prompt + completion) starts, and its prompt
        for i in members:
            s = samples[i]
            if not s.prompt_ids:
                raise ValueError(f"sample {s.prompt_id}#{s.sample_index} has no prompt tokens")
            p, c = len(s.prompt_ids), len(s.completion_ids)
            if share_prompts and c and list(s.prompt_ids) == root_prompt:
                start = len(ids)
                ids += s.completion_ids
                pos += range(p, p + c)
                index += [root + p - 1, *range(start, start + c - 1)]  # the prompt's last state predicts token 0
            else:
                root, root_prompt = len(ids), list(s.prompt_ids)
                ids += list(s.prompt_ids) + list(s.completion_ids)
                pos += range(p + c)
                index += range(root + p - 1, root + p + c - 1)  # hidden state t predicts token t + 1
            targets += s.completion_ids
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        return cls(as_long(ids)[None], as_long(pos)[None], as_long(index), as_long(targets),
                   list(members), [len(samples[i].completion_ids) for i in members])

    @classmethod
    def dummy(cls, device: torch.device) -> MicroBatch:
        """A 2-token row whose loss is multiplied by 0: keeps ZeRO collectives matched across ranks."""
        z = torch.zeros(1, dtype=torch.long, device=device)
        return cls(torch.zeros(1, 2, dtype=torch.long, device=device), torch.arange(2, device=device)[None], z, z, [], [])


# ----------------------------------------------------------------------------- model wrappers

VARLEN_ATTENTION = "rapo_varlen_sdpa"


def varlen_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          position_ids: torch.Tensor | None = None, **_: Any) -> tuple[torch.Tensor, None]:
    """Attention over a packed, unpadded row, one SDPA call per segment (a segment starts where ``position_ids``
    do not continue by +1): no mask and no work across sequences, unlike a block-diagonal mask over the row.

    A segment starting at position 0 is a sequence: causal within itself. A segment starting at position q > 0
    is a completion sharing the prompt of the last sequence (``MicroBatch.pack(share_prompts=True)``): it attends
    to that sequence's first q tokens and causally to itself. A transformers attention function; CPU and CUDA.
    ``flash_attention_2`` (CUDA) packs whole sequences only: it has no shared-prompt segments.
    """
    if attention_mask is not None:
        raise ValueError("varlen attention takes packed, unpadded rows (no attention_mask)")
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b in range(query.shape[0]):
        n = query.shape[2]
        cuts, starts = [0, n], [0]
        if position_ids is not None:
            pos = position_ids[min(b, position_ids.shape[0] - 1)]
            cuts = [0, *(torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1).tolist(), n]
            starts = pos[cuts[:-1]].tolist()
        q_, k_, v_ = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        parts, root = [], 0
        for (s, e), q0 in zip(zip(cuts, cuts[1:]), starts):
            if q0 == 0:
                root = s
                parts.append(nn.functional.scaled_dot_product_attention(
                    q_[:, :, s:e], k_[:, :, s:e], v_[:, :, s:e], dropout_p=dropout, scale=scaling, is_causal=True,
                    enable_gqa=gqa))
                continue
            if s - root < q0:
                raise ValueError(f"a segment at position {q0} follows a sequence of {s - root} tokens")
            keys = torch.cat([k_[:, :, root:root + q0], k_[:, :, s:e]], dim=2)
            vals = torch.cat([v_[:, :, root:root + q0], v_[:, :, s:e]], dim=2)
            length = e - s
            mask = torch.ones(length, q0 + length, dtype=torch.bool, device=query.device).tril(q0)
            parts.append(nn.functional.scaled_dot_product_attention(
                q_[:, :, s:e], keys, vals, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa))
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _attn_implementation(name: str) -> str:
    if name != "varlen_sdpa":
        return name
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN_ATTENTION, varlen_sdpa_attention)
    return VARLEN_ATTENTION

class _ChunkedLMHead(nn.Linear):
    """The model's own LM head (same parameters; ZeRO-3 hooks still fire) that can also return the
    log-probs of given targets, computed in chunks, instead of full logits."""

    chunk: int = 1024

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None, temperature: float = 1.0):
        if targets is None:
            return super().forward(hidden)
        return chunked_token_logprobs(hidden, self.weight, targets, self.chunk, temperature)


class PolicyLogprobs(nn.Module):
    """Wraps a HF causal LM: forward(packed row, completion positions, targets) -> (log-probs, entropy)."""

    def __init__(self, hf_model: nn.Module, chunk: int):
        super().__init__()
        head = hf_model.get_output_embeddings()
        if type(head) is not nn.Linear or head.bias is not None:
            raise ValueError(f"{type(hf_model).__name__}: the learner needs a bias-free nn.Linear LM head, "
                             f"got {type(head).__name__}")
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(hf_model.config, attr, None) not in (None, 1.0):
                raise ValueError(f"{type(hf_model).__name__}: config.{attr} is not supported by the learner")
        head.__class__ = _ChunkedLMHead
        head.chunk = chunk
        self.hf = hf_model

    def forward(self, input_ids, position_ids, index, targets, temperature: float = 1.0):
        hidden = self.hf.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
        return self.hf.get_output_embeddings()(hidden[0, index], targets=targets, temperature=temperature)


def _load_policy(cfg: JobConfig, model_path: str, device: torch.device) -> PolicyLogprobs:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32,
                                                 attn_implementation=_attn_implementation(cfg.learner.attn_implementation),
                                                 trust_remote_code=cfg.model.trust_remote_code)
    model.config.use_cache = False
    # No dropout in RL updates: recomputed and current log-probs of a batch must agree.
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return PolicyLogprobs(model, cfg.learner.logprob_chunk).to(device)


# ----------------------------------------------------------------------------- the actor

class LearnerWorker(LearnerSyncMixin):
    """One rank of the learner group (the group wraps it with ``ray.remote``).

    Built in two phases so the group can ask rank 0's node for the rendezvous address first: construct with
    ``master_addr=None`` and call :meth:`setup` later, or pass the address to set up at once.
    """

    def __init__(self, cfg: JobConfig, model_path: str, rank: int, world_size: int,
                 master_addr: str | None = None, master_port: int | None = None):
        self.cfg, self.model_path, self.rank, self.world_size = cfg, str(model_path), rank, world_size
        if not os.path.isfile(os.path.join(self.model_path, "config.json")):
            raise LearnerError(f"learner rank {rank}: no HF model at {self.model_path} (config.json missing) on "
                               f"node {os.uname().nodename}")
        use_cuda = cfg.learner.dist_backend == "nccl" or (cfg.learner.dist_backend == "auto"
                                                           and cfg.resources.learner_gpus > 0)
        if use_cuda and not torch.cuda.is_available():
            raise LearnerError(f"learner rank {rank}: CUDA requested (learner_gpus={cfg.resources.learner_gpus}, "
                               f"dist_backend={cfg.learner.dist_backend}) but torch sees no GPU")
        self.device = torch.device("cuda", 0) if use_cuda else torch.device("cpu")  # Ray exposes one GPU as cuda:0
        self.backend = "nccl" if use_cuda else "gloo"
        if cfg.learner.dist_backend not in ("auto", self.backend):
            raise LearnerError(f"dist_backend {cfg.learner.dist_backend} does not fit device {self.device}")
        self.precision = resolve_precision(cfg.learner.precision, self.device.type)
        if rank == 0:
            log.warning("learner precision: %s (%s)", self.precision.value, self.precision.reason)
        rt = cfg.rollout.temperature
        self.temperature = rt if rt > 0 else 1.0  # log-probs of the distribution vLLM samples from
        self.engine: Any = None
        self.ref: PolicyLogprobs | None = None
        if master_addr is not None:
            self.setup(master_addr, int(master_port))

    # -- setup ---------------------------------------------------------------------------------------
    def master_endpoint(self) -> tuple[str, int]:
        """This actor's node IP and a free port on it (the group's rendezvous when this is rank 0)."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the process group, load the model and build the DeepSpeed engine (collective)."""
        key_extension_cache()  # before DeepSpeed builds any op: compiled ops are keyed by this CPU's ISA
        import deepspeed

        lc = self.cfg.learner
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=str(master_port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        deepspeed.init_distributed(dist_backend=self.backend, auto_mpi_discovery=False, verbose=False,
                                   timeout=timedelta(seconds=lc.init_timeout_s), rank=self.rank,
                                   world_size=self.world_size)
        policy = _load_policy(self.cfg, self.model_path, self.device)
        if lc.gradient_checkpointing:
            policy.hf.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # A client torch AdamW: DeepSpeed's FusedAdam would be JIT-compiled on CPU. ZeRO wraps it either way.
        # fused=True: one multi-tensor kernel per step (CPU and CUDA); the per-tensor default is ~6x slower on CPU.
        opt = torch.optim.AdamW(policy.parameters(), lr=lc.lr, betas=tuple(lc.betas), weight_decay=lc.weight_decay,
                                fused=True)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, lc.warmup_steps, lc.lr_schedule, lc.lr_decay_steps))
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "gradient_clipping": lc.max_grad_norm, "zero_optimization": {"stage": lc.zero_stage},
                     "bf16": {"enabled": False}, "fp16": {"enabled": False},
                     "steps_per_print": 10**9, "wall_clock_breakdown": False}
        self.engine, _, _, _ = deepspeed.initialize(model=policy, optimizer=opt, lr_scheduler=sched,
                                                    config=ds_config, dist_init_required=False)
        if self.cfg.algo.kl_coef > 0:
            # Frozen reference: forward-only, unsharded float32 copy on every rank (same numerics as the policy).
            self.ref = _load_policy(self.cfg, self.model_path, self.device).eval().requires_grad_(False)

    def ready(self) -> bool:
        return self.engine is not None

    def get_rank(self) -> int:
        return self.rank

    def resolved(self) -> dict[str, str]:
        """What ``learner.precision`` resolved to on this rank, and why."""
        return {"value": self.precision.value, "reason": self.precision.reason}

    @property
    def _hf(self) -> nn.Module:
        return self.engine.module.hf

    # -- forward passes --------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision.value == "bf16")

    def _all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        import torch.distributed as dist

        t = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()

    def _microbatches(self, samples: Sequence[Sample], members: Sequence[int]) -> list[MicroBatch]:
        """Pack ``members`` by token budget and pad with dummies to the largest count over the ranks."""
        share, budget = self.cfg.learner.prompt_sharing, self.cfg.learner.micro_batch_tokens
        units = prompt_units(samples, members, share)
        if share:
            units = [piece for u in units for piece in split_unit(samples, u, budget)]
        bins = (pack_microbatches([unit_tokens(samples, u, share) for u in units], budget)
                if self.cfg.learner.packing else [[k] for k in range(len(units))])
        mbs = [MicroBatch.pack(samples, [i for k in b for i in units[k]], self.device, share) for b in bins]
        n = int(self._all_reduce([len(mbs)], "max")[0])
        return mbs + [MicroBatch.dummy(self.device) for _ in range(n - len(mbs))]

    def _forward(self, module: nn.Module, mb: MicroBatch,
                 temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with self._autocast():
            return module(input_ids=mb.input_ids, position_ids=mb.position_ids, index=mb.index, targets=mb.targets,
                          temperature=self.temperature if temperature is None else temperature)

    @torch.no_grad()
    def _logprobs(self, samples: Sequence[Sample], reference: bool = False,
                  temperature: float | None = None) -> list[torch.Tensor]:
        """Per-sample completion log-probs (float32, on device) under the policy or the reference, at
        ``temperature`` (default: the rollout's)."""
        module = self.ref if reference else self.engine
        module.eval()
        out: list[torch.Tensor] = [torch.zeros(0, device=self.device)] * len(samples)
        for mb in self._microbatches(samples, range(len(samples))):
            lp, _ = self._forward(module, mb, temperature)
            if not mb.members:  # a dummy micro-batch: forward only to keep ZeRO-3 gathers matched
                continue
            for i, part in zip(mb.members, lp.split(mb.counts)):
                out[i] = part
        return out

    def compute_logprobs(self, samples: list[Sample], temperature: float | None = None) -> list[list[float]]:
        """Completion-token log-probs of each sample under the current policy (collective), at ``temperature``
        (default: the rollout's)."""
        return [t.tolist() for t in self._logprobs(samples, temperature=temperature)]

    # -- the update ----------------------------------------------------------------------------------------
    def _old_logprob_source(self) -> str:
        a = self.cfg.algo
        if a.old_logprobs != "auto":
            return a.old_logprobs
        if a.max_staleness > 0:
            return "vllm"
        return "learner" if a.updates_per_batch > 1 else "current"

    def _sampling_logprobs(self, samples: Sequence[Sample]) -> list[torch.Tensor]:
        out = []
        for s in samples:
            if len(s.sampling_logprobs) != len(s.completion_ids):
                raise ValueError(f"sample {s.prompt_id}#{s.sample_index}: {len(s.sampling_logprobs)} sampling "
                                 f"log-probs for {len(s.completion_ids)} completion tokens (old_logprobs=vllm)")
            out.append(torch.tensor(s.sampling_logprobs, dtype=torch.float32, device=self.device))
        return out

    def train_step(self, samples: list[Sample], global_token_count: int | None = None,
                   objective: str = "grpo") -> dict[str, float]:
        """GRPO update on this rank's shard (collective over the group); ``objective="sft"``: supervised
        fine-tuning instead, one optimizer step on the mean NLL of all completion tokens at temperature 1 (the
        prompt masked; no old or reference log-probs, advantages ignored).

        The shard is split into ``algo.updates_per_batch`` mini-batches, one optimizer step each, with
        gradients accumulated over packed micro-batches. Each mini-batch's loss is normalized by its global
        loss-token (token_mean) or sequence (seq_mean) count over all ranks. ``global_token_count``, when
        given, is checked against the loss tokens of the whole batch over all ranks.
        Returns global metrics (identical on every rank).
        """
        if objective in PREFERENCE_LOSSES:
            return self._preference_step(samples, objective)
        if objective not in ("grpo", "sft"):
            raise ValueError(f"unknown objective {objective!r} (grpo, sft, dpo or ipo)")
        sft = objective == "sft"
        t0 = time.perf_counter()
        a = self.cfg.algo
        ws = self.world_size
        n_loss = [loss_token_count(s, a.mask_truncated) for s in samples]
        total_tokens = self._all_reduce([sum(n_loss)])[0]
        if global_token_count is not None and int(total_tokens) != int(global_token_count):
            raise ValueError(f"global_token_count {global_token_count} != loss tokens over all ranks {int(total_tokens)}")
        source = "current" if sft else self._old_logprob_source()
        timings = {}
        t = time.perf_counter()
        old = {"vllm": self._sampling_logprobs, "learner": self._logprobs}.get(source, lambda _: None)(samples)
        timings["old_logprob_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ref = self._logprobs(samples, reference=True) if self.ref is not None and not sft else None
        timings["ref_s"] = time.perf_counter() - t
        sampler = [torch.tensor(s.sampling_logprobs, dtype=torch.float32, device=self.device)
                   if len(s.sampling_logprobs) == len(s.completion_ids) else None for s in samples]

        # metric sums over loss tokens (weighted by tokens), combined over ranks at the end
        keys = ("clip_frac", "clip_frac_low", "clip_frac_high", "approx_kl", "kl_ref", "entropy")
        sums = dict.fromkeys(keys + ("tokens", "loss", "sampler_abs_diff", "sampler_tokens", "micro_batches"), 0.0)
        grad_norms: list[float] = []
        parts = balanced_split([_seq_len(s) for s in samples], 1 if sft else a.updates_per_batch)
        self.engine.train()
        for part in parts:
            counts = self._all_reduce([sum(n_loss[i] for i in part),
                                       sum(1 for i in part if n_loss[i] > 0)])
            if counts[0] == 0:
                continue  # every rank sees the same global counts, so every rank skips
            token_mean = sft or a.loss_agg == "token_mean"
            normalizer = (counts[0] if token_mean else counts[1]) / ws  # DeepSpeed averages over ranks
            mbs = self._microbatches(samples, part)
            for k, mb in enumerate(mbs):
                self.engine.set_gradient_accumulation_boundary(k == len(mbs) - 1)
                lp, ent = self._forward(self.engine, mb, temperature=1.0 if sft else None)
                if not mb.members:
                    self.engine.backward(lp.sum() * 0.0)
                    continue
                cat = lambda xs: torch.cat([xs[i] for i in mb.members])  # noqa: E731
                per_tok = lambda v: torch.cat([torch.full((n,), float(v(i)), device=self.device)  # noqa: E731
                                               for i, n in zip(mb.members, mb.counts)])
                adv = per_tok(lambda i: samples[i].advantage)
                mask = per_tok(lambda i: n_loss[i] > 0)
                seq_ids = torch.repeat_interleave(torch.arange(len(mb.members), device=self.device),
                                                  torch.tensor(mb.counts, device=self.device))
                old_lp = cat(old) if old is not None else lp.detach()
                if sft:
                    loss, m = sft_loss(lp, mask, normalizer=normalizer, entropy=ent)
                else:
                    loss, m = policy_loss(lp, old_lp, adv, mask, a.clip_low, a.clip_high, a.loss_agg,
                                          ref_logprobs=cat(ref) if ref is not None else None, kl_coef=a.kl_coef,
                                          kl_estimator=a.kl_estimator, seq_ids=seq_ids, normalizer=normalizer,
                                          entropy=ent)
                self.engine.backward(loss)
                sums["loss"] += loss.item() / ws
                sums["micro_batches"] += 1
                for key in keys:
                    sums[key] += m.get(key, 0.0) * m["tokens"]
                sums["tokens"] += m["tokens"]
                sampled = [sampler[i] for i in mb.members]
                if all(x is not None for x in sampled):
                    diff = (lp.detach() - torch.cat(sampled)).abs() * mask
                    sums["sampler_abs_diff"] += diff.sum().item()
                    sums["sampler_tokens"] += mask.sum().item()
            grad_norm = self._grad_norm_before_step()
            self.engine.step()
            grad_norms.append(grad_norm if grad_norm is not None else self._grad_norm())
        order = list(sums)
        g = dict(zip(order, self._all_reduce([sums[k] for k in order])))
        n_tok = max(g["tokens"], 1.0)
        out = {"loss": g["loss"] / max(len(grad_norms), 1), "tokens": g["tokens"], "micro_batches": g["micro_batches"],
               "updates": float(len(grad_norms)), "grad_norm": sum(grad_norms) / max(len(grad_norms), 1),
               "lr": float(self.engine.get_lr()[0])}
        out.update({k: g[k] / n_tok for k in (("entropy",) if sft else keys) if k != "kl_ref" or ref is not None})
        if g["sampler_tokens"]:
            out["sampler_abs_diff"] = g["sampler_abs_diff"] / g["sampler_tokens"]
        out.update(timings)
        out["time_s"] = self._all_reduce([time.perf_counter() - t0], "max")[0]
        return out

    def _preference_step(self, samples: list[Sample], objective: str) -> dict[str, float]:
        """One optimizer step of a DPO-family loss (``objective`` "dpo" or "ipo", ``pairs.beta``) on this rank's
        pairs: samples 2k (chosen) and 2k + 1 (rejected), packed into one micro-batch per pair group so each
        pair's loss sees both sequences. Log-probs at temperature 1 (the model's own distribution), summed over
        completion tokens. Collective over the group; returns global metrics."""
        t0 = time.perf_counter()
        if len(samples) % 2:
            raise ValueError(f"preference pairs need an even number of samples, got {len(samples)}")
        ws, n_pairs = self.world_size, len(samples) // 2
        total = self._all_reduce([n_pairs])[0]
        if total == 0:
            raise ValueError("no preference pairs on any learner rank")
        t = time.perf_counter()
        ref = self._pair_reference(samples)
        ref_s = time.perf_counter() - t
        share = self.cfg.learner.prompt_sharing  # a pair's two completions share their prompt
        lengths = [unit_tokens(samples, [2 * k, 2 * k + 1], share) for k in range(n_pairs)]  # tokens as packed
        bins = (pack_microbatches(lengths, self.cfg.learner.micro_batch_tokens) if self.cfg.learner.packing
                else [[k] for k in range(n_pairs)])
        mbs = [MicroBatch.pack(samples, [j for k in b for j in (2 * k, 2 * k + 1)], self.device, share) for b in bins]
        n_mbs = int(self._all_reduce([len(mbs)], "max")[0])
        mbs += [MicroBatch.dummy(self.device) for _ in range(n_mbs - len(mbs))]
        keys = ("accuracy", "margin", "chosen_reward", "rejected_reward")
        sums = dict.fromkeys(keys + ("loss", "pairs", "tokens", "entropy", "micro_batches"), 0.0)
        self.engine.train()
        for k, mb in enumerate(mbs):
            self.engine.set_gradient_accumulation_boundary(k == len(mbs) - 1)
            lp, ent = self._forward(self.engine, mb, temperature=1.0)
            if not mb.members:
                self.engine.backward(lp.sum() * 0.0)
                continue
            seq = torch.stack([x.sum() for x in lp.split(mb.counts)])
            ref_seq = torch.stack([ref[i].sum() for i in mb.members])
            loss, m = preference_loss(seq[0::2], seq[1::2], ref_seq[0::2], ref_seq[1::2], self.cfg.pairs.beta,
                                      objective, normalizer=total / ws)  # DeepSpeed averages over ranks
            self.engine.backward(loss)
            sums["loss"] += loss.item() / ws
            for key in keys:
                sums[key] += m[key] * m["pairs"]
            sums["pairs"] += m["pairs"]
            sums["tokens"] += lp.numel()
            sums["entropy"] += ent.sum().item()
            sums["micro_batches"] += 1
        grad_norm = self._grad_norm_before_step()
        self.engine.step()
        grad_norm = grad_norm if grad_norm is not None else self._grad_norm()
        order = list(sums)
        g = dict(zip(order, self._all_reduce([sums[k] for k in order])))
        out = {"loss": g["loss"], "pairs": g["pairs"], "tokens": g["tokens"], "micro_batches": g["micro_batches"],
               "updates": 1.0, "grad_norm": grad_norm, "lr": float(self.engine.get_lr()[0]),
               "entropy": g["entropy"] / max(g["tokens"], 1.0), **{k: g[k] / max(g["pairs"], 1.0) for k in keys}}
        out["ref_s"] = self._all_reduce([ref_s], "max")[0]
        out["time_s"] = self._all_reduce([time.perf_counter() - t0], "max")[0]
        return out

    def _pair_reference(self, samples: list[Sample]) -> list[torch.Tensor]:
        """Reference log-probs per sample: those the samples carry (computed once before training), or, when any
        rank's samples lack them and ``pairs.reference`` is "frozen", a frozen copy of the starting weights loaded
        here on first use. The choice is made over all ranks, so the collectives stay matched."""
        missing = sum(len(s.ref_logprobs) != len(s.completion_ids) for s in samples)
        if self._all_reduce([missing])[0] == 0:
            return [torch.tensor(s.ref_logprobs, dtype=torch.float32, device=self.device) for s in samples]
        if self.cfg.pairs.reference != "frozen":
            raise ValueError(f"{missing} samples on rank {self.rank} carry no reference log-probs (one per "
                             f"completion token); precompute them or set pairs.reference: frozen")
        if self.ref is None:
            self.ref = _load_policy(self.cfg, self.model_path, self.device).eval().requires_grad_(False)
        return self._logprobs(samples, reference=True, temperature=1.0)

    def _grad_norm_before_step(self) -> float | None:
        """ZeRO-0 leaves no norm behind: take it from the (already all-reduced) gradients."""
        if self.cfg.learner.zero_stage != 0:
            return None
        sq = sum(p.grad.double().pow(2).sum() for p in self.engine.module.parameters() if p.grad is not None)
        return float(sq) ** 0.5

    def _grad_norm(self) -> float:
        gn = self.engine.get_global_grad_norm()
        if gn is None:
            return float("nan")
        return float(gn.item() if torch.is_tensor(gn) else gn)

    # -- weights out -----------------------------------------------------------------------------------------
    def named_full_params(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(HF name, full tensor) for every parameter (tied ones once, under the HF checkpoint name that owns
        them). Collective under ZeRO-3: every rank must iterate it fully; every rank receives the tensors.
        Under ZeRO-3 each yielded tensor is a copy; otherwise it is the live parameter (do not modify)."""
        import deepspeed

        zero3 = self.cfg.learner.zero_stage == 3
        for name, p in self._hf.named_parameters():
            if zero3:
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    full = p.detach().clone()
                yield name, full
            else:
                yield name, p.detach()

    def param_checksums(self) -> dict[str, float]:
        """float64 sum of every full parameter, on every rank (collective): equal across ranks when the ranks
        are in sync."""
        return {n: float(t.double().sum()) for n, t in self.named_full_params()}

    def gather_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The HF ``state_dict()`` with full float32 tensors on CPU on rank 0 (tied keys share a tensor);
        None on other ranks. Collective."""
        full = {n: t.cpu().clone() for n, t in self.named_full_params()}
        if self.rank != 0:
            return None
        canonical = {}
        seen: dict[int, str] = {}
        for name, p in self._hf.named_parameters(remove_duplicate=False):
            canonical[name] = seen.setdefault(id(p), name)
        return {k: full[canonical[k]] if k in canonical else v.detach().cpu().clone()
                for k, v in self._hf.state_dict().items()}

    # -- checkpoints -----------------------------------------------------------------------------------------
    def save_checkpoint(self, path: str, client_state: dict) -> None:
        """Collective. Rank 0 writes the policy in HF format (safetensors, config, tokenizer files copied from
        the model folder) to ``path``; every rank writes its DeepSpeed engine/optimizer shard under ``path/ds``
        (so ``path`` must be on storage all learner nodes share)."""
        import torch.distributed as dist

        sd = self.gather_state_dict()
        if self.rank == 0:
            os.makedirs(path, exist_ok=True)
            self._hf.save_pretrained(path, state_dict=sd)
            for f in sorted(os.listdir(self.model_path)):
                if f.startswith("tokenizer") or f in _TOKENIZER_FILES:
                    shutil.copy2(os.path.join(self.model_path, f), os.path.join(path, f))
        dist.barrier()
        self.engine.save_checkpoint(os.path.join(path, "ds"), tag=_DS_TAG,
                                    client_state={_CLIENT_KEY: dict(client_state)})
        dist.barrier()

    def load_checkpoint(self, path: str) -> dict:
        """Collective: restore weights, optimizer and scheduler from ``path/ds``; returns the client state."""
        ds_dir = os.path.join(path, "ds")
        if not os.path.isdir(os.path.join(ds_dir, _DS_TAG)):
            raise FileNotFoundError(f"no DeepSpeed state at {ds_dir}/{_DS_TAG}")
        load_path, client_state = self.engine.load_checkpoint(ds_dir, tag=_DS_TAG)
        if load_path is None:
            raise LearnerError(f"DeepSpeed could not load the checkpoint at {ds_dir}")
        return dict((client_state or {}).get(_CLIENT_KEY, {}))


# ----------------------------------------------------------------------------- the group

class LearnerGroup:
    """``learner.num_learners`` LearnerWorker actors forming one DeepSpeed data-parallel group."""

    def __init__(self, cfg: JobConfig, model_path: str, placement_group: Any = None, bundle_offset: int = 0):
        """``placement_group``: a PlacementGroup, or ``create_placement_groups``' dict (its "learner" entry);
        rank r takes bundle ``bundle_offset + r``."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rapo_ray.placement import actor_options

        self.cfg = cfg
        self.timeout_s = cfg.learner.init_timeout_s
        n = cfg.learner.num_learners
        pg = placement_group.get("learner") if isinstance(placement_group, dict) else placement_group
        remote_cls = ray.remote(max_restarts=0)(LearnerWorker)
        self.actors = []
        for r in range(n):
            # learner_cpus / learner_gpus and the custom "learner" resources, as placement reserved them
            opts = actor_options(cfg, "learner", None, r)
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle_offset + r)
            self.actors.append(remote_cls.options(**opts).remote(cfg, str(model_path), r, n))
        try:
            addr, port = self._get([self.actors[0].master_endpoint.remote()], "rendezvous")[0]
            self._get([a.setup.remote(addr, port) for a in self.actors], "setup")
        except BaseException:
            self.kill()
            raise

    def _get(self, refs: list, what: str) -> list:
        """Results of one call per rank; the first failure (or the timeout) raises at once."""
        import ray

        pending = list(refs)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
            if not done:
                raise LearnerError(f"learner group: {what} timed out after {self.timeout_s:.0f}s")
            try:
                ray.get(done[0])
            except Exception as e:
                raise LearnerError(f"learner group: {what} failed on rank {refs.index(done[0])}: {e}") from e
        return ray.get(refs)

    def _shards(self, samples: Sequence[Sample]) -> list[list[int]]:
        return shard_by_tokens(samples, len(self.actors), self.cfg.learner.prompt_sharing)

    def train(self, samples: list[Sample], objective: str = "grpo") -> dict[str, float]:
        """One GRPO update on ``samples`` (advantages set), or one SFT step (``objective="sft"``), sharded over
        the ranks by token count; or one DPO/IPO step (``objective="dpo"``/``"ipo"``) on pairs (samples 2k chosen,
        2k + 1 rejected), sharded by whole pairs."""
        pairs = objective in PREFERENCE_LOSSES
        shards = pair_shards(samples, len(self.actors)) if pairs else self._shards(samples)
        total = None if pairs else sum(loss_token_count(s, self.cfg.algo.mask_truncated) for s in samples)
        refs = [a.train_step.remote([samples[i] for i in shard], total, objective)
                for a, shard in zip(self.actors, shards)]
        return self._get(refs, "train_step")[0]

    def compute_logprobs(self, samples: list[Sample], temperature: float | None = None) -> list[list[float]]:
        """Completion log-probs of every sample under the current policy, in input order, at ``temperature``
        (default: the rollout's)."""
        shards = self._shards(samples)
        refs = [a.compute_logprobs.remote([samples[i] for i in shard], temperature)
                for a, shard in zip(self.actors, shards)]
        out: list[list[float]] = [[] for _ in samples]
        for shard, res in zip(shards, self._get(refs, "compute_logprobs")):
            for i, lp in zip(shard, res):
                out[i] = lp
        return out

    def resolved(self) -> dict[str, str]:
        """What ``learner.precision`` resolved to (rank 0's; the ranks' own when they differ)."""
        per_rank = self._get([a.resolved.remote() for a in self.actors], "resolved")
        if any(r["value"] != per_rank[0]["value"] for r in per_rank):
            return {"value": per_rank[0]["value"],
                    "reason": "ranks differ: " + "; ".join(f"{r['value']} ({r['reason']})" for r in per_rank)}
        return per_rank[0]

    def param_checksums(self) -> list[dict[str, float]]:
        """Per rank: the float64 sum of each full parameter (equal across ranks when in sync)."""
        return self._get([a.param_checksums.remote() for a in self.actors], "param_checksums")

    def gather_state_dict(self) -> dict[str, torch.Tensor]:
        return self._get([a.gather_state_dict.remote() for a in self.actors], "gather_state_dict")[0]

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        self._get([a.save_checkpoint.remote(str(path), client_state) for a in self.actors], "save_checkpoint")

    def load_checkpoint(self, path: str) -> dict:
        return self._get([a.load_checkpoint.remote(str(path)) for a in self.actors], "load_checkpoint")[0]

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
