"""The learner alone (no Ray, no vLLM) against a plain PyTorch step on the same batch. Prints figures only.

One process, one device (CUDA when present, else CPU). The batch is random tokens shaped like a GRPO step
(``--prompts`` groups of ``--n`` completions); every path gets the same samples and advantages:

- ``plain``: the HF model on a right-padded batch with an attention mask, full logits, log-softmax, the GRPO
  token-mean loss (ratio 1), backward, AdamW (fused), all under ``torch.autocast`` when the precision is bf16;
- ``learner``: ``LearnerWorker`` (rank 0 of 1, DeepSpeed ZeRO-``--zero``, gloo or NCCL) ``train_step``, with
  prompt sharing on and off, for each ``--attn`` implementation (``flex`` needs CUDA).

For each: seconds per step (median of ``--steps`` after ``--warmup``), completion tokens per second, peak memory
(CUDA: max allocated; CPU: the process's peak RSS so far, which only grows from path to path) and a profile of one
step (operator calls, kernel launches and device syncs on CUDA, the top operators by self time). Needs torch,
transformers, deepspeed and pydantic only (no network):

    python bench/learner_speed.py [--model PATH] [--prompts 4] [--n 4] [--prompt-len 300] [--completion-len 128]
        [--precision auto|bf16|fp32] [--zero 2] [--micro-batch-tokens 4096]
        [--attn auto|varlen_sdpa|flex[,...]] [--steps 5] [--warmup 1] [--no-profile]

Without ``--model`` it uses SmolLM2-135M-Instruct when prepared, else a random model of that architecture.
"""
from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rapo_ray.algo import group_advantages  # noqa: E402
from rapo_ray.config import JobConfig, LearnerSettings  # noqa: E402
from rapo_ray.hardware import machine_line, machine_summary, resolve_precision  # noqa: E402
from rapo_ray.types import Sample  # noqa: E402
from rapo_ray.weight_sync.common import free_port  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda", 0) if CUDA else torch.device("cpu")
SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True,
               rms_norm_eps=1e-5, rope_theta=100000.0)


def model_dir(arg: str | None, tmp: Path) -> Path:
    """``--model``, else the prepared SmolLM2, else a random model of its architecture saved under ``tmp``."""
    if arg:
        return Path(arg)
    cached = Path.home() / ".cache/rapo_ray/models/smollm2-135m-instruct"
    if (cached / "config.json").is_file():
        return cached
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**SMOLLM2)).save_pretrained(tmp)
    return tmp


