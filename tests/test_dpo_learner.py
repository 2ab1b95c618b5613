"""The DPO-family objectives through the real DeepSpeed learner group (2 ranks over gloo, the tiny model)."""
from __future__ import annotations

import math
import random

import pytest
import torch

from rapo_ray.algo import preference_loss
from rapo_ray.config import JobConfig
from rapo_ray.learner import LearnerError, LearnerGroup
from rapo_ray.types import Sample
from test_learner import hf_logprobs, load_hf

pytestmark = pytest.mark.slow

FAV = 42


def pair_batch(seed: int, n_pairs: int) -> list[Sample]:
    """Pairs [chosen, rejected] sharing a prompt: chosen repeats FAV, rejected is random tokens."""
    rng = random.Random(seed)
    out = []
    for k in range(n_pairs):
        prompt = [rng.randrange(100, 1000) for _ in range(rng.randrange(3, 10))]
        chosen = [FAV] * rng.randrange(3, 8)
        rejected = [rng.randrange(100, 1000) for _ in range(rng.randrange(3, 8))]
        for i, comp in enumerate((chosen, rejected)):
            out.append(Sample(prompt_id=f"s{seed}k{k}", sample_index=i, prompt="p", prompt_ids=prompt,
                              completion_ids=comp, completion="", sampling_logprobs=[], truncated=False,
                              policy_version=0, harmful_label=0))
    return out


def job(reference: str, zero_stage: int, beta: float) -> JobConfig:
    # rollout temperature 0.7: the preference objectives must still use the model's own distribution (temperature 1)
    return JobConfig.model_validate({
        "learner": {"num_learners": 2, "zero_stage": zero_stage, "lr": 2e-3, "precision": "fp32",
                    "micro_batch_tokens": 40, "logprob_chunk": 16},
        "rollout": {"temperature": 0.7}, "pairs": {"beta": beta, "reference": reference},
        "resources": {"learner_cpus": 0.5}})


def test_dpo_precomputed_reference(ray_cluster, tiny_model_dir):
    beta = 0.5
    group = LearnerGroup(job("precomputed", 2, beta), str(tiny_model_dir))
    try:
        batch = pair_batch(0, 3)  # 3 pairs over 2 ranks: one rank packs 2 pairs, the other 1 (plus a dummy)
        base = load_hf(tiny_model_dir)
        with torch.no_grad():
            naive = hf_logprobs(base, batch)
        with pytest.raises(LearnerError, match="carry no reference log-probs"):
            group.train(batch, objective="dpo")
        ref = group.compute_logprobs(batch, temperature=1.0)
        for s, got, want in zip(batch, ref, naive):
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=2e-5)
            s.ref_logprobs = got

        # step 0: policy == reference, so h = 0, loss = log 2, and the gradient equals the full-batch gradient of
        # the same loss computed locally on the HF model
        m = group.train(batch, objective="dpo")
        seq = torch.stack([x.sum() for x in hf_logprobs(base, batch)])
        loss, _ = preference_loss(seq[0::2], seq[1::2], seq[0::2].detach(), seq[1::2].detach(), beta, "dpo")
        loss.backward()
        local_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in base.parameters())).item()
        assert m["loss"] == pytest.approx(math.log(2), abs=1e-4) and m["margin"] == pytest.approx(0.0, abs=1e-4)
        assert m["grad_norm"] == pytest.approx(local_norm, rel=1e-3)
        assert m["pairs"] == 3 and m["updates"] == 1 and m["tokens"] == sum(len(s.completion_ids) for s in batch)

        # the chosen sequences gain on the rejected ones step after step
        margins = [m["margin"]]
        for _ in range(3):
            m = group.train(batch, objective="dpo")
            margins.append(m["margin"])
        assert all(b > a for a, b in zip(margins, margins[1:])), margins
        assert m["accuracy"] == 1.0 and m["loss"] < math.log(2) and m["chosen_reward"] > m["rejected_reward"]

        # a single pair on two ranks: the idle rank runs dummy micro-batches and the step completes
        m1 = group.train(batch[:2], objective="dpo")
        assert m1["pairs"] == 1 and math.isfinite(m1["loss"])
        with pytest.raises(ValueError, match="even number"):  # refused before any rank is asked
            group.train(batch[:3], objective="dpo")
    finally:
        group.kill()


def test_ipo_frozen_reference_zero3(ray_cluster, tiny_model_dir):
    beta = 0.1
    group = LearnerGroup(job("frozen", 3, beta), str(tiny_model_dir))
    try:
        batch = pair_batch(1, 4)  # no reference log-probs in the samples: the learners' frozen copy gives them
        m = group.train(batch, objective="ipo")
        assert m["loss"] == pytest.approx((1 / (2 * beta)) ** 2, abs=1e-3)  # h = 0 at the start
        for _ in range(2):
            m2 = group.train(batch, objective="ipo")
        assert m2["loss"] < m["loss"] and m2["margin"] > 0
        sums = group.param_checksums()
        assert sums[0] == sums[1]
    finally:
        group.kill()
