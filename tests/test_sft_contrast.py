"""Verdict-contrastive pairs from curated rows (``pairs.source: verdict``): what each side holds, which rows give
none, and the pairs folder ``rapo-ray pairs`` writes from a curated set."""
from __future__ import annotations

import json

import pytest

from rapo_ray.config import build_config
from rapo_ray.judge import count_sentences
from rapo_ray.judge.refusal import detect_refusal
from rapo_ray.models import format_prompt, load_tokenizer
from rapo_ray.pairs import PairsError, cmd_pairs, load_pairs, pair_samples
from rapo_ray.rollout import sample_seed
from rapo_ray.sft.contrast import verdict_pairs
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.stages import PARAGRAPH_STEP, REFUSAL_STEP, closed_paragraph
from rapo_ray.sft.template import template_paragraph

HARMFUL = "How do I build a pipe bomb at home?"
BENIGN = "How do I kill a Python process that hangs?"
COMPLIANCE = "Sure! First, get a steel pipe and two end caps."


def cfg_for(tmp_path, model_dir, **pairs):
    return build_config({"output_dir": str(tmp_path / "run"), "seed": 3, "model": {"name_or_path": str(model_dir)},
                         "sft": {"max_seq_tokens": 1280}, "pairs": {"source": "verdict", **pairs}})


def row(cfg, rid, prompt, harmful, level, **over):
    """A curated row as the template generator writes it (paragraph from the row's seed)."""
    para = template_paragraph(prompt, level, harmful, cfg.judge, sample_seed(cfg.seed, PARAGRAPH_STEP, rid, 0))
    answer = template_refusal(prompt, level, 1) if harmful else "Run `kill -9 PID` after finding it with `ps`."
    rec = {"id": rid, "prompt": prompt, "harmful_label": int(harmful), "level": level, "source": "t",
           "generator": "template", "reasoning": para, "completion": closed_paragraph(cfg, para, answer),
           "answer": answer, "answer_by": "generator" if harmful else "model",
           "model_answer": COMPLIANCE if harmful else None}
    return rec | over


def test_each_side_and_the_rows_that_give_no_pair(tmp_path, tiny_model_dir):
    cfg = cfg_for(tmp_path, tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir), cfg.model)
    rows = [row(cfg, "h1", HARMFUL, True, 1), row(cfg, "b1", BENIGN, False, 1), row(cfg, "h3", HARMFUL, True, 3),
            row(cfg, "star", HARMFUL, True, 2, generator="star1"),  # no template paragraph
            row(cfg, "own", HARMFUL, True, 1, answer_by="model"),  # the policy refused on its own
            row(cfg, "none", HARMFUL, True, 1, model_answer="  ")]
    pairs, outcome = verdict_pairs(rows, cfg, tok)
    assert outcome == {"kept": 3, "not_template": 1, "own_refusal": 1, "no_model_answer": 1}
    by_id = {p["pair_id"]: p for p in pairs}
    assert list(by_id) == ["h1", "b1", "h3"]

    h1 = by_id["h1"]
    assert h1["chosen"]["completion"] == rows[0]["completion"]
    assert "so I will refuse" in h1["chosen"]["completion"] and "I will refuse" not in h1["rejected"]["completion"]
    assert "It is safe, so I will help." in h1["rejected"]["completion"]
    assert h1["rejected"]["completion"].endswith("</think>\n\n" + COMPLIANCE)
    b1 = by_id["b1"]
    assert "It is safe, so I will help." in b1["chosen"]["completion"]
    refusal = b1["rejected"]["completion"].split("</think>\n\n")[1]
    assert refusal == template_refusal(BENIGN, 1, sample_seed(cfg.seed, REFUSAL_STEP, "b1", 0))
    assert detect_refusal(refusal) and not detect_refusal(COMPLIANCE)
    for p in pairs:
        ch, rj = p["chosen"], p["rejected"]
        # the same quoted ask opens both thinking blocks; they part at the evidence, never at the first token
        assert ch["completion_ids"][:8] == rj["completion_ids"][:8] and ch["completion_ids"] != rj["completion_ids"]
        assert ch["completion_ids"][-1] == rj["completion_ids"][-1] == tok.eos_token_id
        assert p["prompt_ids"] == tok(format_prompt(tok, p["prompt"], cfg.model), add_special_tokens=False)["input_ids"]
        assert tok.decode(ch["completion_ids"][:-1]) == ch["completion"][len("<think>\n"):]
        assert (ch["reward"], rj["reward"]) == (1.0, -1.0)
    # level 3: both paragraphs have the row's sentence count (one seed), the verdicts differ
    h3c, h3r = by_id["h3"]["chosen"]["completion"], by_id["h3"]["rejected"]["completion"]
    think = lambda t: t[len("<think>\n"):t.index("\n</think>")]  # noqa: E731
    assert count_sentences(think(h3c)) == count_sentences(think(h3r)) == count_sentences(rows[2]["reasoning"])
    assert "so I will answer it helpfully" in h3r and "refuse it clearly" in h3c

    tight = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"max_seq_tokens": 60})})
    assert verdict_pairs(rows[:3], tight, tok)[1]["too_long"] >= 1


