"""Two learner levers of the speed issue, measured on the forward + backward they change. Prints figures only.

The SmolLM2-135M architecture (random weights, fp32) runs forward and backward
over one packed row of ``--tokens`` tokens (lengths vary by +-10% from step to step, as packed micro-batches do),
in a fresh subprocess per variant, variants alternating over ``--repeats`` rounds:

- ``ckpt_all``: gradient checkpointing on every decoder layer (the quickstart's setting);
- ``ckpt_half``: on every other layer (half the recomputed forward, about half the saved activations back);
- ``ckpt_none``: off;
- ``compile``: ``ckpt_all`` with each layer's MLP and RMSNorms ``torch.compile``-d (``dynamic=True``: one graph
  for every length), the parts a packed-attention layer can hand to inductor without a graph break.

For each: compile or first-step seconds, seconds per step (median of ``--steps`` after 2 warm-up steps) and the
process's peak RSS.

    python bench/learner_levers.py [--tokens 1024] [--steps 5] [--repeats 2] [--threads 2] [--variants a,b]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ("ckpt_all", "ckpt_half", "ckpt_none", "compile")


def run_variant(variant: str, tokens: int, steps: int, threads: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from learner_speed import SMOLLM2

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SMOLLM2, attn_implementation="sdpa"))
    model.config.use_cache = False
    model.train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = model.model.layers
    if variant == "ckpt_half":
        for layer in layers[1::2]:
            layer.gradient_checkpointing = False
    elif variant == "ckpt_none":
        model.gradient_checkpointing_disable()
    elif variant == "compile":
        for layer in layers:
            for part in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm):
                part.compile(dynamic=True)
    gen = torch.Generator().manual_seed(1)
    times = []
    for i in range(steps + 2):
        n = int(tokens * (0.9 + 0.2 * torch.rand(1, generator=gen).item()))
        ids = torch.randint(100, SMOLLM2["vocab_size"] - 1, (1, n), generator=gen)
        t0 = time.perf_counter()
        hidden = model.model(input_ids=ids).last_hidden_state
        hidden.float().square().mean().backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return {"variant": variant, "first_s": times[0], "step_s": statistics.median(times[2:]),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.tokens, args.steps, args.threads)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from rapo_ray.hardware import machine_line, machine_summary

    print(machine_line(machine_summary()), flush=True)
    rows: dict[str, list[dict]] = {}
    for _ in range(args.repeats):
        for v in args.variants.split(","):
            out = subprocess.run([sys.executable, __file__, "--child", v, "--tokens", str(args.tokens), "--steps",
                                  str(args.steps), "--threads", str(args.threads)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(r, flush=True)
            rows.setdefault(v, []).append(r)
    base = statistics.median(r["step_s"] for r in rows["ckpt_all"]) if "ckpt_all" in rows else None
    print(f"\n{args.tokens} tokens a packed row, {args.threads} threads, median over {args.repeats} runs")
    print("| variant | first step s | s/step | vs ckpt_all | peak RSS GiB |")
    print("|---|---|---|---|---|")
    for v, rs in rows.items():
        step = statistics.median(r["step_s"] for r in rs)
        ratio = f"{base / step:.2f}x" if base else "-"
        print(f"| {v} | {statistics.median(r['first_s'] for r in rs):.1f} | {step:.2f} | {ratio} | "
              f"{max(r['peak_rss_gib'] for r in rs):.2f} |")


if __name__ == "__main__":
    main()
