"""What each speed knob buys: rapo_ray's online loop on the benchmark's work (``bench/vs_reference.py``: same
model, prompts, completion length and sampling), once with the quickstart settings and once per knob turned
the other way, each run a fresh subprocess. Prints samples/s (steady and end-to-end), the phase times, the
weight-sync share of a step and peak memory per variant, and the change against the baseline.

    python bench/knobs.py                                  # SmolLM2-135M, 32 samples per run, every knob
    python bench/knobs.py --only bf16 share_prompts        # some knobs
    python bench/knobs.py --model tiny-test --samples 16   # a quick smoke run
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rapo_ray.hardware import machine_line, machine_summary  # noqa: E402
from vs_reference import GENERATIONS, BenchSpec, TrialResult, _gib, run_trial, write_prompts  # noqa: E402

# name -> (what the variant does, overrides applied on top of the quickstart config)
KNOBS: dict[str, tuple[str, list[str]]] = {
    "baseline": ("quickstart settings", []),
    "bf16": ("fp32 update instead of bf16 autocast", ["learner.precision=fp32"]),
    "share_prompts": ("each sample packs its own prompt copy", ["learner.share_prompts=false"]),
    "packing": ("one sequence per micro-batch (no packing, no prompt sharing)", ["learner.packing=false"]),
    "logprob_chunk": ("full float32 logits instead of chunks", ["learner.logprob_chunk=1000000"]),
    "zero_stage": ("ZeRO-2 instead of ZeRO-0", ["learner.zero_stage=2"]),
    "grad_ckpt": ("gradient checkpointing off", ["learner.gradient_checkpointing=false"]),
    "compile": ("vLLM with torch.compile (enforce_eager off)", ["rollout.enforce_eager=false"]),
    "rollout_threads": ("rollout on Ray's 1 thread instead of the node's 2", ["resources.rollout_threads=null"]),
    "overlap": ("one-step-off overlap (max_staleness 1)", ["algo.max_staleness=1"]),
    "overlap_1thread": ("one-step-off overlap, rollout on 1 thread",
                        ["algo.max_staleness=1", "resources.rollout_threads=null"]),
    "prompts_per_step": ("8 prompts per step instead of 4 (one engine call of 32)", []),  # set in main
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--samples", type=int, default=32, help="completions per run; a multiple of 32 (default 32)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", nargs="+", choices=[k for k in KNOBS if k != "baseline"],
                   help="knobs to run (the baseline always runs first)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", dest="json_out", help="also write every run to this JSON file")
    args = p.parse_args(argv)
    if args.samples <= 0 or args.samples % (2 * 4 * GENERATIONS):
        p.error("--samples must be a positive multiple of 32 (8 prompts x 4 generations)")
    names = ["baseline", *(args.only or [k for k in KNOBS if k != "baseline"])]
    rows: list[tuple[str, TrialResult]] = []
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="rapo-knobs-") as tmp:
        work = Path(tmp)
        spec = BenchSpec(model=args.model, samples=args.samples, max_tokens=args.max_tokens, temperature=1.0,
                         top_p=1.0, prompts_per_step=4, seed=args.seed, prompts_file=str(work / "prompts.jsonl"),
                         work_dir=str(work), ref_gradient_checkpointing=False)
        write_prompts(spec)
        for i, name in enumerate(names):
            overrides = KNOBS[name][1]
            variant = BenchSpec(**{**asdict(spec), "rapo_set": overrides,
                                   "prompts_per_step": 8 if name == "prompts_per_step" else 4})
            try:
                r = run_trial("rapo_ray", variant, i, args.timeout)
            except SystemExit as e:  # one variant failing (e.g. a knob this platform lacks) leaves the others
                if name == "baseline":
                    raise
                failed[name] = str(e).splitlines()[0]
                print(f"{name}: FAILED ({failed[name]}); the run's log is kept in the lines above", flush=True)
                print(str(e), flush=True)
                continue
            print(f"{name}: steady {r.steady_s:.1f} s ({r.sps_steady:.3f} samples/s), update_actor "
                  f"{r.phases.get('update_actor', 0):.1f} s, gen {r.phases.get('gen', 0):.1f} s", flush=True)
            rows.append((name, r))
    base = rows[0][1]
    head = ["variant", "what changes", "samples/s steady", "vs baseline", "samples/s end-to-end", "gen s",
            "update_actor s", "update_weights s", "sync share", "peak PSS GiB (sum)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in rows:
        lines.append("| " + " | ".join([
            name, KNOBS[name][0], f"{r.sps_steady:.3f}", f"{r.sps_steady / base.sps_steady:.2f}x",
            f"{r.sps_e2e:.3f}", f"{r.phases.get('gen', 0):.1f}", f"{r.phases.get('update_actor', 0):.1f}",
            f"{r.phases.get('update_weights', 0):.1f}", f"{100 * r.extra['sync_share']:.1f}%",
            _gib(r.peak_pss_bytes)]) + " |")
    for name, why in failed.items():
        lines.append(f"| {name} | {KNOBS[name][0]} | failed: {why} |" + " - |" * (len(head) - 3))
    machine = machine_summary()
    print(f"\n{machine_line(machine)}\n{args.samples} samples per run, model {args.model}, max_tokens "
          f"{args.max_tokens}; one run per variant; phases summed over the run's steps\n")
    print("\n".join(lines))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"machine": machine,
                                                   "variants": [{"variant": n, **asdict(r)} for n, r in rows]},
                                                  indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
