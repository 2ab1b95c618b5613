"""LoRA through peft on the learner group (issue 18): only adapters train, what leaves the learner is merged."""
from __future__ import annotations

import os

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
    checkpoint holds merged HF weights plus adapter/ under its manifest; resumed with vLLM applying the adapters
    itself (model.lora.rollout: adapter), the probe agrees again; SFT with LoRA exports both. The RL run
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

    # Resumed for a third step with model.lora.rollout: adapter: the engines start from the base weights and
    # vLLM applies the resumed adapters (pushed before sampling); the probe still matches the learner at 1e-3.
    again = driver.train(tiny_job(tmp_path / "rl", tiny_model_dir, {
        "model.lora": {**LORA, "rollout": "adapter"}, "learner.lr": 5e-2, "checkpoint.every": 0,
        "train.total_steps": 3}), resume=True)
    step3 = read_jsonl(again / "metrics.jsonl")[-1]
    assert again == run and step3["step"] == 3 and step3["sync/probe_logprob_diff"] < 1e-3, step3
    assert step3["actor/sampler_abs_diff"] < 1e-3, step3  # step 3 was sampled with the resumed adapters
    assert {r["policy_version"] for r in read_jsonl(run / "rollouts.jsonl") if r["step"] == 3} == {2}

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


def test_adapter_rollout_config_and_files(tiny_model_dir, tmp_path):
    """``model.lora.rollout: adapter``: vLLM's rank ceiling, the PEFT files a push carries and what a rollout
    worker's store makes of them (sums of the tensors as written; the previous version's folder removed)."""
    import peft
    from transformers import AutoModelForCausalLM

    from rapo_ray.weight_sync import lora_adapter

    assert LoraConfig().rollout == "merged"
    assert lora_adapter.engine_kwargs(4) == {"enable_lora": True, "max_lora_rank": 8, "max_loras": 1}
    assert lora_adapter.engine_kwargs(16)["max_lora_rank"] == 16
    with pytest.raises(ValueError, match="max_lora_rank"):
        lora_adapter.engine_kwargs(1024)
    with pytest.raises(ValueError):
        LoraConfig(rollout="bytes")

    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    pm = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]))
    state = {n: p.detach().clone() + (1.0 if "lora_B" in n else 0.0) for n, p in pm.named_parameters()
             if ".lora_" in n}
    files, sums, meta = lora_adapter.pack_adapter(pm, state)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(files)
    assert len(sums) == len(meta) == len(state) and all(k.endswith(("lora_A.weight", "lora_B.weight"))
                                                        for k, _, _ in meta)
    store = lora_adapter.AdapterStore()
    assert store.request is None
    assert store.load(files, 1) == sums
    first = store.request.lora_path
    assert store.load(files, 2) == sums and store.request.lora_int_id == 2
    loaded = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                                            store.request.lora_path)  # a PEFT folder peft itself loads
    assert loaded.peft_config["default"].r == 4
    assert not os.path.exists(first)
    with pytest.raises(ValueError, match="lacks the PEFT files"):
        store.load({"adapter_config.json": b"{}"}, 3)
    root = store.root
    del store, loaded
    import gc

    gc.collect()
    assert not root.exists()  # the store's folder goes with it
