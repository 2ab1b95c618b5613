"""Runs one untrusted Python program; started by ``rapo_ray.eval.sandbox`` as a script (``python -I -S``).

Usage: ``python -I -S sandbox_child.py LIMITS_JSON PROGRAM_PATH``. In order: read the program, leave the
network (a new network namespace, entered through a new user namespace when not privileged; where the kernel
refuses, sockets are still disabled below), apply resource limits, disable process creation, file deletion
and sockets, then execute the program as ``__main__``. Standard library only: this file runs under ``-I -S``.
"""
import ctypes
import json
import os
import resource
import sys

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def leave_network() -> bool:
    """Enter a network namespace with no interfaces but loopback (down); False when the kernel refuses."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    for flags in (CLONE_NEWNET, CLONE_NEWUSER | CLONE_NEWNET):
        if libc.unshare(flags) == 0:
            return True
    return False


def apply_limits(limits: dict) -> None:
    mem = int(limits["memory_mb"]) * 1024 * 1024
    cpu = int(limits["cpu_s"])
    for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_FSIZE, int(limits["file_mb"]) * 1024 * 1024),
                       (resource.RLIMIT_NPROC, 0)):  # NPROC: no new processes (not enforced for root)
        try:
            resource.setrlimit(res, (value, value))
        except (ValueError, OSError):
            soft, hard = resource.getrlimit(res)
            if hard != resource.RLIM_INFINITY and value > hard:
                resource.setrlimit(res, (hard, hard))


def _blocked(name: str):
    def fn(*args, **kwargs):
        raise PermissionError(f"{name} is disabled in the evaluation sandbox")
    return fn


def disable_escapes() -> None:
    """Process creation, signals, file deletion and sockets raise PermissionError."""
    import shutil
    import socket
    import subprocess

    for name in ("system", "popen", "fork", "forkpty", "kill", "killpg", "execv", "execve", "execvp", "execvpe",
                 "execl", "execle", "execlp", "execlpe", "spawnv", "spawnve", "spawnl", "spawnle", "posix_spawn",
                 "posix_spawnp", "remove", "unlink", "rmdir", "removedirs", "truncate", "setuid", "chroot"):
        if hasattr(os, name):
            setattr(os, name, _blocked(f"os.{name}"))
    shutil.rmtree = _blocked("shutil.rmtree")
    subprocess.Popen = _blocked("subprocess.Popen")
    socket.socket = _blocked("socket.socket")
    socket.create_connection = _blocked("socket.create_connection")


def main() -> None:
    limits = json.loads(sys.argv[1])
    path = sys.argv[2]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, path, "exec")
    leave_network()
    apply_limits(limits)
    disable_escapes()
    sys.argv = [path]
    exec(code, {"__name__": "__main__", "__file__": path})


if __name__ == "__main__":
    main()
