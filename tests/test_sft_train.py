"""SFT: token samples with the prompt masked, the learners' sft objective, and `rapo-ray sft` end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch

from rapo_ray.algo import lr_factor, sft_loss
from rapo_ray.config import JobConfig, build_config
from rapo_ray.learner import MicroBatch
from rapo_ray.models import format_prompt, load_tokenizer
from rapo_ray.sft import SFTError, build_samples, cmd_sft, load_rows, read_star1
from rapo_ray.sft.trainer import learner_config

COMPLETION = "<think>\nThis is a harmless cooking question, so it is safe to help.\n</think>\n\nKnead, proof, bake."


def star1_sft_rows(path, cfg: JobConfig) -> list[dict]:
    """STAR-1 rows as SFT rows (prompt + its own response), unjudged and unfitted."""
    rows, _ = read_star1(path, cfg)
    return [{"id": r["id"], "prompt": r["prompt"], "completion": r["candidates"][0]["completion"],
             "harmful_label": 1, "level": r["level"], "source": r["source"]} for r in rows]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir, JobConfig().model)


def test_samples_mask_the_prompt_and_end_the_turn(tok):
    cfg = JobConfig()
    rows = [{"id": "a", "prompt": "How do I bake bread?", "completion": COMPLETION, "harmful_label": 0, "level": 1},
            {"id": "b", "prompt": "Hi", "completion": "no thinking block"},
            {"id": "c", "prompt": "Hi " * 3000, "completion": COMPLETION}]
    samples, dropped = build_samples(rows, tok, cfg)
    assert dropped == {"no_thinking_prefix": 1, "too_long": 1} and len(samples) == 1
    s = samples[0]
    prompt_text = format_prompt(tok, "How do I bake bread?", cfg.model)
    assert prompt_text.endswith("<|im_start|>assistant\n<think>\n")
    assert s.prompt_ids == tok(prompt_text, add_special_tokens=False)["input_ids"]
    assert s.completion_ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(s.completion_ids) == COMPLETION[len("<think>\n"):] + "<|im_end|>"
    # the packed row predicts exactly the assistant tokens: targets are the completion, positions start at the
    # last prompt token
    mb = MicroBatch.pack([s, s], [0, 0], torch.device("cpu"))
    p, c = len(s.prompt_ids), len(s.completion_ids)
    assert mb.targets.tolist() == s.completion_ids * 2
    assert mb.index.tolist() == list(range(p - 1, p + c - 1)) + list(range(2 * p + c - 1, 2 * p + 2 * c - 1))


def test_sft_loss_and_lr_schedule():
    lp = torch.tensor([-1.0, -2.0, -3.0, -4.0], requires_grad=True)
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0])
    loss, m = sft_loss(lp, mask)
    assert loss.item() == pytest.approx(7 / 3) and m["tokens"] == 3 and m["nll"] == pytest.approx(7 / 3)
    loss.backward()
    assert lp.grad.tolist() == pytest.approx([-1 / 3, -1 / 3, 0.0, -1 / 3])
    assert sft_loss(lp, mask, normalizer=7.0)[0].item() == pytest.approx(1.0)
    assert [lr_factor(s, 2, "linear", 4) for s in range(7)] == pytest.approx([0.5, 1, 1, 0.75, 0.5, 0.25, 0])
    assert lr_factor(4, 0, "cosine", 8) == pytest.approx(0.5) and lr_factor(9, 0, "constant", 3) == 1.0
    cfg = learner_config(JobConfig(sft={"lr": 3e-4, "warmup_ratio": 0.25, "lr_schedule": "linear", "packing": False},
                                   algo={"kl_coef": 0.1}), total_steps=8)
    assert (cfg.learner.lr, cfg.learner.warmup_steps, cfg.learner.lr_decay_steps) == (3e-4, 2, 6)
    assert not cfg.learner.packing and cfg.algo.kl_coef == 0.0


def test_bad_sft_data_is_a_clear_error(tmp_path):
    with pytest.raises(SFTError, match="rapo-ray sft-data"):
        load_rows(tmp_path / "missing")
    (tmp_path / "x.jsonl").write_text('{"prompt": "a", "completion": "<think>\\nb"}\n{oops\n')
    with pytest.raises(SFTError, match="x.jsonl:2"):
        load_rows(tmp_path / "x.jsonl")
    (tmp_path / "y.jsonl").write_text('{"prompt": "a"}\n')
    with pytest.raises(SFTError, match="'prompt' and 'completion'"):
        load_rows(tmp_path / "y.jsonl")


def _hf_nll(model, samples, assistant_only: bool, per_row: bool = False) -> float:
    """Mean NLL over all target tokens, or (``per_row``) the mean over rows of each row's mean."""
    total, n, rows = 0.0, 0, []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = len(s.prompt_ids) - 1 if assistant_only else 0
        tgt = ids[0, start + 1:]
        nll = -logp[start:-1].gather(-1, tgt[:, None]).sum().item()
        total, n = total + nll, n + len(tgt)
        rows.append(nll / len(tgt))
    return sum(rows) / len(rows) if per_row else total / n


