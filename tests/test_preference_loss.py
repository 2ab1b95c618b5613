"""DPO and IPO losses against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from rapo_ray.algo import preference_loss

# Two pairs, beta 0.5. Pair 1: h = (-10 + 11) - (-12 + 11) = 2; pair 2: h = (-5 + 5) - (-4 + 5) = -1.
CHOSEN, REJECTED = [-10.0, -5.0], [-12.0, -4.0]
REF_CHOSEN, REF_REJECTED = [-11.0, -5.0], [-11.0, -5.0]
BETA = 0.5


def tensors():
    c = torch.tensor(CHOSEN, dtype=torch.float64, requires_grad=True)
    r = torch.tensor(REJECTED, dtype=torch.float64, requires_grad=True)
    return c, r, torch.tensor(REF_CHOSEN, dtype=torch.float64), torch.tensor(REF_REJECTED, dtype=torch.float64)


def test_dpo_value_gradient_and_metrics():
    c, r, rc, rr = tensors()
    loss, m = preference_loss(c, r, rc, rr, BETA, "dpo")
    # -log sigmoid(0.5 * 2) = log(1 + e^-1); -log sigmoid(0.5 * -1) = log(1 + e^0.5); mean of the two
    assert loss.item() == pytest.approx((math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2, abs=1e-12)
    assert loss.item() == pytest.approx(0.6436693358491643, abs=1e-12)
    loss.backward()
    # d/d chosen_i = -beta * sigmoid(-beta h_i) / P; d/d rejected_i = +beta * sigmoid(-beta h_i) / P
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [-BETA * sig(-1.0) / 2, -BETA * sig(0.5) / 2]
    assert c.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert r.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-12)
    assert m == pytest.approx({"pairs": 2.0, "accuracy": 0.5, "margin": (1.0 - 0.5) / 2,
                               "chosen_reward": (0.5 + 0.0) / 2, "rejected_reward": (-0.5 + 0.5) / 2,
                               "chosen_nll": 0.0})  # no chosen_tokens given


def test_ipo_value_and_gradient():
    c, r, rc, rr = tensors()
    loss, m = preference_loss(c, r, rc, rr, BETA, "ipo")
    # (h - 1 / (2 beta))^2 = (2 - 1)^2 = 1 and (-1 - 1)^2 = 4; mean 2.5
    assert loss.item() == pytest.approx(2.5, abs=1e-12)
    loss.backward()
    # d/d chosen_i = 2 (h_i - 1) / P
    assert c.grad.tolist() == pytest.approx([1.0, -2.0], abs=1e-12)
    assert r.grad.tolist() == pytest.approx([-1.0, 2.0], abs=1e-12)
    assert m["accuracy"] == 0.5 and m["pairs"] == 2.0


def test_policy_equal_to_reference_gives_log2_and_ipo_target():
    x = torch.tensor([-3.0, -7.0, -1.0])
    y = torch.tensor([-4.0, -2.0, -9.0])
    dpo, m = preference_loss(x, y, x, y, 0.1, "dpo")
    assert dpo.item() == pytest.approx(math.log(2.0), abs=1e-6) and m["accuracy"] == 0.0 and m["margin"] == 0.0
    ipo, _ = preference_loss(x, y, x, y, 0.1, "ipo")
    assert ipo.item() == pytest.approx(25.0, abs=1e-4)  # (0 - 1 / 0.2)^2


def test_normalizer_sums_over_pairs_for_accumulation():
    c, r, rc, rr = tensors()
    whole, _ = preference_loss(c, r, rc, rr, BETA, "dpo")
    parts = [preference_loss(c[i:i + 1], r[i:i + 1], rc[i:i + 1], rr[i:i + 1], BETA, "dpo", normalizer=2)[0]
             for i in range(2)]
    assert (parts[0] + parts[1]).item() == pytest.approx(whole.item(), abs=1e-12)


def test_dpo_loss_falls_as_chosen_gains_over_rejected():
    rc, rr = torch.tensor([-5.0]), torch.tensor([-5.0])
    losses = [preference_loss(torch.tensor([-5.0 + d]), torch.tensor([-5.0 - d]), rc, rr, 0.1, "dpo")[0].item()
              for d in (0.0, 1.0, 5.0, 20.0)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < 0.02


def test_bad_input():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="unknown preference loss"):
        preference_loss(x, x, x, x, 0.1, "kto")
    with pytest.raises(ValueError, match="one shape"):
        preference_loss(x, torch.zeros(3), x, x, 0.1)


def test_rpo_alpha_adds_the_chosen_mean_token_nll():
    """RPO: alpha x (-chosen / chosen tokens) per pair; the chosen side keeps a pull up even where the margin has
    saturated the DPO term."""
    c, r, rc, rr = tensors()
    tokens = torch.tensor([4.0, 5.0], dtype=torch.float64)
    base, _ = preference_loss(*tensors(), BETA, "dpo")
    loss, m = preference_loss(c, r, rc, rr, BETA, "dpo", rpo_alpha=2.0, chosen_tokens=tokens)
    assert loss.item() == pytest.approx(base.item() + 2.0 * (10.0 / 4 + 5.0 / 5) / 2, abs=1e-12)
    assert m["chosen_nll"] == pytest.approx((2.5 + 1.0) / 2)
    loss.backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert c.grad.tolist() == pytest.approx([(-BETA * sig(-1.0) - 2.0 / 4) / 2, (-BETA * sig(0.5) - 2.0 / 5) / 2])
    # saturated DPO term (h huge): the gradient on chosen is the NLL's alone
    big = torch.tensor([100.0], dtype=torch.float64, requires_grad=True)
    loss, _ = preference_loss(big, torch.tensor([-100.0]), torch.tensor([0.0]), torch.tensor([0.0]), 1.0, "dpo",
                              rpo_alpha=0.5, chosen_tokens=torch.tensor([10.0]))
    loss.backward()
    assert big.grad.item() == pytest.approx(-0.05, abs=1e-9)
    with pytest.raises(ValueError, match="token counts"):
        preference_loss(*tensors(), BETA, "dpo", rpo_alpha=1.0)
