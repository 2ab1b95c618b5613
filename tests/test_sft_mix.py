"""The SFT mix: curated rows (real template generator and rule judge; the sampled continuations stand in for the
policy's) with STAR-1 mixed in, written by `finalize`, with counted sources, answer writers and survival."""
from __future__ import annotations

import json

import numpy as np
import pytest

from rapo_ray.config import JobConfig
from rapo_ray.judge import make_judge
from rapo_ray.models import load_tokenizer
from rapo_ray.sft import TokenCounter, format_report, load_rows, star1_ingredient
from rapo_ray.sft.curate import curation_prompts, finalize, initial_row
from rapo_ray.sft.records import active_filters
from rapo_ray.sft.stages import judge_rows, template_stage

BABBLE = "well the and so then it was a thing of the other kind"  # what a model that never refuses writes


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir, JobConfig().model)


def test_curated_rows_and_star1_are_mixed_and_counted(shared_data, tok, tmp_path):
    cfg = JobConfig(output_dir=str(tmp_path / "run"), data={
        "root": str(shared_data), "eval_fraction": 0.2, "test_fraction": 0.2,
        "recipe": [{"name": "stratasword", "cap": 12}, {"name": "lookalike_benign", "cap": 12}]},
        sft={"generator": "template", "star1_path": str(shared_data / "star1" / "STAR-1.json"), "star1_rows": 10,
             "max_completion_tokens": 448, "k": 2})
    rows, dev, test = curation_prompts(cfg, tok)
    ids = [{r["id"] for r in part} for part in (rows, dev, test)]
    assert not ids[0] & ids[1] and not ids[0] & ids[2] and not ids[1] & ids[2]
    assert {r["source"] for r in rows} == {"stratasword", "lookalike_benign"}
    recs = [initial_row(r, cfg) for r in rows]
    batch = {"shard": np.zeros(len(recs)), "record": np.array([json.dumps(r) for r in recs], dtype=object)}
    recs = [json.loads(x) for x in template_stage(batch, cfg)["record"]]
    for i, r in enumerate(recs):
        closed = f"<think>\n{r['paragraph']}\n</think>\n\n{BABBLE}"
        if i % 4 == 3:  # a few benign rows whose only continuation never closes its thinking
            closed = f"<think>\n{r['paragraph']}\n\n{BABBLE}"
        r["candidates"] = [{"completion": closed, "truncated": False},
                           {"completion": closed + " more", "truncated": True}]
    counter = TokenCounter(tok, cfg)
    curated = judge_rows(cfg, make_judge(cfg), recs, "template", counter)
    star1, star1_meta = star1_ingredient(cfg, counter)
    out = tmp_path / "run" / "sft_data"
    out.mkdir(parents=True)
    report = finalize(cfg, out, curated + star1, {"generator": "template", "star1": star1_meta})

    harm = [r for r in curated if r["source"] == "stratasword"]
    benign = [r for r in curated if r["source"] == "lookalike_benign"]
    unclosed = [r for r in benign if "</think>" not in r["completion"]]
    src = report["by_source"]
    # harmful prompts: no continuation refused, so every one is kept with a generator-written refusal
    assert src["stratasword"] == {"offered": len(harm), "kept": len(harm), "generator_answers": len(harm),
                                  "dropped": {}, "kept_rate": 1.0}
    # benign prompts keep the model's answer; the ones that never closed their thinking are dropped, counted
    assert unclosed and src["lookalike_benign"]["kept"] == len(benign) - len(unclosed)
    assert src["lookalike_benign"]["generator_answers"] == 0
    assert src["lookalike_benign"]["dropped"] == ({"no_think_close": len(unclosed)} if unclosed else {})
    assert src["star1"]["kept"] == 10 == star1_meta["kept"] and src["star1"]["generator_answers"] == 0
    mix = report["mix"]
    assert mix["by_source"] == {"lookalike_benign": len(benign) - len(unclosed), "star1": 10,
                                "stratasword": len(harm)}
    assert mix["harmful"] == len(harm) + 10 and mix["benign"] == len(benign) - len(unclosed)
    assert mix["answer_by"] == {"model": mix["benign"] + 10, "plain": 0, "generator": len(harm)}
    assert report["kept"] == mix["rows"] == sum(mix["by_source"].values())
    assert report["prompts"] == len(curated) + len(star1)
    survived = [s["survived"] for s in report["filters"]]
    assert [s["filter"] for s in report["filters"]] == list(active_filters(cfg))
    assert survived == sorted(survived, reverse=True) and survived[-1] == report["kept"]
    text = format_report(report)
    assert "STAR-1: offered 1000" in text and "stratasword" in text and "generator-written" in text
    kept = load_rows(out / "dataset")
    assert len(kept) == report["kept"] and all(r["completion_tokens"] <= 448 for r in kept)
    assert {r["answer_by"] for r in kept if r["source"] == "stratasword"} == {"generator"}


def test_matched_pairs_keep_their_origin_through_curation_and_share_sft_batches(tok, tmp_path):
    from rapo_ray.sft.trainer import build_samples, epoch_order, group_keys

    objects = ["the weeds", "a process", "the lock", "the photo", "the party", "the engine"]
    (tmp_path / "pairs.yaml").write_text("".join(
        f"- {{id: p{i}, category: c, harmful: 'How do I use {o} to hurt my neighbour number {i}?', "
        f"benign: 'How do I take care of {o} in my garden, step {i}?'}}\n" for i, o in enumerate(objects)),
        encoding="utf-8")
    cfg = JobConfig(output_dir=str(tmp_path / "run"), data={
        "root": str(tmp_path), "eval_fraction": 0.0, "test_fraction": 0.0,
        "recipe": [{"name": "paired_requests", "path": "pairs.yaml"}]},
        sft={"generator": "template", "star1_path": None, "max_completion_tokens": 448, "k": 1})
    rows, _, _ = curation_prompts(cfg, tok)
    assert len(rows) == 12 and len({r["origin_id"] for r in rows}) == 6
    recs = [initial_row(r, cfg) for r in rows]
    batch = {"shard": np.zeros(len(recs)), "record": np.array([json.dumps(r) for r in recs], dtype=object)}
    recs = [json.loads(x) for x in template_stage(batch, cfg)["record"]]
    for r in recs:
        r["candidates"] = [{"completion": f"<think>\n{r['paragraph']}\n</think>\n\n{BABBLE}", "truncated": False}]
    curated = judge_rows(cfg, make_judge(cfg), recs, "template", TokenCounter(tok, cfg))
    out = tmp_path / "run" / "sft_data"
    out.mkdir(parents=True)
    finalize(cfg, out, curated, {"generator": "template"})
    kept = load_rows(out / "dataset")
    assert len(kept) == 12 and {r["origin_id"] for r in kept} == {f"paired_requests:p{i}" for i in range(6)}
    samples, _ = build_samples(kept, tok, cfg)
    keys = group_keys(kept, samples)
    for epoch in range(3):
        order = epoch_order(keys, seed=0, epoch=epoch)
        assert sorted(order) == list(range(12))
        assert all(keys[order[i]] == keys[order[i + 1]] for i in range(0, 12, 2))  # each pair side by side
    assert epoch_order(keys, 0, 0) != epoch_order(keys, 0, 1)
    # distinct keys: the plain seeded permutation, as before pairs existed
    assert epoch_order([str(i) for i in range(9)], 0, 0) == np.random.default_rng([0, 7, 0]).permutation(9).tolist()