def make_batch(prompts: int, n: int, prompt_len: int, completion_len: int, vocab: int) -> list[Sample]:
    """Random prompts, ``n`` random completions each (lengths vary by up to a quarter), group advantages."""
    rng = random.Random(0)
    out = []
    for p in range(prompts):
        prompt = [rng.randrange(100, vocab) for _ in range(prompt_len)]
        for i in range(n):
            comp = [rng.randrange(100, vocab) for _ in range(rng.randint(completion_len * 3 // 4, completion_len))]
            out.append(Sample(f"p{p}", i, "", prompt, comp, "", [], False, 0, p % 2, reward=float(i % 2)))
    adv, _ = group_advantages([s.reward for s in out], [s.prompt_id for s in out], std_norm=True, eps=1e-6)
    for s, a in zip(out, adv):
        s.advantage = float(a)
    return out


class PlainStep:
    """The plain PyTorch GRPO step the learner is measured against."""

    def __init__(self, path: Path, samples: list[Sample], bf16: bool):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").to(DEVICE)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-6, fused=True)
        self.bf16 = bf16
        width = max(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
        ids = torch.zeros(len(samples), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        loss_mask = torch.zeros(len(samples), width - 1)
        for b, s in enumerate(samples):
            seq = list(s.prompt_ids) + list(s.completion_ids)
            ids[b, :len(seq)] = torch.tensor(seq)
            mask[b, :len(seq)] = 1
            loss_mask[b, len(s.prompt_ids) - 1:len(seq) - 1] = 1  # positions predicting completion tokens
        self.ids, self.mask, self.loss_mask = ids.to(DEVICE), mask.to(DEVICE), loss_mask.to(DEVICE)
        self.adv = torch.tensor([s.advantage for s in samples], device=DEVICE)[:, None]

    def __call__(self) -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=self.ids, attention_mask=self.mask, use_cache=False).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, self.ids[:, 1:, None])[..., 0]
        ratio = torch.exp(logp - logp.detach())
        loss = -(ratio * self.adv * self.loss_mask).sum() / self.loss_mask.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def learner_step(path: Path, samples: list[Sample], precision: str, zero: int, share: bool, attn: str,
                 micro_batch_tokens: int):
    from rapo_ray.learner import LearnerWorker

    cfg = JobConfig.model_validate({
        "learner": {"num_learners": 1, "zero_stage": zero, "precision": precision, "share_prompts": share,
                    "lr": 1e-6, "micro_batch_tokens": micro_batch_tokens,
                    "attn_implementation": attn},
        "resources": {"learner_gpus": 1.0 if CUDA else 0.0, "learner_cpus": 1.0}})
    w = LearnerWorker(LearnerSettings.of(cfg), str(path), rank=0, world_size=1)
    w.setup("127.0.0.1", free_port("127.0.0.1"))
    total = sum(len(s.completion_ids) for s in samples)
    return w, lambda: w.train_step(samples, total)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(step: Callable[[], object], warmup: int, steps: int) -> list[float]:
    for _ in range(warmup):
        step()
    out = []
    for _ in range(steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        out.append(time.perf_counter() - t)
    return out


def peak_memory_gib() -> float:
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def profile(step: Callable[[], object]) -> str:
    """One profiled step: operator calls, kernel launches and syncs (CUDA), top operators by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])
    with prof(activities=acts) as p:
        step()
        sync()
    events = p.key_averages()
    count = lambda *names: sum(e.count for e in events if any(n in e.key for n in names))  # noqa: E731
    parts = [f"operator calls {sum(e.count for e in events if e.key.startswith('aten::'))}"]
    if CUDA:
        parts += [f"kernel launches {count('cudaLaunchKernel', 'cuLaunchKernel')}",
                  f"syncs {count('cudaStreamSynchronize', 'cudaDeviceSynchronize')}",
                  f"memcpy {count('cudaMemcpy')}"]
    parts.append(f"item/tolist calls {count('aten::item', 'aten::_local_scalar_dense')}")
    key = "self_device_time_total" if CUDA else "self_cpu_time_total"  # torch >= 2.4 names it so
    top = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:5]
    parts.append("top: " + ", ".join(f"{e.key} {getattr(e, key) / 1e3:.0f} ms" for e in top))
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=300)
    ap.add_argument("--completion-len", type=int, default=128)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--micro-batch-tokens", type=int, default=4096, help="learner.micro_batch_tokens")
    ap.add_argument("--attn", default="auto", help="comma-separated learner.attn_implementation values")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()

    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="learner_speed_"))
    path = model_dir(args.model, tmp)
    from transformers import AutoConfig

    samples = make_batch(args.prompts, args.n, args.prompt_len, args.completion_len,
                         AutoConfig.from_pretrained(path).vocab_size)
    tokens = sum(len(s.completion_ids) for s in samples)
    precision = resolve_precision(args.precision, DEVICE.type)
    print(machine_line(machine_summary()))
    print(f"device {DEVICE}{' ' + torch.cuda.get_device_name(0) if CUDA else ''}; torch {torch.__version__}; "
          f"model {path}; precision {precision.value} ({precision.reason}); {len(samples)} samples "
          f"({args.prompts} prompts x {args.n}), prompt {args.prompt_len} + completion <= {args.completion_len} "
          f"tokens ({tokens} completion tokens); median of {args.steps} steps after {args.warmup}\n", flush=True)

    rows = []

    def add(name: str, step: Callable[[], object]) -> None:
        times = timed(step, args.warmup, args.steps)
        rows.append((name, times, peak_memory_gib(), None if args.no_profile else profile(step)))
        print(f"{name}: {statistics.median(times):.3f} s/step (steps {', '.join(f'{t:.3f}' for t in times)})",
              flush=True)

    plain = PlainStep(path, samples, precision.value == "bf16")
    add("plain PyTorch step", plain)
    del plain
    for attn in args.attn.split(","):
        for share in (True, False):
            if CUDA:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            w, step = learner_step(path, samples, args.precision, args.zero, share, attn,
                                   args.micro_batch_tokens)
            add(f"learner {attn}, prompt sharing {'on' if share else 'off'}", step)
            w.engine.destroy()
            del w, step

    base = statistics.median(rows[0][1])
    print("\n| path | s/step (median) | min | completion tokens/s | vs plain | peak memory GiB |")
    print("|---|---|---|---|---|---|")
    for name, times, mem, _ in rows:
        med = statistics.median(times)
        print(f"| {name} | {med:.3f} | {min(times):.3f} | {tokens / med:.0f} | {base / med:.2f}x | {mem:.2f} |")
    for name, _, _, prof in rows:
        if prof:
            print(f"\nprofile, {name}: {prof}")


if __name__ == "__main__":
    main()
