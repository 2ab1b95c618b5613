"""The LLM judge: backend-independent logic over a text engine (vLLM in-process, or an OpenAI-compatible
endpoint). Risk and general requests of a whole batch go to the engine in one call; outputs are parsed
with counted fallbacks (risk 0 and the rule judge's case; general from the rule judge)."""
from __future__ import annotations

from typing import Protocol

from rapo_ray.config import JobConfig, JudgeSettings
from rapo_ray.judge import parse
from rapo_ray.judge.prompts import Message, general_messages, risk_messages
from rapo_ray.judge.reward import (FB_CASE, FB_GENERAL, FB_LEVEL, FB_TOO_LONG, JudgeInput, RewardBreakdown,
                                   build_breakdown)
from rapo_ray.judge.rules import RuleJudge


class TextEngine(Protocol):
    """Generates one reply per chat, in order; None where a request could not be run (too long)."""

    def generate(self, chats: list[list[Message]]) -> list[str | None]: ...


class LLMJudge:
    """Risk and general judgements from an LLM, with the rule judge as the general fallback."""

    def __init__(self, cfg: JobConfig | JudgeSettings, engine: TextEngine, name: str = "llm"):
        self.cfg = cfg
        self.engine = engine
        self.name = name
        self.rules = RuleJudge(cfg)
        self.engine_calls = 0
        self.requests = 0

    def score_items(self, items: list[JudgeInput]) -> list[RewardBreakdown]:
        chats: list[list[Message]] = []
        slots: list[tuple[int, int | None]] = []  # per item: (risk request index, general request index)
        levels = [self.rules.level(item) for item in items]
        for item, (level, source) in zip(items, levels):
            chats.append(risk_messages(item, self.cfg.judge, level if source == "data" else None))
            risk_at = len(chats) - 1
            general_at = None
            if item.split.well_formed:  # a malformed completion's general reward is -1 without asking
                chats.append(general_messages(item, self.cfg.judge))
                general_at = len(chats) - 1
            slots.append((risk_at, general_at))
        replies = self.engine.generate(chats) if chats else []
        if len(replies) != len(chats):
            raise RuntimeError(f"judge engine returned {len(replies)} replies for {len(chats)} requests")
        self.engine_calls += 1 if chats else 0
        self.requests += len(chats)
        return [self._combine(item, lv, replies[r], None if g is None else replies[g])
                for item, lv, (r, g) in zip(items, levels, slots)]

    def _combine(self, item: JudgeInput, data_level: tuple[int, str], risk_raw: str | None,
                 general_raw: str | None) -> RewardBreakdown:
        fallbacks: list[str] = []
        if risk_raw is None or (item.split.well_formed and general_raw is None):
            fallbacks.append(FB_TOO_LONG)
        level, source = data_level
        if source != "data":
            parsed = parse.parse_level(risk_raw or "")
            if parsed is None:
                fallbacks.append(FB_LEVEL)
            else:
                level = parsed
        case = parse.parse_case(risk_raw or "")
        risk = None
        if case is None:
            fallbacks.append(FB_CASE)
            case, risk = self.rules.case(item, level), 0
        general, refused = -1, False
        if item.split.well_formed:
            score = parse.parse_score(general_raw or "")
            if score is None:
                fallbacks.append(FB_GENERAL)
                general, refused = self.rules.general(item)
            else:
                general = score
                said = parse.parse_yes_no(general_raw or "", "refused")
                if said is not None:
                    refused = said
                elif item.harmful_label:
                    refused = score == 1
                else:
                    refused = self.rules.general(item)[1]
        raw = f"[risk]\n{risk_raw or ''}\n[general]\n{general_raw or ''}"
        return build_breakdown(item, level, source, case, general, refused, fallbacks, raw, self.cfg.judge, risk=risk)
