"""Run a command and report the peak memory of its whole process tree (Ray workers included).

Usage: python bench/memwatch.py -- COMMAND...   Prints peak summed PSS and RSS (GiB) at the end.
PSS splits shared pages between processes, so its sum is the honest total; RSS double-counts them.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil


def tree_memory(root: psutil.Process) -> tuple[int, int, list[tuple[int, str]]]:
    """(summed PSS, summed RSS, [(pss, process title)] largest first) of ``root`` and its descendants."""
    pss = rss = 0
    procs = []
    for p in [root, *root.children(recursive=True)]:
        try:
            m = p.memory_full_info()
            pss += m.pss
            rss += m.rss
            procs.append((m.pss, " ".join(p.cmdline())[:60]))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pss, rss, sorted(procs, reverse=True)


def run(cmd: list[str], interval: float = 1.0) -> tuple[int, float, float]:
    """Run ``cmd``; returns (exit code, peak summed PSS GiB, peak summed RSS GiB)."""
    proc = subprocess.Popen(cmd)
    root = psutil.Process(proc.pid)
    peak: list = [0, 0, []]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss, procs = tree_memory(root)
            if pss > peak[0]:
                peak[0], peak[2] = pss, procs[:6]
            peak[1] = max(peak[1], rss)
            time.sleep(interval)

    t0 = time.time()
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    rc = proc.wait()
    done.set()
    th.join()
    print(f"memwatch: exit={rc} wall={time.time() - t0:.1f}s peak_pss={peak[0] / 2**30:.2f}GiB "
          f"peak_rss_sum={peak[1] / 2**30:.2f}GiB", flush=True)
    for pss, title in peak[2]:
        print(f"memwatch:   {pss / 2**30:5.2f} GiB  {title}", flush=True)
    return rc, peak[0] / 2**30, peak[1] / 2**30


if __name__ == "__main__":
    args = sys.argv[1:]
    raise SystemExit(run(args[1:] if args[:1] == ["--"] else args)[0])
