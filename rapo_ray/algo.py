"""GRPO as RAPO uses it: group advantages, the clipped policy loss, KL estimators, token packing and
chunked log-probs. Pure torch/numpy (no Ray, no DeepSpeed), so every piece is unit-testable.

Token tensors are *packed* 1-D tensors: all completion tokens of a micro-batch laid end to end, with a
per-token sequence id where a per-sequence reduction is needed.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

# exp() of a log-ratio beyond this is clamped: keeps the loss finite for wildly off-policy tokens.
_MAX_LOG_RATIO = 20.0


def group_advantages(rewards: Sequence[float], group_ids: Sequence[str], std_norm: bool = True,
                     eps: float = 1e-6, scored: Sequence[bool] | None = None) -> tuple[np.ndarray, dict[str, float]]:
    """Group-normalized advantages: reward minus its group's mean, divided by the group's std + eps
    when ``std_norm`` (the unbiased std, as ``torch.std``; a group of one has std 0).

    ``scored`` (default: all): only scored samples enter their group's mean and std; an unscored one gets
    advantage 0 and its reward is not read. A group whose scored rewards are all equal (or that has none) gets
    exactly zero advantage (no gradient); the stats report their share as ``zero_adv_frac``.
    """
    r = np.asarray(rewards, dtype=np.float64)
    keep = np.ones(len(r), dtype=bool) if scored is None else np.asarray(scored, dtype=bool)
    if r.ndim != 1 or len(group_ids) != len(r) or keep.shape != r.shape:
        raise ValueError(f"rewards ({r.shape}), group_ids ({len(group_ids)}) and scored ({keep.shape}) must be 1-D "
                         "and of equal length")
    if not np.isfinite(r[keep]).all():
        raise ValueError(f"rewards must be finite, got {r[keep][~np.isfinite(r[keep])][:5].tolist()}")
    members: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(group_ids):
        idx = members[g]  # a group with no scored sample still counts (as a zero-advantage group)
        if keep[i]:
            idx.append(i)
    adv = np.zeros_like(r)
    zero_groups = 0
    stds = []
    for idx in members.values():
        g = r[idx]
        if len(g) == 0 or np.all(g == g[0]):
            zero_groups += 1
            stds.extend([0.0] if len(g) else [])
            continue
        std = float(g.std(ddof=1))
        stds.append(std)
        a = g - g.mean()
        adv[idx] = a / (std + eps) if std_norm else a
    n = max(len(members), 1)
    stats = {"num_groups": float(len(members)), "zero_adv_groups": float(zero_groups),
             "zero_adv_frac": zero_groups / n, "group_std_mean": float(np.mean(stds)) if stds else 0.0}
    return adv, stats


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: Literal["k1", "k3"] = "k3") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled by pi.

    k1 = log pi - log pi_ref (unbiased, can be negative); k3 = exp(-d) + d - 1 with d = log pi - log pi_ref
    (unbiased up to the sampling policy, always >= 0, low variance).
    """
    d = logprobs - ref_logprobs
    if kind == "k1":
        return d
    if kind == "k3":
        d = d.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return torch.exp(-d) + d - 1.0
    raise ValueError(f"unknown KL estimator {kind!r} (k1 or k3)")


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, loss_agg: Literal["token_mean", "seq_mean"],
              seq_ids: torch.Tensor | None = None, normalizer: float | None = None) -> torch.Tensor:
    """A loss from per-token values on packed 1-D tensors. ``token_mean``: the masked sum divided by
    ``normalizer`` (default: the masked token count here; pass the global count under accumulation).
    ``seq_mean``: each sequence's masked mean (``seq_ids``: one id per token), summed over sequences with tokens and
    divided by ``normalizer`` (default: those sequences here)."""
    mask = mask.to(per_token.dtype)
    if loss_agg == "token_mean":
        denom = float(normalizer) if normalizer is not None else mask.sum().item()
        return (per_token * mask).sum() / max(denom, 1e-8)
    if loss_agg != "seq_mean":
        raise ValueError(f"unknown loss_agg {loss_agg!r} (token_mean or seq_mean)")
    if seq_ids is None:
        raise ValueError("seq_mean needs seq_ids (one id per token)")
    n_seq = int(seq_ids.max().item()) + 1 if seq_ids.numel() else 0
    seq_sum = torch.zeros(n_seq, dtype=per_token.dtype, device=per_token.device).index_add(0, seq_ids, per_token * mask)
    seq_len = torch.zeros(n_seq, dtype=mask.dtype, device=mask.device).index_add(0, seq_ids, mask)
    has_tokens = seq_len > 0
    denom = float(normalizer) if normalizer is not None else has_tokens.sum().item()
    return (seq_sum[has_tokens] / seq_len[has_tokens]).sum() / max(denom, 1e-8)


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip_low: float, clip_high: float, loss_agg: Literal["token_mean", "seq_mean"] = "token_mean",
                ref_logprobs: torch.Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3", *,
                seq_ids: torch.Tensor | None = None, normalizer: float | None = None,
                entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clipped-ratio loss on packed 1-D token tensors (all of shape [T]).

    per-token loss = max(-A r, -A clip(r, 1 - clip_low, 1 + clip_high)) + kl_coef * KL(pi || pi_ref),
    r = exp(logprobs - old_logprobs). ``mask`` selects the tokens that count.

    Aggregation: ``token_mean`` sums over masked tokens and divides by ``normalizer`` (default: the masked
    token count here). With gradient accumulation over micro-batches and ranks, pass the *global* token
    count of the batch so every token weighs the same. ``seq_mean`` averages tokens within each sequence
    (``seq_ids`` required) and sums sequences divided by ``normalizer`` (default: the sequences here).

    Metrics are means over the masked tokens of this call (``tokens`` gives the weight to combine them):
    clip_frac (tokens whose clipped branch is active), clip_frac_low / clip_frac_high, approx_kl (k3 of
    the current vs old policy), kl_ref, and entropy when given.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(pg_unclipped, pg_clipped)
    kl_ref = None
    if ref_logprobs is not None:
        kl_ref = kl_estimate(logprobs, ref_logprobs, kl_estimator)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl_ref
    loss = aggregate(per_token, mask, loss_agg, seq_ids, normalizer)

    with torch.no_grad():
        n_tok = mask.sum().item()

        def mean(x: torch.Tensor) -> float:
            return (x.float() * mask).sum().item() / n_tok if n_tok else 0.0

        high = (advantages > 0) & (ratio > 1.0 + clip_high)
        low = (advantages < 0) & (ratio < 1.0 - clip_low)
        metrics = {"tokens": n_tok, "clip_frac": mean(high | low), "clip_frac_high": mean(high),
                   "clip_frac_low": mean(low), "approx_kl": mean(kl_estimate(logprobs, old_logprobs, "k3"))}
        if kl_ref is not None:
            metrics["kl_ref"] = mean(kl_ref)
        if entropy is not None:
            metrics["entropy"] = mean(entropy)
    return loss, metrics


