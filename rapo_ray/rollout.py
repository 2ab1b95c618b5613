"""vLLM rollout workers: Ray actors that sample GRPO groups from the current policy."""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import replace
from typing import Any

import ray

from rapo_ray.config import JobConfig, RolloutSettings
from rapo_ray.hardware import resolve_dtype, role_device
from rapo_ray.models import Chat, conversation, format_prompt, load_tokenizer, thinking_prefix
from rapo_ray.placement import actor_options
from rapo_ray.types import Sample, row_columns
from rapo_ray.weight_sync import SyncSpec, WeightSyncError, WeightUpdate, lora_adapter

log = logging.getLogger(__name__)


class StaleWeightsError(RuntimeError):
    """A rollout worker was asked to sample with a policy version it does not hold."""


def sample_seed(run_seed: int, step: int, prompt_id: str, index: int) -> int:
    """The vLLM seed of one sample: a pure function of (run seed, step, prompt id, sample index)."""
    h = hashlib.blake2b(f"{run_seed}:{step}:{prompt_id}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def make_vllm_engine(model_path: str, cfg: RolloutSettings, *, dtype: str, tensor_parallel_size: int = 1,
                     worker_extension: bool = True, lora_rank: int | None = None) -> Any:
    """A vLLM engine living in this process (engine core in-process; no extra subprocess), in ``dtype`` (a
    resolved one: ``float32``, ``bfloat16`` or ``float16``).

    One worker: the "uni" executor. Tensor parallelism (GPU): vLLM's "ray" executor, whose workers are Ray
    actors, so the object-store weight path works there too.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.rollout.kv_cache_gb))  # read only by vLLM-CPU
    from vllm import LLM

    kwargs: dict[str, Any] = dict(
        model=model_path, dtype=dtype, seed=cfg.seed, max_model_len=cfg.rollout.max_model_len,
        enforce_eager=cfg.rollout.enforce_eager, enable_prefix_caching=cfg.rollout.enable_prefix_caching,
        tensor_parallel_size=tensor_parallel_size, gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
        distributed_executor_backend="uni" if tensor_parallel_size == 1 else "ray",
        logprobs_mode="processed_logprobs", trust_remote_code=cfg.model.trust_remote_code,
    )
    if worker_extension:
        kwargs["worker_extension_cls"] = "rapo_ray.vllm_ext.WeightSyncExtension"
    if lora_rank is not None:  # adapters applied by vLLM (model.lora.rollout: adapter)
        kwargs.update(lora_adapter.engine_kwargs(lora_rank))
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        # CPU only: vLLM-CPU cannot rewind a seeded request's generator after a partial (chunked) prefill
        # ("CPU Generator does not use offset"), so every prefill runs whole. GPUs keep chunked prefill.
        kwargs.update(enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.rollout.max_model_len, 4096))
    return LLM(**kwargs)


class RolloutWorker:
    """Owns one vLLM engine over the policy; samples groups, receives weights, answers probes."""

    def __init__(self, cfg: RolloutSettings, model_path: str, index: int, initial_version: int = 0):
        self.cfg, self.index = cfg, index
        self.incarnation = uuid.uuid4().hex[:8]
        self.version = initial_version
        self.dtype = resolve_dtype(cfg.rollout.dtype, role_device(cfg.resources.rollout_gpus))
        if index == 0:
            log.warning("rollout dtype: %s (%s)", self.dtype.value, self.dtype.reason)
        t0 = time.perf_counter()
        self.adapters = lora_adapter.AdapterStore() if cfg.model.vllm_adapters else None
        self.llm = make_vllm_engine(model_path, cfg, dtype=self.dtype.value,
                                    tensor_parallel_size=cfg.rollout.tensor_parallel_size,
                                    lora_rank=cfg.model.lora.rank if cfg.model.vllm_adapters else None)
        self.start_seconds = time.perf_counter() - t0
        self.tokenizer = load_tokenizer(model_path, cfg.model)
        self.prefix = thinking_prefix(cfg.model)

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "incarnation": self.incarnation, "version": self.version,
                "ip": ray.util.get_node_ip_address(), "start_seconds": self.start_seconds,
                "dtype": self.dtype.value, "dtype_reason": self.dtype.reason}

    def prompt_ids(self, prompts: list[Chat]) -> list[list[int]]:
        """Token ids of the generation prompts (``format_prompt``) of user turns or conversations."""
        return [self.tokenizer(format_prompt(self.tokenizer, p, self.cfg.model), add_special_tokens=False)["input_ids"]
                for p in prompts]

    def generate(self, rows: list[dict], step: int, expected_version: int) -> list[Sample]:
        """Sample ``rollout.n`` completions for each row; one request per sample with its own seed."""
        from vllm import SamplingParams, TokensPrompt

        if self.version != expected_version:
            raise StaleWeightsError(f"rollout worker {self.index} holds policy v{self.version}, "
                                    f"asked for v{expected_version}")
        rc = self.cfg.rollout
        ids = self.prompt_ids([conversation(r) for r in rows])
        reqs, params, keys = [], [], []
        for row, pid in zip(rows, ids):
            room = rc.max_model_len - len(pid)
            if room < 1:
                raise ValueError(f"prompt {row['id']}: {len(pid)} tokens with the chat template leave no room to "
                                 f"generate within rollout.max_model_len={rc.max_model_len}")
            for i in range(rc.n):
                reqs.append(TokensPrompt(prompt_token_ids=pid))
                params.append(SamplingParams(n=1, temperature=rc.temperature, top_p=rc.top_p,
                                             max_tokens=min(rc.max_tokens, room),
                                             seed=sample_seed(self.cfg.seed, step, str(row["id"]), i), logprobs=0))
                keys.append((row, pid, i))
        outs = self.llm.generate(reqs, params, use_tqdm=False, lora_request=self.lora_request)
        samples = []
        for (row, pid, i), out in zip(keys, outs):
            c = out.outputs[0]
            toks = list(c.token_ids)
            lps = [lp[t].logprob for t, lp in zip(toks, c.logprobs)] if c.logprobs else []
            samples.append(Sample(
                prompt_id=str(row["id"]), sample_index=i, prompt=row["prompt"], prompt_ids=list(pid),
                completion_ids=toks, completion=self.prefix + c.text, sampling_logprobs=lps,
                truncated=c.finish_reason == "length", policy_version=self.version,
                harmful_label=int(row["harmful_label"]), level=row.get("level"), source=row.get("source", ""),
                columns=row_columns(row)))
        return samples

    def greedy(self, prompts: list[Chat], max_tokens: int) -> list[dict[str, Any]]:
        """Greedy continuations with their log-probs (the sync probe and in-training eval use this)."""
        return self._sample(self.prompt_ids(prompts), max_tokens, 0.0, 1.0, None)

    def complete(self, prompts: list[Chat], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seeds: list[int] | None = None) -> list[dict[str, Any]]:
        """One completion per prompt (evaluation): greedy at temperature 0, else seeded sampling. A prompt that
        leaves no room to generate within ``max_model_len`` is not sent: finish_reason "prompt_too_long"."""
        return self._sample(self.prompt_ids(prompts), max_tokens, temperature, top_p, seeds)

    def continue_from(self, prefixes: list[str], max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                      seeds: list[int] | None = None, stop: list[str] | None = None) -> list[dict[str, Any]]:
        """One continuation per raw text prefix that is already formatted (e.g. SFT curation: chat prompt,
        thinking prefix and a written safety paragraph), tokenized without special tokens. Results as
        ``complete``; generation also ends at any of the ``stop`` strings (left out of the text)."""
        ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prefixes]
        return self._sample(ids, max_tokens, temperature, top_p, seeds, stop)

    def _sample(self, ids: list[list[int]], max_tokens: int, temperature: float, top_p: float,
                seeds: list[int] | None, stop: list[str] | None = None) -> list[dict[str, Any]]:
        from vllm import SamplingParams, TokensPrompt

        limit = self.llm.model_config.max_model_len
        send = [i for i, p in enumerate(ids) if len(p) < limit]
        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, seed=None if seeds is None else seeds[i],
                                 max_tokens=min(max_tokens, limit - len(ids[i])), stop=stop, logprobs=0)
                  for i in send]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in send], params, use_tqdm=False,
                                 lora_request=self.lora_request)
        res = [{"prompt_ids": p, "token_ids": [], "text": "", "logprobs": [], "finish_reason": "prompt_too_long",
                "truncated": True} for p in ids]
        for i, o in zip(send, outs):
            c = o.outputs[0]
            res[i] = {"prompt_ids": ids[i], "token_ids": list(c.token_ids), "text": c.text,
                      "logprobs": [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)] if c.logprobs else [],
                      "finish_reason": str(c.finish_reason), "truncated": c.finish_reason == "length"}
        return res

    @property
    def lora_request(self) -> Any:
        """The vLLM ``LoRARequest`` of the newest adapter push (None: merged weights, or no push yet)."""
        return self.adapters.request if self.adapters is not None else None

    # -- weight sync (rapo_ray.weight_sync) ----------------------------------------------------------------
    def load_adapter(self, files: dict[str, bytes], version: int) -> list[float]:
        """Take the adapters of ``version`` (PEFT files, ``model.lora.rollout: adapter``); returns their sums."""
        if self.adapters is None:
            raise WeightSyncError(f"rollout worker {self.index} was started without LoRA (model.lora.rollout)")
        sums = self.adapters.load(files, version)
        self.llm.reset_prefix_cache()
        self.version = version
        return sums

    def receiving_ranks(self) -> int:
        """Processes that receive weights in this worker (one per tensor-parallel rank)."""
        return self.cfg.rollout.tensor_parallel_size

    def prepare_weight_sync(self, spec: SyncSpec) -> bool:
        return all(self.llm.collective_rpc("rapo_prepare_weight_sync", args=(spec,)))

    def update_weights(self, update: WeightUpdate, version: int) -> list[float]:
        """Load ``update`` into every rank; take ``version`` only once all of it arrived, identically on every
        tensor-parallel rank. Returns the per-bucket checksums (the driver compares them with the learner's)."""
        sums_per_rank = self.llm.collective_rpc("rapo_update_weights", args=(update,))
        if any(s != sums_per_rank[0] for s in sums_per_rank[1:]):
            raise WeightSyncError(f"rollout worker {self.index}: tensor-parallel ranks received different weights")
        if len(sums_per_rank[0]) != len(update.buckets):
            raise WeightSyncError(f"rollout worker {self.index}: {len(sums_per_rank[0])} of "
                                  f"{len(update.buckets)} buckets loaded")
        self.llm.reset_prefix_cache()
        self.version = version
        return sums_per_rank[0]


class RolloutGroup:
    """The rollout workers, with shard dispatch and recovery of a worker that dies mid-step."""

    def __init__(self, cfg: JobConfig, model_path: str, placement: Any = None, initial_version: int = 0):
        self.cfg = cfg
        self.actors = []
        for i in range(cfg.rollout.num_workers):
            opts = actor_options(cfg, "rollout", placement, i)
            opts.update(max_restarts=cfg.rollout.max_restarts, max_task_retries=0)
            self.actors.append(ray.remote(RolloutWorker).options(**opts).remote(RolloutSettings.of(cfg), model_path, i,
                                                                                     initial_version))
        self.restarts = 0

    def ready(self, timeout: float | None = None) -> list[dict[str, Any]]:
        return ray.get([a.info.remote() for a in self.actors], timeout=timeout)

    # -- weight sync (rapo_ray.weight_sync) ----------------------------------------------------------------
    def receiving_ranks(self) -> list[int]:
        return ray.get([a.receiving_ranks.remote() for a in self.actors])

    def prepare_weight_sync(self, spec: SyncSpec) -> list[Any]:
        """Open every worker's receiving end; worker i's ranks follow worker i-1's from ``spec.first_rank``."""
        refs, first = [], spec.first_rank
        for a, n in zip(self.actors, self.receiving_ranks()):
            refs.append(a.prepare_weight_sync.remote(replace(spec, first_rank=first)))
            first += n
        return refs

    def update_weights(self, update: WeightUpdate, version: int) -> list[Any]:
        return [a.update_weights.remote(update, version) for a in self.actors]

    def load_adapter(self, files_ref: Any, version: int) -> list[Any]:
        return [a.load_adapter.remote(files_ref, version) for a in self.actors]

    # -- sampling --------------------------------------------------------------------------------------------
    def generate_async(self, rows: list[dict], step: int, version: int) -> list[tuple[list[dict], Any]]:
        """Start sampling; returns (shard, ref) pairs for ``collect``."""
        k = len(self.actors)
        shards = [rows[i::k] for i in range(k)]
        return [(s, a.generate.remote(s, step, version)) for s, a in zip(shards, self.actors) if s]

    def collect(self, pending: list[tuple[list[dict], Any]], step: int, version: int, resync: Any,
                max_attempts: int = 3) -> list[Sample]:
        """Wait for sampling; a shard whose worker died or holds stale weights is re-issued after ``resync()``,
        which rebuilds the sync group, pushes the current policy into every worker and returns its version."""
        order = {str(r["id"]): i for i, r in enumerate(r for shard, _ in pending for r in shard)}
        out: list[Sample] = []
        for attempt in range(max_attempts + 1):
            failed = []
            for shard, ref in pending:
                try:
                    out.extend(ray.get(ref))
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError, StaleWeightsError):
                    failed.append(shard)  # Ray re-raises an actor's StaleWeightsError as a subclass of it
            if not failed:
                return sorted(out, key=lambda s: (order[s.prompt_id], s.sample_index))
            if attempt == max_attempts:
                raise RuntimeError(f"step {step}: rollout shards failed after {max_attempts} re-issues")
            self.restarts += 1
            self.wait_alive()
            version = resync()
            pending = [(s, self.actors[i % len(self.actors)].generate.remote(s, step, version))
                       for i, s in enumerate(failed)]
        raise AssertionError("unreachable")

    def wait_alive(self, timeout: float = 600.0) -> None:
        """Block until every worker answers (a killed worker is restarted by Ray)."""
        deadline = time.monotonic() + timeout
        for a in self.actors:
            while True:
                try:
                    ray.get(a.info.remote(), timeout=max(1.0, deadline - time.monotonic()))
                    break
                except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError):
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(1.0)

    def greedy(self, prompts: list[Chat], max_tokens: int) -> list[dict[str, Any]]:
        return ray.get(self.actors[0].greedy.remote(prompts, max_tokens))

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a)
