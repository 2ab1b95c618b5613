"""Run untrusted Python (model-written HumanEval solutions) in a separate, limited process.

The program runs in a fresh ``python -I -S`` (isolated: no user site, no PYTHON* variables, no site
packages) with an empty environment, in its own temporary folder and process session, with no stdin, under
``sandbox_child.py``: no network (own network namespace where the kernel allows; sockets disabled always),
limits on address space, CPU time, file size and process count, process creation and file deletion
disabled. A wall-clock timeout kills the whole session. This is containment for honest-but-buggy code (loops,
memory blow-ups, stray file writes), not a security boundary against a determined attacker: use a container
or VM runner for that.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHILD = Path(__file__).with_name("sandbox_child.py")
OUTPUT_CHARS = 2000  # stdout/stderr kept per run


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: passed = exit status 0 within the time limit."""

    passed: bool
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    stderr: str


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, file_mb: int = 16) -> ExecResult:
    """Execute ``source`` in the sandbox; an exception, a failed assert or a non-zero exit is a failure."""
    # the CPU-time limit is a backstop one second past the wall clock's: a one-thread program's CPU time never
    # passes its wall time, so the wall clock ends it first and it reads as a timeout (at equal limits the kernel's
    # SIGKILL won the race once on a loaded machine and the loop read as a failure)
    limits = {"memory_mb": memory_mb, "cpu_s": max(1, math.ceil(timeout_s)) + 1, "file_mb": file_mb}
    with tempfile.TemporaryDirectory(prefix="rapo-sandbox-") as tmp:
        prog = Path(tmp) / "program.py"
        prog.write_text(source, encoding="utf-8")
        env = {"PATH": "/usr/bin:/bin", "HOME": tmp, "TMPDIR": tmp, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        proc = subprocess.Popen([sys.executable, "-I", "-S", str(CHILD), json.dumps(limits), str(prog)], cwd=tmp,
                                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_session(proc)
            proc.communicate()
            return ExecResult(False, "timeout", None, f"timed out after {timeout_s:g} s")
    text = err.decode("utf-8", "replace")[-OUTPUT_CHARS:]
    ok = proc.returncode == 0
    return ExecResult(ok, "passed" if ok else "failed", proc.returncode, text)


def _kill_session(proc: subprocess.Popen) -> None:
    """Kill the program's session (it is still running and not yet reaped, so its group id is its own)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
