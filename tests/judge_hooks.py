"""Reward hooks used by the judge tests (named by file path, so judge actors can load them too)."""
from __future__ import annotations

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
    """Valid and invalid values mixed."""
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
