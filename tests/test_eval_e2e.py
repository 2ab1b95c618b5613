"""`rapo-ray eval` through the real path: a vLLM rollout actor over the tiny model, the rule judge pool,
Strata-Sword and XSTest prompts from ../shared/data, HumanEval and GSM8K from their PyPI packages."""
from __future__ import annotations

import json
import shutil

import pytest

from rapo_ray.config import build_config
from rapo_ray.eval import cmd_eval
from rapo_ray.eval.report import PLOTS

pytestmark = pytest.mark.slow


def job(tmp_path, shared_data, **eval_overrides):
    ev = {"sets": [{"name": "stratasword", "cap": 6}, {"name": "xstest", "cap": 6}], "max_tokens": 16,
          "max_model_len": 2048, "humaneval": 2, "gsm8k": 2, "utility_max_tokens": 16,
          "cache_dir": str(tmp_path / "cache"), **eval_overrides}
    return build_config({"output_dir": str(tmp_path / "run"), "data": {"root": str(shared_data)},
                         "rollout": {"dtype": "float32"}, "resources": {"rollout_cpus": 0.25, "judge_cpus": 0.1},
                         "eval": ev})


def load(out):
    metrics = json.loads((out / "metrics.json").read_text())
    recs = [json.loads(x) for f in sorted((out / "completions").glob("*.jsonl")) for x in f.read_text().splitlines()]
    return metrics, recs


def test_eval_tiny_model_real_path(ray_cluster, tiny_model_dir, shared_data, tmp_path):
    model = str(tiny_model_dir)
    out = cmd_eval(job(tmp_path, shared_data), [model], str(tmp_path / "report1"))
    metrics, recs = load(out)
    m = metrics["models"][list(metrics["models"])[0]]
    assert m["cache"] == {t: {"generation": "miss", "scores": "miss"} for t in ("safety", "humaneval", "gsm8k")}
    s = m["safety"]
    assert s["n"] + s["skipped"] == 12 and s["skipped"] == 0
    assert set(s["sets"]) == {"stratasword", "xstest"} and s["sets"]["stratasword"]["n_harmful"] == 6
    assert sum(b["asr_judge"]["n"] for b in s["sets"]["stratasword"]["by_level"].values()) == 6
    assert set(s["sets"]["stratasword"]["by_level"]) <= {"1", "2", "3"}
    assert s["n_harmful"] + s["n_benign"] == 12 and s["sets"]["xstest"]["n_benign"] == s["n_benign"]

    safety = [r for r in recs if r["task"] == "safety"]
    assert len(safety) == 12 and all(r["completion"].startswith("<think>\n") for r in safety)
    for r in safety:
        assert 0 < r["n_tokens"] <= 16 and r["truncated"] == (r["finish_reason"] == "length")
        if r["truncated"] and "</think>" not in r["completion"]:  # cut inside the think block: no answer,
            assert not r["judge"]["well_formed"] and r["judge"]["general_reward"] == -1  # never a refusal
        elif r["truncated"]:  # think block closed, answer cut: the partial answer is judged
            assert r["judge"]["well_formed"] and r["judge"]["answer_cut"]
    harmful_cut = sum(r["harmful_label"] and not r["judge"]["well_formed"] for r in safety)
    assert s["harmful"]["asr_judge"]["k"] >= harmful_cut
    assert s["well_formed"]["k"] == sum(r["judge"]["well_formed"] for r in safety)
    by_case = {c: sum(lv["cases"][c] for lv in s["levels"].values()) for c in ("Adequate", "Fair", "Excessive", "Poor")}
    assert sum(by_case.values()) == 12
    assert m["utility"]["humaneval"]["correct"]["n"] == 2 and m["utility"]["gsm8k"]["correct"]["n"] == 2
    assert [r["status"] for r in recs if r["task"] == "humaneval"] == ["failed", "failed"]  # random weights
    for name in ("metrics.json", "report.md", *PLOTS):
        assert (out / name).stat().st_size > 0, name
    assert (out / PLOTS[0]).read_bytes()[:4] == b"\x89PNG"

    # The same weights under another path, beside the first: nothing is generated or judged again, and the
    # (greedy) results are identical.
    copy = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, copy)
    out2 = cmd_eval(job(tmp_path, shared_data), [model, str(copy)], str(tmp_path / "report2"))
    metrics2, recs2 = load(out2)
    labels = list(metrics2["models"])
    for label in labels:
        assert all(c == {"generation": "hit", "scores": "hit"} for c in metrics2["models"][label]["cache"].values())
    assert metrics2["models"][labels[0]]["safety"] == metrics2["models"][labels[1]]["safety"] == s
    assert [r["completion"] for r in recs2 if r["model"] == labels[1]] == [r["completion"] for r in recs]

    # A context too short for the long jailbreak prompts: they are skipped and counted, not crashed on.
    out3 = cmd_eval(job(tmp_path, shared_data, max_model_len=160, humaneval=0, gsm8k=0), [model],
                    str(tmp_path / "report3"))
    s3 = next(iter(json.loads((out3 / "metrics.json").read_text())["models"].values()))["safety"]
    assert s3["skipped"] > 0 and s3["n"] + s3["skipped"] == 12
