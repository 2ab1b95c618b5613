"""The shipped efficacy recipe (job_configs/safety_cpu.yaml) end to end on the tiny model with short settings:
curation (template paragraphs and refusals, STAR-1 mixed in) -> SFT -> online RAPO -> evaluation of base, SFT
and RL models on held-out prompts, through the real vLLM, DeepSpeed and judge paths."""
from __future__ import annotations

import json

import pytest

from conftest import REPO
from rapo_ray.config import LoraConfig, load_config
from rapo_ray.data.recipe import training_prompt_set
from rapo_ray.data.split import behaviour_key, in_test
from rapo_ray.dpo import cmd_dpo
from rapo_ray.pairs import load_pairs, read_jsonl
from rapo_ray.pipeline import cmd_pipeline
from rapo_ray.sft.curate import curation_prompts


def short(tiny_model_dir, shared_data, tmp_path) -> list[str]:
    return [f"model.name_or_path={tiny_model_dir}", f"data.root={shared_data}", f"output_dir={tmp_path / 'run'}",
            "rollout.max_tokens=16", "rollout.max_model_len=1024", "rollout.n=2", "rollout.prompts_per_step=2",
            "learner.micro_batch_tokens=4096", "learner.gradient_checkpointing=false", "sync.probe_every=0",
            "train.total_steps=1", "train.eval_every=0", "checkpoint.every=0",
            "resources.rollout_threads=null", "resources.rollout_cpus=0.25", "resources.learner_cpus=0.25",
            "resources.judge_cpus=0.1",
            "sft.max_prompts=6", "sft.star1_rows=2", "sft.max_tokens=16", "sft.shard_size=3", "sft.min_rows=1",
            "sft.max_completion_tokens=1024", "sft.batch_size=4",
            "eval.sets=[{name: stratasword, level: 1, cap: 3}, {name: stratasword, level: 3, cap: 3},"
            " {name: jbb_benign_pkg, cap: 2}, {name: xstest, cap: 3}]",
            "eval.max_tokens=16", "eval.max_model_len=1024", "eval.humaneval=0", "eval.gsm8k=2",
            "eval.utility_max_tokens=8", f"eval.cache_dir={tmp_path / 'cache'}"]


def test_recipe_loads_and_holds_out_the_test_split():
    cfg = load_config(REPO / "job_configs" / "safety_cpu.yaml")
    assert cfg.eval.split == "test" and cfg.data.test_fraction > 0
    assert cfg.rollout.max_tokens >= 384 and cfg.judge.truncated_answer == "judge"
    assert not any(s.name == "xstest" for s in cfg.data.recipe + (cfg.sft.recipe or []))


