"""Unit tests for rapo_ray.algo: advantages, the clipped loss, KL estimators, packing, chunked log-probs."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rapo_ray.algo import (chunked_token_logprobs, group_advantages, kl_estimate, pack_microbatches,
                           policy_loss)


# ---------------------------------------------------------------- advantages

def test_group_advantages_normalized_per_group():
    rewards = [1.0, 0.0, 2.0, 5.0, 5.0, 5.0, -1.0, 1.0]
    groups = ["a", "a", "a", "b", "b", "b", "c", "c"]
    adv, stats = group_advantages(rewards, groups, std_norm=True, eps=1e-6)
    # group a: mean 1, unbiased std 1 -> (0, -1, 1); group b: all equal -> 0; group c: mean 0, std sqrt(2)
    np.testing.assert_allclose(adv[:3], [0.0, -1.0, 1.0], atol=1e-5)
    assert (adv[3:6] == 0.0).all()
    np.testing.assert_allclose(adv[6:], [-1 / math.sqrt(2), 1 / math.sqrt(2)], atol=1e-5)
    assert stats["num_groups"] == 3 and stats["zero_adv_groups"] == 1
    assert stats["zero_adv_frac"] == pytest.approx(1 / 3)


def test_group_advantages_without_std_and_interleaved_ids():
    adv, stats = group_advantages([3.0, 10.0, 1.0, 10.0], ["x", "y", "x", "y"], std_norm=False)
    np.testing.assert_allclose(adv, [1.0, 0.0, -1.0, 0.0])
    assert stats["zero_adv_frac"] == 0.5


def test_group_advantages_single_member_group_and_bad_input():
    adv, stats = group_advantages([4.0], ["solo"], std_norm=True)
    assert adv.tolist() == [0.0] and stats["zero_adv_frac"] == 1.0
    with pytest.raises(ValueError, match="equal length"):
        group_advantages([1.0, 2.0], ["a"])
    with pytest.raises(ValueError, match="finite"):
        group_advantages([1.0, float("nan")], ["a", "a"])


def test_group_advantages_normalize_over_scored_samples_only():
    rewards = [1.0, 3.0, 100.0, float("nan"), 7.0, 7.0, 0.0]
    groups = ["a", "a", "a", "a", "b", "b", "c"]
    scored = [True, True, False, False, True, True, False]
    adv, stats = group_advantages(rewards, groups, scored=scored)
    # group a: mean and std of (1, 3) only; unscored rewards (even NaN) are not read; c has no scored sample
    np.testing.assert_allclose(adv, [-1 / math.sqrt(2), 1 / math.sqrt(2), 0, 0, 0, 0, 0], atol=1e-5)
    assert (stats["num_groups"], stats["zero_adv_groups"]) == (3, 2)
    assert group_advantages(rewards[:3], groups[:3], scored=scored[:3])[0].tolist() == adv[:3].tolist()
    with pytest.raises(ValueError, match="equal length"):
        group_advantages([1.0, 2.0], ["a", "a"], scored=[True])


# ---------------------------------------------------------------- loss

def _t(*x):
    return torch.tensor(x, dtype=torch.float64)


def test_policy_loss_matches_hand_computation():
    lp = _t(math.log(0.5), math.log(0.2), math.log(0.9))
    old = _t(math.log(0.4), math.log(0.4), math.log(0.9))
    adv = _t(1.0, -2.0, 0.5)
    mask = _t(1, 1, 1)
    loss, m = policy_loss(lp, old, adv, mask, clip_low=0.2, clip_high=0.3, loss_agg="token_mean")
    # token 0: r=1.25 <= 1.3, A>0 -> -1.25.  token 1: r=0.5 < 0.8, A<0 -> max(1.0, 1.6) = 1.6 (clipped).
    # token 2: r=1 -> -0.5.   mean = (-1.25 + 1.6 - 0.5) / 3
    assert loss.item() == pytest.approx((-1.25 + 1.6 - 0.5) / 3)
    assert m["clip_frac"] == pytest.approx(1 / 3) and m["clip_frac_low"] == pytest.approx(1 / 3)
    assert m["clip_frac_high"] == 0.0 and m["tokens"] == 3


def test_policy_loss_gradient_is_zero_where_clipped():
    old = torch.zeros(4, dtype=torch.float64)
    lp = torch.tensor([math.log(1.5), math.log(1.1), math.log(0.5), math.log(0.9)], dtype=torch.float64,
                      requires_grad=True)
    adv = _t(1.0, 1.0, -1.0, -1.0)
    loss, m = policy_loss(lp, old, adv, torch.ones(4), clip_low=0.2, clip_high=0.28, loss_agg="token_mean")
    loss.backward()
    # high clip active on token 0 (A>0, r=1.5 > 1.28); low clip on token 2 (A<0, r=0.5 < 0.8)
    assert lp.grad[0] == 0 and lp.grad[2] == 0
    assert lp.grad[1] == pytest.approx(-1.1 / 4) and lp.grad[3] == pytest.approx(0.9 / 4)
    assert m["clip_frac_high"] == 0.25 and m["clip_frac_low"] == 0.25 and m["clip_frac"] == 0.5


def test_policy_loss_low_and_high_clip_are_separate():
    old = torch.zeros(1, dtype=torch.float64)
    lp = torch.tensor([math.log(1.25)], dtype=torch.float64)
    pos = _t(1.0)
    # ratio 1.25: inside [1-0.2, 1+0.28] -> unclipped; with clip_high 0.1 it is clipped at 1.1
    assert policy_loss(lp, old, pos, _t(1), 0.2, 0.28)[0].item() == pytest.approx(-1.25)
    assert policy_loss(lp, old, pos, _t(1), 0.2, 0.10)[0].item() == pytest.approx(-1.1)
    lp_low = torch.tensor([math.log(0.7)], dtype=torch.float64)
    neg = _t(-1.0)
    assert policy_loss(lp_low, old, neg, _t(1), 0.2, 0.28)[0].item() == pytest.approx(0.8)
    assert policy_loss(lp_low, old, neg, _t(1), 0.4, 0.28)[0].item() == pytest.approx(0.7)


def test_policy_loss_masking_ignores_masked_tokens():
    lp = _t(-1.0, -2.0, -3.0)
    old = lp.clone()
    adv = _t(1.0, 100.0, 1.0)
    loss, m = policy_loss(lp, old, adv, _t(1, 0, 1), 0.2, 0.2)
    assert loss.item() == pytest.approx(-1.0)  # (-1 - 1) / 2: the masked token's huge advantage is ignored
    assert m["tokens"] == 2


def test_seq_mean_vs_token_mean_and_global_normalizer():
    # sequence 0 has 3 tokens, sequence 1 has 1 token (ratio 1 everywhere: loss = -mean of advantages)
    lp = torch.zeros(4, dtype=torch.float64)
    adv = _t(1.0, 1.0, 1.0, -3.0)
    seq = torch.tensor([0, 0, 0, 1])
    tok, _ = policy_loss(lp, lp, adv, _t(1, 1, 1, 1), 0.2, 0.2, "token_mean")
    sq, _ = policy_loss(lp, lp, adv, _t(1, 1, 1, 1), 0.2, 0.2, "seq_mean", seq_ids=seq)
    assert tok.item() == pytest.approx(0.0)          # -(1+1+1-3)/4
    assert sq.item() == pytest.approx(1.0)           # -((1) + (-3)) / 2
    # splitting the batch into micro-batches with the global normalizer sums to the full-batch loss
    a, _ = policy_loss(lp[:3], lp[:3], adv[:3], _t(1, 1, 1), 0.2, 0.2, normalizer=4)
    b, _ = policy_loss(lp[3:], lp[3:], adv[3:], _t(1), 0.2, 0.2, normalizer=4)
    assert (a + b).item() == pytest.approx(tok.item())
    with pytest.raises(ValueError, match="seq_ids"):
        policy_loss(lp, lp, adv, _t(1, 1, 1, 1), 0.2, 0.2, "seq_mean")


def test_kl_penalty_added_and_reported():
    lp = _t(-1.0, -2.0)
    ref = _t(-1.5, -1.0)
    base, _ = policy_loss(lp, lp, _t(0, 0), _t(1, 1), 0.2, 0.2)
    with_kl, m = policy_loss(lp, lp, _t(0, 0), _t(1, 1), 0.2, 0.2, ref_logprobs=ref, kl_coef=0.1, kl_estimator="k1")
    assert base.item() == 0.0
    assert with_kl.item() == pytest.approx(0.1 * ((0.5) + (-1.0)) / 2)
    assert m["kl_ref"] == pytest.approx(-0.25)


# ---------------------------------------------------------------- KL estimators

def test_kl_estimators_k1_k3():
    lp = _t(math.log(0.5), math.log(0.25))
    ref = _t(math.log(0.25), math.log(0.5))
    np.testing.assert_allclose(kl_estimate(lp, ref, "k1").numpy(), [math.log(2), -math.log(2)])
    # k3 = r - log r - 1 with r = p_ref / p
    np.testing.assert_allclose(kl_estimate(lp, ref, "k3").numpy(), [0.5 + math.log(2) - 1, 2 - math.log(2) - 1])
    assert (kl_estimate(torch.randn(100), torch.randn(100), "k3") >= 0).all()
    assert kl_estimate(lp, lp, "k3").abs().max() == 0
    with pytest.raises(ValueError):
        kl_estimate(lp, ref, "k2")


def test_kl_estimators_are_unbiased_on_samples():
    torch.manual_seed(0)
    p = torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64)
    q = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
    exact = (p * (p / q).log()).sum().item()
    x = torch.multinomial(p, 200_000, replacement=True)
    for kind in ("k1", "k3"):
        est = kl_estimate(p.log()[x], q.log()[x], kind).mean().item()
        assert est == pytest.approx(exact, abs=0.01), kind


# ---------------------------------------------------------------- packing

def test_pack_microbatches_respects_budget_and_covers_all():
    lengths = [700, 300, 1200, 50, 400, 5000, 90, 1000]
    bins = pack_microbatches(lengths, max_tokens=1500)
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths)))
    for b in bins:
        assert sum(lengths[i] for i in b) <= 1500 or len(b) == 1
    assert [5] in bins  # the over-long sequence sits alone
    # first-fit decreasing: 5000 | 1200+300 | 1000+400+90 | 700+50
    assert bins == [[5], [2, 1], [7, 4, 6], [0, 3]]
    assert pack_microbatches(lengths, 1500) == bins


def test_pack_microbatches_edge_cases():
    assert pack_microbatches([], 10) == []
    assert pack_microbatches([10, 10, 10], 10) == [[0], [1], [2]]
    assert pack_microbatches([3, 3, 3], 100) == [[0, 1, 2]]
    with pytest.raises(ValueError):
        pack_microbatches([1], 0)


# ---------------------------------------------------------------- chunked log-probs

def _naive(h, w, tgt, temp):
    logits = (h @ w.T).float() / temp
    lp = torch.log_softmax(logits, -1)
    ent = -(lp.exp() * lp).sum(-1)
    return lp.gather(-1, tgt[:, None]).squeeze(-1), ent


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_logprobs_exact_values_and_gradients(chunk):
    torch.manual_seed(0)
    n, hdim, vocab = 37, 16, 101
    h = torch.randn(n, hdim, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hdim, dtype=torch.float64, requires_grad=True)
    tgt = torch.randint(0, vocab, (n,))
    g = torch.randn(n, dtype=torch.float64)
    lp, ent = chunked_token_logprobs(h, w, tgt, chunk=chunk, temperature=0.7)
    (lp.double() * g).sum().backward()
    gh, gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    lp0, ent0 = _naive(h, w, tgt, 0.7)
    (lp0.double() * g).sum().backward()
    torch.testing.assert_close(lp, lp0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, ent0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh, h.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, w.grad, rtol=1e-5, atol=1e-5)
    assert not ent.requires_grad


def test_chunked_logprobs_fp32_and_bf16_autocast():
    torch.manual_seed(1)
    h = torch.randn(50, 32)
    w = torch.randn(300, 32) * 0.1
    tgt = torch.randint(0, 300, (50,))
    lp, _ = chunked_token_logprobs(h, w, tgt, chunk=8)
    torch.testing.assert_close(lp, _naive(h, w, tgt, 1.0)[0], rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp_bf, _ = chunked_token_logprobs(h, w, tgt, chunk=8)
        ref_bf = torch.log_softmax((h @ w.T).float(), -1).gather(-1, tgt[:, None]).squeeze(-1)
    assert lp_bf.dtype == torch.float32
    torch.testing.assert_close(lp_bf, ref_bf, rtol=0, atol=1e-5)  # same bf16 matmul, same float32 softmax
    assert (lp_bf - lp).abs().max() < 0.1  # and close to fp32


def test_chunked_logprobs_rejects_bad_shapes():
    with pytest.raises(ValueError):
        chunked_token_logprobs(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError):
        chunked_token_logprobs(torch.randn(4, 8), torch.randn(10, 8), torch.zeros(4, dtype=torch.long), 0)
