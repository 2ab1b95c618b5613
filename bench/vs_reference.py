"""Side by side on one machine: the reference training path (TRL GRPOTrainer) against rapo_ray's online loop.

Both paths get the same model, the same prompts (real rows from the quickstart recipe, chat template and
thinking prefix applied the same way), the same completion length, sampling settings and group size, and the
same reward (rapo_ray's rule judge called in-process), and both train on the same number of samples:

(a) reference: TRL ``GRPOTrainer`` with transformers ``generate`` (no vLLM), fp32, one prompt x 4 generations
    per optimizer step, the reward function in the training process, generation and update in series;
(b) rapo_ray: ``rapo_ray.driver.train`` on the quickstart config (vLLM rollout actor, DeepSpeed learners, weight
    sync), ``prompts_per_step`` prompts x 4 generations per step.

Each run is a fresh subprocess (clean Ray, per-run peak memory); runs alternate a, b, a, b, ... Two wall
clocks are reported per run, and they are not interchangeable:

- steady: the sum of the training steps' wall time (TRL: ``on_step_begin`` -> ``on_step_end``; rapo_ray: the
  sum of ``timing/step`` in ``metrics.jsonl``). One-time startup (imports, model load, Ray, vLLM engine,
  DeepSpeed init) is excluded for both. The headline ratio uses it.
- end-to-end: from the worker's entry (before its heavy imports) to the end of training, startup included.

Peak memory is sampled (RSS every 0.5 s, PSS every 5 s) over the worker and all its descendants (Ray's daemons
and actors included): RSS summed (double-counts shared pages) and PSS summed (shared pages split between processes).

Run (after ``pip install -e '.[bench]'`` and ``rapo-ray data fetch``)::

    python bench/vs_reference.py                          # defaults: SmolLM2-135M, 3 repeats, 32 samples
    python bench/vs_reference.py --model tiny-test --repeats 1 --samples 16   # a quick smoke run
    python bench/vs_reference.py --lora 16                # LoRA on both paths: TRL + peft vs model.lora
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from proctree import TreeMemory, kill_tree
from rapo_ray.hardware import machine_line, machine_summary

PATHS = ("reference", "rapo_ray")
GENERATIONS = 4  # per prompt (one GRPO group), and the reference's completions per optimizer step


@dataclass
class BenchSpec:
    """What both paths are asked to do; written to JSON and handed to each worker subprocess."""

    model: str
    samples: int
    max_tokens: int
    temperature: float
    top_p: float
    prompts_per_step: int  # rapo_ray only; the reference always takes 1 prompt x GENERATIONS per step
    seed: int
    prompts_file: str  # JSONL rows {id, prompt, harmful_label, level}
    work_dir: str
    ref_gradient_checkpointing: bool
    rapo_set: list[str] = field(default_factory=list)  # rapo_ray config overrides (knob ablation), "key=value"
    lora_rank: int = 0  # > 0: LoRA of this rank (alpha 2 x rank, every Linear but the LM head) on both paths


@dataclass
class TrialResult:
    """One run of one path."""

    path: str
    samples: int
    completion_tokens: int
    steady_s: float
    e2e_s: float
    phases: dict[str, float]  # seconds summed over the run's steps
    extra: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int = 0
    peak_pss_bytes: int = 0

    @property
    def sps_steady(self) -> float:
        return self.samples / self.steady_s

    @property
    def sps_e2e(self) -> float:
        return self.samples / self.e2e_s

    @property
    def tok_s_steady(self) -> float:
        return self.completion_tokens / self.steady_s

    @property
    def gen_tok_s(self) -> float:
        return self.completion_tokens / max(self.phases.get("gen", 0.0), 1e-9)


# ----------------------------------------------------------------------------- shared setup

def base_config(spec: BenchSpec, extra: list[str] = ()) -> Any:
    """The quickstart job with the benchmark's model, sampling settings and group size (then ``extra``
    overrides, "key=value")."""
    from rapo_ray.config import load_config

    return load_config(None, [f"model.name_or_path={spec.model}", f"seed={spec.seed}", "judge.backend=rule",
                              f"rollout.n={GENERATIONS}", f"rollout.prompts_per_step={spec.prompts_per_step}",
                              f"rollout.max_tokens={spec.max_tokens}", f"rollout.temperature={spec.temperature}",
                              f"rollout.top_p={spec.top_p}", *extra])


def write_prompts(spec: BenchSpec) -> list[dict[str, Any]]:
    """Take the first ``samples / GENERATIONS`` training rows of the quickstart recipe (real prompts, fetched
    with ``rapo-ray data fetch``) and write them to ``spec.prompts_file``; both paths read that file."""
    from rapo_ray.data import build_prompt_set
    from rapo_ray.models import load_tokenizer, resolve_model

    cfg = base_config(spec)
    tok = load_tokenizer(resolve_model(spec.model), cfg.model)
    rows = build_prompt_set(cfg.data, cfg.seed, tok).train
    need = spec.samples // GENERATIONS
    if len(rows) < need:
        raise SystemExit(f"the quickstart recipe gave {len(rows)} training prompts; {need} are needed")
    picked = [{"id": str(r["id"]), "prompt": r["prompt"], "harmful_label": int(r["harmful_label"]),
               "level": r.get("level")} for r in rows[:need]]
    Path(spec.prompts_file).write_text("".join(json.dumps(r) + "\n" for r in picked))
    return picked


def read_prompts(spec: BenchSpec) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(spec.prompts_file).read_text().splitlines()]


def check_prompts(spec: BenchSpec, used: set[str]) -> None:
    """Both paths must train on exactly the prompts of the benchmark's file."""
    want = {r["prompt"] for r in read_prompts(spec)}
    if used != want:
        raise RuntimeError(f"trained on {len(used)} distinct prompts, {len(used - want)} not in "
                           f"{spec.prompts_file}; {len(want - used)} of its {len(want)} prompts unused")