@pytest.mark.slow
def test_safety_recipe_end_to_end_on_the_tiny_model(ray_cluster, tiny_model_dir, shared_data, tmp_path, capsys):
    """Also the pipeline's own contract: each stage feeds the next, and a second run skips every stage."""
    from transformers import AutoModelForCausalLM

    from rapo_ray.checkpoint import CheckpointManager
    from rapo_ray.sft.trainer import checkpoint_model_dir

    # with a preference stage (pairs.in_pipeline): decision pairs sampled greedily, one completion per prompt (the
    # pairs' own sampling settings, not the RL stage's groups of 2), one DPO step, RL from the DPO model
    stage = ["pairs.in_pipeline=true", "pairs.source=decision", "pairs.n=1", "pairs.temperature=0",
             "pairs.prompts_per_step=3", "pairs.max_prompts=6", "pairs.pairs_per_step=2", "pairs.steps=1"]
    cfg = load_config(REPO / "job_configs" / "safety_cpu.yaml", short(tiny_model_dir, shared_data, tmp_path) + stage)
    report = cmd_pipeline(cfg)
    run = tmp_path / "run"
    assert report == run / "eval" and (report / "report.md").is_file()
    assert (run / "sft_data" / "COMPLETE").is_file() and (run / "sft" / "model" / "COMPLETE").is_file()
    assert json.loads((run / "pairs" / "summary.json").read_text())["model"] == str(run / "sft" / "model")
    batches = read_jsonl(run / "pairs" / "batches.jsonl")
    assert [(len(b["prompt_ids"]), b["samples"]) for b in batches] == [(3, 3), (3, 3)]
    dpo = CheckpointManager(run / "dpo", 2).latest()
    assert dpo is not None and CheckpointManager.load_state(dpo)["step"] == 1
    assert str(dpo) in (run / "config.yaml").read_text()  # RL started from the DPO model
    assert [m["dpo/loss"] for m in read_jsonl(run / "dpo" / "metrics.jsonl") if "dpo/loss" in m] == [
        pytest.approx(0.6931, abs=1e-3)]  # one step, policy == reference
    final = CheckpointManager(run, 2).latest()
    assert final is not None and CheckpointManager.load_state(final)["step"] == 1
    AutoModelForCausalLM.from_pretrained(checkpoint_model_dir(final))
    metrics = json.loads((report / "metrics.json").read_text())
    # base, SFT, SFT + DPO, SFT + DPO + RAPO, in that order
    assert [m["path"] for m in metrics["models"].values()] == [
        str(tiny_model_dir), str(run / "sft" / "model"), str(dpo), str(checkpoint_model_dir(final))]
    capsys.readouterr()
    assert cmd_pipeline(cfg) == report
    out = capsys.readouterr().out
    assert out.count("skipped") == 6, out  # curation, SFT, pairs, DPO, RL and evaluation
    # eval.stages: the evaluation holds the named models in the named order (here from the evaluation cache)
    picked = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={
        "stages": ["rl", "base"], "report_dir": str(run / "eval_picked")})})
    picked_metrics = json.loads((cmd_pipeline(picked) / "metrics.json").read_text())
    assert [m["path"] for m in picked_metrics["models"].values()] == [
        str(checkpoint_model_dir(final)), str(tiny_model_dir)]
    assert all(c == {"generation": "hit", "scores": "hit"} for m in picked_metrics["models"].values()
               for c in m["cache"].values())
    curation = json.loads((tmp_path / "run" / "sft_data" / "report.json").read_text())
    assert curation["star1"]["kept"] >= 1 and curation["mix"]["rows"] >= 1
    # nothing evaluated was trained on: every evaluated Strata-Sword row is in the test split, no curated row is
    recs = [json.loads(line) for f in (report / "completions").glob("*.jsonl") for line in f.open()]
    safety = [r for r in recs if r["task"] == "safety"]
    assert safety and all(in_test({"prompt": r["prompt"]}, cfg) for r in safety if r["source"].startswith("strata"))
    curated = [json.loads(line) for line in (tmp_path / "run" / "sft_data" / "sft.jsonl").open()]
    assert not {behaviour_key({"prompt": r["prompt"]}) for r in safety} & {behaviour_key(r) for r in curated}

    # lever 6 of docs/efficacy.md: verdict-contrastive pairs from the curated rows, then one DPO step from the SFT
    # model through the real learner group, with LoRA adapters (DPO runs the online stage's learner code; this is
    # its LoRA test)
    vcfg = cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"lora": LoraConfig(rank=4, alpha=8)}),
        "pairs": cfg.pairs.model_copy(update={"source": "verdict", "pairs_per_step": 2, "steps": 1, "max_prompts": None,
                                              "out_dir": str(run / "verdict_pairs"), "dpo_dir": str(run / "dpo_lora")}),
        "learner": cfg.learner.model_copy(update={"num_learners": 1})})
    model = cmd_dpo(vcfg)
    pairs = load_pairs(run / "verdict_pairs")
    usable = [r for r in curated if r["generator"] == "template" and (not r["harmful_label"] or (
        r["answer_by"] == "generator" and (r["model_answer"] or "").strip()))]
    assert pairs and [p["pair_id"] for p in pairs] == [r["id"] for r in usable]
    for p, r in zip(pairs, usable):
        assert p["chosen"]["completion"] == r["completion"] and p["rejected"]["completion"] != r["completion"]
        if r["harmful_label"]:  # rejected: the policy's own answer, which curation replaced with a refusal
            assert p["rejected"]["completion"].endswith("</think>\n\n" + r["model_answer"].strip())
    assert json.loads((run / "verdict_pairs" / "summary.json").read_text())["model"] == str(run / "sft" / "model")
    steps = [m for m in read_jsonl(run / "dpo_lora" / "metrics.jsonl") if "dpo/loss" in m]
    assert len(steps) == 1 and steps[0]["dpo/loss"] == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    assert (model / "config.json").is_file() and (model / "adapter" / "adapter_config.json").is_file()


