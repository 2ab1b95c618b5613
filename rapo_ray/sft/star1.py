"""STAR-1 as an ingredient of the SFT set (``sft.star1_path``), mixed with the curated rows.

STAR-1 is a JSON list of ``{id, question, response}`` whose response opens with a ``<think>`` block (deliberative
reasoning over a safety policy) and ends with a refusal or a safe completion. Its responses are long (median about
330 completion tokens with the SmolLM2 tokenizer), longer than a small model's RL ``max_tokens``, so rows are
fitted to the completion budget (``rapo_ray.sft.records.completion_budget``) before they are judged:

- ``select`` (default): a row is used only when it fits whole. The rows keep STAR-1's reasoning exactly as written;
  at a 512-token budget about 860 of 1,000 fit, at 384 about 670.
- ``trim``: a row that does not fit loses paragraphs from the middle of its thinking (the latest middle paragraph
  first) until it fits; the first paragraph (what is asked and which policy applies), the last one (the decision),
  the closing tag and the whole answer stay. A row whose answer alone does not fit is dropped.

Then every row is judged and filtered like a curated row (the same filters; harmful label 1, level from the rule
judge's estimator); no generator-written answer is added. Of the rows that pass, a seeded sample of at most
``sft.star1_rows`` joins the set.
"""
from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.data.paths import data_root
from rapo_ray.data.rows import seeded_sample
from rapo_ray.data.split import in_test
from rapo_ray.judge.base import make_judge
from rapo_ray.judge.reward import split_completion
from rapo_ray.models import conversation, thinking_prefix
from rapo_ray.sft.records import TokenCounter, active_filters, first_failed, initial_row
from rapo_ray.sft.stages import judge_rows

SOURCE = "star1"


class Star1Error(ValueError):
    """The STAR-1 file is missing or is not a JSON list of objects."""


def read_star1(path: str | os.PathLike, cfg: JobConfig) -> tuple[list[dict[str, Any]], Counter]:
    """STAR-1 rows as curation rows with one candidate (their own response), and the inputs dropped by reason."""
    p = Path(path)
    if not p.is_absolute() and not p.is_file():  # a relative path: against the data root, as recipe paths are
        p = data_root(cfg.data) / p
    if not p.is_file():
        raise Star1Error(f"STAR-1 file not found: {p}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise Star1Error(f"{p} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise Star1Error(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
    m = cfg.model
    rows, dropped = [], Counter()
    for i, rec in enumerate(data):
        q = rec.get("question") if isinstance(rec, dict) else None
        resp = rec.get("response") if isinstance(rec, dict) else None
        if not isinstance(q, str) or not q.strip():
            dropped["no_question"] += 1
            continue
        if not isinstance(resp, str) or not resp.lstrip().startswith(m.think_open):
            dropped["response_without_think"] += 1
            continue
        row = initial_row({"id": f"{SOURCE}:{rec.get('id', i)}", "prompt": q, "harmful_label": 1, "level": None,
                           "source": SOURCE}, cfg)
        if in_test(row, cfg):  # a behaviour held out for evaluation is never trained on, from any set
            dropped["held_out_behaviour"] += 1
            continue
        completion = thinking_prefix(m) + resp.lstrip()[len(m.think_open):].lstrip("\n")
        row["candidates"] = [{"completion": completion, "truncated": False, "by": "model"}]
        rows.append(row)
    return rows, dropped


def trim_thinking(completion: str, prompt_tokens: int, counter: TokenCounter) -> str | None:
    """``completion`` with middle paragraphs of its thinking removed (latest first) until it fits the budget;
    None when even the first and last paragraphs with the answer do not fit, or the thinking is not closed."""
    close = counter.cfg.model.think_close
    head, sep, answer = completion.partition(close)
    if not sep or not completion.startswith(counter.prefix):
        return None
    paras = [x for x in head[len(counter.prefix):].strip("\n").split("\n\n") if x.strip()]
    while len(paras) > 2:
        del paras[-2]
        text = counter.prefix + "\n\n".join(paras) + "\n" + sep + answer
        if counter.fits(prompt_tokens, counter.completions([text])[0]):
            return text
    return None


def fit_rows(rows: list[dict[str, Any]], cfg: JobConfig, counter: TokenCounter) -> int:
    """Fit each row's completion to the budget in place (``sft.star1_fit``); returns how many were trimmed. A row
    that does not fit keeps its completion (the over_budget filter drops it) and ``trimmed`` False."""
    p_tokens = counter.prompts([conversation(r) for r in rows])
    c_tokens = counter.completions([r["candidates"][0]["completion"] for r in rows])
    trimmed = 0
    for r, p, c in zip(rows, p_tokens, c_tokens):
        r["trimmed"] = False
        if counter.fits(p, c) or cfg.sft.star1_fit != "trim":
            continue
        text = trim_thinking(r["candidates"][0]["completion"], p, counter)
        if text is not None:
            r["candidates"][0]["completion"], r["trimmed"] = text, True
            trimmed += 1
    return trimmed


def star1_ingredient(cfg: JobConfig, counter: TokenCounter, judge: Any = None) -> tuple[list[dict[str, Any]],
                                                                                         dict[str, Any]]:
    """The STAR-1 records to mix in (judged, filtered, fitted, at most ``sft.star1_rows`` of the passing ones, in
    file order; failing rows are returned too, not kept) and the STAR-1 part of the curation report."""
    m = cfg.model
    rows, invalid = read_star1(cfg.sft.star1_path, cfg)
    fit_rows(rows, cfg, counter)
    for r in rows:
        r["paragraph"] = split_completion(r["candidates"][0]["completion"], False, m.think_open,
                                          m.think_close).reasoning
    trimmed = {r["id"] for r in rows if r["trimmed"]}
    records = judge_rows(cfg, judge or make_judge(cfg), rows, SOURCE, counter, write_refusals=False)
    passed = [i for i, r in enumerate(records) if r["kept"]]
    chosen = set(seeded_sample(passed, cfg.sft.star1_rows, [cfg.seed, 11]))
    out = []
    for i, r in enumerate(records):
        r["trimmed"] = r["id"] in trimmed
        if i in chosen or not r["kept"]:
            out.append(r)
    filters = active_filters(cfg)
    failed = Counter(first_failed(r, filters) for r in records if not r["kept"])
    left = len(passed) - len(chosen)
    meta = {"path": str(cfg.sft.star1_path), "fit_mode": cfg.sft.star1_fit,
            "offered": len(rows) + sum(invalid.values()), "invalid": dict(invalid),
            "fit": sum(r["filters"]["over_budget"] for r in records),
            "trimmed": sum(records[i]["trimmed"] for i in chosen), "passed": len(passed), "kept": len(chosen),
            "not_selected": left, "dropped": {**dict(invalid), **dict(sorted(failed.items())),
                                              **({"over_star1_rows": left} if left else {})}}
    return out, meta
