"""Where a training step's time goes: the quickstart setup at two batch sizes.

Runs `rapo-ray train` (job_configs/quickstart.yaml unless --config) in a fresh process per batch size, then
prints per-phase seconds (steady state: the first step, which includes warm-up, is dropped), rollout
tokens/s, samples/s (completions per wall-clock second of a step, update included), weight-sync time and
its share of a step, and the peak memory of the whole process tree (Ray workers included).

    .venv/bin/python bench/step_breakdown.py [--config CFG] [--batches 2 4] [--steps 4] [--set k=v ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memwatch import run  # noqa: E402

from rapo_ray.hardware import machine_line, machine_summary  # noqa: E402

PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "update_weights")


def measure(config: str | None, prompts: int, steps: int, extra: list[str]) -> dict:
    out = Path(tempfile.mkdtemp(prefix="rapo_bench_"))
    cmd = [sys.executable, "-m", "rapo_ray", "train", *([config] if config else []),
           "--set", f"rollout.prompts_per_step={prompts}", "--set", f"train.total_steps={steps}",
           "--set", "checkpoint.every=0", "--set", "checkpoint.save_final=false", "--set", "sync.probe_every=0",
           "--set", f"output_dir={out}", *[a for kv in extra for a in ("--set", kv)]]
    rc, pss, rss = run(cmd)
    if rc != 0:
        raise SystemExit(f"training failed (exit {rc}): {' '.join(cmd)}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][1:]  # drop warm-up
    med = lambda k: statistics.median(r.get(k) or 0.0 for r in rows)  # noqa: E731
    samples, step_s = med("samples"), med("timing/step")
    return {"prompts": prompts, "samples_per_step": samples, "step_s": step_s,
            "phases": {p: med(f"timing/{p}") for p in PHASES},
            "rollout_tok_s": med("rollout/tokens_per_s"), "samples_per_s": samples / step_s,
            "sync_s": med("sync/seconds"), "sync_share": med("sync/seconds") / step_s,
            "peak_pss_gib": pss, "peak_rss_sum_gib": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config")
    ap.add_argument("--batches", type=int, nargs="+", default=[2, 4], help="prompts per step to compare")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--set", dest="extra", action="append", default=[])
    ap.add_argument("--json")
    args = ap.parse_args()
    results = [measure(args.config, b, args.steps, args.extra) for b in args.batches]
    machine = machine_summary()
    print("\n" + machine_line(machine))
    print("\n| prompts/step | samples/step | step s | " + " | ".join(PHASES) +
          " | rollout tok/s | samples/s | sync s (share) | peak PSS GiB |")
    print("|" + "---|" * (len(PHASES) + 7))
    for r in results:
        print(f"| {r['prompts']} | {r['samples_per_step']} | {r['step_s']:.1f} | "
              + " | ".join(f"{r['phases'][p]:.2f}" for p in PHASES)
              + f" | {r['rollout_tok_s']:.0f} | {r['samples_per_s']:.2f} | {r['sync_s']:.2f} "
              f"({100 * r['sync_share']:.1f}%) | {r['peak_pss_gib']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
