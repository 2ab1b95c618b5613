"""The sections of ``rapo-ray train``: rollout, algo, learner, sync, resources, checkpoint, train."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import _Section


class RolloutConfig(_Section):
    num_workers: int = Field(default=1, ge=1)
    n: int = Field(default=4, ge=1)  # samples per prompt (one GRPO group)
    prompts_per_step: int = Field(default=4, ge=1)
    temperature: float = Field(default=1.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=128, ge=1)
    max_model_len: int = Field(default=2048, ge=16)
    tensor_parallel_size: int = Field(default=1, ge=1)
    # auto: bfloat16 where the rollout's device computes it natively (CUDA with bf16; CPU with AVX512-BF16 or
    # AMX-BF16), else float32; resolved inside each rollout actor (rapo_ray.hardware). float16 only when set.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    enforce_eager: bool = True
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)
    kv_cache_gb: int = Field(default=1, ge=1)  # CPU only: VLLM_CPU_KVCACHE_SPACE (GiB)
    max_restarts: int = Field(default=2, ge=0)


class AlgoConfig(_Section):
    adv_std_norm: bool = True
    adv_eps: float = Field(default=1e-6, gt=0.0)
    clip_low: float = Field(default=0.2, ge=0.0)
    clip_high: float = Field(default=0.28, ge=0.0)
    loss_agg: Literal["token_mean", "seq_mean"] = "token_mean"
    kl_coef: float = Field(default=0.0, ge=0.0)
    kl_estimator: Literal["k1", "k3"] = "k3"
    # Optimizer steps per rollout batch: the batch is split into this many mini-batches, one step each.
    updates_per_batch: int = Field(default=1, ge=1)
    # Old (behaviour) log-probs of the ratio. auto: vLLM's when max_staleness > 0, recomputed on the learner
    # when updates_per_batch > 1, else the current pass's detached ones (ratio 1, no extra forward).
    old_logprobs: Literal["auto", "learner", "vllm"] = "auto"
    mask_truncated: bool = False
    # Leave samples whose advantage is exactly 0 (a group whose rewards are all equal) out of the update's forward
    # and backward, their tokens still in the loss normalizer: with no KL term and one update per batch they carry
    # no gradient, so the step is the same at less compute. Ignored otherwise.
    skip_zero_advantage: bool = True
    # One-step-off-policy overlap: generation of step t+1 runs during the update of step t.
    max_staleness: int = Field(default=0, ge=0, le=1)


class LearnerConfig(_Section):
    num_learners: int = Field(default=2, ge=1)
    zero_stage: int = Field(default=2, ge=0, le=3)
    lr: float = Field(default=1e-6, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(default=0, ge=0)
    # After warmup: constant, or linear/cosine decay to 0 over lr_decay_steps optimizer steps (0: constant).
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    lr_decay_steps: int = Field(default=0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    # Micro-batches are packed by token count (no padding); one micro-batch holds at most this many tokens.
    micro_batch_tokens: int = Field(default=2048, ge=16)
    packing: bool = True  # False: one sequence per micro-batch
    # bf16 = autocast with fp32 master weights. auto: bf16 where the learner's device computes it natively (CUDA
    # with bf16; CPU with AVX512-BF16 or AMX-BF16), else fp32; resolved inside each learner (rapo_ray.hardware).
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gradient_checkpointing: bool = False
    logprob_chunk: int = Field(default=1024, ge=1)  # positions per chunk when computing log-probs
    dist_backend: Literal["auto", "gloo", "nccl"] = "auto"
    # Attention over packed rows (position_ids restart per sequence). auto: flex on a CUDA learner, varlen_sdpa
    # elsewhere (resolved where the learner runs). varlen_sdpa: one SDPA call per sequence, no cross-sequence work
    # (CPU and GPU); flex: one compiled FlexAttention call per layer with a block mask built once per micro-batch
    # (CUDA only; up to 3x varlen_sdpa's step on an H200, docs/speed.md); sdpa/eager: a block-diagonal mask over the
    # whole row (attention cost grows with the row, not the sequence); flash_attention_2: varlen kernel (CUDA,
    # needs flash-attn).
    attn_implementation: Literal["auto", "varlen_sdpa", "flex", "sdpa", "eager", "flash_attention_2"] = "auto"
    # Pack a group's completions after one copy of their shared prompt: the prompt's forward and backward run
    # once per group instead of once per sample (exact: each completion still sees only the prompt and itself).
    # Takes effect with packing and auto, varlen_sdpa or flex attention; the other paths pack whole sequences.
    share_prompts: bool = True
    init_timeout_s: float = Field(default=600.0, gt=0.0)  # process-group setup and collective timeout

    @property
    def prompt_sharing(self) -> bool:
        """Whether the learner packs shared prompts once (``share_prompts`` where the attention supports it)."""
        return self.share_prompts and self.packing and self.attn_implementation in ("auto", "varlen_sdpa", "flex")


class SyncConfig(_Section):
    transport: Literal["broadcast", "object_store"] = "broadcast"
    probe_every: int = Field(default=10, ge=0)  # 0 disables the greedy probe check
    probe_tokens: int = Field(default=8, ge=1)
    # Largest mean |logprob(vLLM) - logprob(learner)| the probe accepts (bf16 engines differ by ~1e-2).
    probe_tolerance: float = Field(default=0.25, gt=0.0)
    checksum_rtol: float = Field(default=1e-4, ge=0.0)
    # Parameters travel flattened in buckets of at most this many MiB (a larger parameter alone): one send and one
    # checksum per bucket instead of per tensor. 4 MiB: the fastest size for both transports on an idle 2-core CPU
    # (docs/speed.md; 64 MiB buckets were slower than per-tensor sends there, the packing copies falling out of
    # cache); on GPUs with NCCL, larger buckets (64-512 MiB) cut per-call overhead: measure with bench/sync_bench.py.
    bucket_mb: float = Field(default=4.0, gt=0.0)


class ResourcesConfig(_Section):
    rollout_cpus: float = Field(default=0.5, ge=0.0)
    rollout_gpus: float = Field(default=0.0, ge=0.0)
    learner_cpus: float = Field(default=0.5, ge=0.0)
    learner_gpus: float = Field(default=0.0, ge=0.0)
    judge_cpus: float = Field(default=0.1, ge=0.0)
    judge_gpus: float = Field(default=0.0, ge=0.0)
    # CPU threads (OMP_NUM_THREADS, torch intra-op) per rollout / learner actor. Unset: Ray's default, the actor's
    # CPU count rounded down, at least 1. On a CPU-only node running generation and update in series
    # (algo.max_staleness 0), give the rollout the node's cores: the learners idle while it samples. No effect on
    # GPU kernels.
    rollout_threads: int | None = Field(default=None, ge=1)
    learner_threads: int | None = Field(default=None, ge=1)
    # Custom resources per role and per actor (e.g. rollout: {rollout_gpu: 1}), requested on top of the CPU/GPU
    # counts: the GPU count gives the actor its devices, the custom resource pins it to its node type.
    custom: dict[str, dict[str, float]] = Field(default_factory=dict)
    placement_timeout_s: float = Field(default=120.0, gt=0.0)
    # PACK: learners on as few nodes as possible (one node when they fit), spanning nodes only when needed.
    # STRICT_PACK: all learners on one node or not at all (for clusters without a fast inter-node network).
    learner_strategy: Literal["PACK", "STRICT_PACK"] = "PACK"
    # Autoscaler cluster YAML or KubeRay RayCluster/RayJob manifest: fits are checked against what it can grow to
    # (its max workers). Unset: against the running cluster's resources. (`ray up` leaves the prepared YAML on
    # the head as ~/ray_bootstrap_config.yaml.)
    cluster_yaml: str | None = None

    @field_validator("custom")
    @classmethod
    def _roles(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        bad = set(v) - {"rollout", "learner", "judge"}
        if bad:
            raise ValueError(f"custom resources are keyed by role (rollout, learner, judge), got {sorted(bad)}")
        for role, res in v.items():
            builtin = set(res) & {"CPU", "GPU", "memory", "object_store_memory"}
            if builtin:
                raise ValueError(f"custom.{role}: {sorted(builtin)} are set by {role}_cpus/{role}_gpus, not custom")
            if any(x <= 0 for x in res.values()):
                raise ValueError(f"custom.{role}: amounts must be > 0, got {res}")
        return v


class CheckpointConfig(_Section):
    every: int = Field(default=0, ge=0)  # 0: only at the end
    keep_last: int = Field(default=2, ge=1)
    save_final: bool = True
    # Optional mirror: a URI pyarrow handles (s3://, gs://, hdfs://, file://) or a path. Checkpoints and logs are
    # written under output_dir first, then uploaded to <upload_uri>/<name>/ and marked COMPLETE; --resume falls
    # back to the newest complete upload when output_dir has none.
    upload_uri: str | None = None
    # A failed upload leaves the local checkpoint complete; then "stop" ends the run (one line naming both, resume
    # works), "continue" reports it on stderr, counts it (checkpoint/upload_failures) and trains on.
    on_upload_error: Literal["stop", "continue"] = "stop"


class TrainConfig(_Section):
    total_steps: int = Field(default=10, ge=1)
    log_rollouts: bool = True
    # Every N steps (0: never), greedy completions of up to eval_prompts held-out prompts are judged and logged
    # under eval/ in the same metrics stream.
    eval_every: int = Field(default=0, ge=0)
    eval_prompts: int = Field(default=32, ge=1)
