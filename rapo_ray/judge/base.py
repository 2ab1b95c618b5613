"""One interface over the judge backends: ``make_judge(cfg).score(rows) -> list[RewardBreakdown]``."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

from rapo_ray.config import JobConfig, JudgeSettings
from rapo_ray.judge.hook import RewardHooks
from rapo_ray.judge.llm import LLMJudge
from rapo_ray.judge.prompts import prompts_hash
from rapo_ray.judge.reward import JudgeInput, RewardBreakdown, prepare_row
from rapo_ray.judge.rules import RULES_VERSION, RuleJudge


class Backend(Protocol):
    name: str

    def score_items(self, items: list[JudgeInput]) -> list[RewardBreakdown]: ...


def judge_identity(cfg: JobConfig | JudgeSettings) -> str:
    """Backend, model, a hash of the judge prompts and settings and the rule judge's version (every backend falls
    back on its rules), plus the reward hooks and weights when there are any: the part of a cache key that says
    which judge gave a result (computed from the config alone, without loading the model)."""
    j = cfg.judge
    model = {"rule": "rules", "llm": j.model, "openai": f"{j.openai.base_url}|{j.openai.model}"}[j.backend]
    identity = f"{j.backend}|{model}|{prompts_hash(j)}|rules{RULES_VERSION}"
    if j.reward_hooks:
        identity += "|" + json.dumps([j.rapo_weight, *[(h.hook, h.weight, h.key) for h in j.reward_hooks]])
    return identity


def cache_key(identity: str, item: JudgeInput, cfg: JobConfig | JudgeSettings,
              state: dict[str, Any] | None = None) -> str:
    """Key of one judgement: the judge's identity, the prompt, label, reasoning and answer, plus what else
    changes the result (well-formedness and a cut answer; the data level when levels come from the data; the
    token ids, extra columns and training progress that reward hooks receive)."""
    parts: list[Any] = [identity, item.prompt, item.harmful_label, item.split.reasoning, item.split.answer,
                        item.split.well_formed, item.split.answer_cut]
    if cfg.judge.level_source == "data":
        parts.append(item.data_level)
    if cfg.judge.reward_hooks:
        parts += [item.completion_ids, sorted(item.extra.items()), sorted((state or {}).items())]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()


def prepare_rows(rows: list[dict[str, Any]], cfg: JobConfig | JudgeSettings) -> list[JudgeInput]:
    """Validate and split every row (JudgeError names the first bad row)."""
    m = cfg.model
    return [prepare_row(r, f"row {i}", m.think_open, m.think_close, truncated_answer=cfg.judge.truncated_answer)
            for i, r in enumerate(rows)]


class Judge:
    """A local, actor-free scorer: validates rows and runs the configured backend, then the reward hooks, in this
    process."""

    def __init__(self, cfg: JobConfig | JudgeSettings, backend: Backend):
        self.cfg = cfg
        self.backend = backend
        self.hooks = RewardHooks(cfg) if cfg.judge.reward_hooks else None

    def score(self, rows: list[dict[str, Any]], state: dict[str, Any] | None = None) -> list[RewardBreakdown]:
        """One breakdown per row, in order; ``state``: the training progress reward hooks see (``trainer_state``)."""
        if not rows:
            return []
        items = prepare_rows(rows, self.cfg)
        out = self.backend.score_items(items)
        return self.hooks.apply(items, out, state) if self.hooks is not None else out

    def stats(self) -> dict[str, Any]:
        return {k: getattr(self.backend, k) for k in ("engine_calls", "requests") if hasattr(self.backend, k)}


def make_judge(cfg: JobConfig | JudgeSettings) -> Judge:
    """The configured backend and reward hooks in this process (the judge actors wrap this). The engines of the
    ``llm`` and ``openai`` backends are imported when chosen: one loads torch and vLLM, the other httpx."""
    backend = cfg.judge.backend
    if backend == "rule":
        return Judge(cfg, RuleJudge(cfg))
    if backend == "llm":
        from rapo_ray.judge.vllm_engine import VLLMEngine

        return Judge(cfg, LLMJudge(cfg, VLLMEngine(cfg.judge, cfg.seed), name="llm"))
    from rapo_ray.judge.openai_client import OpenAIEngine

    return Judge(cfg, LLMJudge(cfg, OpenAIEngine(cfg.judge), name="openai"))
