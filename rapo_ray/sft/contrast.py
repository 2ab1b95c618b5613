"""Verdict-contrastive preference pairs from curated SFT rows (``pairs.source: verdict``).

SFT on template paragraphs teaches the verdict's prior, not the line (docs/efficacy.md, levers 3-5): the model
copies the paragraph's frame and ends it with whichever verdict was more common. A pair here puts the gradient on
the decision itself. Chosen: one curated row as it is. Rejected: the same prompt handled as if its label were the
other one, closed, then the other kind of answer: for a harmful prompt, the policy's own answer that curation
replaced with a refusal (the row's ``model_answer``); for a benign prompt, the template refusal. Where the rejected
thinking departs from the chosen one is ``pairs.rejected_from``: ``evidence`` (the template paragraph written for
the other label, with the row's own seed, so the same sentence count and the same quoted ask: the sides part at
the evidence), or ``verdict`` (the row's own paragraph with the other label's verdict sentence in place of its
own: the sides part at the verdict, so the paragraph body and its format are shared and only the decision and the
answer are contrasted).

No pair comes from a row without a template paragraph (STAR-1, an LLM generator), a harmful row whose answer the
policy wrote itself (it refused: nothing to contrast), a harmful row with no ``model_answer``, or (``verdict``) a
row whose paragraph does not end with its template verdict; each is counted.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.models import thinking_prefix
from rapo_ray.rollout import sample_seed
from rapo_ray.sft.records import sft_row, sft_token_ids
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.stages import PARAGRAPH_STEP, REFUSAL_STEP, closed_paragraph
from rapo_ray.sft.template import template_paragraph, template_verdict


def counterpart(row: dict[str, Any], cfg: JobConfig) -> tuple[str | None, str]:
    """(the rejected completion, or None, and why): the row's prompt handled as if its label were the other one."""
    if row.get("generator") != "template":
        return None, "not_template"
    harmful = bool(row["harmful_label"])
    if harmful and row.get("answer_by") != "generator":
        return None, "own_refusal"
    answer = (row.get("model_answer") or "").strip() if harmful else template_refusal(
        row["prompt"], int(row["level"]), sample_seed(cfg.seed, REFUSAL_STEP, row["id"], 0))
    if not answer:
        return None, "no_model_answer"
    level = int(row["level"])
    if cfg.pairs.rejected_from == "evidence":
        paragraph = template_paragraph(row["prompt"], level, not harmful, cfg.judge,
                                       sample_seed(cfg.seed, PARAGRAPH_STEP, row["id"], 0))
    else:
        own, other = (template_verdict(row["prompt"], level, h) for h in (harmful, not harmful))
        if not row.get("reasoning", "").endswith(own):
            return None, "no_verdict"
        paragraph = row["reasoning"][:-len(own)] + other
    return closed_paragraph(cfg, paragraph, answer), "kept"


def _side(index: int, text: str, ids: list[int], reward: float, case: str) -> dict[str, Any]:
    return {"sample_index": index, "completion": text, "completion_ids": ids, "truncated": False, "reward": reward,
            "breakdown": {"total": reward, "case": case}}


def verdict_pairs(records: list[dict[str, Any]], cfg: JobConfig,
                  tokenizer: Any) -> tuple[list[dict[str, Any]], Counter]:
    """One pair per usable curated row, in the rows' order (``rapo_ray.pairs`` format, tokenized as the SFT
    trainer tokenizes: chat prompt with the thinking prefix; the rest of the turn plus the end-of-turn token); a
    pair longer than ``sft.max_seq_tokens`` on either side is dropped. Returns the pairs and the count of each
    outcome."""
    prefix = thinking_prefix(cfg.model)
    pairs, outcome = [], Counter()
    for row in map(sft_row, records):
        rejected, why = counterpart(row, cfg)
        if rejected is None or not row["completion"].startswith(prefix):
            outcome[why if rejected is None else "no_thinking_prefix"] += 1
            continue
        p_ids, sides = sft_token_ids(row, [row["completion"], rejected], tokenizer, cfg)
        if len(p_ids) + max(map(len, sides)) > cfg.sft.max_seq_tokens:
            outcome["too_long"] += 1
            continue
        outcome["kept"] += 1
        pairs.append({"pair_id": str(row["id"]), "prompt_id": str(row["id"]), "batch": 0, "prompt": row["prompt"],
                      "prompt_ids": p_ids, "harmful_label": int(row["harmful_label"]), "level": row["level"],
                      "source": row.get("source", ""), "margin": 2.0, "group_totals": [1.0, -1.0],
                      "chosen": _side(0, row["completion"], sides[0], 1.0, "curated"),
                      "rejected": _side(1, rejected, sides[1], -1.0, "other_label")})
    return pairs, outcome
