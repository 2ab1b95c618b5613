"""Deterministic fault points for the fault-injection tests (issue 19; docs/reliability.md).

``RAPO_RAY_FAULT="name@n[,name@n...]"`` makes the n-th pass of the named point in a process kill that process
with SIGKILL, as a crash or the OOM killer would: no handler, no cleanup. Unset (always, outside tests) a point
costs one dictionary lookup. The driver forwards the variable to the actors of its job (``runtime.init_ray``).

Points: ``after_generation`` (driver, a step's samples collected), ``update`` (driver, the learners' update
dispatched and not yet finished), ``checkpoint_write`` (driver, the learners wrote a checkpoint into its temporary
folder, not yet renamed or marked complete), ``learner<rank>_step`` (learner actor of that rank, in its update).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RAPO_RAY_FAULT"
_hits: Counter[str] = Counter()


def _plan(spec: str) -> dict[str, int]:
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, n = item.partition("@")
        if not name or not n.isdigit() or int(n) < 1:
            raise ValueError(f"{ENV}={spec!r}: each item is name@n with n >= 1, e.g. checkpoint_write@3")
        plan[name] = int(n)
    return plan


def point(name: str) -> None:
    """Kill this process on the pass of ``name`` that ``RAPO_RAY_FAULT`` names; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _hits[name] += 1
    if _plan(spec).get(name) == _hits[name]:
        os.kill(os.getpid(), signal.SIGKILL)


def forwarded_env() -> dict[str, str]:
    """The fault plan, for the job's runtime_env (empty when unset)."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
