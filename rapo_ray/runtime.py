"""The bottom layer every command shares: connecting to Ray and scoring samples with a judge.

It imports only the standard library and leaf modules (``types``), so any module of the package may import it
without a loop. Ray is imported when ``init_ray`` runs: importing this module loads nothing heavy.
"""
from __future__ import annotations

import os
from typing import Any

from rapo_ray import faults
from rapo_ray.types import Sample


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` / $RAY_ADDRESS, or start a local cluster in-process."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    env = faults.forwarded_env()
    runtime_env = {"env_vars": env} if env else None
    if address:
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    else:
        ray.init(include_dashboard=False, runtime_env=runtime_env)
    ray.data.DataContext.get_current().enable_progress_bars = False


def score(judge: Any, samples: list[Sample], state: dict[str, Any] | None = None) -> None:
    """Judge every sample in one batched call (``judge``: a ``JudgePool`` or a local ``Judge``); fills reward,
    breakdown and ``scored``. The rows carry the token ids and the prompt row's columns for reward hooks, and
    ``state`` (global_step, max_steps, epoch) the training progress they see as ``trainer_state``."""
    rows = [{**s.columns, "prompt": s.prompt, "completion": s.completion, "completion_ids": s.completion_ids,
             "harmful_label": s.harmful_label, "level": s.level, "truncated": s.truncated} for s in samples]
    for s, b in zip(samples, judge.score(rows, state)):
        s.breakdown = b.to_dict()
        s.reward, s.scored = float(b.total), b.scored
