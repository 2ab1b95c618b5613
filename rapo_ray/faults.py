"""Deterministic fault points for the fault-injection tests (issue 19; docs/reliability.md).

``RAPO_RAY_FAULT="name@n[:SIG][,...]"`` makes the n-th pass of the named point in a process send that process
SIGKILL (the default: a crash or the OOM killer, no handler, no cleanup), or SIGTERM (``:TERM``, what
``ray job stop`` sends) or SIGINT (``:INT``, Ctrl-C). Unset (always, outside tests) a point costs one dictionary
lookup. The driver forwards the variable to the actors of its job (``runtime.init_ray``).

Points: ``update`` (driver, the learners' update dispatched and not yet finished), ``checkpoint_write`` (driver,
the learners wrote a checkpoint into its temporary folder, not yet renamed or marked complete), ``learner<rank>_step``
(learner actor of that rank, in its update).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "RAPO_RAY_FAULT"
_SIGNALS = {"KILL": signal.SIGKILL, "TERM": signal.SIGTERM, "INT": signal.SIGINT}
_hits: Counter[str] = Counter()


def _plan(spec: str) -> dict[str, tuple[int, signal.Signals]]:
    plan = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, rest = item.partition("@")
        n, _, sig = rest.partition(":")
        if not name or not n.isdigit() or int(n) < 1 or (sig or "KILL") not in _SIGNALS:
            raise ValueError(f"{ENV}={spec!r}: each item is name@n[:KILL|TERM|INT] with n >= 1, e.g. "
                             f"checkpoint_write@3")
        plan[name] = (int(n), _SIGNALS[sig or "KILL"])
    return plan


def point(name: str) -> None:
    """Signal this process on the pass of ``name`` that ``RAPO_RAY_FAULT`` names; otherwise do nothing."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    _hits[name] += 1
    n, sig = _plan(spec).get(name, (0, signal.SIGKILL))
    if n != _hits[name]:
        return
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None):
        # A process started in the background of a non-interactive shell inherits SIGINT ignored (POSIX), and
        # Python then installs no Ctrl-C handler: restore the one a terminal's Ctrl-C meets.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    os.kill(os.getpid(), sig)


def forwarded_env() -> dict[str, str]:
    """The fault plan, for the job's runtime_env (empty when unset)."""
    return {ENV: os.environ[ENV]} if os.environ.get(ENV) else {}
