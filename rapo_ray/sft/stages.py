"""The map stages of the curation pipeline (Ray Data ``map_batches``), over batches of JSON-encoded rows.

- ``template_stage`` (a task): the deterministic template generator writes each row's safety paragraph.
- ``ParagraphStage`` (an actor): an LLM generator served by a ``RolloutWorker`` writes it from an instruction.
- ``ContinuationStage`` (an actor): the policy's ``RolloutWorker`` continues from chat prompt + thinking prefix +
  paragraph + blank line, k samples per row (``sft.close_think`` says who closes the thinking block); with
  ``sft.benign_answer: plain`` a benign row's answers are the policy's answers to the bare prompt instead, each
  after the closed paragraph.
- ``JudgeStage`` (an actor): judges every candidate, applies the filters and keeps the best (``make_record``); a
  harmful prompt none of whose continuations is kept gets a generator-written refusal after its paragraph
  (``sft.refusal_writer``: the LLM generator's own, written by ``ParagraphStage``, else the template refusal).

Rows travel as one JSON string each (column ``record``) next to their shard number (column ``shard``), so no
Arrow schema has to be inferred for the nested candidates.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from rapo_ray.config import JobConfig, RolloutSettings
from rapo_ray.judge.base import make_judge
from rapo_ray.judge.refusal import detect_refusal
from rapo_ray.judge.reward import split_completion
from rapo_ray.models import conversation, format_prompt, load_tokenizer, plain_prompt, thinking_prefix
from rapo_ray.rollout import RolloutWorker, sample_seed
from rapo_ray.sft.instruction import (clean_paragraph, clean_refusal, instruction, refusal_instruction, request_text,
                                      trim_answer)
from rapo_ray.sft.records import TokenCounter, filter_results, make_record
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.template import template_paragraph

# The "step" of rapo_ray.rollout.sample_seed for curation's sampling; RL steps are >= 0, so seeds never repeat.
PARAGRAPH_STEP, THOUGHT_STEP, ANSWER_STEP, REFUSAL_STEP = -1, -2, -3, -4


def decode(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    return [json.loads(x) for x in batch["record"]]


def encode(batch: dict[str, np.ndarray], rows: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    return {"shard": np.asarray(batch["shard"]), "record": np.array([json.dumps(r) for r in rows], dtype=object)}


def curation_config(cfg: JobConfig) -> JobConfig:
    """The config the curation engines start with: ``sft.max_model_len`` replaces the rollout's when set."""
    if cfg.sft.max_model_len is None:
        return cfg
    return cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update={"max_model_len": cfg.sft.max_model_len})})


def template_stage(batch: dict[str, np.ndarray], cfg: JobConfig) -> dict[str, np.ndarray]:
    """Write each row's paragraph with the deterministic template generator."""
    rows = decode(batch)
    for r in rows:
        r["paragraph"] = template_paragraph(r["prompt"], r["level"], bool(r["harmful_label"]), cfg.judge,
                                            sample_seed(cfg.seed, PARAGRAPH_STEP, r["id"], 0))
    return encode(batch, rows)


class ParagraphStage:
    """An LLM generator (a ``RolloutWorker`` over the generator model) writing each row's paragraph."""

    def __init__(self, cfg: JobConfig, model_path: str):
        self.cfg = cfg
        self.worker = RolloutWorker(RolloutSettings.of(curation_config(cfg)), model_path, index=0)

    def chat(self, text: str) -> str:
        """The generator's own chat prompt for one user message (its thinking mode off where it has one)."""
        return plain_prompt(self.worker.tokenizer, text)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        s = self.cfg.sft
        rows = decode(batch)
        texts = [self.chat(instruction(request_text(r), r["level"], self.cfg.judge.band(r["level"]),
                                       r["harmful_label"] if s.label_hint else None)) for r in rows]
        outs = self.worker.continue_from(texts, s.paragraph_max_tokens, s.paragraph_temperature, s.top_p,
                                         [sample_seed(self.cfg.seed, PARAGRAPH_STEP, r["id"], 0) for r in rows])
        for r, o in zip(rows, outs):
            r["paragraph"] = clean_paragraph(o["text"])
        if s.refusal_writer == "generator":
            self.write_refusals([r for r in rows if r["harmful_label"] == 1])
        return encode(batch, rows)

    def write_refusals(self, rows: list[dict[str, Any]]) -> None:
        """The generator's refusal after its own paragraph (``refusal``), used if no continuation is kept."""
        if not rows:
            return
        s = self.cfg.sft
        texts = [self.chat(refusal_instruction(request_text(r), r["paragraph"])) for r in rows]
        outs = self.worker.continue_from(texts, s.refusal_max_tokens, s.paragraph_temperature, s.top_p,
                                         [sample_seed(self.cfg.seed, REFUSAL_STEP, r["id"], 0) for r in rows])
        for r, o in zip(rows, outs):
            r["refusal"] = None if o["truncated"] else clean_refusal(o["text"]) or None


