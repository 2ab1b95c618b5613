"""The Python hook backend: a user reward function with the TRL reward-function contract,
``f(prompts, completions, **row_columns) -> list[float | dict]``, named as ``module:function`` (or
``/path/to/file.py:function``).

A float is the sample's total reward; a dict may set any of ``risk_reward``, ``general_reward``, ``total``,
``level``, ``case``, ``refused``. Components the hook does not give come from the rule judge, so every
breakdown stays complete; a value that is neither (None, NaN, text, a bad dict) falls back to the rule
judge's breakdown and is counted.
"""
from __future__ import annotations

import importlib
import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rapo_ray.config import JobConfig, JudgeSettings
from rapo_ray.judge.reward import CASES, FB_HOOK, JudgeError, JudgeInput, RewardBreakdown
from rapo_ray.judge.rules import RuleJudge

_INT_FIELDS = {"risk_reward": (-1, 0, 1), "general_reward": (-1, 1)}


def load_hook(spec: str) -> Callable[..., list[Any]]:
    """Import the function named by ``module:function`` or ``path/file.py:function``."""
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise JudgeError(f"judge.hook {spec!r} is not of the form 'module:function'")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name).expanduser().resolve()
            if not path.is_file():
                raise FileNotFoundError(f"no such file: {path}")
            mod_spec = importlib.util.spec_from_file_location(f"rapo_hook_{path.stem}", path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure is one clear config error
        raise JudgeError(f"judge.hook {spec!r}: cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise JudgeError(f"judge.hook {spec!r}: {module_name!r} has no function {func_name!r}")
    return fn


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def _merge(base: RewardBreakdown, value: Any) -> RewardBreakdown | None:
    """``base`` with the hook's value applied, or None when the value is unusable."""
    num = _number(value)
    if num is not None:
        return RewardBreakdown(**{**base.to_dict(), "total": num, "raw": repr(value)})
    if not isinstance(value, dict):
        return None
    out = base.to_dict()
    for key, allowed in _INT_FIELDS.items():
        if key in value:
            if value[key] not in allowed or isinstance(value[key], bool):
                return None
            out[key] = int(value[key])
    if "level" in value:
        if isinstance(value["level"], bool) or not isinstance(value["level"], int) or value["level"] < 1:
            return None
        out["level"], out["level_source"] = value["level"], "judge"
    if "case" in value:
        if value["case"] not in CASES:
            return None
        out["case"] = value["case"]
    if "refused" in value:
        if not isinstance(value["refused"], bool):
            return None
        out["refused"] = value["refused"]
    total = _number(value["total"]) if "total" in value else float(out["risk_reward"] + out["general_reward"])
    if total is None:
        return None
    out.update(total=total, raw=repr(value))
    return RewardBreakdown.from_dict(out)


class HookJudge:
    """Calls the user's function once per batch with the TRL contract."""

    name = "hook"

    def __init__(self, cfg: JobConfig | JudgeSettings):
        self.fn = load_hook(cfg.judge.hook or "")
        self.spec = cfg.judge.hook
        self.rules = RuleJudge(cfg)

    def score_items(self, items: list[JudgeInput]) -> list[RewardBreakdown]:
        base = self.rules.score_items(items)
        columns: dict[str, list[Any]] = {"harmful_label": [i.harmful_label for i in items],
                                         "level": [i.data_level for i in items],
                                         "truncated": [i.truncated for i in items]}
        for key in sorted({k for i in items for k in i.extra}):
            columns[key] = [i.extra.get(key) for i in items]
        try:
            values = self.fn(prompts=[i.prompt for i in items], completions=[i.completion for i in items],
                             **columns)
        except Exception as e:  # noqa: BLE001 - the user's code failed: name it
            raise JudgeError(f"judge hook {self.spec!r} raised {type(e).__name__}: {e}") from e
        if not isinstance(values, (list, tuple)) or len(values) != len(items):
            got = f"{len(values)} values" if isinstance(values, (list, tuple)) else type(values).__name__
            raise JudgeError(f"judge hook {self.spec!r} must return a list of {len(items)} values, got {got}")
        out = []
        for b, v in zip(base, values):
            merged = _merge(b, v)
            if merged is None:
                b.fallbacks.append(FB_HOOK)
                b.raw = repr(v)[:500]
                merged = b
            out.append(merged)
        return out
