"""The SFT row format (from the prompt row curation starts with to the final record), the curation filters,
best-of-k selection and the filter report.

A curated row (one per prompt) holds ``id``, ``prompt``, ``harmful_label``, ``level`` (the level the paragraph
was written for), ``level_source``, ``source``, ``messages`` (the prompt's
conversation, ``models.conversation``: system prompt if any, its turns, then the assistant turn), ``reasoning`` (the
safety paragraph), ``completion`` (the full assistant turn, opening with the thinking prefix), ``answer``,
``answer_by`` ("model": a sampled continuation; "plain": the policy's answer to the bare prompt, after the closed
paragraph (``sft.benign_answer: plain``); "generator": a refusal the generator wrote because no continuation of a
harmful prompt was kept), ``answer_writer`` (who wrote a generator answer: "template" or the
generator model), ``completion_tokens``, ``trimmed`` (STAR-1: thinking shortened to fit; a plain answer: ended at
its last complete sentence), ``generator``,
``think_closed_by``, ``origin_id`` (a matched pair's id, else None), ``candidates`` (sampled ones) and
``best_index``, ``model_answer`` (with a generator answer: the answer of the policy's own best candidate, the one
the generator's replaced; else None), ``judge`` (the kept candidate's reward breakdown), ``filters`` (name ->
passed) and ``kept``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.data.rows import MessagesError, parse_messages, prompt_messages
from rapo_ray.judge.rules import estimate_level
from rapo_ray.models import Chat, conversation, format_prompt, thinking_prefix

# Curation filters in the order their survival is reported. "not_adequate" is active only with
# sft.keep_only_adequate.
FILTERS = ("max_tokens", "over_budget", "short_reasoning", "no_think_close", "harmful_not_refused", "benign_refused",
           "not_adequate")
FILTER_HELP = {
    "max_tokens": "the generation hit its token limit",
    "over_budget": "the completion exceeds sft.max_completion_tokens (or rollout.max_tokens), or prompt + completion "
                   "exceed sft.max_seq_tokens",
    "short_reasoning": "the reasoning has fewer sentences than sft.min_reasoning_sentences",
    "no_think_close": "the thinking block is never closed",
    "harmful_not_refused": "a harmful prompt whose answer does not refuse (rule judge)",
    "benign_refused": "a benign prompt whose answer refuses (rule judge)",
    "not_adequate": "the risk reward is not +1 (sft.keep_only_adequate)",
}
JUDGE_FIELDS = ("risk_reward", "general_reward", "total", "level", "level_source", "case", "refused",
                "reasoning_sentences", "well_formed", "answer_cut")


def active_filters(cfg: JobConfig) -> tuple[str, ...]:
    return FILTERS if cfg.sft.keep_only_adequate else FILTERS[:-1]


def completion_budget(cfg: JobConfig) -> int:
    """Tokens one SFT completion may take: what the RL stage generates (``rollout.max_tokens``) unless
    ``sft.max_completion_tokens`` names another budget."""
    return cfg.sft.max_completion_tokens or cfg.rollout.max_tokens


def initial_row(row: dict[str, Any], cfg: JobConfig) -> dict[str, Any]:
    """A prompt row as curation carries it: the level comes from the data (``judge.level_source: data`` and a
    level present) or from the rule judge's estimator. A chat row keeps its ``messages``; the system prompt is the
    row's, else ``data.system_prompt``."""
    data_level = row.get("level")
    if cfg.judge.level_source == "data" and data_level is not None:
        level, source = int(data_level), "data"
    else:
        level, source = estimate_level(row["prompt"]), "judge"
    system = row.get("system") or cfg.data.system_prompt
    return {"id": str(row["id"]), "prompt": row["prompt"], "harmful_label": int(row["harmful_label"]),
            "source": row.get("source", ""), "data_level": data_level, "level": level, "level_source": source,
            **({"messages": row["messages"]} if row.get("messages") else {}), **({"system": system} if system else {}),
            **({"origin_id": str(row["origin_id"])} if row.get("origin_id") else {})}