# ----------------------------------------------------------------------------- (a) the reference path

def _timed(obj: Any, name: str, times: dict[str, float], phase: str) -> None:
    """Wrap the bound method ``obj.name`` so its wall time accumulates in ``times[phase]`` (measurement only)."""
    inner = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            times[phase] = times.get(phase, 0.0) + time.perf_counter() - t0

    setattr(obj, name, wrapper)


def reference_trial(spec: BenchSpec) -> dict[str, Any]:
    """TRL GRPOTrainer, transformers generate, fp32 on CPU, reward in-process; one prompt x 4 per step."""
    t_start = time.perf_counter()
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rapo_ray.judge import make_judge
    from rapo_ray.models import format_prompt, load_tokenizer, resolve_model, thinking_prefix

    cfg = base_config(spec)
    model_path = resolve_model(spec.model)
    tok = load_tokenizer(model_path, cfg.model)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    rows = read_prompts(spec)
    # The formatted text already holds the chat template's special tokens; TRL tokenizes plain-text prompts as
    # they are (SmolLM2's tokenizer adds no BOS), so the prompt tokens equal rapo_ray's.
    data = Dataset.from_list([{"prompt": format_prompt(tok, r["prompt"], cfg.model), "user_prompt": r["prompt"],
                               "harmful_label": r["harmful_label"], "level": r["level"]} for r in rows])
    judge = make_judge(cfg)
    prefix, eos = thinking_prefix(cfg.model), tok.eos_token_id
    counts = {"completion_tokens": 0, "samples": 0}
    seen: set[str] = set()

    def rapo_reward(prompts: list[str], completions: list[str], completion_ids: list[list[int]],
                    user_prompt: list[str], harmful_label: list[int], level: list[int | None],
                    **_: Any) -> list[float]:
        judged = [{"prompt": p, "completion": prefix + c, "harmful_label": int(h), "level": lv,
                   "truncated": not ids or ids[-1] != eos}
                  for p, c, ids, h, lv in zip(user_prompt, completions, completion_ids, harmful_label, level)]
        counts["completion_tokens"] += sum(len(ids) for ids in completion_ids)
        counts["samples"] += len(judged)
        seen.update(user_prompt)
        return [b.total for b in judge.score(judged)]

    class StepClock(TrainerCallback):
        """Wall time of each optimizer step, generation and scoring included."""

        def __init__(self) -> None:
            self.t0, self.steps = 0.0, []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.steps.append(time.perf_counter() - self.t0)
            print(f"reference step {len(self.steps)}: {self.steps[-1]:.1f} s", flush=True)

    args = GRPOConfig(
        output_dir=str(Path(spec.work_dir) / "trl"), report_to=[], use_cpu=True, bf16=False, use_vllm=False,
        per_device_train_batch_size=GENERATIONS, num_generations=GENERATIONS,
        max_steps=spec.samples // GENERATIONS, max_completion_length=spec.max_tokens,
        temperature=spec.temperature, top_p=spec.top_p, learning_rate=cfg.learner.lr,
        max_grad_norm=cfg.learner.max_grad_norm, epsilon=cfg.algo.clip_low, epsilon_high=cfg.algo.clip_high,
        beta=0.0, loss_type="dapo",  # token mean over the batch, like rapo_ray's token_mean
        gradient_checkpointing=spec.ref_gradient_checkpointing, shuffle_dataset=False, seed=spec.seed,
        save_strategy="no", logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0)
    clock = StepClock()
    peft_config = None
    if spec.lora_rank:
        from peft import LoraConfig

        peft_config = LoraConfig(r=spec.lora_rank, lora_alpha=2 * spec.lora_rank, lora_dropout=0.0,
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, reward_funcs=rapo_reward, args=args, train_dataset=data,
                          processing_class=tok, callbacks=[clock], peft_config=peft_config)
    times: dict[str, float] = {}
    _timed(trainer, "_generate_single_turn", times, "gen")
    _timed(trainer, "_calculate_rewards", times, "reward")
    _timed(trainer, "_generate_and_score_completions", times, "score")
    t_train = time.perf_counter()
    trainer.train()
    t_end = time.perf_counter()
    check_prompts(spec, seen)
    steady = sum(clock.steps)
    phases = {"gen": times["gen"], "reward": times["reward"],
              "adv": times["score"] - times["gen"] - times["reward"],  # tokenize, decode, advantages
              "update_actor": steady - times["score"]}  # forward + backward + optimizer step
    return {"samples": counts["samples"], "completion_tokens": counts["completion_tokens"], "steady_s": steady,
            "e2e_s": t_end - t_start, "phases": phases,
            "extra": {"startup_s": t_train - t_start, "steps": len(clock.steps), "train_call_s": t_end - t_train}}


