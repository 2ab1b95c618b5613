"""The SFT row format, the curation filters, best-of-k selection and the filter report.

A curated row (one per prompt) holds ``id``, ``prompt``, ``harmful_label``, ``level`` (the level the paragraph
was written for), ``level_source``, ``source``, ``messages`` (user turn + assistant turn), ``reasoning`` (the
safety paragraph), ``completion`` (the full assistant turn, opening with the thinking prefix), ``answer``,
``generator``, ``think_closed_by``, ``candidates`` and ``best_index``, ``judge`` (the kept candidate's reward
breakdown), ``filters`` (name -> passed) and ``kept``.
"""
from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rapo_ray.config import JobConfig

# Curation filters in the order their survival is reported. "not_adequate" is active only with
# sft.keep_only_adequate.
FILTERS = ("max_tokens", "short_reasoning", "no_think_close", "harmful_not_refused", "benign_refused",
           "not_adequate")
FILTER_HELP = {
    "max_tokens": "the generation hit its token limit",
    "short_reasoning": "the reasoning has fewer sentences than sft.min_reasoning_sentences",
    "no_think_close": "the thinking block is never closed",
    "harmful_not_refused": "a harmful prompt whose answer does not refuse (rule judge)",
    "benign_refused": "a benign prompt whose answer refuses (rule judge)",
    "not_adequate": "the risk reward is not +1 (sft.keep_only_adequate)",
}
JUDGE_FIELDS = ("risk_reward", "general_reward", "total", "level", "level_source", "case", "refused",
                "reasoning_sentences", "well_formed")


def active_filters(cfg: JobConfig) -> tuple[str, ...]:
    return FILTERS if cfg.sft.keep_only_adequate else FILTERS[:-1]


def filter_results(completion: str, truncated: bool, harmful_label: int, breakdown: dict[str, Any],
                   cfg: JobConfig) -> dict[str, bool]:
    """Which filters one judged completion passes (True = passed). Refusal comes from the rule judge's detector
    (``breakdown["rule_refused"]``), whatever judge gave the reward."""
    body = completion.lstrip()
    if body.startswith(cfg.model.think_open):
        body = body[len(cfg.model.think_open):]
    refused = bool(breakdown["rule_refused"])
    res = {"max_tokens": not truncated,
           "short_reasoning": breakdown["reasoning_sentences"] >= cfg.sft.min_reasoning_sentences,
           "no_think_close": cfg.model.think_close in body,
           "harmful_not_refused": not harmful_label or refused,
           "benign_refused": bool(harmful_label) or not refused,
           "not_adequate": breakdown["risk_reward"] == 1}
    return {k: res[k] for k in active_filters(cfg)}


def best_index(candidates: list[dict[str, Any]]) -> int:
    """The candidate the judge likes best: passing every filter first, then more filters passed, then the
    higher total reward, then the higher risk reward, then the earlier sample."""
    def key(i: int) -> tuple:
        c = candidates[i]
        passed = list(c["filters"].values())
        return all(passed), sum(passed), c["judge"]["total"], c["judge"]["risk_reward"], -i
    return max(range(len(candidates)), key=key)


def make_record(row: dict[str, Any], reasoning: str, candidates: list[dict[str, Any]], generator: str,
                think_closed_by: str) -> dict[str, Any]:
    """The SFT row of one prompt from its judged candidates (each: completion, answer, truncated, judge,
    filters); the best one is kept when it passes every filter."""
    best = best_index(candidates)
    c = candidates[best]
    return {"id": str(row["id"]), "prompt": row["prompt"], "harmful_label": int(row["harmful_label"]),
            "level": int(row["level"]), "level_source": row["level_source"], "source": row.get("source", ""),
            "messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": c["completion"]}],
            "reasoning": reasoning, "completion": c["completion"], "answer": c["answer"], "generator": generator,
            "think_closed_by": think_closed_by, "candidates": len(candidates), "best_index": best,
            "candidate_totals": [float(x["judge"]["total"]) for x in candidates],
            "judge": {k: c["judge"][k] for k in JUDGE_FIELDS}, "filters": dict(c["filters"]),
            "kept": all(c["filters"].values())}


def build_report(records: list[dict[str, Any]], filters: tuple[str, ...], meta: dict[str, Any]) -> dict[str, Any]:
    """Counts and survival rates: per filter, the rows failing it (independently) and the rows left after it
    when the filters are applied in order; kept rows by level and label."""
    n = len(records)
    left = list(records)
    steps = []
    for name in filters:
        before = len(left)
        left = [r for r in left if r["filters"][name]]
        steps.append({"filter": name, "meaning": FILTER_HELP[name],
                      "failed": sum(not r["filters"][name] for r in records),
                      "survived": len(left), "survival_rate": len(left) / before if before else 0.0})
    kept = [r for r in records if r["kept"]]

    def by(key: str) -> dict[str, dict[str, int]]:
        total, good = Counter(str(r[key]) for r in records), Counter(str(r[key]) for r in kept)
        return {k: {"prompts": total[k], "kept": good[k]} for k in sorted(total)}

    return {**meta, "prompts": n, "kept": len(kept), "kept_rate": len(kept) / n if n else 0.0, "filters": steps,
            "by_level": by("level"), "by_label": by("harmful_label"),
            "cases": dict(sorted(Counter(r["judge"]["case"] for r in records).items()))}


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    lines = [f"SFT curation: {report['kept']}/{report['prompts']} prompts kept ({report['kept_rate']:.1%})"]
    for s in report["filters"]:
        lines.append(f"  {s['filter']:<20} failed {s['failed']:>5}   left {s['survived']:>5} "
                     f"({s['survival_rate']:.1%} of the rows before it)   {s['meaning']}")
    lines.append(f"  by level: {json.dumps(report['by_level'])}")
    lines.append(f"  by label (1 harmful): {json.dumps(report['by_label'])}")
    return "\n".join(lines)
