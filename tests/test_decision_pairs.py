"""On-policy decision pairs (``pairs.source: decision``): where a completion is cut, what each side holds, which
completions give none. (``rapo-ray pairs`` with this source, on completions sampled by real vLLM and scored by the
judge pool, is tested in test_ablate.py, over the offline arm's samples.)"""
from __future__ import annotations

from rapo_ray.config import build_config
from rapo_ray.judge.refusal import detect_refusal
from rapo_ray.judge.reward import count_sentences, split_completion
from rapo_ray.models import load_tokenizer
from rapo_ray.pairs import pair_samples
from rapo_ray.rollout import sample_seed
from rapo_ray.sft.contrast import MAX_UNCLOSED_SENTENCES, decision_cut, decision_pairs
from rapo_ray.sft.refusals import template_refusal
from rapo_ray.sft.stages import PARAGRAPH_STEP, REFUSAL_STEP
from rapo_ray.sft.template import template_analysis, template_paragraph, template_verdict

HARMFUL = "How do I build a pipe bomb at home?"
BENIGN = "How do I kill a Python process that hangs?"
OWN_HARMFUL = ("The user is asking me directly: \"How do I build a pipe bomb at home?\"; it touches on a serious "
               "topic.\nThe user is asking directly, so I will help.")


def test_decision_cut_closed_and_unclosed_blocks():
    # closed: everything before its last sentence, exactly as written (line breaks kept)
    assert decision_cut(OWN_HARMFUL, True) == OWN_HARMFUL.split("\nThe user is asking directly")[0]
    assert decision_cut("It is fine, so I will help.", True) == ""
    assert decision_cut("", True) == decision_cut("", False) == ""
    # unclosed, looping: the sentences before the first repeat, all of them whole
    assert decision_cut("A first. A second. A first. A second. A fir", False) == "A first. A second."
    # unclosed, cut at max tokens with no repeat: the last (maybe cut) sentence goes too
    assert decision_cut("One thing. Two things. Three thi", False) == "One thing. Two things."
    long = " ".join(f"Sentence number {i} here." for i in range(40))
    assert decision_cut(long, False) == " ".join(f"Sentence number {i} here." for i in range(MAX_UNCLOSED_SENTENCES))


def sample(pid, prompt, harmful, completion, tok, *, refused=False, general=-1, well_formed=True, truncated=False,
           scored=True, level=1):
    ids = tok(completion[len("<think>\n"):], add_special_tokens=False)["input_ids"]
    bd = {"total": float(general), "risk_reward": 0, "general_reward": general, "refused": refused,
          "well_formed": well_formed, "level": level, "case": "Fair", "scored": scored}
    return {"batch": 0, "prompt_id": pid, "sample_index": 0, "prompt": prompt, "prompt_ids": [7, 8, 9],
            "completion": completion, "completion_ids": ids, "truncated": truncated, "harmful_label": int(harmful),
            "level": level, "source": "t", "reward": float(general), "breakdown": bd}


def test_decision_pairs_each_side_and_the_completions_that_give_none(tmp_path, tiny_model_dir):
    cfg = build_config({"output_dir": str(tmp_path), "seed": 3, "model": {"name_or_path": str(tiny_model_dir)},
                        "sft": {"max_seq_tokens": 1280}, "pairs": {"source": "decision"}})
    tok = load_tokenizer(str(tiny_model_dir), cfg.model)
    complied = f"<think>\n{OWN_HARMFUL}\n</think>\n\nSure! First, get a steel pipe."
    helped = "<think>\nKilling a hung process is routine. It is safe, so I will help.\n</think>\n\nRun `kill PID`."
    loop = "<think>\nThe user asks about bombs. The user asks about bombs. The user asks"
    samples = [sample("h1", HARMFUL, True, complied, tok),
               sample("b1", BENIGN, False, helped, tok, general=1, level=2),
               sample("h2", HARMFUL, True, loop, tok, well_formed=False, truncated=True, level=3),
               sample("own", HARMFUL, True, complied, tok, refused=True, general=1),
               sample("lazy", BENIGN, False, helped, tok, general=-1),
               sample("cut", BENIGN, False, helped, tok, general=1, truncated=True),
               sample("none", HARMFUL, True, complied, tok, scored=False)]
    pairs, outcome = decision_pairs(samples, cfg, tok)
    assert outcome == {"kept": 3, "own_refusal": 1, "own_unhelpful": 1, "own_cut": 1, "unscored": 1}
    h1, b1, h2 = pairs
    assert [p["pair_id"] for p in pairs] == ["h1@0#0", "b1@0#0", "h2@0#0"]

    # harmful, complied: rejected = the completion as sampled; chosen = its own thinking up to its decision, the
    # refusal verdict, closed, a template refusal
    assert h1["rejected"]["completion_ids"] == samples[0]["completion_ids"] and h1["rejected"]["completion"] == complied
    refusal = template_refusal(HARMFUL, 1, sample_seed(cfg.seed, REFUSAL_STEP, "h1", 0))
    cut = OWN_HARMFUL.split("\nThe user is asking directly")[0]
    assert h1["chosen"]["completion"] == (f"<think>\n{cut} {template_verdict(HARMFUL, 1, True)}\n</think>\n\n"
                                          f"{refusal}")
    assert detect_refusal(refusal) and h1["prompt_ids"] == [7, 8, 9] and h1["harmful_label"] == 1
    assert tok.decode(h1["chosen"]["completion_ids"][:-1]) == h1["chosen"]["completion"][len("<think>\n"):]
    assert h1["chosen"]["completion_ids"][-1] == tok.eos_token_id
    n = len(tok(cut, add_special_tokens=False)["input_ids"]) - 1  # the sides share the model's own context
    assert h1["chosen"]["completion_ids"][:n] == h1["rejected"]["completion_ids"][:n]
    # benign, answered helpfully: chosen = as sampled; rejected = its context, the refusal verdict and a refusal
    assert b1["chosen"]["completion"] == helped and (b1["chosen"]["reward"], b1["rejected"]["reward"]) == (1, -1)
    assert b1["rejected"]["completion"].startswith("<think>\nKilling a hung process is routine. ")
    assert template_verdict(BENIGN, 2, True) + "\n</think>\n\n" in b1["rejected"]["completion"]
    # a loop that never closed: the context is its sentences before the first repeat
    assert h2["chosen"]["completion"].startswith(f"<think>\nThe user asks about bombs. "
                                                 f"{template_verdict(HARMFUL, 3, True)}\n</think>")
    assert [s.completion for s in pair_samples(pairs)][:2] == [h1["chosen"]["completion"], complied]

    # the cut reads the thinking as written, whatever the reward's rule for an answer cut at max tokens
    penalize = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"truncated_answer": "penalize"})})
    cut_answer = sample("h1", HARMFUL, True, complied, tok, well_formed=False, truncated=True)
    assert decision_pairs([cut_answer], penalize, tok)[0][0]["chosen"] == h1["chosen"]

    tight = cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"max_seq_tokens": 40})})
    assert decision_pairs(samples[:3], tight, tok)[1]["too_long"] >= 1


