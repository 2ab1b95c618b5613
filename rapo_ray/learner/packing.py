"""Sharding a batch over the learner ranks and packing a shard into micro-batches.

Micro-batches are packed by token count without padding: sequences are concatenated in one row and
``position_ids`` restart at 0 for each. With ``attention_mask=None`` transformers turns restarting positions
into a block-diagonal causal mask (sdpa/eager) or varlen attention (flash_attention_2, ``varlen_sdpa``), so packed
sequences do not attend to each other (tested: packed log-probs equal per-sequence ones). Only completion
positions reach the LM head. A packing *unit* is a list of sample indices that must share a micro-batch (a
shared-prompt group, a preference pair).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from rapo_ray.algo import pack_microbatches
from rapo_ray.types import Sample


def loss_token_count(s: Sample, mask_truncated: bool) -> int:
    """Completion tokens of a sample that count in the loss: none for an unscored sample (no reward component
    scored it) or, with ``mask_truncated``, a truncated one."""
    return 0 if not s.scored or (mask_truncated and s.truncated) else len(s.completion_ids)


def seq_len(s: Sample) -> int:
    """Prompt plus completion tokens."""
    return len(s.prompt_ids) + len(s.completion_ids)


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


def pair_shards(samples: Sequence[Sample], n: int) -> list[list[int]]:
    """Sample indices for ``n`` ranks when samples 2k and 2k + 1 form pair k (preference objectives): whole pairs,
    balanced by tokens, so a pair's two sequences stay on one rank."""
    if len(samples) % 2:
        raise ValueError(f"preference pairs need an even number of samples, got {len(samples)}")
    weights = [seq_len(samples[2 * k]) + seq_len(samples[2 * k + 1]) for k in range(len(samples) // 2)]
    return [[j for k in part for j in (2 * k, 2 * k + 1)] for part in balanced_split(weights, n)]


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
    """Tokens of a unit as packed (its prompt once when ``share_prompts``)."""
    if not share_prompts:
        return sum(seq_len(samples[i]) for i in unit)
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


def sequence_units(samples: Sequence[Sample], members: Iterable[int], share_prompts: bool,
                   max_tokens: int) -> list[list[int]]:
    """Packing units of independent sequences: one per sample, or per shared prompt cut to fit ``max_tokens``."""
    units = prompt_units(samples, members, share_prompts)
    if share_prompts:
        units = [piece for u in units for piece in split_unit(samples, u, max_tokens)]
    return units


@dataclass
class MicroBatch:
    """One packed row: ``input_ids``/``position_ids`` [1, L]; ``index`` [N] the positions whose next token is a
    completion token, ``targets`` [N] those tokens; ``members`` the shard indices of its samples, in order,
    each contributing ``counts[i]`` of the N positions; ``segments`` the row's attention layout (start, end, first
    position, start of the sequence whose prompt it sees), known here so the attention never reads it back."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    index: torch.Tensor
    targets: torch.Tensor
    members: list[int]
    counts: list[int]
    segments: tuple[tuple[int, int, int, int], ...] | None = None

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
        segments: list[tuple[int, int, int, int]] = []
        root, root_prompt = 0, None  # where the last full sequence (prompt + completion) starts, and its prompt
        for i in members:
            s = samples[i]
            if not s.prompt_ids:
                raise ValueError(f"sample {s.prompt_id}#{s.sample_index} has no prompt tokens")
            p, c = len(s.prompt_ids), len(s.completion_ids)
            if share_prompts and c and list(s.prompt_ids) == root_prompt:
                start = len(ids)
                segments.append((start, start + c, p, root))
                ids += s.completion_ids
                pos += range(p, p + c)
                index += [root + p - 1, *range(start, start + c - 1)]  # the prompt's last state predicts token 0
            else:
                root, root_prompt = len(ids), list(s.prompt_ids)
                segments.append((root, root + p + c, 0, root))
                ids += list(s.prompt_ids) + list(s.completion_ids)
                pos += range(p + c)
                index += range(root + p - 1, root + p + c - 1)  # hidden state t predicts token t + 1
            targets += s.completion_ids
        as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
        return cls(as_long(ids)[None], as_long(pos)[None], as_long(index), as_long(targets),
                   list(members), [len(samples[i].completion_ids) for i in members], tuple(segments))

    @classmethod
    def dummy(cls, device: torch.device) -> MicroBatch:
        """A 2-token row whose loss is multiplied by 0: keeps ZeRO collectives matched across ranks."""
        z = torch.zeros(1, dtype=torch.long, device=device)
        return cls(torch.zeros(1, 2, dtype=torch.long, device=device), torch.arange(2, device=device)[None], z, z, [], [],
                   ((0, 2, 0, 0),))


def pack_units(samples: Sequence[Sample], units: Sequence[Sequence[int]], device: torch.device, *,
               share_prompts: bool, max_tokens: int, packing: bool = True) -> list[MicroBatch]:
    """Micro-batches of whole ``units``, first-fit decreasing by tokens within ``max_tokens`` (a unit larger than
    that gets its own); one unit per micro-batch when not ``packing``."""
    bins = (pack_microbatches([unit_tokens(samples, u, share_prompts) for u in units], max_tokens) if packing
            else [[k] for k in range(len(units))])
    return [MicroBatch.pack(samples, [i for k in b for i in units[k]], device, share_prompts) for b in bins]
