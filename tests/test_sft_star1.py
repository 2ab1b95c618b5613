"""STAR-1 as an SFT ingredient (real STAR-1.json, real SmolLM2 tokenizer): reading, selection or trimming to the
token budget, the seeded cap, and `sft-data` mixing it into the curated layout."""
from __future__ import annotations

import json

import pytest

from rapo_ray.config import JobConfig
from rapo_ray.models import load_tokenizer
from rapo_ray.sft import SFTDataError, TokenCounter, cmd_sft_data, load_rows, read_star1, star1_ingredient
from rapo_ray.sft.star1 import Star1Error, fit_rows, trim_thinking


@pytest.fixture(scope="module")
def star1(shared_data):
    return shared_data / "star1" / "STAR-1.json"


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir, JobConfig().model)


def job(star1, budget: int, **sft) -> JobConfig:
    return JobConfig(sft={"star1_path": str(star1), "max_completion_tokens": budget, **sft})


def test_read_real_star1(star1):
    rows, dropped = read_star1(star1, JobConfig())
    assert len(rows) == 1000 and not dropped
    src = json.loads(star1.read_text())[0]
    r = rows[0]
    assert r["prompt"] == src["question"] and r["id"] == f"star1:{src['id']}" and r["harmful_label"] == 1
    assert r["candidates"] == [{"completion": src["response"], "truncated": False, "by": "model"}]
    assert r["level_source"] == "judge" and r["source"] == "star1"


def test_select_keeps_only_rows_that_fit_and_trim_fits_more(star1, tok):
    rows, _ = read_star1(star1, JobConfig())
    sel = job(star1, 384)
    counter = TokenCounter(tok, sel)
    assert fit_rows(rows, sel, counter) == 0
    p = counter.prompts([r["prompt"] for r in rows])
    c = counter.completions([r["candidates"][0]["completion"] for r in rows])
    fits_whole = sum(counter.fits(a, b) for a, b in zip(p, c))
    assert 600 < fits_whole < 750  # about two thirds of STAR-1 fits 384 completion tokens whole

    trim = job(star1, 384, star1_fit="trim")
    rows2, _ = read_star1(star1, trim)
    n_trimmed = fit_rows(rows2, trim, TokenCounter(tok, trim))
    assert n_trimmed > 150
    for r, orig in zip(rows2, rows):
        text, before = r["candidates"][0]["completion"], orig["candidates"][0]["completion"]
        if not r["trimmed"]:
            assert text == before
            continue
        n = counter.completions([text])[0]
        assert n <= 384 and n < counter.completions([before])[0]
        think, answer = text.split("</think>")
        old_think, old_answer = before.split("</think>")
        assert answer == old_answer  # the whole answer and the closing tag stay
        paras = think[len("<think>\n"):].strip("\n").split("\n\n")
        old = [x for x in old_think[len("<think>\n"):].strip("\n").split("\n\n") if x.strip()]
        assert paras[0] == old[0] and paras[-1] == old[-1] and 2 <= len(paras) < len(old)


def test_trim_gives_up_when_the_answer_alone_is_too_long(tok):
    cfg = JobConfig(sft={"max_completion_tokens": 32, "star1_fit": "trim"})
    text = "<think>\nFirst.\n\nMiddle.\n\nLast.\n</think>\n\n" + "I cannot help with that. " * 20
    assert trim_thinking(text, 10, TokenCounter(tok, cfg)) is None
    assert trim_thinking("<think>\nnever closed", 10, TokenCounter(tok, cfg)) is None


