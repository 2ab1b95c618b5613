"""Fault points (``rapo_ray.faults``): the plan's syntax, and that the n-th pass kills the process with SIGKILL."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from rapo_ray import faults

SCRIPT = ("from rapo_ray import faults\n"
          "for i in range(1, 4):\n"
          "    print('pass', i, flush=True)\n"
          "    faults.point('here')\n"
          "print('survived', flush=True)\n")


def _run(plan: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    if plan is not None:
        env[faults.ENV] = plan
    return subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)


def test_the_nth_pass_kills_with_sigkill_and_other_points_do_nothing():
    out = _run("here@2")
    assert out.returncode == -signal.SIGKILL and out.stdout.split("\n")[:2] == ["pass 1", "pass 2"]
    assert "survived" not in out.stdout
    assert "survived" in _run("elsewhere@1,here@9").stdout
    assert "survived" in _run(None).stdout
    term = _run("here@1:TERM")
    assert term.returncode == -signal.SIGTERM and term.stdout.split("\n")[:1] == ["pass 1"]
    interrupted = _run("here@3:INT")  # Python exits with -SIGINT after an unhandled KeyboardInterrupt
    assert interrupted.returncode == -signal.SIGINT and "KeyboardInterrupt" in interrupted.stderr


@pytest.mark.parametrize("bad", ["here", "here@0", "@2", "here@two", "here@1:HUP"])
def test_a_malformed_plan_is_a_clear_error(bad, monkeypatch):
    monkeypatch.setenv(faults.ENV, bad)
    with pytest.raises(ValueError, match="each item is name@n"):
        faults.point("here")


def test_the_plan_is_forwarded_to_the_jobs_actors(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.forwarded_env() == {}
    monkeypatch.setenv(faults.ENV, "update@3")
    assert faults.forwarded_env() == {faults.ENV: "update@3"}
