"""Reward hooks: user reward functions with TRL's reward-function contract, combined with the RAPO reward.

Each ``judge.reward_hooks`` entry names ``module:function`` (or ``/path/to/file.py:function``). Once per batch it
is called as ``GRPOTrainer`` calls a reward function, with keyword arguments only: ``prompts`` and ``completions``
(TRL's two formats, per row: for a chat row, one with ``messages``, the prompt is its message list, system prompt
first, and the completion ``[{"role": "assistant", "content": text}]``; strings otherwise), ``completion_ids`` (each
completion's sampled token ids; None for a row without them, as in ``rapo-ray judge`` input), ``trainer_state`` (a
real ``transformers.TrainerState`` with ``global_step`` (optimizer steps done before the batch), ``max_steps`` and
``epoch`` (passes over the training prompts) in online RAPO; None where no training run is in progress: evaluation,
pairs, curation, ``rapo-ray judge``) and every other column of the rows as a list (``harmful_label``, ``level``,
``truncated``, ``id``, ``source`` and the dataset's own columns). An ``async def`` hook is awaited; the async hooks
of a batch run concurrently on one event loop per judge process.

It returns one value per sample. A number is the hook's component. None: the hook does not apply to the sample
(as in TRL; before reward hooks, None meant "use the rule judge's breakdown"). A dict (rapo_ray's extension)
overwrites fields of the sample's breakdown (``risk_reward``, ``general_reward``, ``level``, ``case``, ``refused``;
later hooks win) and its component is its ``total``, else ``risk_reward + general_reward - repeat_price`` after the
overwrite.
Anything else (NaN, text, a bad dict, a bool) is counted as ``hook_invalid/<name>`` and that hook does not score
the sample. A hook that raises, or returns the wrong number of values, is a :class:`JudgeError` naming it.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import math
import numbers
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rapo_ray.config import JobConfig, JudgeSettings
from rapo_ray.judge.reward import CASES, FB_HOOK, JudgeError, JudgeInput, RewardBreakdown
from rapo_ray.models import conversation

_INT_FIELDS = {"risk_reward": (-1, 0, 1), "general_reward": (-1, 1)}


def load_hook(spec: str) -> Callable[..., Any]:
    """Import the function named by ``module:function`` or ``path/file.py:function`` (a form the config checked)."""
    module_name, _, func_name = spec.rpartition(":")
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
        raise JudgeError(f"reward hook {spec!r}: cannot import {module_name!r}: {type(e).__name__}: {e}") from e
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise JudgeError(f"reward hook {spec!r}: {module_name!r} has no function {func_name!r}")
    return fn


@dataclass
class _Hook:
    key: str  # metric name
    spec: str
    weight: float
    fn: Callable[..., Any]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn) or inspect.iscoroutinefunction(getattr(self.fn, "__call__", None))

    def error(self, e: Exception) -> JudgeError:
        return JudgeError(f"reward hook {self.spec!r} raised {type(e).__name__}: {e}")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        return None
    return float(v)


def _dict_value(b: RewardBreakdown, value: dict[str, Any]) -> tuple[dict[str, Any], float] | None:
    """The breakdown fields a dict value sets and its component, or None when any part is unusable."""
    fields: dict[str, Any] = {}
    for key, allowed in _INT_FIELDS.items():
        if key in value:
            if value[key] not in allowed or isinstance(value[key], bool):
                return None
            fields[key] = int(value[key])
    if "level" in value:
        if isinstance(value["level"], bool) or not isinstance(value["level"], int) or value["level"] < 1:
            return None
        fields.update(level=value["level"], level_source="judge")
    if "case" in value:
        if value["case"] not in CASES:
            return None
        fields["case"] = value["case"]
    if "refused" in value:
        if not isinstance(value["refused"], bool):
            return None
        fields["refused"] = value["refused"]
    if "total" in value:
        total = _number(value["total"])
    else:
        total = float(fields.get("risk_reward", b.risk_reward) + fields.get("general_reward", b.general_reward)
                      - b.repeat_price)
    return None if total is None else (fields, total)


def trl_format(item: JudgeInput) -> tuple[Any, Any]:
    """(prompt, completion) as TRL hands them to a reward function: conversational for a row with ``messages``
    (its system prompt first, the completion as one assistant message), standard (strings) otherwise."""
    if not item.extra.get("messages"):
        return item.prompt, item.completion
    return conversation({"prompt": item.prompt, **item.extra}), [{"role": "assistant", "content": item.completion}]


def trainer_state(state: dict[str, Any] | None) -> Any:
    """The ``transformers.TrainerState`` a TRL reward function reads (None without a training run)."""
    if state is None:
        return None
    from transformers import TrainerState

    return TrainerState(**state)


class RewardHooks:
    """The ``judge.reward_hooks`` of one judge process, applied to the RAPO judge's breakdowns."""

    def __init__(self, cfg: JobConfig | JudgeSettings):
        self.rapo_weight = cfg.judge.rapo_weight
        self.hooks = [_Hook(h.key, h.hook, h.weight, load_hook(h.hook)) for h in cfg.judge.reward_hooks]
        self._loop: asyncio.AbstractEventLoop | None = None

    def apply(self, items: list[JudgeInput], base: list[RewardBreakdown],
              state: dict[str, Any] | None = None) -> list[RewardBreakdown]:
        """``base`` (one breakdown per item) with each hook's component, the weighted total and ``scored``;
        ``state`` (global_step, max_steps, epoch) becomes the hooks' ``trainer_state``."""
        values = self._call(items, state)
        return [self._combine(b, [v[i] for v in values]) for i, b in enumerate(base)]

    def _call(self, items: list[JudgeInput], state: dict[str, Any] | None) -> list[list[Any]]:
        columns: dict[str, list[Any]] = {"harmful_label": [i.harmful_label for i in items],
                                         "level": [i.data_level for i in items],
                                         "truncated": [i.truncated for i in items]}
        for key in sorted({k for i in items for k in i.extra}):
            columns[key] = [i.extra.get(key) for i in items]
        prompts, completions = zip(*map(trl_format, items)) if items else ((), ())
        kwargs = {**columns, "prompts": list(prompts), "completions": list(completions),
                  "completion_ids": [i.completion_ids for i in items], "trainer_state": trainer_state(state)}
        outs: list[Any] = [None] * len(self.hooks)
        for k, h in enumerate(self.hooks):
            if not h.is_async:
                try:
                    outs[k] = h.fn(**kwargs)
                except Exception as e:  # noqa: BLE001 - the user's code failed: name it
                    raise h.error(e) from e
        waiting = [k for k, h in enumerate(self.hooks) if h.is_async]
        if waiting:
            for k, out in zip(waiting, self._run(_gather([(self.hooks[k], kwargs) for k in waiting]))):
                outs[k] = out
        for k, h in enumerate(self.hooks):
            out = outs[k] = outs[k].tolist() if hasattr(outs[k], "tolist") else outs[k]  # numpy, torch: as TRL
            if not isinstance(out, (list, tuple)) or len(out) != len(items):
                what = f"{len(out)} values" if isinstance(out, (list, tuple)) else type(out).__name__
                raise JudgeError(f"reward hook {h.spec!r} must return a list of {len(items)} values, got {what}")
        return outs

    def _run(self, coro: Coroutine[Any, Any, list[Any]]) -> list[Any]:
        """Run ``coro`` on this process's hook event loop, a daemon thread of its own (so a caller that already
        runs a loop can score too, and clients a hook keeps across calls stay on one loop)."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, name="reward-hooks", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _combine(self, b: RewardBreakdown, values: list[Any]) -> RewardBreakdown:
        b.components = {"rapo": b.total}
        parts = [self.rapo_weight * b.total] if self.rapo_weight else []
        for h, v in zip(self.hooks, values):
            value = None if v is None else self._value(b, h, v)
            b.components[h.key] = value
            if value is not None and h.weight:
                parts.append(h.weight * value)
        b.scored, b.total = bool(parts), float(sum(parts))
        return b

    @staticmethod
    def _value(b: RewardBreakdown, h: _Hook, v: Any) -> float | None:
        """The hook's component for ``b`` (a dict's fields applied to ``b``); None, counted, when ``v`` is unusable."""
        num = _number(v)
        if num is None and isinstance(v, dict) and (parsed := _dict_value(b, v)) is not None:
            fields, num = parsed
            for key, field_value in fields.items():
                setattr(b, key, field_value)
        if num is None:
            b.fallbacks.append(f"{FB_HOOK}/{h.key}")
            b.raw = "\n".join(filter(None, [b.raw, f"{h.key}: {repr(v)[:500]}"]))
        return num


async def _gather(calls: list[tuple[_Hook, dict[str, Any]]]) -> list[Any]:
    async def one(h: _Hook, kwargs: dict[str, Any]) -> Any:
        try:
            return await h.fn(**kwargs)
        except Exception as e:  # noqa: BLE001 - the user's code failed: name it
            raise h.error(e) from e

    return await asyncio.gather(*(one(h, kw) for h, kw in calls))
