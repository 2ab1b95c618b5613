"""LoRA through peft on the learner group (issue 18): only adapters train, what leaves the learner is merged."""
from __future__ import annotations

import pytest
import torch

from rapo_ray.config import JobConfig, LoraConfig
from rapo_ray.learner import LearnerGroup
from test_learner import favour_batch, favoured_logprob_trace, hf_logprobs, load_hf

LORA = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def test_lora_config():
    assert JobConfig().model.lora is None  # full fine-tuning by default
    assert LoraConfig().target_modules == "all-linear"
    for bad in ({"rank": 0}, {"target_modules": []}, {"target_modules": ["q_proj", "lm_head"]}, {"dropout": 1.0}):
        with pytest.raises(ValueError):
            JobConfig(model={"lora": bad})


@pytest.mark.slow
def test_lora_learner_trains_adapters_only_and_exports_merged_weights(ray_cluster, tiny_model_dir, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open

    cfg = JobConfig.model_validate({"model": {"lora": LORA}, "resources": {"learner_cpus": 0.5},
                                    "learner": {"num_learners": 2, "zero_stage": 3, "lr": 1e-2, "precision": "fp32",
                                                "micro_batch_tokens": 48, "logprob_chunk": 16}})
    group = LearnerGroup(cfg, str(tiny_model_dir))
    try:
        base = load_hf(tiny_model_dir)
        start = group.param_checksums()[0]
        with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
            assert set(start) == set(f.keys())  # the base model's names: adapters are merged, never listed
            # B = 0 at the start: merged == base (up to the float64 sum's order)
            assert start == pytest.approx({k: float(f.get_tensor(k).double().sum()) for k in start}, rel=1e-12)

        batch = favour_batch(0)
        trace = favoured_logprob_trace(group, batch, 3)
        assert all(b > a for a, b in zip(trace, trace[1:])), trace
        sums = group.param_checksums()
        assert sums[0] == sums[1]
        changed = {k for k in start if sums[0][k] != start[k]}
        assert changed == {k for k in start if k.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight"))}

        # the checkpoint's HF folder holds the merged weights: transformers' log-probs equal the learner's
        ckpt = tmp_path / "ckpt"
        group.save_checkpoint(str(ckpt), {"step": 3})
        merged = load_hf(ckpt)
        for got, want in zip(group.compute_logprobs(batch), hf_logprobs(merged, batch)):
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=2e-5)
        # ... and adapter/ is a PEFT adapter that, merged into the base by peft itself, gives the same weights
        by_peft = PeftModel.from_pretrained(base, str(ckpt / "adapter")).merge_and_unload().state_dict()
        for k, v in merged.state_dict().items():
            torch.testing.assert_close(by_peft[k], v, rtol=0, atol=1e-6)

        # exact resume: weights, adapters' optimizer state and scheduler come back
        batch2 = favour_batch(1)
        m1 = group.train(batch2)
        assert group.param_checksums()[0] != sums[0]
        assert group.load_checkpoint(str(ckpt)) == {"step": 3}
        assert group.param_checksums()[0] == sums[0]
        assert group.train(batch2)["loss"] == pytest.approx(m1["loss"], abs=1e-6)
    finally:
        group.kill()


@pytest.mark.slow
def test_lora_online_rapo_syncs_merged_weights_and_sft_exports_them(ray_cluster, tiny_model_dir, tmp_path):
    """Online RAPO with LoRA: vLLM receives the merged weights (the sync probe agrees with the learner), the
    checkpoint holds merged HF weights plus adapter/ under its manifest; SFT with LoRA exports both. The RL run
    also reports to W&B (offline) and MLflow (local store): the trackers' real path, in a run that exists anyway."""
    import json

    from safetensors import safe_open

    from rapo_ray import driver
    from rapo_ray.checkpoint import CheckpointManager, verify
    from rapo_ray.sft import cmd_sft
    from e2e_utils import read_jsonl, tiny_job

    run = driver.train(tiny_job(tmp_path / "rl", tiny_model_dir, {
        "model.lora": LORA, "learner.lr": 5e-2, "checkpoint.every": 0,
        "metrics.trackers": ["jsonl", "wandb", "mlflow"], "metrics.table_every": 2}))
    metrics = read_jsonl(run / "metrics.jsonl")
    from mlflow.tracking import MlflowClient
    from test_trackers import history, wandb_records

    ids = json.loads((run / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    losses = client.get_metric_history(ids["mlflow/train"], "actor/loss")
    assert [(m.step, m.value) for m in losses] == [(m["step"], m["actor/loss"]) for m in metrics]
    assert [f.path for f in client.list_artifacts(ids["mlflow/train"], "rollouts")] == ["rollouts/step_000002.json"]
    logged = history(wandb_records(run))
    assert [json.loads(r["actor/loss"]) for r in logged] == [m["actor/loss"] for m in metrics]
    assert not (run / "tensorboard").exists()  # not among the trackers
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["sync/probe_logprob_diff"] < 1e-3 for m in metrics)  # vLLM's log-probs = the learner's
    final = CheckpointManager(run, 3).latest()
    verify(final)  # adapter/ is under the manifest
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["r"] == LORA["rank"]
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as a, \
            safe_open(str(final / "model.safetensors"), "pt") as b:
        assert set(a.keys()) == set(b.keys())
        changed = {k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))}
    assert changed and all(k.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight")) for k in changed)

    rows = [{"prompt": f"Question {i}: how do plants grow?", "completion": "<think>\nA safe question.\n</think>\n"
             "With light, water and soil."} for i in range(4)]
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_job(tmp_path / "sft", tiny_model_dir, {"model.lora": LORA, "learner.num_learners": 1,
                                                      "sft.dataset": str(tmp_path / "sft.jsonl"), "sft.epochs": 1,
                                                      "sft.batch_size": 2, "sft.lr": 5e-2})
    out = cmd_sft(cfg)
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    tuned = load_hf(out)  # the merged export loads as a plain HF model
    base = load_hf(tiny_model_dir).state_dict()
    diff = {k for k, v in tuned.state_dict().items() if not torch.equal(v, base[k])}
    assert diff and all(k.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight")) for k in diff)