@pytest.mark.slow
@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_learner_sft_objective_is_nll_of_assistant_tokens(ray_cluster, tiny_model_dir, tok, shared_data, loss_agg):
    from transformers import AutoModelForCausalLM

    from rapo_ray.learner import LearnerGroup
    from rapo_ray.sft.trainer import learner_config

    # rollout temperature 0.5 must not leak into the SFT loss (it is taken at temperature 1)
    cfg = JobConfig(rollout={"temperature": 0.5}, resources={"learner_cpus": 0.5}, sft={"loss_agg": loss_agg},
                    learner={"num_learners": 2, "precision": "fp32", "micro_batch_tokens": 1024, "lr": 1e-3})
    rows = star1_sft_rows(shared_data / "star1" / "STAR-1.json", cfg)
    samples, _ = build_samples(rows[:6], tok, cfg.model_copy(update={"sft": cfg.sft.model_copy(
        update={"max_seq_tokens": 4096})}))
    assert len(samples) == 6
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    per_row = loss_agg == "seq_mean"
    expected, all_tokens = _hf_nll(model, samples, True, per_row), _hf_nll(model, samples, False, per_row)
    assert abs(_hf_nll(model, samples, True, not per_row) - expected) > 1e-4  # the two aggregations differ here
    group = LearnerGroup(learner_config(cfg, 2).model_copy(update={"learner": cfg.learner}), str(tiny_model_dir))
    try:
        first = group.train(samples, objective="sft")
        second = group.train(samples, objective="sft")
    finally:
        group.kill()
    # fp32 learners match the per-sequence HF NLL over the assistant tokens to ~1e-7; the NLL over all tokens
    # (prompt included) differs by ~3e-3 on this random model, so the tolerance tells them apart
    assert abs(expected - all_tokens) > 1e-3
    assert first["loss"] == pytest.approx(expected, abs=1e-5)
    assert first["tokens"] == sum(len(s.completion_ids) for s in samples) and first["updates"] == 1
    assert second["loss"] < first["loss"]
    assert "clip_frac" not in first and math.isfinite(first["grad_norm"])


@pytest.mark.slow
def test_cmd_sft_two_learners_exports_a_loadable_model(ray_cluster, tiny_model_dir, shared_data, tmp_path):
    from transformers import AutoModelForCausalLM

    base = JobConfig()
    rows = star1_sft_rows(shared_data / "star1" / "STAR-1.json", base)
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    cfg = build_config({"output_dir": str(tmp_path / "run"), "model": {"name_or_path": str(tiny_model_dir)},
                        "resources": {"learner_cpus": 0.5},
                        "learner": {"num_learners": 2, "zero_stage": 2, "micro_batch_tokens": 2048},
                        "sft": {"dataset": str(data), "epochs": 3, "batch_size": 4, "lr": 2e-3,
                                "max_seq_tokens": 4096},
                        "checkpoint": {"every": 2}})
    out = cmd_sft(cfg)
    assert out == tmp_path / "run" / "sft" / "model" and (out / "COMPLETE").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "sft" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["sft/loss"] for m in metrics if "sft/loss" in m]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert metrics[0]["sft/rows"] == 8 and metrics[-1]["sft/epoch"] == pytest.approx(3.0)
    lrs = [m["sft/lr"] for m in metrics if "sft/lr" in m]
    assert lrs[-1] < max(lrs)  # cosine decay
    assert any((tmp_path / "run" / "sft" / "tensorboard").iterdir())
    tuned = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    diff = sum((a - b).abs().sum().item() for a, b in zip(tuned.parameters(), start.parameters()))
    assert diff > 0
    tok = load_tokenizer(out, cfg.model)
    samples, _ = build_samples(rows[:8], tok, cfg)
    assert _hf_nll(tuned, samples, True) < _hf_nll(start, samples, True)
    assert cmd_sft(cfg) == out  # complete: skipped