def test_chain_recipe_holds_out_the_test_split_and_serves_level_2_three_times(shared_data):
    """job_configs/safety_chain_cpu.yaml: SFT -> decision pairs (balanced by label) + DPO -> RL, 3 of 8 prompts
    benign for 16 steps, then half, then 5 of 8 from step 49 with graded credit and a 2-3 sentence level-1 band
    (judge.schedule; the evaluation judges by them, curation by the judge's own settings), in one command. Its SFT mix
    serves every Strata-Sword row three times and holds plain harmful requests and benign look-alikes; its RL prompts
    serve Strata-Sword level 2 three times an epoch (train side only); no training stage sees a test behaviour or
    XSTest."""
    cfg = load_config(REPO / "job_configs" / "safety_chain_cpu.yaml", [f"data.root={shared_data}"])
    assert cfg.pairs.in_pipeline and cfg.pairs.source == "decision" and cfg.pairs.temperature == 0
    assert cfg.pairs.balance_labels and cfg.data.benign_schedule(cfg.rollout.prompts_per_step) == {0: 3, 16: 4, 48: 5}
    assert (cfg.judge.fair_credit, cfg.judge.band(1).max_sentences) == ("step", 4)
    late = cfg.at_step(cfg.train.total_steps).judge
    assert cfg.at_step(47).judge == cfg.judge.at(0) and late == cfg.at_step(48).judge
    assert (late.fair_credit, late.band(1).max_sentences, late.band(3)) == ("graded", 3, cfg.judge.band(3))
    assert cfg.eval.split == "test" and cfg.rollout.max_tokens >= 384
    assert cfg.sft.benign_answer == "plain" and cfg.algo.skip_zero_advantage and cfg.algo.kl_coef == 0
    sft_sets = {s.name for s in cfg.sft.recipe}
    assert {"plain_harmful", "lookalike_benign"} <= sft_sets and "xstest" not in sft_sets
    rl = training_prompt_set(cfg.data, cfg.seed)
    l2 = [r for r in rl.train if r["source"] == "stratasword_l2"]
    originals = {r["id"] for r in l2 if "~" not in r["id"]}
    assert originals and len(l2) == 3 * len(originals)  # every level-2 train row served three times
    assert not any("~" in r["id"] for r in rl.test + rl.eval)
    assert {r["source"] for r in rl.train} >= {"plain_harmful", "lookalike_benign", "stratasword_l1", "stratasword_l3"}
    assert not any(in_test(r, cfg) for r in rl.train)
    assert all(in_test(r, cfg) for r in rl.test)
    curated, _, _ = curation_prompts(cfg, None)  # what the curation stage offers
    ss = [r["id"] for r in curated if r["source"] == "stratasword"]  # every Strata-Sword row three times (lever 35)
    assert ss and len(ss) == 3 * len({i.split("~")[0] for i in ss})
    by_source = {s: sum(r["source"] == s for r in curated) for s in ("plain_harmful", "lookalike_benign")}
    assert all(n >= 30 for n in by_source.values()), by_source
    assert not any(in_test(r, cfg) for r in curated)