def test_ingredient_is_judged_capped_and_counted(star1, tok):
    cfg = job(star1, 512, star1_rows=50)
    recs, meta = star1_ingredient(cfg, TokenCounter(tok, cfg))
    kept = [r for r in recs if r["kept"]]
    assert len(kept) == 50 == meta["kept"] and meta["offered"] == 1000
    assert meta["passed"] > 500 and meta["not_selected"] == meta["passed"] - 50
    assert meta["dropped"]["over_star1_rows"] == meta["not_selected"]
    # every STAR-1 row is accounted for: kept, not selected, or dropped by its first failing filter
    failed = sum(v for k, v in meta["dropped"].items() if k != "over_star1_rows")
    assert 50 + meta["not_selected"] + failed == 1000 and failed == len(recs) - 50
    assert meta["dropped"].get("over_budget", 0) > 50 and meta["dropped"].get("harmful_not_refused", 0) > 50
    for r in kept:
        assert r["source"] == "star1" and r["answer_by"] == "model" and r["completion_tokens"] <= 512
        assert r["filters"]["harmful_not_refused"] and not r["trimmed"]
    again, _ = star1_ingredient(cfg, TokenCounter(tok, cfg))
    assert [r["id"] for r in again if r["kept"]] == [r["id"] for r in kept]  # seeded
    other, _ = star1_ingredient(cfg.model_copy(update={"seed": 1}), TokenCounter(tok, cfg))
    assert {r["id"] for r in other if r["kept"]} != {r["id"] for r in kept}


def test_bad_star1_inputs(tmp_path):
    cfg = JobConfig()
    with pytest.raises(Star1Error, match="not found"):
        read_star1(tmp_path / "missing.json", cfg)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(Star1Error, match="not valid JSON"):
        read_star1(tmp_path / "bad.json", cfg)
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(Star1Error, match="JSON list"):
        read_star1(tmp_path / "obj.json", cfg)
    (tmp_path / "rows.json").write_text(json.dumps([
        {"question": "How do I pick a lock?", "response": "<think>\nPicking locks can enable burglary, a crime. "
                     "I should not help.\n</think>\n\nI can't help with that."},
        {"question": "", "response": "<think>\nx\n</think>\n\ny"}, "not an object",
        {"question": "Q?", "response": "no think block"}]))
    rows, dropped = read_star1(tmp_path / "rows.json", cfg)
    assert len(rows) == 1 and dropped == {"no_question": 2, "response_without_think": 1}
    recs, meta = star1_ingredient(JobConfig(sft={"star1_path": str(tmp_path / "rows.json")}), TokenCounter(None, cfg))
    assert [r["kept"] for r in recs] == [True] and meta["offered"] == 4 and meta["invalid"] == dropped


def test_sft_data_with_star1_only_writes_the_curated_layout(star1, tiny_model_dir, tmp_path):
    """sft.max_prompts 0: nothing is curated (no Ray, no vLLM), the set is the STAR-1 ingredient."""
    cfg = JobConfig(output_dir=str(tmp_path / "run"), model={"name_or_path": str(tiny_model_dir)},
                    sft={"star1_path": str(star1), "max_prompts": 0, "star1_rows": 40, "min_rows": 10,
                         "max_completion_tokens": 448})
    out = cmd_sft_data(cfg)
    assert out == tmp_path / "run" / "sft_data"
    report = json.loads((out / "report.json").read_text())
    kept = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    rejected = (out / "rejected.jsonl").read_text().splitlines()
    assert report["kept"] == len(kept) == 40 and report["shards"] == 0
    assert report["star1"]["kept"] == 40 and report["prompts"] == len(kept) + len(rejected)
    assert report["by_source"]["star1"]["kept"] == 40 and report["mix"]["by_source"] == {"star1": 40}
    assert report["completion_budget"] == 448
    assert all(r["completion_tokens"] <= 448 for r in kept)
    ds = load_rows(out / "dataset")
    assert [r["id"] for r in ds] == [r["id"] for r in kept] and ds[0]["messages"] == kept[0]["messages"]
    assert (out / "COMPLETE").is_file()
    assert cmd_sft_data(cfg) == out  # complete: skipped
    with pytest.raises(SFTDataError, match="min_rows=2000"):
        cmd_sft_data(cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"min_rows": 2000}),
                                            "output_dir": str(tmp_path / "other")}))
    assert json.loads((tmp_path / "other" / "sft_data" / "report.json").read_text())["kept"] == 40
