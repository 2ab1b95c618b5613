"""Fault points (``rapo_ray.faults``): the plan's syntax, that the n-th pass kills the process with SIGKILL, and that
the learner group names the rank that died."""
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


def test_the_learner_group_names_the_rank_that_died_not_the_peer_that_failed_first(ray_cluster, tmp_path):
    """A rank killed mid-collective makes its peers fail too, and their errors can arrive first (a CI flake):
    the group waits a short grace for the others and names the dead rank; with no death, the first failure."""
    import time

    from rapo_ray.learner.group import gather
    from rapo_ray.learner.worker import LearnerError

    class _Rank:  # defined here: Ray pickles it by value (the test module is not importable in a worker)
        """A stand-in learner rank for ``gather``: fails, dies or hangs on cue."""

        def act(self, how: str, flag: str) -> None:
            import pathlib
            import time

            if how == "fail":  # a peer's connection error, reaching the driver first
                pathlib.Path(flag).touch()
                raise ConnectionError("connection closed by peer")
            while not pathlib.Path(flag).exists():
                time.sleep(0.05)
            time.sleep(0.5 if how == "die" else 600)
            os.kill(os.getpid(), signal.SIGKILL)

    ranks = [ray_cluster.remote(max_restarts=0)(_Rank).options(num_cpus=0).remote() for _ in range(2)]
    flag = str(tmp_path / "failed")
    with pytest.raises(LearnerError, match=r"train_step failed on rank 1 \(also rank 0\): The actor died") as died:
        gather([ranks[0].act.remote("fail", flag), ranks[1].act.remote("die", flag)], "train_step", 60)
    assert "connection closed" not in str(died.value)
    hang = ray_cluster.remote(max_restarts=0)(_Rank).options(num_cpus=0).remote()
    t0 = time.monotonic()
    with pytest.raises(LearnerError, match=r"(?s)train_step failed on rank 0: .*connection closed by peer"):
        gather([ranks[0].act.remote("fail", flag + "2"), hang.act.remote("hang", flag + "2")], "train_step", 60,
               grace_s=2)
    assert time.monotonic() - t0 < 30  # the grace is bounded: a hung peer does not hold the error back
    ray_cluster.kill(hang)