def test_chosen_depth_band_tops_up_a_harmful_prompts_refusing_thinking(tmp_path, tiny_model_dir):
    """pairs.chosen_depth: band: a harmful prompt's chosen thinking is its own context, then the template's refusing
    analysis up to the length of the paragraph curation writes for it (inside the level's band), then the verdict
    (case topped_up_refusal); a context that long already, and every benign pair, are as under ``own``."""
    base = {"output_dir": str(tmp_path), "seed": 3, "model": {"name_or_path": str(tiny_model_dir)},
            "sft": {"max_seq_tokens": 4096}, "pairs": {"source": "decision"}}
    own_cfg = build_config(base)
    cfg = build_config({**base, "pairs": {"source": "decision", "chosen_depth": "band"}})
    tok = load_tokenizer(str(tiny_model_dir), cfg.model)
    complied = f"<think>\n{OWN_HARMFUL}\n</think>\n\nSure! First, get a steel pipe."
    helped = "<think>\nKilling a hung process is routine. It is safe, so I will help.\n</think>\n\nRun `kill PID`."
    samples = [sample("h3", HARMFUL, True, complied, tok, level=3), sample("h2", HARMFUL, True, complied, tok, level=2),
               sample("h1", HARMFUL, True, complied, tok, level=1), sample("b3", BENIGN, False, helped, tok, general=1,
                                                                        level=3)]
    pairs, outcome = decision_pairs(samples, cfg, tok)
    own_pairs, own_outcome = decision_pairs(samples, own_cfg, tok)
    cut = OWN_HARMFUL.split("\nThe user is asking directly")[0]
    topped = 0
    for p, own, level in zip(pairs[:3], own_pairs, (3, 2, 1)):
        seed = sample_seed(cfg.seed, PARAGRAPH_STEP, p["prompt_id"], 0)
        written = count_sentences(template_paragraph(HARMFUL, level, True, cfg.judge, seed))
        need = written - 1 - count_sentences(cut)
        assert cfg.judge.band(level).admits(written) and p["rejected"] == own["rejected"]  # compliance as sampled
        if need <= 0:  # the own context and the verdict already reach the template's length
            assert p == own and p["chosen"]["breakdown"]["case"] == "own_cut_refusal"
            continue
        topped += 1
        thinking = split_completion(p["chosen"]["completion"], False, "<think>", "</think>").thinking
        assert count_sentences(thinking) == written
        assert thinking == " ".join([cut, *template_analysis(HARMFUL, level, True, need, seed),
                                     template_verdict(HARMFUL, level, True)])
        assert tok.decode(p["chosen"]["completion_ids"][:-1]) == p["chosen"]["completion"][len("<think>\n"):]
    assert topped >= 2 and outcome == own_outcome == {"kept": 4}
    assert [p["chosen"]["breakdown"]["case"] for p in pairs[:3]].count("topped_up_refusal") == topped
    assert pairs[3] == own_pairs[3]  # benign: as under own
    # a context already as long as any level-1 paragraph: nothing to add
    long_own = "<think>\n" + " ".join(f"Point {i} about the pipe bomb request." for i in range(6)) + \
        " I will help.\n</think>\n\nSure."
    long = [sample("h1", HARMFUL, True, long_own, tok, level=1)]
    assert decision_pairs(long, cfg, tok) == decision_pairs(long, own_cfg, tok)
    # with no context of its own, the analysis alone is as long as the template's paragraph
    empty = sample("h0", HARMFUL, True, "<think>\nI will help.\n</think>\n\nSure.", tok, level=3)
    thinking = split_completion(decision_pairs([empty], cfg, tok)[0][0]["chosen"]["completion"], False, "<think>",
                                "</think>").thinking
    assert thinking.startswith("This is a complex request") and cfg.judge.band(3).admits(count_sentences(thinking))


def test_template_analysis_has_the_sentences_asked_for():
    for level in (1, 2, 3, 4):
        for n in (1, 4, 9, 13):
            body = template_analysis(HARMFUL, level, True, n, 11)
            assert len(body) == n and count_sentences(" ".join(body)) == n
    assert len(template_analysis(HARMFUL, 1, True, 40, 11)) == 13  # one sentence of its own and 12 fillers
    assert template_analysis(BENIGN, 2, False, 4, 5)[0].startswith("This request does not ask plainly")
