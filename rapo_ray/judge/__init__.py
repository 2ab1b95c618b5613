"""The RAPO reward: risk-aware reward (prompt level x reasoning case) + general reward (refusal / help).

Backends (``judge.backend``): ``rule`` (deterministic, CPU), ``llm`` (vLLM engine in each judge actor),
``openai`` (an OpenAI-compatible endpoint); beside the RAPO reward, ``judge.reward_hooks``: user functions with
TRL's reward-function contract (``rapo_ray.judge.hook``).
"""
from rapo_ray.judge.base import Judge, make_judge
from rapo_ray.judge.cli import cmd_judge
from rapo_ray.judge.pool import JudgePool
from rapo_ray.judge.reward import (CASES, JudgeError, RewardBreakdown, Split, count_sentences, first_paragraph,
                                   split_completion)
from rapo_ray.judge.rules import detect_refusal, estimate_level, is_safety_analysis

__all__ = ["CASES", "Judge", "JudgeError", "JudgePool", "RewardBreakdown", "Split", "cmd_judge", "count_sentences",
           "detect_refusal", "estimate_level", "first_paragraph", "is_safety_analysis", "make_judge",
           "split_completion"]
