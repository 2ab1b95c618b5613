"""One weight push, bucketed vs per-tensor, on the real roles of a job (job_configs/quickstart.yaml unless --config).

Starts the rollout workers, learners and judge once (``rapo_ray.driver.start_roles``), then for each transport and
bucket size builds a synchronizer over them and times ``--pushes`` pushes each, interleaved round by round after a
warm-up round (driver-side ``SyncStats.seconds``: send, load into vLLM, checksums and verification). "per-tensor" is a bucket size so small
that every parameter travels alone: the old one-send-and-one-checksum-per-tensor path. Prints figures only.

    .venv/bin/python bench/sync_bench.py [--config CFG] [--transports broadcast object_store]
        [--sizes 64 per-tensor] [--pushes 3] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from rapo_ray.config import load_config
from rapo_ray.driver import start_roles
from rapo_ray.hardware import machine_line, machine_summary
from rapo_ray.models import resolve_model
from rapo_ray.runtime import init_ray
from rapo_ray.weight_sync import make_synchronizer

PER_TENSOR_MB = 1e-9  # smaller than any parameter: one bucket each


def lscpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--transports", nargs="+", default=["broadcast"], choices=["broadcast", "object_store"])
    ap.add_argument("--sizes", nargs="+", default=["64", "per-tensor"], help="bucket MiB, or per-tensor")
    ap.add_argument("--pushes", type=int, default=3)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    args = ap.parse_args()

    base = load_config(args.config, ["sync.probe_every=0", *args.extra])
    init_ray()
    model_path = str(resolve_model(base.model.name_or_path))
    t0 = time.perf_counter()
    roles = start_roles(base, model_path, model_path, 0)
    print(f"roles started in {time.perf_counter() - t0:.0f}s", flush=True)
    configs = [(t, size) for t in args.transports for size in args.sizes]
    syncs, stats, version = {}, {}, 0
    times: dict[tuple[str, str], list[float]] = {c: [] for c in configs}
    try:
        for transport, size in configs:
            mb = PER_TENSOR_MB if size == "per-tensor" else float(size)
            cfg = load_config(args.config, [*args.extra, f"sync.transport={transport}", f"sync.bucket_mb={mb}"])
            syncs[transport, size] = make_synchronizer(cfg, roles.learners, roles.rollouts)
        for r in range(args.pushes + 1):  # configs interleaved round by round; round 0 warms up
            for c in configs:
                syncs[c].setup()  # not timed: one group at a time, so every round sets up again
                version += 1
                stats[c] = syncs[c].push(version)
                if r:
                    times[c].append(stats[c].seconds)
            print(f"round {r}: " + ", ".join(f"{t} {s} {stats[t, s].seconds:.2f}s" for t, s in configs), flush=True)
    finally:
        roles.shutdown()

    print("\n" + machine_line(machine_summary()))
    print(f"lscpu model name: {lscpu_model()}; torch cpu capability: {machine_summary()['torch_capability']}")
    print(f"model: {base.model.name_or_path}; learners: {base.learner.num_learners} (ZeRO-{base.learner.zero_stage}); "
          f"rollout workers: {base.rollout.num_workers}; pushes timed: {args.pushes} after one warm-up\n")
    print("| transport | bucket MiB | buckets | tensors | MB | dtype | push s (median) | min s | MB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        med, st = statistics.median(times[c]), stats[c]
        print(f"| {c[0]} | {c[1]} | {st.buckets} | {st.tensors} | {st.bytes / 1e6:.0f} | {syncs[c].plan.dtype} | "
              f"{med:.2f} | {min(times[c]):.2f} | {st.bytes / 1e6 / med:.0f} |")


if __name__ == "__main__":
    main()