def sft_loss(logprobs: torch.Tensor, mask: torch.Tensor, normalizer: float | None = None,
             entropy: torch.Tensor | None = None, loss_agg: Literal["token_mean", "seq_mean"] = "token_mean",
             seq_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Supervised loss on packed 1-D token tensors: the NLL of the masked tokens aggregated as ``aggregate`` does
    (token_mean: divided by ``normalizer``, default the masked token count here; seq_mean: per-sequence means).
    Metrics: ``tokens``, ``nll`` (mean NLL of the masked tokens of this call) and ``entropy`` when given."""
    mask = mask.to(logprobs.dtype)
    n_tok = mask.sum().item()
    loss = aggregate(-logprobs, mask, loss_agg, seq_ids, normalizer)
    with torch.no_grad():
        metrics = {"tokens": n_tok, "nll": (-(logprobs * mask).sum() / max(n_tok, 1.0)).item()}
        if entropy is not None:
            metrics["entropy"] = (entropy.float() * mask).sum().item() / max(n_tok, 1.0)
    return loss, metrics


PREFERENCE_LOSSES = ("dpo", "ipo")


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, ref_chosen: torch.Tensor,
                    ref_rejected: torch.Tensor, beta: float, kind: Literal["dpo", "ipo"] = "dpo",
                    normalizer: float | None = None, rpo_alpha: float = 0.0,
                    chosen_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """DPO-family loss of P pairs from sequence log-probs (sums over each completion's tokens), all of shape [P].

    h = (chosen - ref_chosen) - (rejected - ref_rejected), the difference of the implicit rewards / beta;
    dpo: -log sigmoid(beta h) (Rafailov et al., 2023); ipo: (h - 1 / (2 beta))^2 (Azar et al., 2023, with
    tau = beta). With ``rpo_alpha`` > 0 each pair's loss also gets rpo_alpha x the chosen side's mean token NLL,
    -chosen / chosen_tokens (RPO, Pang et al., 2024), which keeps the chosen likelihood up. The per-pair losses are
    summed and divided by ``normalizer`` (default: P; pass the global pair count under accumulation). Metrics are
    means over the pairs of this call (``pairs`` gives the weight): accuracy (share with h > 0), margin (beta h),
    chosen_reward and rejected_reward (beta (logp - ref logp)), chosen_nll (mean token NLL of the chosen side).
    """
    if kind not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {kind!r} (dpo or ipo)")
    if not chosen.shape == rejected.shape == ref_chosen.shape == ref_rejected.shape or chosen.ndim != 1:
        raise ValueError("chosen, rejected and their reference log-probs must be 1-D tensors of one shape")
    h = (chosen - ref_chosen) - (rejected - ref_rejected)
    per_pair = -torch.nn.functional.logsigmoid(beta * h) if kind == "dpo" else (h - 1.0 / (2.0 * beta)) ** 2
    if rpo_alpha and chosen_tokens is None:
        raise ValueError("rpo_alpha needs the chosen completions' token counts")
    nll = -chosen / chosen_tokens.clamp(min=1) if chosen_tokens is not None else torch.zeros_like(chosen)
    per_pair = per_pair + rpo_alpha * nll if rpo_alpha else per_pair
    n = chosen.numel()
    loss = per_pair.sum() / max(float(normalizer) if normalizer is not None else n, 1e-8)
    with torch.no_grad():
        mean = lambda x: x.float().mean().item() if n else 0.0  # noqa: E731
        metrics = {"pairs": float(n), "accuracy": mean(h > 0), "margin": mean(beta * h),
                   "chosen_reward": mean(beta * (chosen - ref_chosen)),
                   "rejected_reward": mean(beta * (rejected - ref_rejected)), "chosen_nll": mean(nll)}
    return loss, metrics


def lr_factor(step: int, warmup: int, schedule: Literal["constant", "linear", "cosine"] = "constant",
              decay_steps: int = 0) -> float:
    """Learning-rate multiplier at optimizer step ``step`` (0-based): linear warmup over ``warmup`` steps, then
    constant, or a linear / cosine decay to 0 over ``decay_steps`` steps (0: constant)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or decay_steps <= 0:
        return 1.0
    t = min((step - warmup) / decay_steps, 1.0)
    if schedule == "linear":
        return 1.0 - t
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown lr schedule {schedule!r} (constant, linear or cosine)")


def pack_microbatches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Pack sequences (by index) into micro-batches of at most ``max_tokens`` tokens, first-fit
    decreasing. A micro-batch is one row of concatenated sequences, so there is no padding; a sequence
    longer than ``max_tokens`` gets a micro-batch of its own. Deterministic for equal input.
    """
    if max_tokens < 1:
        raise ValueError("max_tokens must be >= 1")
    if any(n < 0 for n in lengths):
        raise ValueError("lengths must be >= 0")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(max_tokens - n)
    return bins


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    dev = t.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else t.dtype


class _ChunkedLogprobs(torch.autograd.Function):
    """log softmax(h W^T / temperature)[target] per position, chunk by chunk. The backward recomputes
    each chunk's logits instead of keeping them, so at most one chunk of float32 logits exists at a time."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk, temperature, compute_dtype):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        ent = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty(n, dtype=torch.float32, device=hidden.device)
        w = weight.to(compute_dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk):
                logits = _chunk_logits(hidden[s:s + chunk], w, temperature)
                lse = torch.logsumexp(logits, dim=-1)
                lse_all[s:s + chunk] = lse
                logp[s:s + chunk] = logits.gather(-1, targets[s:s + chunk, None]).squeeze(-1) - lse
                logq = logits.sub_(lse[:, None])  # in place: log-softmax
                ent[s:s + chunk] = -torch.linalg.vecdot(torch.exp(logq), logq)
        ctx.save_for_backward(hidden, weight, targets, lse_all)
        ctx.chunk, ctx.temperature, ctx.compute_dtype = chunk, temperature, compute_dtype
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, targets, lse_all = ctx.saved_tensors
        chunk, temp = ctx.chunk, ctx.temperature
        w = weight.to(ctx.compute_dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s:s + chunk].to(w.dtype)
                # d logp[target] / d logits = (onehot(target) - softmax(logits)) / temperature, times the grad
                g = grad_logp[s:s + chunk, None] / temp
                d = _chunk_logits(h, w, temp).sub_(lse_all[s:s + chunk, None]).exp_().mul_(-g)
                d.scatter_add_(-1, targets[s:s + chunk, None], g)
                d = d.to(w.dtype)
                if grad_h is not None:
                    grad_h[s:s + chunk] = (d @ w).to(hidden.dtype)
                if grad_w is not None:
                    grad_w += (d.T @ h).float()
        return grad_h, (grad_w.to(weight.dtype) if grad_w is not None else None), None, None, None, None


def _chunk_logits(h: torch.Tensor, w: torch.Tensor, temperature: float) -> torch.Tensor:
    """float32 logits of one chunk (a fresh tensor, safe to modify in place)."""
    logits = (h.to(w.dtype) @ w.T).float()
    return logits.div_(temperature) if temperature != 1.0 else logits


def chunked_token_logprobs(hidden_states: torch.Tensor, lm_head_weight: torch.Tensor, targets: torch.Tensor,
                           chunk: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` [N] under logits = hidden_states [N, H] @ lm_head_weight[V, H]^T / temperature,
    plus the entropy of each position's distribution (no gradient), both float32 [N].

    Computed ``chunk`` positions at a time: full float32 logits [N, V] are never materialized, neither in
    the forward nor (recomputed per chunk) in the backward. Under autocast the matmuls run in the autocast
    dtype like ``nn.Linear`` would, the softmax in float32.
    """
    if hidden_states.ndim != 2 or targets.shape != hidden_states.shape[:1]:
        raise ValueError(f"hidden_states [N, H] and targets [N] expected, got {tuple(hidden_states.shape)} "
                         f"and {tuple(targets.shape)}")
    if chunk < 1 or temperature <= 0:
        raise ValueError("chunk must be >= 1 and temperature > 0")
    return _ChunkedLogprobs.apply(hidden_states, lm_head_weight, targets.long(), int(chunk), float(temperature),
                                  _compute_dtype(hidden_states))