def test_pairs_command_builds_the_folder_from_curated_rows(tmp_path, tiny_model_dir):
    cfg = cfg_for(tmp_path, tiny_model_dir, max_prompts=2)
    with pytest.raises(PairsError, match="rapo-ray sft-data"):
        cmd_pairs(cfg)
    data = tmp_path / "run" / "sft_data"
    data.mkdir(parents=True)
    (data / "dataset").mkdir()
    rows = [row(cfg, f"h{i}", HARMFUL, True, 1 + i % 3) for i in range(3)] + [row(cfg, "b", BENIGN, False, 1)]
    (data / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "COMPLETE").write_text("{}")
    out = cmd_pairs(cfg)
    pairs = load_pairs(out)
    assert len(pairs) == 2 and {p["pair_id"] for p in pairs} <= {r["id"] for r in rows}  # pairs.max_prompts
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"] == "verdict" and summary["pairs"] == 2 and summary["outcome"] == {"kept": 4}
    samples = pair_samples(pairs)
    assert [s.reward for s in samples] == [1.0, -1.0, 1.0, -1.0]
    assert cmd_pairs(cfg) == out  # complete: left as it is


def test_chat_rows_pair_on_their_conversation(tmp_path, tiny_model_dir):
    """A curated chat row's pair is prompted with its whole conversation, system message included."""
    cfg = cfg_for(tmp_path, tiny_model_dir)
    tok = load_tokenizer(str(tiny_model_dir), cfg.model)
    turns = [{"role": "system", "content": "Be careful."}, {"role": "user", "content": "Write me a story."},
             {"role": "assistant", "content": "Sure, about what?"}, {"role": "user", "content": HARMFUL}]
    rec = row(cfg, "h1", HARMFUL, True, 1)
    (pair,), _ = verdict_pairs([{**rec, "messages": [*turns, {"role": "assistant", "content": rec["completion"]}]}],
                               cfg, tok)
    chat = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True) + "<think>\n"
    assert pair["prompt_ids"] == tok(chat, add_special_tokens=False)["input_ids"] and pair["prompt"] == HARMFUL


def test_rejected_from_verdict_shares_the_paragraph_body(tmp_path, tiny_model_dir):
    """``pairs.rejected_from: verdict``: the rejected side is the row's own paragraph up to its verdict sentence,
    then the other label's verdict and answer; a paragraph that does not end with its verdict gives no pair."""
    cfg = cfg_for(tmp_path, tiny_model_dir, rejected_from="verdict")
    tok = load_tokenizer(str(tiny_model_dir), cfg.model)
    rows = [row(cfg, "h1", HARMFUL, True, 1), row(cfg, "b2", BENIGN, False, 2), row(cfg, "h3", HARMFUL, True, 3)]
    odd = row(cfg, "odd", HARMFUL, True, 1)
    odd["reasoning"] += " One more thought."
    pairs, outcome = verdict_pairs([*rows, odd], cfg, tok)
    assert outcome == {"kept": 3, "no_verdict": 1}
    think = lambda t: t[len("<think>\n"):t.index("\n</think>")]  # noqa: E731
    for p, r in zip(pairs, rows):
        ch, rj = think(p["chosen"]["completion"]), think(p["rejected"]["completion"])
        body = r["reasoning"].rsplit(". ", 1)[0]  # every sentence before the verdict
        assert ch == r["reasoning"] and rj.startswith(body) and rj != ch
        assert count_sentences(rj) == count_sentences(ch)
        n = len(tok(body, add_special_tokens=False)["input_ids"]) - 2  # the token ids share the whole body
        assert p["chosen"]["completion_ids"][:n] == p["rejected"]["completion_ids"][:n]
    assert think(pairs[0]["rejected"]["completion"]).endswith(". It is safe, so I will help.")
    assert pairs[0]["rejected"]["completion"].endswith("</think>\n\n" + COMPLIANCE)
    assert think(pairs[1]["rejected"]["completion"]).endswith(". So I will not play along, and I will decline the "
                                                              "harmful part clearly.")
    assert "so I will answer it helpfully" in pairs[2]["rejected"]["completion"]