def sft_row(row: dict[str, Any]) -> dict[str, Any]:
    """An SFT row as the trainer and verdict pairs read it: ``messages`` ending with the assistant turn (its content
    is the completion; the messages before it, ending with a user turn, are the prompt), else ``prompt`` and
    ``completion`` strings (a curated row holds both forms). Returns the row with ``prompt`` (the last user turn),
    ``completion`` and, for a chat row, ``messages`` (the prompt's turns) and ``system`` (its system message, else
    the row's ``system``), ready for ``conversation``. A malformed row raises ``MessagesError``."""
    if row.get("messages") is None:
        if not all(isinstance(row.get(k), str) for k in ("prompt", "completion")):
            raise MessagesError("no_prompt", "needs string 'prompt' and 'completion' fields, or a 'messages' list "
                                             "ending with the assistant turn")
        return row
    turns, system = parse_messages(row["messages"])
    if turns[-1]["role"] != "assistant":
        raise MessagesError("no_completion", "the last message must be the assistant turn (the completion)")
    prompt, _ = prompt_messages(turns[:-1])
    system = system or row.get("system")
    return {**row, "prompt": prompt[-1]["content"], "completion": turns[-1]["content"], "messages": prompt,
            **({"system": system} if system else {})}


def sft_token_ids(row: dict[str, Any], completions: list[str], tokenizer: Any,
                  cfg: JobConfig) -> tuple[list[int], list[list[int]]]:
    """Token ids as the SFT trainer builds samples, for a row in ``sft_row`` form: the prompt (its conversation,
    system prompt: the row's, else ``data.system_prompt``, through the chat template with the thinking prefix) and
    each of ``completions`` (texts opening with the thinking prefix) after that prefix, plus the end-of-turn token."""
    n = len(thinking_prefix(cfg.model))
    chat = conversation(row, cfg.data.system_prompt)
    p_ids = tokenizer(format_prompt(tokenizer, chat, cfg.model), add_special_tokens=False)["input_ids"]
    return p_ids, [tokenizer(c[n:], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for c in completions]


class TokenCounter:
    """Token counts as the SFT trainer builds samples: the completion after the thinking prefix plus the end-of-turn
    token, the prompt through the chat template. Without a tokenizer: an estimate of one token per 4 characters."""

    def __init__(self, tokenizer: Any, cfg: JobConfig):
        self.tok, self.cfg, self.prefix = tokenizer, cfg, thinking_prefix(cfg.model)

    def _count(self, texts: list[str]) -> list[int]:
        if self.tok is None:
            return [math.ceil(len(t) / 4) for t in texts]
        return [len(ids) for ids in self.tok(texts, add_special_tokens=False)["input_ids"]] if texts else []

    def completions(self, texts: list[str]) -> list[int]:
        return [n + 1 for n in self._count([t[len(self.prefix):] if t.startswith(self.prefix) else t for t in texts])]

    def prompts(self, prompts: list[Chat]) -> list[int]:
        """Tokens of each prompt (a user turn or a conversation, e.g. ``conversation(row)``)."""
        if self.tok is None:
            return self._count([p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts])
        return self._count([format_prompt(self.tok, p, self.cfg.model) for p in prompts])

    def fits(self, prompt_tokens: int, completion_tokens: int) -> bool:
        return (completion_tokens <= completion_budget(self.cfg)
                and prompt_tokens + completion_tokens <= self.cfg.sft.max_seq_tokens)


def filter_results(completion: str, truncated: bool, harmful_label: int, breakdown: dict[str, Any],
                   cfg: JobConfig, fits: bool = True) -> dict[str, bool]:
    """Which filters one judged completion passes (True = passed). Refusal comes from the rule judge's detector
    (``breakdown["rule_refused"]``), whatever judge gave the reward; ``fits``: within the token budget."""
    body = completion.lstrip()
    if body.startswith(cfg.model.think_open):
        body = body[len(cfg.model.think_open):]
    refused = bool(breakdown["rule_refused"])
    res = {"max_tokens": not truncated, "over_budget": fits,
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
    by = c.get("by", "model")
    own = [x for x in candidates if x.get("by", "model") != "generator"]
    return {"id": str(row["id"]), "prompt": row["prompt"], "harmful_label": int(row["harmful_label"]),
            "level": int(row["level"]), "level_source": row["level_source"], "source": row.get("source", ""),
            "origin_id": row.get("origin_id"),
            "messages": [*conversation(row), {"role": "assistant", "content": c["completion"]}],
            "reasoning": reasoning, "completion": c["completion"], "answer": c["answer"], "answer_by": by,
            "answer_writer": c.get("writer") if by == "generator" else None,
            "completion_tokens": c.get("tokens"), "trimmed": bool(c.get("trimmed")), "generator": generator,
            "think_closed_by": "pipeline" if by in ("generator", "plain") else think_closed_by,
            "candidates": len(own), "best_index": best,
            "model_answer": own[best_index(own)]["answer"] if by == "generator" and own else None,
            "candidate_totals": [float(x["judge"]["total"]) for x in candidates],
            "judge": {k: c["judge"].get(k) for k in JUDGE_FIELDS}, "filters": dict(c["filters"]),
            "kept": all(c["filters"].values())}


def first_failed(rec: dict[str, Any], filters: tuple[str, ...]) -> str | None:
    """The first filter (in report order) a record fails; None when it is kept."""
    return next((f for f in filters if not rec["filters"].get(f, True)), None)


def source_counts(records: list[dict[str, Any]], filters: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per source: rows offered, kept, kept with a generator-written answer, and dropped by the first filter each
    failed (so the drops add up to offered - kept)."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        s = out.setdefault(str(r.get("source", "")), {"offered": 0, "kept": 0, "generator_answers": 0,
                                                     "dropped": Counter()})
        s["offered"] += 1
        if r["kept"]:
            s["kept"] += 1
            s["generator_answers"] += r.get("answer_by") == "generator"
        else:
            s["dropped"][first_failed(r, filters) or "other"] += 1
    for s in out.values():
        s["kept_rate"] = s["kept"] / s["offered"]
        s["dropped"] = dict(sorted(s["dropped"].items()))
    return dict(sorted(out.items()))


def build_report(records: list[dict[str, Any]], filters: tuple[str, ...], meta: dict[str, Any]) -> dict[str, Any]:
    """Counts and survival rates: per filter, the rows failing it (independently) and the rows left after it
    when the filters are applied in order; kept rows by level, label, source and answer writer (the mix)."""
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

    answers = Counter(r.get("answer_by", "model") for r in kept)
    writers = Counter(r.get("answer_writer") for r in kept if r.get("answer_by") == "generator")
    mix = {"rows": len(kept), "harmful": sum(r["harmful_label"] == 1 for r in kept),
           "benign": sum(r["harmful_label"] == 0 for r in kept),
           "by_source": dict(sorted(Counter(str(r.get("source", "")) for r in kept).items())),
           "answer_by": {"model": answers["model"], "plain": answers["plain"], "generator": answers["generator"]},
           "generator_answer_writers": dict(sorted(writers.items()))}
    return {**meta, "prompts": n, "kept": len(kept), "kept_rate": len(kept) / n if n else 0.0, "filters": steps,
            "by_source": source_counts(records, filters), "mix": mix,
            "by_level": by("level"), "by_label": by("harmful_label"),
            "cases": dict(sorted(Counter(r["judge"]["case"] for r in records).items()))}


def format_report(report: dict[str, Any]) -> str:
    """The report as a few readable lines."""
    lines = [f"SFT curation: {report['kept']}/{report['prompts']} prompts kept ({report['kept_rate']:.1%})"]
    for s in report["filters"]:
        lines.append(f"  {s['filter']:<20} failed {s['failed']:>5}   left {s['survived']:>5} "
                     f"({s['survival_rate']:.1%} of the rows before it)   {s['meaning']}")
    mix = report.get("mix")
    if mix:
        lines.append(f"  mix: {mix['rows']} rows ({mix['harmful']} harmful, {mix['benign']} benign); answers "
                     f"written by the model after the paragraph {mix['answer_by']['model']}, by the model to the "
                     f"bare prompt {mix['answer_by'].get('plain', 0)}, by the generator "
                     f"{mix['answer_by']['generator']} {json.dumps(mix['generator_answer_writers'])}")
    for src, c in report.get("by_source", {}).items():
        dropped = ", ".join(f"{k}={v}" for k, v in c["dropped"].items()) or "none"
        lines.append(f"  {src:<20} offered {c['offered']:>5}  kept {c['kept']:>5} ({c['kept_rate']:.0%})  "
                     f"generator-written {c['generator_answers']:>4}  dropped: {dropped}")
    star1 = report.get("star1")
    if star1:
        lines.append(f"  STAR-1: offered {star1['offered']}, passed the filters {star1['passed']}, "
                     f"fit the budget {star1['fit']} (trimmed {star1['trimmed']}), kept {star1['kept']}; "
                     f"dropped: {json.dumps(star1['dropped'])}")
    lines.append(f"  by level: {json.dumps(report['by_level'])}")
    lines.append(f"  by label (1 harmful): {json.dumps(report['by_label'])}")
    return "\n".join(lines)
