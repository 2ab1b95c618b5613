"""The skeleton of ``rapo-ray train``, ``sft`` and ``dpo``: their loops call role methods; a ``Run`` does the rest.

A ``Run`` finds the checkpoint to resume from (``CheckpointManager``: the newest complete local one, else the newest
complete upload under ``checkpoint.upload_uri``), writes ``<run_dir>/config.yaml``, logs metrics (``MetricsLogger``)
under a progress bar, decides every periodic action with ``due``, saves checkpoints every ``checkpoint.every``
steps (mirrored with the logs when ``upload_uri`` is set; the logs again at the end), and runs the registered
cleanups on the way out. An actor failure during the loop (``RayError``, ``WeightSyncError``, ``LearnerError``)
ends as a ``RunStopped``, Ctrl-C or SIGTERM as a ``RunInterrupted``: one line naming the step, the last complete
checkpoint and the command that resumes (an actor failure's traceback goes to ``<run_dir>/error.log``).
"""
from __future__ import annotations

import signal
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from ray.exceptions import RayError
from tqdm import tqdm

from rapo_ray import atomic
from rapo_ray.checkpoint import CheckpointManager, verify
from rapo_ray.config import JobConfig
from rapo_ray.learner import LearnerError
from rapo_ray.metrics import MetricsLogger
from rapo_ray.trackers import open_trackers
from rapo_ray.types import Sample
from rapo_ray.weight_sync import WeightSyncError

ACTOR_ERRORS = (RayError, WeightSyncError, LearnerError)


def due(step: int, every: int, last: int | None = None) -> bool:
    """Whether a periodic action runs after step ``step`` (1-based): every ``every`` steps (0: never), and at
    ``last`` when given."""
    return (bool(every) and step % every == 0) or step == last


class RunStopped(RuntimeError):
    """An actor failed during the loop; the message says where the run can resume from."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended the run; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM while a run is on."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def _one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = " ... ".join(dict.fromkeys([lines[0], lines[-1]])) if lines else ""
    return f"{type(e).__name__}: {text[:500]}"


class Run:
    """One training run under ``run_dir``: ``run.begin()``, set up the roles, then
    ``with run.loop(cleanups...): for step in run.steps(): ...``.

    ``command`` is the ``rapo-ray`` command that resumes it (``train``, ``sft``, ``dpo``), ``total`` the step count,
    ``upload_name`` the folder under ``checkpoint.upload_uri`` (default ``cfg.name``), ``save_final`` whether the
    last step always saves, ``desc`` the progress bar's label.
    """

    def __init__(self, cfg: JobConfig, run_dir: str | Path, command: str, total: int, resume: bool = False, *,
                 upload_name: str | None = None, save_final: bool = True, desc: str | None = None):
        self.cfg, self.run_dir, self.command, self.total = cfg, Path(run_dir), command, total
        self.save_final, self.desc = save_final, desc or command
        c = cfg.checkpoint
        self.ckpts = CheckpointManager(self.run_dir, c.keep_last, c.upload_uri, upload_name or cfg.name,
                                       c.on_upload_error)
        self.latest = self.ckpts.latest() if resume else None
        if self.latest:
            verify(self.latest)  # before anything of it is read or unpickled
        self.state: dict[str, Any] = CheckpointManager.load_state(self.latest) if self.latest else {"step": 0}
        self.start = self.step = self.state["step"]  # step: the step in progress (1-based), or the resumed one
        self.logger: MetricsLogger | None = None
        self._bar: tqdm | None = None
        self._looping = False

    @property
    def finished(self) -> bool:
        """The resumed checkpoint already reached ``total``."""
        return self.start >= self.total

    def begin(self) -> Path:
        """Create the run folder and write the resolved config into it; returns the folder."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.run_dir / "config.yaml", self.cfg.to_yaml())
        return self.run_dir

    @contextmanager
    def loop(self, *cleanups: Callable[[], Any]) -> Iterator[Run]:
        """The span of the loop: opens the metrics log and turns SIGTERM into an interrupt; on the way out closes
        the log, runs ``cleanups`` (in order) and restores SIGTERM, then uploads the logs (success) or translates
        the failure (see the module's docstring)."""
        m = self.cfg.metrics
        self.logger = MetricsLogger(self.run_dir, "tensorboard" in m.trackers, self.start,
                                    open_trackers(self.cfg, self.run_dir, self.command), m.table_every, m.table_rows)
        main = threading.current_thread() is threading.main_thread()
        old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if main else None
        try:
            try:
                yield self
            finally:
                try:
                    self.logger.close()
                    for fn in cleanups:
                        fn()
                finally:
                    if main:  # None: a handler not set from Python, which cannot be put back
                        signal.signal(signal.SIGTERM, signal.SIG_DFL if old_sigterm is None else old_sigterm)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as e:
            term = isinstance(e, _Terminated)
            raise RunInterrupted(self._stopped("interrupted by " + ("SIGTERM" if term else "Ctrl-C")),
                                 128 + (signal.SIGTERM if term else signal.SIGINT)) from e
        except ACTOR_ERRORS as e:
            if not self._looping:
                raise
            log = self.run_dir / "error.log"
            log.write_text("".join(traceback.format_exception(e)))
            raise RunStopped(f"{self._stopped(_one_line(e))} (traceback: {log})") from e
        self.ckpts.upload_logs()

    def steps(self) -> Iterator[int]:
        """The remaining steps (0-based), under a progress bar; ``self.step`` is the 1-based one in progress."""
        self._bar = tqdm(range(self.start, self.total), desc=self.desc, initial=self.start, total=self.total,
                         dynamic_ncols=True)
        for step in self._bar:
            self.step, self._looping = step + 1, True
            yield step

    def restore(self, learners: Any) -> None:
        """Load the resumed checkpoint into the learner group, if there is one."""
        if self.latest:
            learners.load_checkpoint(str(self.latest))

    def due(self, every: int, at: int | None = None) -> bool:
        """``due`` for the step in progress (or for ``at``, e.g. a policy version)."""
        return due(self.step if at is None else at, every)

    def log(self, metrics: dict[str, Any], rollouts: list[Sample] | None = None, **bar: Any) -> None:
        """Log the step's metrics (and rollouts), and show ``bar`` on the progress bar."""
        if self.ckpts.remote:
            metrics = {**metrics, "checkpoint/upload_failures": self.ckpts.upload_failures}
        self.logger.log(self.step, metrics)
        if rollouts is not None:
            self.logger.log_rollouts(self.step, rollouts)
        if bar and self._bar is not None:
            self._bar.set_postfix(**bar)

    def maybe_save(self, learners: Any, **state: Any) -> Path | None:
        """Checkpoint the learners (with ``state`` and the step) when ``checkpoint.every`` or the last step says so."""
        if not due(self.step, self.cfg.checkpoint.every, self.total if self.save_final else None):
            return None
        return self.ckpts.save(self.step, learners, {"step": self.step, **state})

    def final_checkpoint(self) -> Path:
        """The complete checkpoint of step ``total``."""
        final = self.ckpts.latest()
        if final is None or CheckpointManager.load_state(final)["step"] != self.total:
            raise RunStopped(f"{self.command}: no complete final checkpoint under {self.ckpts.root}")
        return final

    def _stopped(self, why: str) -> str:
        done = self.ckpts.complete()
        where = f"at step {self.step}" if self._looping else f"before step {self.start + 1}"
        return (f"{self.command} stopped {where}: {why}; last complete checkpoint: {done[-1] if done else 'none'}; "
                f"continue from it with `rapo-ray {self.command} CONFIG --resume`")

