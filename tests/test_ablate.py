"""The on-policy vs offline ablation: budget bookkeeping, arm configs and report (fast), and the whole ablation end
to end with the tiny model, real vLLM rollout actors, judge actors and DeepSpeed learners (slow)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rapo_ray.ablate import RESULT, Budget, arm_config, arm_result, cmd_ablate
from rapo_ray.ablate_report import FIGURES, write_comparison
from rapo_ray.config import build_config
from rapo_ray.pairs import cmd_pairs
from rapo_ray.sft.template import template_verdict
from e2e_utils import read_jsonl, tiny_job

HOOK = f"{Path(__file__).resolve().parent / 'judge_hooks.py'}:length_reward"  # reward = completion length


def test_budget_and_eval_steps():
    cfg = build_config({"train": {"total_steps": 6}, "rollout": {"prompts_per_step": 3, "n": 4},
                        "algo": {"updates_per_batch": 2}})
    b = Budget.of(cfg)
    assert (b.samples, b.optimizer_steps) == (72, 12)
    assert b.eval_steps(0) == [6] and b.eval_steps(2) == [2, 4, 6] and b.eval_steps(4) == [4, 6]


def test_arm_configs_share_start_seed_and_budget(tmp_path):
    cfg = build_config({"seed": 7, "train": {"total_steps": 4}, "rollout": {"prompts_per_step": 2},
                        "algo": {"updates_per_batch": 2, "max_staleness": 1}, "ablate": {"eval_every": 2}})
    arms = {a: arm_config(cfg, a, "/models/start", tmp_path) for a in ("online", "offline", "stale")}
    for a, c in arms.items():
        assert c.model.name_or_path == "/models/start" and c.seed == 7 and c.output_dir == str(tmp_path / "arms" / a)
        assert c.checkpoint.keep_last >= 3 and c.checkpoint.save_final
    assert arms["online"].algo.max_staleness == 0 and arms["stale"].algo.max_staleness == 1
    assert arms["online"].checkpoint.every == 2
    off = arms["offline"]
    assert off.pairs.model == "/models/start" and off.pairs.max_prompts == 8 and off.pairs.steps == 8
    assert off.checkpoint.every == 4  # eval_every online steps = 4 optimizer steps
    assert off.pairs.out_dir == str(tmp_path / "arms" / "offline" / "pairs")
    # a named reader's unset keys stay unset (it would read an explicitly set prompt_column)
    with_recipe = build_config({"data": {"recipe": [{"name": "advbench_pkg", "wrap": True}]}})
    assert arm_config(with_recipe, "online", "/m", tmp_path).data.recipe[0].model_fields_set == {"name", "wrap"}
    with pytest.raises(ValueError, match="unknown arm"):
        arm_config(cfg, "kto", "/m", tmp_path)
    with pytest.raises(Exception, match="must not repeat"):
        build_config({"ablate": {"arms": ["online", "online"]}})


def _rate(k: int, n: int) -> dict:
    return {"k": k, "n": n, "rate": k / n, "low": max(0.0, k / n - 0.2), "high": min(1.0, k / n + 0.2),
            "method": "wilson", "confidence": 0.95}


def _eval(asr: int) -> dict:
    return {"eval_reward": {"mean": 0.5, "low": 0.1, "high": 0.9, "n": 10, "confidence": 0.95},
            "asr_judge": _rate(asr, 10), "asr_phrase": _rate(asr, 10), "over_refusal_judge": _rate(1, 5),
            "well_formed": _rate(3, 15), "asr_by_level": {"1": _rate(asr, 5), "3": _rate(0, 5)}}


def test_report_table_and_figures(tmp_path):
    pts = lambda s, asr: [{"step": 2, "optimizer_steps": 2, "samples": s, "time_s": 12.0, "model": "m",  # noqa: E731
                           "eval": _eval(asr)}]
    comparison = {
        "budget": {"steps": 2, "prompts_per_step": 2, "n": 4, "updates_per_batch": 1, "samples": 16,
                   "optimizer_steps": 2},
        "seed": 0, "start_model": "/m/start", "start": _eval(7), "eval": {"settings": {}, "report": "eval"},
        "arms": {"online": {"elapsed_s": 30.0, "points": pts(16, 4),
                            "train_curve": [{"samples": 8, "time_s": 5.0, "reward": -1.0, "staleness": 0},
                                            {"samples": 16, "time_s": 12.0, "reward": 0.5, "staleness": 0}]},
                 "offline": {"elapsed_s": 20.0, "points": pts(16, 6),
                             "train_curve": [{"samples": 16, "time_s": 4.0, "reward": -1.0}],
                             "pairs": {"pairs": 3, "prompts": 4, "outcome": {"kept": 3, "tie": 1}, "reward_mean": -1.0,
                                       "chosen_reward_mean": 0.0, "rejected_reward_mean": -2.0},
                             "dpo_final": {"loss": 0.6, "accuracy": 0.67, "margin": 0.01}},
                 "stale": {"elapsed_s": 25.0, "points": pts(16, 5),
                           "train_curve": [{"samples": 8, "time_s": 4.0, "reward": -1.0, "staleness": 0},
                                           {"samples": 16, "time_s": 9.0, "reward": 0.0, "staleness": 1}]}}}
    files = write_comparison(tmp_path, comparison)
    md = files["report.md"].read_text()
    assert ("| online RAPO (on-policy GRPO) | 16 | 2 | 12 | 30 | 0.500 [0.100, 0.900] (n=10) | "
            "40.0% [20.0, 60.0] (n=10)") in md
    assert "| start model | 0 | 0 | - | - |" in md and "offline: 3 pairs kept of 4 prompts" in md
    assert "| online RAPO, one-step-stale policy | 16 | 2 | 12 | 25 |" in md and "max staleness 1" in md
    assert "| level 1 | level 3 |" in md
    for f in FIGURES:
        assert files[f].read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(files["comparison.json"].read_text())
    assert saved["arms"]["offline"]["points"][0]["eval"]["asr_judge"]["k"] == 6


@pytest.mark.slow
def test_ablation_end_to_end_and_resume(ray_cluster, tiny_model_dir, tmp_path):
    cfg = tiny_job(tmp_path, tiny_model_dir, {
        "judge.backend": "hook", "judge.hook": HOOK, "rollout.prompts_per_step": 2, "rollout.n": 4,
        "train.total_steps": 2, "sync.probe_every": 0, "learner.lr": 1e-3,
        "learner.num_learners": 1,  # two ranks (pair sharding, ZeRO) are covered by test_dpo_learner; this saves time
        "pairs.min_margin": 1.0, "pairs.pairs_per_step": 2, "pairs.beta": 0.1,
        "ablate.arms": ["online", "offline"], "ablate.out_dir": str(tmp_path / "ablation"),
        "eval.sets": [{"name": "jsonl", "path": str(tmp_path / "prompts.jsonl"), "label_column": "harmful_label",
                       "level_column": "level", "id_column": "id", "cap": 6}],
        "eval.max_tokens": 16, "eval.max_model_len": 512, "eval.humaneval": 0, "eval.gsm8k": 0,
        "eval.cache_dir": str(tmp_path / "eval_cache")})
    root = cmd_ablate(cfg)
    c = json.loads((root / "comparison.json").read_text())
    assert c["budget"]["samples"] == 16 and c["start_model"] == str(tiny_model_dir)
    assert list(c["arms"]) == ["online", "offline"]
    for arm, r in c["arms"].items():
        acfg = (root / "arms" / arm / "config.yaml").read_text()
        assert f"name_or_path: {tiny_model_dir}" in acfg and "seed: 0" in acfg
        assert [(p["step"], p["optimizer_steps"], p["samples"]) for p in r["points"]] == [(2, 2, 16)]
        assert all(0 <= p["eval"]["asr_judge"]["k"] <= p["eval"]["asr_judge"]["n"] for p in r["points"])
        assert all(p["eval"]["eval_reward"]["n"] == 6 for p in r["points"])
        assert not any((Path(p["model"]) / "ds").exists() for p in r["points"])  # optimizer state pruned
    online, offline = c["arms"]["online"], c["arms"]["offline"]
    assert [p["samples"] for p in online["train_curve"]] == [8, 16]
    assert [p["samples"] for p in offline["train_curve"]] == [8, 16]  # the pairs' two batches
    assert [p["staleness"] for p in online["train_curve"]] == [0, 0]
    # Same start, prompts and seeds: the pairs' first batch holds exactly online step 1's completions.
    pairs_dir = root / "arms" / "offline" / "pairs"
    first = [(s["prompt_id"], s["sample_index"], s["completion_ids"]) for s in read_jsonl(pairs_dir / "samples.jsonl")
             if s["batch"] == 0]
    online_1 = [(r["prompt_id"], r["sample_index"], r["completion_ids"])
                for r in read_jsonl(root / "arms" / "online" / "rollouts.jsonl") if r["step"] == 1]
    assert first == online_1 and len(first) == 8
    pairs = read_jsonl(pairs_dir / "pairs.jsonl")
    summary = json.loads((pairs_dir / "summary.json").read_text())
    assert summary["samples"] == 16 and summary["pairs"] == len(pairs) == offline["pairs"]["pairs"] > 0
    for p in pairs:
        assert p["margin"] >= 1.0 and p["chosen"]["breakdown"]["total"] == max(p["group_totals"])
        assert p["rejected"]["breakdown"]["total"] == min(p["group_totals"])
    dpo_rows = read_jsonl(root / "arms" / "offline" / "metrics.jsonl")
    assert [r["step"] for r in dpo_rows] == [0, 1, 2] and dpo_rows[1]["dpo/loss"] == pytest.approx(0.693, abs=2e-3)
    md = (root / "report.md").read_text()
    assert "offline pairs + DPO" in md and "online RAPO (on-policy GRPO)" in md and "%" in md
    for f in FIGURES:
        assert (root / f).read_bytes()[:4] == b"\x89PNG"
    assert (root / "eval" / "report.md").is_file()

    # Resumable: complete arms are skipped and the evaluation comes from the cache; an arm whose result is gone
    # is rebuilt from its files without training again (its final checkpoints exist).
    before = {a: (root / "arms" / a / RESULT).stat().st_mtime_ns for a in c["arms"]}
    (root / "arms" / "offline" / RESULT).unlink()
    cmd_ablate(cfg)
    assert (root / "arms" / "online" / RESULT).stat().st_mtime_ns == before["online"]
    again = json.loads((root / "comparison.json").read_text())
    assert again["arms"]["offline"]["points"] == c["arms"]["offline"]["points"]
    assert len(read_jsonl(root / "arms" / "offline" / "metrics.jsonl")) == 3  # no DPO step ran again
    eval_cache = json.loads((root / "eval" / "metrics.json").read_text())["models"]
    assert all(s == {"generation": "hit", "scores": "hit"} for m in eval_cache.values() for s in m["cache"].values())

    # Pairs stopped after their first batch (the second batch's samples half written) resume with batch 2 alone,
    # and sample exactly what they sampled before.
    samples_before = (pairs_dir / "samples.jsonl").read_text()
    batch_lines = (pairs_dir / "batches.jsonl").read_text().splitlines()
    (pairs_dir / "batches.jsonl").write_text(batch_lines[0] + "\n")
    (pairs_dir / "COMPLETE").unlink()
    with (pairs_dir / "samples.jsonl").open("a") as f:
        f.write('{"batch": 1, "cut')
    cmd_pairs(arm_config(cfg, "offline", str(tiny_model_dir), root))
    assert (pairs_dir / "samples.jsonl").read_text() == samples_before
    assert read_jsonl(pairs_dir / "batches.jsonl")[0] == json.loads(batch_lines[0])
    assert read_jsonl(pairs_dir / "pairs.jsonl") == pairs and (pairs_dir / "COMPLETE").is_file()

    # pairs.source: decision over the same real samples (their batches are finished, so nothing is sampled again):
    # each pair's sampled side is a completion of samples.jsonl token for token, its made side that completion's
    # own context continued with the refusal verdict, closed, then a refusal
    decision_dir = tmp_path / "decision_pairs"
    decision_dir.mkdir()
    for f in ("samples.jsonl", "batches.jsonl"):
        shutil.copy(pairs_dir / f, decision_dir / f)
    dcfg = arm_config(cfg, "offline", str(tiny_model_dir), root)
    dcfg = dcfg.model_copy(update={"pairs": dcfg.pairs.model_copy(update={"source": "decision",
                                                                          "out_dir": str(decision_dir)})})
    cmd_pairs(dcfg)
    samples = {(s["batch"], s["prompt_id"], s["sample_index"]): s for s in read_jsonl(decision_dir / "samples.jsonl")}
    dsum = json.loads((decision_dir / "summary.json").read_text())
    dpairs = read_jsonl(decision_dir / "pairs.jsonl")
    assert dsum["source"] == "decision" and dsum["samples"] == 16 and sum(dsum["outcome"].values()) == 16
    assert dsum["pairs"] == len(dpairs) == dsum["outcome"]["kept"] > 0  # the random model refuses nothing
    for p in dpairs:
        own, made = (p["rejected"], p["chosen"]) if p["harmful_label"] else (p["chosen"], p["rejected"])
        s = samples[(p["batch"], p["prompt_id"], own["sample_index"])]
        assert own["completion_ids"] == s["completion_ids"] and p["prompt_ids"] == s["prompt_ids"]
        assert made["completion"].split("\n</think>\n\n")[0].endswith(
            template_verdict(s["prompt"], p["level"], True))
    # pairs.chosen_depth: band over the same samples: the same pairs, a harmful prompt's chosen thinking the one
    # above topped up with template analysis before the verdict (its case says so), the benign pairs unchanged
    band_dir = tmp_path / "band_pairs"
    shutil.copytree(decision_dir, band_dir, ignore=shutil.ignore_patterns("pairs.jsonl", "summary.json", "COMPLETE"))
    cmd_pairs(dcfg.model_copy(update={"pairs": dcfg.pairs.model_copy(update={"chosen_depth": "band",
                                                                             "out_dir": str(band_dir)})}))
    bpairs, bsum = read_jsonl(band_dir / "pairs.jsonl"), json.loads((band_dir / "summary.json").read_text())
    assert [p["pair_id"] for p in bpairs] == [p["pair_id"] for p in dpairs]
    deeper = 0
    for p, d in zip(bpairs, dpairs):
        if not p["harmful_label"] or p == d:
            assert p == d
            continue
        deeper += 1
        verdict = template_verdict(p["prompt"], p["level"], True)
        own_context = d["chosen"]["completion"].split(verdict)[0]
        thinking = p["chosen"]["completion"].split("\n</think>\n\n")[0]
        assert thinking.startswith(own_context) and thinking.endswith(verdict) and len(thinking) > len(own_context)
        assert p["rejected"] == d["rejected"]
    assert deeper == bsum["chosen_cases"]["topped_up_refusal"] > 0 and bsum["outcome"] == dsum["outcome"]

    # Intermediate points (ablate.eval_every: 1) come from the checkpoints of every step; on the offline arm all
    # samples exist before the first optimizer step. A missing checkpoint is a clear error.
    b = Budget.of(cfg)
    acfgs = {a: arm_config(cfg.model_copy(update={"ablate": cfg.ablate.model_copy(update={"eval_every": 1})}), a,
                           str(tiny_model_dir), root) for a in ("online", "offline")}
    pts = {a: arm_result(acfgs[a], a, b, 1)["points"] for a in acfgs}
    assert [(p["step"], p["samples"]) for p in pts["online"]] == [(1, 8), (2, 16)]
    assert [(p["optimizer_steps"], p["samples"]) for p in pts["offline"]] == [(1, 16), (2, 16)]
    assert pts["offline"][0]["time_s"] < pts["offline"][1]["time_s"]
    shutil.rmtree(root / "arms" / "online" / "checkpoints" / "step_1")
    with pytest.raises(RuntimeError, match="step_1 is missing"):
        arm_result(acfgs["online"], "online", b, 1)
