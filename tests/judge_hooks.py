"""Reward hooks used by the judge tests (named by file path, so judge actors can load them too)."""
from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from pathlib import Path


def length_reward(prompts, completions, **columns):
    """A float per row: the completion length (so the order of results is checkable)."""
    return [float(len(c)) for c in completions]


def columns_reward(prompts, completions, harmful_label, level, truncated, source=None, **_):
    """A dict per row built from the row columns the hook receives."""
    sources = source or [None] * len(prompts)
    return [{"general_reward": 1 if h else -1, "total": 10.0 * (s == "keep"), "level": lv or 5, "refused": bool(t)}
            for h, lv, t, s in zip(harmful_label, level, truncated, sources)]


def mixed_reward(prompts, completions, **_):
    """Valid values, None (does not apply) and invalid values mixed."""
    values = [0.5, None, math.nan, "high", {"risk_reward": 3}, {"case": "Adequate", "risk_reward": 1}, True]
    return values[:len(prompts)]


def wrong_length(prompts, completions, **_):
    return [1.0]


def broken(prompts, completions, **_):
    raise ValueError("hook exploded")


def slow_reward(prompts, completions, marker_dir=None, delay=None, **_):
    """Writes a marker file (the pid of the process that runs it), sleeps, then returns lengths."""
    if marker_dir and marker_dir[0]:
        Path(marker_dir[0], f"{os.getpid()}-{uuid.uuid4().hex[:8]}").write_text("")
    time.sleep(delay[0] if delay and delay[0] else 0)
    return [float(len(c)) for c in completions]


def harmful_only(prompts, completions, harmful_label, **_):
    """2.0 on harmful rows; None (does not apply) on benign ones."""
    return [2.0 if h else None for h in harmful_label]


def nan_on_odd(prompts, completions, completion_ids, **_):
    """NaN (an invalid value) for an odd number of token ids, else 1.0."""
    return [math.nan if len(ids) % 2 else 1.0 for ids in completion_ids]


def rapo_on_benign(prompts, completions, harmful_label, **_):
    """3.0 on harmful rows; ``{}`` (the breakdown's risk + general: the RAPO reward) on benign ones."""
    return [3.0 if h else {} for h in harmful_label]


def never_applies(prompts, completions, **_):
    return [None] * len(completions)


def seen_kwargs(prompts, completions, completion_ids, trainer_state, **columns):
    """Number of token ids (-1 without them); records what it received in ``SEEN``."""
    SEEN.append({"prompts": prompts, "completions": completions, "completion_ids": completion_ids,
                 "trainer_state": trainer_state, **columns})
    return [float(len(ids)) if ids is not None else -1.0 for ids in completion_ids]


SEEN: list[dict] = []
_MEETINGS: dict[int, asyncio.Event] = {}
LOOPS: list[int] = []


def _meeting() -> asyncio.Event:
    return _MEETINGS.setdefault(id(asyncio.get_running_loop()), asyncio.Event())


async def async_waits(prompts, completions, **_):
    """Returns only once ``async_sets`` has run: both must be running at once."""
    LOOPS.append(id(asyncio.get_running_loop()))
    await asyncio.wait_for(_meeting().wait(), 10)
    return [1.0 if i % 2 else None for i in range(len(completions))]


async def async_sets(prompts, completions, **_):
    _meeting().set()
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


async def async_broken(prompts, completions, **_):
    await asyncio.sleep(0)
    raise KeyError("no such grader")
