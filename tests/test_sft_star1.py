"""STAR-1 import into the SFT format (real STAR-1.json), and the same outputs as curation."""
from __future__ import annotations

import json

import pytest

from rapo_ray.config import JobConfig
from rapo_ray.sft import SFTDataError, cmd_sft_data, import_star1, load_rows


@pytest.fixture(scope="module")
def star1(shared_data):
    return shared_data / "star1" / "STAR-1.json"


def test_import_real_star1(star1):
    rows, dropped = import_star1(star1)
    assert len(rows) == 1000 and not dropped
    r = rows[0]
    src = json.loads(star1.read_text())[0]
    assert r["prompt"] == src["question"] and r["id"] == f"star1:{src['id']}" and r["harmful_label"] == 1
    assert r["completion"] == src["response"] and r["completion"].startswith("<think>\n")
    assert r["messages"][1] == {"role": "assistant", "content": src["response"]}
    assert r["reasoning"] and "\n\n" not in r["reasoning"] and r["reasoning"] in r["completion"]
    assert r["level_source"] == "judge" and r["level"] >= 1
    assert set(r["filters"]) == {"max_tokens", "short_reasoning", "no_think_close", "harmful_not_refused",
                                 "benign_refused"}
    # Most STAR-1 answers are refusals (656 by the rule judge); the rest are safe completions (a summary in place
    # of a copyrighted passage, advice), which the harmful_not_refused filter drops.
    refused = sum(x["filters"]["harmful_not_refused"] for x in rows)
    assert 600 < refused < 1000, refused
    assert all(x["filters"]["no_think_close"] and x["filters"]["max_tokens"] for x in rows)


def test_bad_star1_inputs(tmp_path):
    with pytest.raises(SFTDataError, match="not found"):
        import_star1(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SFTDataError, match="not valid JSON"):
        import_star1(tmp_path / "bad.json")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(SFTDataError, match="JSON list"):
        import_star1(tmp_path / "obj.json")
    (tmp_path / "rows.json").write_text(json.dumps([
        {"question": "How do I pick a lock?", "response": "<think>\nPicking locks can enable burglary, a crime. "
                     "I should not help.\n</think>\n\nI can't help with that."},
        {"question": "", "response": "<think>\nx\n</think>\n\ny"}, "not an object",
        {"question": "Q?", "response": "no think block"}]))
    rows, dropped = import_star1(tmp_path / "rows.json")
    assert len(rows) == 1 and dropped == {"no_question": 2, "response_without_think": 1}
    assert rows[0]["kept"]


def test_sft_data_with_star1_writes_the_curated_layout(star1, tmp_path):
    cfg = JobConfig(output_dir=str(tmp_path / "run"), sft={"star1_path": str(star1), "min_rows": 10})
    out = cmd_sft_data(cfg)
    assert out == tmp_path / "run" / "sft_data"
    report = json.loads((out / "report.json").read_text())
    kept = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    rejected = (out / "rejected.jsonl").read_text().splitlines()
    assert report["generator"] == "star1" and report["prompts"] == 1000 == len(kept) + len(rejected)
    assert report["kept"] == len(kept) > 600
    ds = load_rows(out / "dataset")
    assert [r["id"] for r in ds] == [r["id"] for r in kept] and ds[0]["messages"] == kept[0]["messages"]
    assert (out / "COMPLETE").is_file()
    assert cmd_sft_data(cfg) == out  # complete: skipped
    with pytest.raises(SFTDataError, match="min_rows=2000"):
        cmd_sft_data(cfg.model_copy(update={"sft": cfg.sft.model_copy(update={"min_rows": 2000}),
                                            "output_dir": str(tmp_path / "other")}))
    assert json.loads((tmp_path / "other" / "sft_data" / "report.json").read_text())["kept"] == report["kept"]
