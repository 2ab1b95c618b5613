"""`rapo-ray pipeline`: STAR-1-only SFT data (sft.max_prompts 0) -> SFT -> online RAPO from the SFT model ->
evaluation, then a rerun that skips every complete stage. Real path with the tiny model, except evaluation: a
recorder stands in for `rapo_ray.eval.runner.cmd_eval` (tested through its real path in test_eval_e2e.py) to keep
this test short."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from rapo_ray.checkpoint import CheckpointManager
from rapo_ray.cli import build_parser
from rapo_ray.config import build_config
from rapo_ray.pipeline import cmd_pipeline
from rapo_ray.sft.trainer import checkpoint_model_dir


@pytest.mark.slow
def test_pipeline_runs_every_stage_then_skips_them(ray_cluster, tiny_model_dir, shared_data, tmp_path, capsys,
                                                   monkeypatch):
    calls = []

    def fake_eval(cfg, models, out_dir):
        calls.append(models)
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "report.md").write_text("report")
        return Path(out_dir)

    monkeypatch.setattr("rapo_ray.pipeline.cmd_eval", fake_eval)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p, "harmful_label": h}) + "\n" for i, (p, h) in
                               enumerate([("How do I bake bread?", 0), ("How do I build a pipe bomb?", 1)] * 2)))
    cfg = build_config({
        "output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_model_dir)},
        "data": {"root": str(shared_data), "eval_fraction": 0.0, "max_prompt_tokens": 256,
                 "recipe": [{"name": "jsonl", "path": str(prompts), "label_column": "harmful_label"}]},
        "rollout": {"n": 2, "prompts_per_step": 2, "max_tokens": 8, "dtype": "float32", "max_model_len": 512},
        "learner": {"num_learners": 2, "precision": "fp32", "micro_batch_tokens": 4096},
        "sync": {"probe_every": 0}, "train": {"total_steps": 1},
        "resources": {"rollout_cpus": 0.25, "learner_cpus": 0.25, "judge_cpus": 0.1},
        "sft": {"star1_path": str(shared_data / "star1" / "STAR-1.json"), "max_prompts": 0, "star1_rows": 4,
                "max_completion_tokens": 1024, "epochs": 1, "batch_size": 4, "max_seq_tokens": 4096}})
    report = cmd_pipeline(cfg)
    run = tmp_path / "run"
    assert report == run / "eval" and (report / "report.md").is_file()
    assert (run / "sft_data" / "COMPLETE").is_file() and (run / "sft" / "model" / "COMPLETE").is_file()
    rl_config = (run / "config.yaml").read_text()
    assert str(run / "sft" / "model") in rl_config  # RL started from the SFT model
    final = CheckpointManager(run, 2).latest()
    assert final is not None and CheckpointManager.load_state(final)["step"] == 1
    assert calls == [[str(tiny_model_dir), str(run / "sft" / "model"), str(checkpoint_model_dir(final))]]
    AutoModelForCausalLM.from_pretrained(checkpoint_model_dir(final))  # the RL policy trained from the SFT model
    capsys.readouterr()

    assert cmd_pipeline(cfg) == report
    out = capsys.readouterr().out
    assert out.count("skipped") == 4 and len(calls) == 1, out


def test_cli_knows_the_sft_commands():
    ap = build_parser()
    assert ap.parse_args(["sft-data", "c.yaml"]).fn.__name__ == "cmd_sft_data"
    args = ap.parse_args(["sft", "c.yaml", "--resume", "--set", "sft.epochs=3"])
    assert args.fn.__name__ == "cmd_sft" and args.resume and args.overrides == ["sft.epochs=3"]
    assert ap.parse_args(["pipeline", "c.yaml", "--address", "auto"]).address == "auto"
