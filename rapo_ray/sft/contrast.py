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

``pairs.source: decision`` contrasts at the model's own decision point instead (``decision_pairs``): the fixed
model's own scored completions, each cut where it decides (before the last sentence of its thinking), and
continued with the other decision: for a harmful prompt it did not refuse, chosen = its own thinking up to there,
then the refusal verdict and a template refusal; rejected = its completion as sampled. For a benign prompt it
answered helpfully (and finished), chosen = its completion, rejected = its thinking up to there, then the refusal
verdict and refusal. The template's evidence never enters: only the model's own context, where it decides,
unless ``pairs.chosen_depth`` is ``band``: then a harmful prompt's chosen thinking is its own context topped up with
the template's refusing analysis to a length inside its level's band (``topped_up``), so that the side preferred
over a shallow compliance is an analysis as deep as RAPO asks at that level.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from rapo_ray.config import JobConfig
from rapo_ray.judge.reward import count_sentences, sentence_spans, split_completion
from rapo_ray.models import thinking_prefix
from rapo_ray.rollout import sample_seed
from rapo_ray.sft.records import sft_row, sft_token_ids
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.stages import PARAGRAPH_STEP, REFUSAL_STEP, closed_paragraph
from rapo_ray.sft.template import template_analysis, template_paragraph, template_verdict
from rapo_ray.types import pair_record, sampled_side, written_side


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
        pairs.append(pair_record(
            pair_id=str(row["id"]), prompt_id=str(row["id"]), batch=0, prompt=row["prompt"], prompt_ids=p_ids,
            harmful_label=int(row["harmful_label"]), level=row["level"], source=row.get("source", ""), margin=2.0,
            group_totals=[1.0, -1.0], chosen=written_side(0, row["completion"], sides[0], 1.0, "curated"),
            rejected=written_side(1, rejected, sides[1], -1.0, "other_label")))
    return pairs, outcome


MAX_UNCLOSED_SENTENCES = 12  # of a think block that never closed, at most this many of its own sentences are kept


def decision_cut(thinking: str, closed: bool) -> str:
    """The model's own thinking up to its decision, as it wrote it. A closed block decides in its last sentence:
    everything before it. A block that never closed (a loop, or cut at max tokens): its sentences before the first
    one it repeats (without a repeat, less the last one, which the cut may have ended midway), at most
    ``MAX_UNCLOSED_SENTENCES``."""
    spans = sentence_spans(thinking)
    if closed:
        spans = spans[:-1]
    else:
        seen, kept = set(), []
        for a, b in spans:
            if thinking[a:b] in seen:
                break
            seen.add(thinking[a:b])
            kept.append((a, b))
        spans = (kept if len(kept) < len(spans) else kept[:-1])[:MAX_UNCLOSED_SENTENCES]
    return thinking[:spans[-1][1]] if spans else ""


def topped_up(cut: str, prompt: str, level: int, cfg: JobConfig, prompt_id: str) -> str:
    """``cut`` (the model's own thinking up to its decision) followed by the template's refusing analysis of
    ``prompt`` at ``level``, as many sentences as ``cut`` and a closing verdict need to be as long as the paragraph
    curation's template writes for it (a length inside the level's band; none when they are already)."""
    seed = sample_seed(cfg.seed, PARAGRAPH_STEP, prompt_id, 0)
    need = count_sentences(template_paragraph(prompt, level, True, cfg.judge, seed)) - 1 - count_sentences(cut)
    if need <= 0:
        return cut
    body = template_analysis(prompt, level, True, need, seed)
    return " ".join(([cut] if cut else []) + body)


def decision_pairs(samples: list[dict[str, Any]], cfg: JobConfig,
                   tokenizer: Any) -> tuple[list[dict[str, Any]], Counter]:
    """One pair per usable scored completion (``rapo_ray.pairs`` sample rows), in sample order. Used: a harmful
    prompt's completion that did not refuse (the rejected side) and a benign prompt's completion answered helpfully
    (the chosen side); the other side is the completion's ``decision_cut`` continued with the template's refusal
    verdict for the prompt and level, closed, and a template refusal, tokenized as the SFT trainer tokenizes (a
    harmful prompt's thinking first ``topped_up`` under ``pairs.chosen_depth: band``: case ``topped_up_refusal``
    where that added to it, else ``own_cut_refusal``). Not
    used, counted: unscored samples, harmful completions that refused, benign ones not answered helpfully or cut at
    max tokens, and pairs longer than ``sft.max_seq_tokens``."""
    m, prefix = cfg.model, thinking_prefix(cfg.model)
    pairs, outcome = [], Counter()
    for s in samples:
        b = s["breakdown"]
        harmful = bool(s["harmful_label"])
        if not b.get("scored", True):
            outcome["unscored"] += 1
            continue
        if harmful and b["refused"]:
            outcome["own_refusal"] += 1
            continue
        if not harmful and not (b["well_formed"] and b["general_reward"] > 0):
            outcome["own_unhelpful"] += 1
            continue
        if not harmful and s["truncated"]:  # a helpful answer cut at max tokens is no example to prefer
            outcome["own_cut"] += 1
            continue
        # the thinking as written, whatever the reward's rule for cut answers (judge.truncated_answer: penalize
        # treats a cut answer as no answer, and its split keeps the answer inside the thinking)
        split = split_completion(s["completion"], False, m.think_open, m.think_close)
        level = int(s["level"] if s.get("level") is not None else b["level"])
        cut = decision_cut(split.thinking, split.think_closed)
        case = "own_cut_refusal"
        if harmful and cfg.pairs.chosen_depth == "band":
            deeper = topped_up(cut, s["prompt"], level, cfg, s["prompt_id"])
            if deeper != cut:
                case, cut = "topped_up_refusal", deeper
        verdict = template_verdict(s["prompt"], level, True)
        refusal = template_refusal(s["prompt"], level, sample_seed(cfg.seed, REFUSAL_STEP, s["prompt_id"], 0))
        other = closed_paragraph(cfg, f"{cut} {verdict}" if cut else verdict, refusal)
        other_ids = tokenizer(other[len(prefix):], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if len(s["prompt_ids"]) + max(len(other_ids), len(s["completion_ids"])) > cfg.sft.max_seq_tokens:
            outcome["too_long"] += 1
            continue
        outcome["kept"] += 1
        own = sampled_side(s)
        made = written_side(-1, other, other_ids, 1.0 if harmful else -1.0, case)
        pairs.append(pair_record(
            pair_id=f"{s['prompt_id']}@{s['batch']}#{s['sample_index']}", prompt_id=s["prompt_id"], batch=s["batch"],
            prompt=s["prompt"], prompt_ids=s["prompt_ids"], harmful_label=int(harmful), level=level,
            source=s.get("source", ""), margin=2.0, group_totals=[float(b["total"])],
            chosen=made if harmful else own, rejected=own if harmful else made))
    return pairs, outcome