# ----------------------------------------------------------------------------- (b) rapo_ray

def rapo_config(spec: BenchSpec) -> Any:
    """The quickstart config reading the benchmark's prompt file, sized to ``spec.samples``."""
    from rapo_ray.config import DatasetSpec

    lora = [f"model.lora.rank={spec.lora_rank}", f"model.lora.alpha={2 * spec.lora_rank}"] if spec.lora_rank else []
    cfg = base_config(spec, [*lora, *spec.rapo_set])
    per_step = GENERATIONS * spec.prompts_per_step
    cfg.data.recipe = [DatasetSpec(name="jsonl", path=spec.prompts_file, source="bench", label_column="harmful_label",
                                   level_column="level", id_column="id")]
    cfg.data.eval_fraction = 0.0
    cfg.data.shuffle = False
    cfg.train.total_steps = spec.samples // per_step
    cfg.checkpoint.every = 0
    cfg.checkpoint.save_final = False
    cfg.output_dir = str(Path(spec.work_dir) / "rapo_ray")
    return cfg


def rapo_trial(spec: BenchSpec) -> dict[str, Any]:
    """``rapo_ray.driver.train`` on the quickstart roles; phase times read back from ``metrics.jsonl``.

    End-to-end stops at the last step's metrics row (written after the step's sync), so, like the reference's,
    it leaves out the teardown of the run (actors, placement groups), which is reported as ``teardown_s``."""
    t_start, wall_start = time.perf_counter(), time.time()
    import ray

    from rapo_ray.driver import train

    run_dir = train(rapo_config(spec))
    t_end = time.perf_counter()
    ray.shutdown()
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rollouts = [json.loads(line) for line in (run_dir / "rollouts.jsonl").read_text().splitlines()]
    check_prompts(spec, {r["prompt"] for r in rollouts})
    per_step: dict[int, int] = {}
    for r in rollouts:
        per_step[r["step"]] = per_step.get(r["step"], 0) + 1
    phases: dict[str, float] = {}
    for m in steps:
        for k, v in m.items():
            if k.startswith("timing/") and k != "timing/step":
                name = k.removeprefix("timing/")
                phases[name] = phases.get(name, 0.0) + v
    steady = sum(m["timing/step"] for m in steps)
    e2e = steps[-1]["time"] - wall_start
    sync = sum(m["sync/seconds"] for m in steps)
    return {"samples": len(rollouts), "completion_tokens": sum(len(r["completion_ids"]) for r in rollouts),
            "steady_s": steady, "e2e_s": e2e, "phases": phases,
            "extra": {"startup_s": e2e - steady, "teardown_s": (t_end - t_start) - e2e, "steps": len(steps),
                      "sync_s": sync, "sync_share": sync / steady}}


