"""Records passed between roles (rollout -> judge -> learner)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Sample:
    """One completion of one prompt, as it moves from rollout to judge to learner."""

    prompt_id: str
    sample_index: int  # index inside its GRPO group
    prompt: str  # the user prompt (raw text)
    prompt_ids: list[int]  # tokens of the formatted generation prompt (chat template + thinking prefix)
    completion_ids: list[int]
    completion: str  # decoded completion, with the thinking prefix restored in front
    sampling_logprobs: list[float]  # per completion token, from the sampler (vLLM)
    truncated: bool  # stopped by max_tokens
    policy_version: int
    harmful_label: int
    level: int | None = None
    source: str = ""
    reward: float = 0.0
    advantage: float = 0.0
    breakdown: dict[str, Any] = field(default_factory=dict)
    # per completion token under the reference model, at temperature 1 (DPO with precomputed reference)
    ref_logprobs: list[float] = field(default_factory=list)
    # the prompt row's other columns (id, source, the dataset's own), passed to reward hooks
    columns: dict[str, Any] = field(default_factory=dict)
    # False: no reward component scored it (judge.reward_hooks): advantage 0, no loss tokens
    scored: bool = True


def row_columns(row: dict[str, Any]) -> dict[str, Any]:
    """A prompt row's columns that a :class:`Sample` keeps in ``columns``."""
    return {k: v for k, v in row.items() if k not in ("prompt", "harmful_label", "level")}


# One preference pair, a row of pairs.jsonl, whichever source built it (rapo_ray.pairs, rapo_ray.sft.contrast).
SIDE_FIELDS = ("sample_index", "completion", "completion_ids", "truncated", "reward", "breakdown")


def sampled_side(s: dict[str, Any]) -> dict[str, Any]:
    """A pair side taken from a scored sample row (``samples.jsonl`` of ``rapo-ray pairs``) as it was sampled."""
    return {k: s[k] for k in SIDE_FIELDS}


def written_side(index: int, text: str, ids: list[int], reward: float, case: str) -> dict[str, Any]:
    """A pair side written, not sampled: ``reward`` is the side's preference (+1 chosen, -1 rejected)."""
    return {"sample_index": index, "completion": text, "completion_ids": ids, "truncated": False, "reward": reward,
            "breakdown": {"total": reward, "case": case}}


def pair_record(*, pair_id: str, prompt_id: str, batch: int, prompt: str, prompt_ids: list[int], harmful_label: int,
                level: int | None, source: str, margin: float, group_totals: list[float], chosen: dict[str, Any],
                rejected: dict[str, Any]) -> dict[str, Any]:
    """The pair row: the prompt (text and token ids of the formatted generation prompt), its label, level and
    source, the chosen-rejected reward margin, the group's totals, and the two sides."""
    return {"pair_id": pair_id, "prompt_id": prompt_id, "batch": batch, "prompt": prompt, "prompt_ids": prompt_ids,
            "harmful_label": harmful_label, "level": level, "source": source, "margin": margin,
            "group_totals": group_totals, "chosen": chosen, "rejected": rejected}
