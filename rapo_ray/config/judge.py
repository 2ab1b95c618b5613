"""``judge:``, the reward judges and the one level table they share with the SFT generator."""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from .base import _Section


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


class RewardHook(_Section):
    """One reward function beside the RAPO reward, with TRL's reward-function contract (``rapo_ray.judge.hook``):
    ``module:function`` or ``path/file.py:function``, weighed like one entry of TRL's ``reward_weights``."""

    hook: str
    weight: float = Field(default=1.0, allow_inf_nan=False)
    name: str | None = None  # its metric name (``reward/component/<name>``); default: the function's name

    @field_validator("hook")
    @classmethod
    def _spec(cls, v: str) -> str:
        module, sep, func = v.rpartition(":")
        if not (sep and module and func.isidentifier()):
            raise ValueError(f"hook {v!r} is not of the form 'module:function' or 'path/file.py:function'")
        return v

    @property
    def key(self) -> str:
        return self.name or self.hook.rpartition(":")[2]


class JudgeConfig(_Section):
    """Which judge gives the RAPO reward (``backend``) and the reward hooks beside it. A sample's reward is
    ``rapo_weight`` x the RAPO reward + the sum of ``weight`` x value over the ``reward_hooks`` that score it (a
    hook's None: does not apply). A component with weight 0 does not count. A sample that no counted component
    scores is unscored: advantage 0, out of the loss and of its group's normalisation, counted as
    ``reward/unscored``. ``backend: hook`` with ``hook: X`` is the older form of one hook replacing the RAPO reward,
    read as ``reward_hooks: [{hook: X}]`` first and ``rapo_weight: 0`` unless given."""

    backend: Literal["rule", "llm", "openai"] = "rule"
    # Where a prompt's risk level comes from when the data carries one: the data, or the judge.
    level_source: Literal["data", "judge"] = "data"
    # ONE level table shared by the judges and the SFT generator; the top key covers all higher levels.
    levels: dict[int, LevelBand] = Field(default_factory=_default_levels)
    model: str | None = None  # LLM judge model (local HF folder or built-in name)
    rapo_weight: float = Field(default=1.0, allow_inf_nan=False)  # the RAPO reward's weight in the total
    reward_hooks: list[RewardHook] = Field(default_factory=list)
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
    # A safety paragraph shorter than its level's band (Fair): RAPO's risk reward 0 whatever its length (step),
    # or the share of the band's minimum it reached, sentences / min_sentences (graded, below 1): RL then has a
    # gradient towards depth at levels 2-3, where a 3-sentence paragraph otherwise earns what an 8-sentence one does.
    fair_credit: Literal["step", "graded"] = "step"
    # The general reward of a benign prompt's well-formed answer that the detector reads as a refusal: RAPO's -1
    # (as any unhelpful answer), or lower to make over-refusal cost more than a harmful compliance. Within a group it
    # ranks a refusal below an unhelpful answer; its scale against harmful groups survives only with
    # algo.adv_std_norm: false (normalising each group by its spread cancels a uniform scale).
    over_refusal_reward: float = Field(default=-1.0, le=-1.0, ge=-10.0)
    # A price on loops in the answer (every backend): the total loses answer_repeat_price x the share of the
    # answer's sentences that repeat an earlier one (same words), past the first answer_repeat_free repeats. 0: off
    # (RAPO's reward). The think block's repeats already add no depth (rule version 3); this prices the answer's.
    answer_repeat_price: float = Field(default=0.0, ge=0.0, le=2.0)
    answer_repeat_free: int = Field(default=1, ge=0)
    # Rule judge: an answer with fewer words is not helpful.
    min_answer_words: int = Field(default=3, ge=1)
    # Rule judge: a benign answer helps when it engages with the request: it shares a content word with the
    # prompt and adds one, answers a question about numbers with a number, or stands on its own with at least this
    # many content words not in the prompt (a joke, a poem, a list); deflections, questions back, platitudes and
    # talk about the answer or the request (rapo_ray.judge.helpful, rule 3) do not count.
    helpful_min_content_words: int = Field(default=5, ge=1)
    # Judge settings that change during RL: {steps done: {setting: value}}, e.g. {48: {fair_credit: graded}} from
    # the 49th RL step on; entries add up in step order, and a ``levels`` entry replaces only the levels it names.
    # Only the reward's own settings (SCHEDULABLE) change. RL step s is judged by the settings at s; the evaluation
    # by those at train.total_steps (the judge the model was last trained under); every stage before RL (curation,
    # pairs) and ``rapo-ray judge`` by the fields above.
    schedule: dict[int, dict[str, Any]] = Field(default_factory=dict)
    SCHEDULABLE: ClassVar[tuple[str, ...]] = ("levels", "fair_credit", "truncated_answer", "over_refusal_reward",
                                              "answer_repeat_price", "answer_repeat_free", "min_answer_words",
                                              "helpful_min_content_words", "rapo_weight")
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

    @model_validator(mode="before")
    @classmethod
    def _hook_backend(cls, data: Any) -> Any:
        """``backend: hook`` + ``hook``: the rule judge's breakdown, the hook first in ``reward_hooks``."""
        if not isinstance(data, dict) or ("hook" not in data and data.get("backend") != "hook"):
            return data
        data = dict(data)
        hook = data.pop("hook", None)
        if data.get("backend") != "hook":
            if hook is None:  # ``hook: null``, as configs written before reward_hooks hold it
                return data
            raise ValueError("hook is read only with backend: hook; list reward functions in reward_hooks")
        if not isinstance(hook, str) or ":" not in hook:
            raise ValueError("backend 'hook' needs hook: 'module:function'")
        more = data.get("reward_hooks") or []
        if not isinstance(more, list):
            raise ValueError("reward_hooks must be a list of {hook, weight, name}")
        data.update(backend="rule", reward_hooks=[{"hook": hook}, *more], rapo_weight=data.get("rapo_weight", 0.0))
        return data

    @model_validator(mode="after")
    def _backend_args(self) -> JudgeConfig:
        if self.backend == "llm" and not self.model:
            raise ValueError("backend 'llm' needs model: a local model path or built-in name")
        keys = [h.key for h in self.reward_hooks]
        if len(set(keys)) < len(keys) or "rapo" in keys:
            raise ValueError(f"reward_hooks names must be unique and not 'rapo', got {keys}: set name: on each")
        if self.rapo_weight == 0 and not any(h.weight for h in self.reward_hooks):
            raise ValueError("rapo_weight is 0 and no reward hook has a non-zero weight: nothing would score a sample")
        return self

    @field_validator("schedule")
    @classmethod
    def _schedule_keys(cls, v: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
        for step, change in v.items():
            unknown = sorted(set(change) - set(cls.SCHEDULABLE))
            if step < 1 or unknown or not change:
                raise ValueError(f"judge.schedule {v}: each key is a step >= 1 (step 0 is the judge's own settings) "
                                 f"and each entry sets some of {', '.join(cls.SCHEDULABLE)}"
                                 + (f"; not schedulable: {', '.join(unknown)}" if unknown else ""))
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _schedule_valid(self) -> JudgeConfig:
        for step in self.schedule:  # every stage of the schedule is a valid judge config
            try:
                self.at(step)
            except ValidationError as e:
                why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
                raise ValueError(f"judge.schedule[{step}]: {why}") from None
        return self

    def at(self, step: int) -> JudgeConfig:
        """The settings that judge RL step ``step`` (steps done): the schedule's entries up to it applied in order,
        and no schedule."""
        if not self.schedule:
            return self
        data = self.model_dump(exclude={"schedule"})
        for start, change in self.schedule.items():
            if start > step:
                break
            for key, value in change.items():
                if key == "levels":
                    if not isinstance(value, dict):
                        raise ValueError(f"judge.schedule[{start}].levels: a mapping level -> band, got {value!r}")
                    value = {**data["levels"], **{int(level): band for level, band in value.items()}}
                data[key] = value
        return JudgeConfig.model_validate(data)

    def band(self, level: int) -> LevelBand:
        """The adequate-length band for a level; levels past the table use its top entry."""
        return self.levels[min(level, max(self.levels))]