class ContinuationStage:
    """The policy (a ``RolloutWorker``) continuing from each row's paragraph, ``sft.k`` samples per row."""

    def __init__(self, cfg: JobConfig, model_path: str):
        self.cfg = cfg
        self.worker = RolloutWorker(RolloutSettings.of(curation_config(cfg)), model_path, index=0)
        self.prefix = thinking_prefix(cfg.model)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = decode(batch)
        for r in rows:
            r["candidates"] = []
        plain = self.cfg.sft.benign_answer == "plain"
        self._continue([r for r in rows if not (plain and r["harmful_label"] == 0)])
        self._plain([r for r in rows if plain and r["harmful_label"] == 0])
        return encode(batch, rows)

    def _plain(self, rows: list[dict[str, Any]]) -> None:
        """k answers to each bare prompt, each after the row's paragraph as the whole (closed) thinking block; an
        answer cut at ``sft.plain_max_tokens`` (else ``sft.max_tokens``) is ended at its last complete sentence
        (``trimmed``)."""
        if not rows:
            return
        s = self.cfg.sft
        keys = [(r, j) for r in rows for j in range(s.k)]
        outs = self.worker.continue_from([plain_prompt(self.worker.tokenizer, conversation(r)) for r, _ in keys],
                                         s.plain_max_tokens or s.max_tokens, s.temperature, s.top_p,
                                         [sample_seed(self.cfg.seed, ANSWER_STEP, r["id"], j) for r, j in keys])
        for (r, _), o in zip(keys, outs):
            answer, cut = o["text"].strip(), o["truncated"]
            short = trim_answer(answer) if cut else None  # a cut answer ends at its last complete sentence
            r["candidates"].append({"completion": closed_paragraph(self.cfg, r["paragraph"], short or answer),
                                    "truncated": cut and short is None, "trimmed": short is not None, "by": "plain"})

    def _continue(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        s, m = self.cfg.sft, self.cfg.model
        keys = [(r, j) for r in rows for j in range(s.k)]
        chats = [format_prompt(self.worker.tokenizer, conversation(r), m) for r, _ in keys]
        heads = [c + r["paragraph"] + "\n\n" for c, (r, _) in zip(chats, keys)]
        seeds = lambda step: [sample_seed(self.cfg.seed, step, r["id"], j) for r, j in keys]  # noqa: E731
        if s.close_think == "model":
            outs = self.worker.continue_from(heads, s.max_tokens, s.temperature, s.top_p, seeds(ANSWER_STEP))
            texts = [r["paragraph"] + "\n\n" + o["text"] for (r, _), o in zip(keys, outs)]
            truncated = [o["truncated"] for o in outs]
        else:
            texts, truncated = self._insert_close(keys, chats, heads, seeds)
        for (r, _), text, cut in zip(keys, texts, truncated):
            r["candidates"].append({"completion": self.prefix + text, "truncated": cut})

    def _insert_close(self, keys: list[tuple[dict, int]], chats: list[str], heads: list[str],
                      seeds: Any) -> tuple[list[str], list[bool]]:
        """Thinking continued up to the closing tag or the end of the turn, the tag written by the pipeline, then
        the answer sampled after it. A thought cut at ``think_max_tokens`` is a truncated candidate."""
        s, m = self.cfg.sft, self.cfg.model
        if s.think_max_tokens:
            thoughts = self.worker.continue_from(heads, s.think_max_tokens, s.temperature, s.top_p,
                                                 seeds(THOUGHT_STEP), stop=[m.think_close])
        else:
            thoughts = [{"text": "", "truncated": False} for _ in heads]
        bodies = [r["paragraph"] + ("\n\n" + t["text"].strip() if t["text"].strip() else "") + f"\n{m.think_close}\n\n"
                  for (r, _), t in zip(keys, thoughts)]
        live = [i for i, t in enumerate(thoughts) if not t["truncated"]]
        all_seeds = seeds(ANSWER_STEP)
        answers = self.worker.continue_from([chats[i] + bodies[i] for i in live],
                                            s.max_tokens, s.temperature, s.top_p, [all_seeds[i] for i in live])
        texts = [keys[i][0]["paragraph"] + "\n\n" + thoughts[i]["text"] for i in range(len(keys))]
        truncated = [True] * len(keys)
        for i, a in zip(live, answers):
            texts[i], truncated[i] = bodies[i] + a["text"], a["truncated"]
        return texts, truncated


class JudgeStage:
    """Judges every candidate (the configured judge), applies the filters, keeps the best candidate per row."""

    def __init__(self, cfg: JobConfig, generator: str, policy_path: str | None = None):
        self.cfg, self.generator = cfg, generator
        self.judge = make_judge(cfg)
        self.counter = TokenCounter(load_tokenizer(policy_path, cfg.model) if policy_path else None, cfg)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = decode(batch)
        return encode(batch, judge_rows(self.cfg, self.judge, rows, self.generator, self.counter))


def _judge_candidates(cfg: JobConfig, judge: Any, pairs: list[tuple[dict[str, Any], dict[str, Any]]],
                      counter: Any) -> None:
    """Judge (row, candidate) pairs in place: the candidate gets ``answer``, ``judge``, ``tokens`` and ``filters``."""
    if not pairs:
        return
    m = cfg.model
    scores = judge.score([{"prompt": r["prompt"], "completion": c["completion"], "harmful_label": r["harmful_label"],
                           "level": r["data_level"], "truncated": c["truncated"]} for r, c in pairs])
    c_tokens = counter.completions([c["completion"] for _, c in pairs])
    prompts = {r["id"]: conversation(r) for r, _ in pairs}
    p_tokens = dict(zip(prompts, counter.prompts(list(prompts.values()))))
    for (r, c), b, n in zip(pairs, scores, c_tokens):
        c["answer"] = split_completion(c["completion"], c["truncated"], m.think_open, m.think_close).answer
        c["judge"] = {**b.to_dict(), "rule_refused": detect_refusal(c["answer"])}
        c["tokens"] = n
        c["filters"] = filter_results(c["completion"], c["truncated"], r["harmful_label"], c["judge"], cfg,
                                      fits=counter.fits(p_tokens[r["id"]], n))


def closed_paragraph(cfg: JobConfig, paragraph: str, answer: str) -> str:
    """A completion whose whole thinking is ``paragraph``, closed, then ``answer``."""
    return f"{thinking_prefix(cfg.model)}{paragraph}\n{cfg.model.think_close}\n\n{answer}"


def generator_answer(cfg: JobConfig, row: dict[str, Any], refusal: str, writer: str) -> dict[str, Any]:
    """A candidate whose answer the generator wrote: the paragraph as the whole thinking, closed, then ``refusal``."""
    return {"completion": closed_paragraph(cfg, row["paragraph"], refusal), "truncated": False, "by": "generator",
            "writer": writer}


def judge_rows(cfg: JobConfig, judge: Any, rows: list[dict[str, Any]], generator: str, counter: Any = None,
               write_refusals: bool = True) -> list[dict[str, Any]]:
    """Final SFT records of rows carrying ``paragraph`` and ``candidates`` (completion, truncated).

    A harmful row none of whose candidates passes every filter gets one more candidate written by the generator
    (``sft.refusal_writer``; not with ``write_refusals=False``): the LLM generator's ``refusal`` when it has one and
    it passes, else the template refusal. ``counter`` (a ``TokenCounter``) measures the budget; None estimates it."""
    counter = counter or TokenCounter(None, cfg)
    for r in rows:
        for c in r["candidates"]:
            c.setdefault("by", "model")
    _judge_candidates(cfg, judge, [(r, c) for r in rows for c in r["candidates"]], counter)
    mode = cfg.sft.refusal_writer if write_refusals else "off"
    need = [r for r in rows if mode != "off" and r["harmful_label"] == 1 and r.get("paragraph")
            and not any(all(c["filters"].values()) for c in r["candidates"])]
    llm = [r for r in need if mode == "generator" and r.get("refusal")]
    tried = [(r, generator_answer(cfg, r, r["refusal"], generator)) for r in llm]
    _judge_candidates(cfg, judge, tried, counter)
    done = {r["id"] for r, c in tried if all(c["filters"].values())}
    for r, c in tried:
        if r["id"] in done:
            r["candidates"].append(c)
    fallback = [(r, generator_answer(cfg, r, template_refusal(r["prompt"], r["level"], sample_seed(
        cfg.seed, REFUSAL_STEP, r["id"], 0)), "template")) for r in need if r["id"] not in done]
    _judge_candidates(cfg, judge, fallback, counter)
    for r, c in fallback:
        r["candidates"].append(c)
    closed_by = "model" if cfg.sft.close_think == "model" else "pipeline"
    return [make_record(r, r["paragraph"], r["candidates"], generator, closed_by) for r in rows]