TRIALS = {"reference": reference_trial, "rapo_ray": rapo_trial}


# ----------------------------------------------------------------------------- harness

def run_trial(path: str, spec: BenchSpec, index: int, timeout_s: float) -> TrialResult:
    """Run one path in a fresh subprocess and return its measurements."""
    run_dir = Path(spec.work_dir) / f"{index:02d}-{path}"
    run_dir.mkdir(parents=True)
    spec_file, out_file, log_file = run_dir / "spec.json", run_dir / "result.json", run_dir / "worker.log"
    spec_file.write_text(json.dumps(asdict(BenchSpec(**{**asdict(spec), "work_dir": str(run_dir)}))))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # always a fresh local cluster
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", path, "--spec", str(spec_file),
           "--result", str(out_file)]
    with log_file.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        mem = TreeMemory(proc.pid)
        mem.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:  # timeout or Ctrl-C: end the worker and what it started (Ray daemons, actors), by pid
            if proc.poll() is None:
                kill_tree(proc.pid)
            rc = proc.wait()
            mem.stop.set()
            mem.join()
    if rc != 0 or not out_file.exists():
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-40:])
        why = f"killed after --timeout {timeout_s:.0f} s" if timed_out else f"exit {rc}"
        raise SystemExit(f"{path} run {index} failed ({why}); last lines of {log_file}:\n{tail}")
    res = TrialResult(path=path, **json.loads(out_file.read_text()), peak_rss_bytes=mem.peak_rss,
                      peak_pss_bytes=mem.peak_pss)
    res.extra["sampler_cpu_s"] = mem.cpu_s
    if res.samples != spec.samples:
        raise SystemExit(f"{path} run {index} trained on {res.samples} samples, expected {spec.samples}")
    return res


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def summarize(results: list[TrialResult]) -> tuple[str, dict[str, Any]]:
    """Markdown table (medians per path over the repeats) and the ratios of the alternating pairs."""
    by = {p: [r for r in results if r.path == p] for p in PATHS if any(r.path == p for r in results)}
    phase_names = list(dict.fromkeys(k for rs in by.values() for r in rs for k in r.phases))
    head = ["path", "runs", "samples", "samples/s steady", "samples/s end-to-end", "completion tok/s steady",
            "gen tok/s", *(f"{p} s" for p in phase_names), "startup s", "peak RSS GiB (sum)", "peak PSS GiB (sum)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p, rs in by.items():
        phases = [f"{_median([r.phases[k] for r in rs]):.1f}" if all(k in r.phases for r in rs) else "-"
                  for k in phase_names]
        lines.append("| " + " | ".join([
            p, str(len(rs)), str(rs[0].samples), f"{_median([r.sps_steady for r in rs]):.3f}",
            f"{_median([r.sps_e2e for r in rs]):.3f}", f"{_median([r.tok_s_steady for r in rs]):.1f}",
            f"{_median([r.gen_tok_s for r in rs]):.1f}", *phases,
            f"{_median([r.extra['startup_s'] for r in rs]):.1f}",
            _gib(_median([r.peak_rss_bytes for r in rs])), _gib(_median([r.peak_pss_bytes for r in rs]))]) + " |")
    lines.append("")
    lines.append("steady: sum of training-step wall time (startup excluded); end-to-end: worker entry to end of "
                 "training (imports, model load, Ray, vLLM and DeepSpeed start included); phases summed over steps.")
    ratios: dict[str, Any] = {}
    if len(by) == len(PATHS):
        pairs = list(zip(by["reference"], by["rapo_ray"]))
        steady = [b.sps_steady / a.sps_steady for a, b in pairs]
        e2e = [b.sps_e2e / a.sps_e2e for a, b in pairs]
        ratios = {"steady_median": _median(steady), "steady_pairs": steady, "e2e_median": _median(e2e),
                  "e2e_pairs": e2e}
        lines += [f"**Ratio rapo_ray / reference, samples/s, steady state (median of {len(pairs)} alternating "
                  f"pairs): {ratios['steady_median']:.2f}x** (pairs: {', '.join(f'{x:.2f}' for x in steady)})",
                  f"Ratio end-to-end, startup included: {ratios['e2e_median']:.2f}x "
                  f"(pairs: {', '.join(f'{x:.2f}' for x in e2e)})"]
    if "rapo_ray" in by:
        share = _median([r.extra["sync_share"] for r in by["rapo_ray"]])
        lines.append(f"rapo_ray weight sync: {100 * share:.1f}% of step time (median)")
    return "\n".join(lines), ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each path, alternating (default 3)")
    p.add_argument("--samples", type=int, default=32,
                   help="completions each run trains on; a multiple of 4 x --prompts-per-step (default 32)")
    p.add_argument("--model", default="smollm2-135m-instruct", help="built-in name or local HF folder")
    p.add_argument("--max-tokens", type=int, default=128, help="completion length limit (default 128)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--prompts-per-step", type=int, default=4, help="rapo_ray prompts per step (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ref-gradient-checkpointing", action="store_true",
                   help="TRL's own default; off by default here, which makes the reference faster")
    p.add_argument("--set", dest="rapo_set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a rapo_ray config key for its runs (repeatable), e.g. learner.zero_stage=0")
    p.add_argument("--lora", type=int, default=0, metavar="RANK",
                   help="LoRA of this rank on both paths (TRL + peft; rapo_ray model.lora), alpha 2 x rank")
    p.add_argument("--only", choices=PATHS, help="run one path only (no ratio)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds before a run is killed (default 900)")
    p.add_argument("--work-dir", help="keep run folders here (default: a temporary folder, removed)")
    p.add_argument("--json", dest="json_out", help="also write every run and the ratios to this JSON file")
    p.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    per_step = GENERATIONS * args.prompts_per_step
    if args.worker is None and (args.samples <= 0 or args.samples % per_step):
        p.error(f"--samples must be a positive multiple of {per_step} (4 generations x --prompts-per-step)")
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = BenchSpec(**json.loads(Path(args.spec).read_text()))
        Path(args.result).write_text(json.dumps(TRIALS[args.worker](spec)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a killed benchmark still ends its worker tree
    with tempfile.TemporaryDirectory(prefix="rapo-bench-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"--work-dir {work} is not empty; give a new or empty folder")
        work.mkdir(parents=True, exist_ok=True)
        spec = BenchSpec(model=args.model, samples=args.samples, max_tokens=args.max_tokens,
                         temperature=args.temperature, top_p=args.top_p, prompts_per_step=args.prompts_per_step,
                         seed=args.seed, prompts_file=str(work / "prompts.jsonl"), work_dir=str(work),
                         ref_gradient_checkpointing=args.ref_gradient_checkpointing, rapo_set=args.rapo_set,
                         lora_rank=args.lora)
        prompts = write_prompts(spec)  # also prepares the model once, outside every timed run
        machine = machine_summary()
        print(machine_line(machine), flush=True)
        lora = f" with LoRA rank {spec.lora_rank}" if spec.lora_rank else ""
        print(f"{len(prompts)} prompts x {GENERATIONS} generations = {spec.samples} samples per run; model "
              f"{spec.model}{lora}; max_tokens {spec.max_tokens}; temperature {spec.temperature}; "
              f"top_p {spec.top_p}", flush=True)
        order = [args.only] if args.only else list(PATHS)
        results = []
        for i in range(args.repeats):
            for path in order:
                r = run_trial(path, spec, len(results), args.timeout)
                print(f"run {len(results)} {path}: {r.samples} samples, steady {r.steady_s:.1f} s "
                      f"({r.sps_steady:.3f} samples/s), end-to-end {r.e2e_s:.1f} s, peak PSS "
                      f"{_gib(r.peak_pss_bytes)} GiB", flush=True)
                results.append(r)
        table, ratios = summarize(results)
        print("\n" + table)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(
                {"machine": machine, "spec": asdict(spec), "runs": [asdict(r) for r in results], "ratios": ratios},
                indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
