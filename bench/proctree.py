"""Process-tree helpers of the benchmarks: peak memory of a process and its descendants, and killing a tree."""
from __future__ import annotations

import threading
import time

import psutil


class TreeMemory(threading.Thread):
    """Polls a process and all its descendants; keeps the peak of the summed RSS (every ``every_s``) and of the
    summed PSS (every ``pss_every_s``: reading smaps costs ~0.2 s of CPU per pass over a Ray tree, which would
    otherwise slow the run it measures). ``cpu_s`` is the sampler's own CPU time, reported beside the results."""

    def __init__(self, pid: int, every_s: float = 0.5, pss_every_s: float = 5.0):
        super().__init__(daemon=True)
        self.root, self.stop = psutil.Process(pid), threading.Event()
        self.every_s, self.pss_every_s = every_s, pss_every_s
        self.peak_rss = self.peak_pss = 0
        self.cpu_s = 0.0

    def run(self) -> None:
        next_pss = 0.0
        while not self.stop.is_set():
            t0 = time.thread_time()
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                return
            with_pss = time.monotonic() >= next_pss
            rss = pss = 0
            for p in procs:
                try:
                    info = p.memory_full_info() if with_pss else p.memory_info()
                except psutil.Error:  # exited between listing and reading
                    continue
                rss, pss = rss + info.rss, pss + (info.pss if with_pss else 0)
            self.peak_rss = max(self.peak_rss, rss)
            if with_pss:
                self.peak_pss, next_pss = max(self.peak_pss, pss), time.monotonic() + self.pss_every_s
            self.cpu_s += time.thread_time() - t0
            self.stop.wait(self.every_s)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants."""
    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
