"""The learner's view of a HF causal LM: packed rows in, completion-token log-probs out.

``varlen_sdpa_attention`` attends within each packed segment (no cross-sequence work), ``flex_packed_attention``
does the same in one FlexAttention call per layer; ``PolicyLogprobs`` sends
only completion positions through the model's own LM head, whose log-probs are computed in chunks
(``rapo_ray.algo.chunked_token_logprobs``) instead of materializing full logits.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from rapo_ray.algo import chunked_token_logprobs
from rapo_ray.config import LearnerSettings

VARLEN_ATTENTION = "rapo_varlen_sdpa"
FLEX_ATTENTION = "rapo_flex_packed"


Segment = tuple[int, int, int, int]  # (start, end, first position, where its sequence starts) in a packed row


def segments_from_positions(pos: torch.Tensor) -> tuple[Segment, ...]:
    """The segment layout of one packed row from its position ids (host syncs: for callers that have no layout;
    the learner passes ``MicroBatch.segments``)."""
    n = pos.shape[0]
    cuts = [0, *(torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1).tolist(), n]
    out, root = [], 0
    for (s, e), q0 in zip(zip(cuts, cuts[1:]), pos[cuts[:-1]].tolist()):
        root = s if q0 == 0 else root
        out.append((s, e, q0, root))
    return tuple(out)


def row_layout(segments: tuple[Segment, ...] | None, position_ids: torch.Tensor | None, row: int,
               length: int) -> tuple[Segment, ...]:
    """``segments`` when given, else the layout read from ``position_ids`` (host syncs), else one sequence."""
    if segments is not None:
        return segments
    if position_ids is not None:
        return segments_from_positions(position_ids[min(row, position_ids.shape[0] - 1)])
    return ((0, length, 0, 0),)


def varlen_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          position_ids: torch.Tensor | None = None, segments: tuple[Segment, ...] | None = None,
                          **_: Any) -> tuple[torch.Tensor, None]:
    """Attention over a packed, unpadded row, one SDPA call per segment: no mask and no work across sequences,
    unlike a block-diagonal mask over the row.

    ``segments`` is the row's layout, computed once per micro-batch on the host (``MicroBatch.segments``), so the
    forward makes no host sync; without it the layout is read from ``position_ids`` (a segment starts where they do
    not continue by +1) in every layer. A segment starting at position 0 is a sequence: causal within itself. A
    segment starting at position q > 0 is a completion sharing the prompt of the last sequence
    (``MicroBatch.pack(share_prompts=True)``): it attends to that sequence's first q tokens and causally to itself.
    A transformers attention function (extra model kwargs reach it); CPU and CUDA. ``flash_attention_2`` (CUDA)
    packs whole sequences only: it has no shared-prompt segments.
    """
    if attention_mask is not None:
        raise ValueError("varlen attention takes packed, unpadded rows (no attention_mask)")
    gqa = query.shape[1] != key.shape[1]
    rows = []
    for b in range(query.shape[0]):
        layout = row_layout(segments, position_ids, b, query.shape[2])
        q_, k_, v_ = query[b:b + 1], key[b:b + 1], value[b:b + 1]
        parts = []
        for s, e, q0, root in layout:
            if q0 == 0:
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


def segment_block_mask(segments: tuple[Segment, ...], length: int, device: torch.device) -> Any:
    """The FlexAttention block mask of a packed row: causal within each segment, and a shared-prompt completion
    (first position q0 > 0) also sees the first q0 tokens of its sequence."""
    from torch.nn.attention.flex_attention import create_block_mask

    seg = torch.zeros(length, dtype=torch.int32)
    lo = torch.zeros(length, dtype=torch.int32)
    hi = torch.zeros(length, dtype=torch.int32)
    for k, (s, e, q0, root) in enumerate(segments):
        seg[s:e], lo[s:e], hi[s:e] = k, root, root + q0
    seg, lo, hi = seg.to(device), lo.to(device), hi.to(device)

    def mask_mod(b: Any, h: Any, q: Any, kv: Any) -> Any:
        return ((seg[q] == seg[kv]) & (kv <= q)) | ((kv >= lo[q]) & (kv < hi[q]))

    return create_block_mask(mask_mod, None, None, length, length, device=device)


_MASK: dict[tuple, Any] = {}  # the last micro-batch's block mask: built by its first layer, reused by the others


def flex_packed_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                          position_ids: torch.Tensor | None = None, segments: tuple[Segment, ...] | None = None,
                          **_: Any) -> tuple[torch.Tensor, None]:
    """The attention of ``varlen_sdpa_attention`` (same layout, same result) in one FlexAttention call over the
    packed row; compiled on CUDA, eager elsewhere. One packed row per batch."""
    from torch.nn.attention.flex_attention import flex_attention

    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError("flex attention takes one packed, unpadded row (no attention_mask)")
    n = query.shape[2]
    segments = row_layout(segments, position_ids, 0, n)
    key_ = (segments, n, str(query.device))
    if key_ not in _MASK:
        _MASK.clear()
        _MASK[key_] = segment_block_mask(segments, n, query.device)
    fn = _compiled_flex() if query.device.type == "cuda" else flex_attention
    out = fn(query, key, value, block_mask=_MASK[key_], scale=scaling, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _compiled_flex() -> Any:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def resolve_attention(name: str, device: torch.device) -> str:
    """``learner.attn_implementation`` for a learner on ``device``: ``auto`` is ``flex`` on CUDA (measured up to
    3x ``varlen_sdpa``'s step on an H200, docs/speed.md) and ``varlen_sdpa`` elsewhere (FlexAttention has no backward
    on CPU); any other name stands."""
    if name != "auto":
        return name
    return "flex" if device.type == "cuda" else "varlen_sdpa"


def attn_implementation(name: str) -> str:
    """The transformers ``attn_implementation`` for ``learner.attn_implementation`` (registers ``varlen_sdpa``
    and ``flex``)."""
    if name not in ("varlen_sdpa", "flex"):
        return name
    from transformers import AttentionInterface

    registered, fn = ((VARLEN_ATTENTION, varlen_sdpa_attention) if name == "varlen_sdpa"
                      else (FLEX_ATTENTION, flex_packed_attention))
    AttentionInterface.register(registered, fn)
    return registered


class _ChunkedLMHead(nn.Linear):
    """The model's own LM head (same parameters; ZeRO-3 hooks still fire) that can also return the
    log-probs of given targets, computed in chunks, instead of full logits."""

    chunk: int = 1024

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None,
                temperature: float = 1.0) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, index: torch.Tensor, targets: torch.Tensor,
                temperature: float = 1.0, segments: tuple[Segment, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        extra = {"segments": segments} if segments is not None else {}
        hidden = self.hf.base_model(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                                    **extra).last_hidden_state
        return self.hf.get_output_embeddings()(hidden[0, index], targets=targets, temperature=temperature)


def load_policy(cfg: LearnerSettings, model_path: str, device: torch.device) -> PolicyLogprobs:
    """The float32 policy at ``model_path`` with dropout off, on ``device``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32, use_safetensors=True,
                                                 attn_implementation=attn_implementation(
                                                     resolve_attention(cfg.learner.attn_implementation, device)),
                                                 trust_remote_code=cfg.model.trust_remote_code)
    model.config.use_cache = False
    # No dropout in RL updates: recomputed and current log-probs of a batch must agree.
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return PolicyLogprobs(model, cfg.learner.logprob_chunk).to(device)
