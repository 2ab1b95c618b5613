"""The learner's objectives and their shared accumulate-and-step loop, on hand-built micro-batches: tiny CPU
tensors, a fake rank (no Ray, no DeepSpeed, no torch.distributed)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import pytest
import torch

from rapo_ray.config import JobConfig, LearnerSettings
from rapo_ray.learner import LearnerWorker, MicroBatch
from rapo_ray.learner.objectives import GRPO, SFT, Preference, Update, gradient_free, make_objective
from rapo_ray.types import Sample

CPU = torch.device("cpu")


def sample(prompt: list[int], completion: list[int], advantage: float = 0.0, truncated: bool = False,
           sampling: list[float] | None = None, ref: list[float] | None = None) -> Sample:
    s = Sample(prompt_id="p", sample_index=0, prompt="p", prompt_ids=prompt, completion_ids=completion, completion="",
               sampling_logprobs=sampling or [], truncated=truncated, policy_version=0, harmful_label=0)
    s.advantage, s.ref_logprobs = advantage, ref or []
    return s


def config(**sections) -> JobConfig:
    learner = {"micro_batch_tokens": 64, "precision": "fp32", "zero_stage": 0, **sections.pop("learner", {})}
    return JobConfig.model_validate({"learner": learner, **sections})


class FakeOps:
    """One rank of ``world_size``; the other ranks' sums are ``others`` times this rank's (sum), or this rank's
    (max). ``logprobs`` returns the given tensors and records its calls."""

    def __init__(self, world_size: int = 1, policy: list[torch.Tensor] | None = None,
                 reference: list[torch.Tensor] | None = None):
        self.rank, self.world_size, self.device = 0, world_size, CPU
        self.policy, self.reference, self.calls = policy, reference, []

    def all_reduce(self, values: Sequence[float], op: str = "sum") -> list[float]:
        return [float(v) * (self.world_size if op == "sum" else 1) for v in values]

    def logprobs(self, samples, reference=False, temperature=None):
        self.calls.append((reference, temperature))
        return self.reference if reference else self.policy


def packed(samples: list[Sample], update: Update, share: bool = True) -> MicroBatch:
    return MicroBatch.pack(samples, [i for u in update.units for i in u], CPU, share)


def by_member(mb: MicroBatch, per_sample: list[list[float]]) -> torch.Tensor:
    """Per-token values of the micro-batch's members, in packed order."""
    return torch.tensor([x for i in mb.members for x in per_sample[i]])


# ----------------------------------------------------------------------------- GRPO

def test_grpo_loss_is_the_clipped_ratio_formula_over_unmasked_tokens():
    lp = [[-1.0, -0.5, -2.0], [-0.3, -1.2], [-0.7]]
    old = [[-1.4, -0.4, -1.5], [-0.3, -2.0], [-0.2]]
    samples = [sample([1, 2], [3, 4, 5], 1.0, sampling=old[0]),
               sample([6], [7, 8], -0.5, truncated=True, sampling=old[1]),
               sample([9, 9], [10], -2.0, sampling=old[2])]
    obj = GRPO(config(algo={"old_logprobs": "vllm", "mask_truncated": True, "clip_low": 0.2, "clip_high": 0.28}))
    assert obj.temperature is None  # the rollout's
    ops = FakeOps(world_size=2)  # the other rank holds as many loss tokens
    (update,) = obj.prepare(ops, samples, global_token_count=8)
    assert update.normalizer == 4  # 4 loss tokens here (the truncated sample's masked) x 2 ranks / 2
    mb = packed(samples, update)
    logprobs = by_member(mb, lp).requires_grad_()
    loss, sums = obj.loss(mb, logprobs, torch.full_like(logprobs, 0.5), update.normalizer)

    want, clipped = 0.0, 0
    for i in (0, 2):  # sample 1 is truncated
        a = samples[i].advantage
        for x, o in zip(lp[i], old[i]):
            r = math.exp(x - o)
            want += max(-a * r, -a * min(max(r, 0.8), 1.28))
            clipped += (a > 0 and r > 1.28) or (a < 0 and r < 0.8)
    assert loss.item() == pytest.approx(want / 4, rel=1e-6)
    assert sums["tokens"] == 4 and sums["clip_frac"] == pytest.approx(clipped) and clipped == 2
    assert sums["sampler_abs_diff"] == pytest.approx(sum(abs(x - o) for i in (0, 2) for x, o in zip(lp[i], old[i])))
    m = obj.metrics({k: 2 * sums.get(k, 0.0) for k in obj.sum_keys})  # both ranks alike
    assert m["tokens"] == 8 and m["clip_frac"] == pytest.approx(clipped / 4) and m["entropy"] == pytest.approx(0.5)
    assert "kl_ref" not in m


def test_grpo_seq_mean_kl_and_minibatches():
    samples = [sample([1], [2, 3], 1.0), sample([4], [5], -1.0), sample([6], [7, 8, 9], 0.5),
               sample([1], [4, 4], -0.5, truncated=True)]
    lp = [[-1.0, -2.0], [-0.5], [-0.2, -0.4, -0.6], [-1.0, -1.0]]
    ref = [torch.tensor(x) - 0.1 * (i + 1) for i, x in enumerate(lp)]
    ops = FakeOps(policy=[torch.tensor(x) for x in lp], reference=ref)
    cfg = config(algo={"kl_coef": 0.5, "loss_agg": "seq_mean", "updates_per_batch": 2, "mask_truncated": True})
    obj = GRPO(cfg)
    updates = obj.prepare(ops, samples, None)
    assert ops.calls == [(False, None), (True, None)]  # old log-probs recomputed (2 updates), then the reference
    assert len(updates) == 2
    assert sorted(i for u in updates for unit in u.units for i in unit) == [0, 1, 2, 3]
    total, seqs = 0.0, 0
    for u in updates:
        mb = packed(samples, u)
        loss, sums = obj.loss(mb, by_member(mb, lp), torch.zeros(mb.targets.numel()), u.normalizer)
        want = 0.0
        for i in mb.members:
            if samples[i].truncated:
                continue
            d = 0.1 * (i + 1)  # log pi - log pi_ref; ratio 1: the clipped term is -A
            want += -samples[i].advantage + 0.5 * (math.exp(-d) + d - 1)
        assert u.normalizer == sum(not samples[i].truncated for i in mb.members)  # sequences, not tokens
        assert loss.item() == pytest.approx(want / u.normalizer, rel=1e-5)
        total += sums["kl_ref"]
        seqs += u.normalizer
    assert seqs == 3
    assert total / 6 == pytest.approx(sum(math.exp(-d) + d - 1 for d, n in ((0.1, 2), (0.2, 1), (0.3, 3))
                                          for _ in range(n)) / 6, rel=1e-5)


def test_grpo_checks_the_global_token_count_and_skips_empty_updates():
    samples = [sample([1], [2, 3], 1.0, truncated=True)]
    obj = GRPO(config(algo={"mask_truncated": True}))
    with pytest.raises(ValueError, match="global_token_count 2 != loss tokens over all ranks 0"):
        obj.prepare(FakeOps(), samples, 2)
    assert GRPO(config(algo={"mask_truncated": True})).prepare(FakeOps(), samples, 0) == []


def test_gradient_free_samples_only_without_kl_and_with_one_update():
    samples = [sample([1], [2, 3], 1.0), sample([1], [4], 0.0), sample([1], [5, 6], -1.0, truncated=True),
               sample([1], [7], -0.0)]
    samples[2].scored = False  # no loss token
    assert gradient_free(samples, config().algo) == [1, 2, 3]
    for algo in ({"skip_zero_advantage": False}, {"kl_coef": 0.1}, {"updates_per_batch": 2}):
        assert gradient_free(samples, config(algo=algo).algo) == []
    idle = [samples[i] for i in (1, 3)]
    assert gradient_free(idle, config().algo) == []  # none would remain: the update runs as before


@pytest.mark.parametrize("loss_agg", ["token_mean", "seq_mean"])
def test_left_out_samples_count_in_the_normalizer(loss_agg):
    """The update over the samples with a gradient, normalized as if the left-out ones were there, gives the loss
    (and so the gradient) of the whole batch: theirs is exactly 0."""
    batch = [sample([1], [2, 3], 1.0), sample([1], [4, 5, 6], 0.0), sample([7], [8], -0.5), sample([7], [9], 0.0)]
    lp = [[-1.0, -0.5], [-0.3, -0.2, -0.1], [-0.7], [-2.0]]

    def grad(samples, values, global_count, left_out):
        obj = GRPO(config(algo={"loss_agg": loss_agg}))
        (u,) = obj.prepare(FakeOps(), samples, global_count, left_out)
        mb = packed(samples, u)
        x = by_member(mb, values).requires_grad_()
        obj.loss(mb, x, torch.zeros_like(x), u.normalizer)[0].backward()
        return {i: g for i, g in zip(mb.members, x.grad.split(mb.counts))}, u.normalizer

    whole, n_whole = grad(batch, lp, 7, (0, 0))
    kept, n_kept = grad([batch[0], batch[2]], [lp[0], lp[2]], 7, (4, 2))
    assert n_kept == n_whole == (7 if loss_agg == "token_mean" else 4)
    torch.testing.assert_close(kept[0], whole[0])
    torch.testing.assert_close(kept[1], whole[2])
    assert all(not g.any() for i, g in whole.items() if i in (1, 3))
    with pytest.raises(ValueError, match="global_token_count 7 != loss tokens over all ranks 3"):
        GRPO(config()).prepare(FakeOps(), [batch[0], batch[2]], 7)
    with pytest.raises(ValueError, match="only with one update per batch"):
        GRPO(config(algo={"updates_per_batch": 2})).prepare(FakeOps(), [batch[0], batch[2]], 7, (4, 2))


# ----------------------------------------------------------------------------- SFT

class Bigram(torch.nn.Module):
    """A policy whose next-token logits depend on the current token only: the packed forward's contract."""

    def __init__(self, vocab: int = 16):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, position_ids, index, targets, temperature=1.0, segments=None):
        logp = torch.log_softmax(self.logits[input_ids[0, index]] / temperature, -1)
        return logp.gather(-1, targets[:, None])[:, 0], -(logp.exp() * logp).sum(-1).detach()

    def nll(self, s: Sample) -> float:
        """Summed NLL of the completion given the prompt, from the sequence itself."""
        seq = s.prompt_ids + s.completion_ids
        logp = torch.log_softmax(self.logits.detach(), -1)
        return -sum(logp[seq[t - 1], seq[t]].item() for t in range(len(s.prompt_ids), len(seq)))


@pytest.mark.parametrize("share", [False, True])
def test_sft_loss_is_assistant_only_nll(share):
    model = Bigram()
    samples = [sample([1, 2, 3], [4, 5]), sample([1, 2, 3], [6, 7, 8]), sample([9], [10, 11, 12], truncated=True)]
    obj = SFT(config(algo={"mask_truncated": True}, learner={"share_prompts": share}))
    (update,) = obj.prepare(FakeOps(), samples, 5)
    assert obj.temperature == 1.0 and update.normalizer == 5
    mb = packed(samples, update, share)
    assert mb.targets.tolist() == [t for i in mb.members for t in samples[i].completion_ids]  # no prompt token
    lp, ent = model(mb.input_ids, mb.position_ids, mb.index, mb.targets)
    loss, sums = obj.loss(mb, lp, ent, update.normalizer)
    assert loss.item() == pytest.approx((model.nll(samples[0]) + model.nll(samples[1])) / 5, rel=1e-6)
    assert sums["tokens"] == 5 and set(obj.metrics({k: sums.get(k, 0.0) for k in obj.sum_keys})) == {"tokens",
                                                                                                      "entropy"}


def test_sft_seq_mean_weighs_every_row_alike():
    """algo.loss_agg seq_mean (set by sft.loss_agg): the loss is the mean over rows of each row's mean NLL, so a
    two-token row and a six-token row weigh the same; token_mean on the same batch differs."""
    model = Bigram()
    samples = [sample([1, 2], [4, 5]), sample([1, 2], [6, 7, 8, 9, 10, 11]), sample([3], [12])]
    obj = SFT(config(algo={"loss_agg": "seq_mean"}))
    (update,) = obj.prepare(FakeOps(world_size=2), samples, 18)
    assert update.normalizer == 3  # rows over all ranks / world size
    mb = packed(samples, update)
    lp, ent = model(mb.input_ids, mb.position_ids, mb.index, mb.targets)
    loss, _ = obj.loss(mb, lp, ent, update.normalizer)
    per_row = [model.nll(s) / len(s.completion_ids) for s in samples]
    assert loss.item() == pytest.approx(sum(per_row) / 3, rel=1e-6)
    tok = SFT(config())
    (t_update,) = tok.prepare(FakeOps(), samples, 9)
    t_loss, _ = tok.loss(packed(samples, t_update), lp, ent, t_update.normalizer)
    assert t_loss.item() == pytest.approx(sum(model.nll(s) for s in samples) / 9, rel=1e-6)
    assert abs(t_loss.item() - loss.item()) > 1e-3


def test_sft_learner_config_carries_the_loss_aggregation():
    from rapo_ray.sft.trainer import learner_config

    cfg = learner_config(config(sft={"loss_agg": "seq_mean", "lr": 3e-5}, algo={"kl_coef": 0.1}), 10)
    assert cfg.algo.loss_agg == "seq_mean" and cfg.algo.kl_coef == 0.0 and cfg.learner.lr == 3e-5
    assert learner_config(config(), 10).algo.loss_agg == "token_mean"


# ----------------------------------------------------------------------------- DPO / IPO

def pair_batch() -> tuple[list[Sample], list[list[float]]]:
    lp = [[-1.0, -2.0], [-3.0], [-0.5, -0.5, -0.5], [-0.2, -0.1]]
    ref = [[-1.5, -2.0], [-2.0], [-0.4, -0.4, -0.4], [-0.6, -0.1]]
    samples = [sample([1, 2], [3, 4], ref=ref[0]), sample([1, 2], [5], ref=ref[1]),
               sample([7], [8, 9, 10], ref=ref[2]), sample([7], [11, 12], ref=ref[3])]
    return samples, lp


@pytest.mark.parametrize("kind", ["dpo", "ipo"])
def test_preference_loss_matches_a_hand_computation(kind):
    samples, lp = pair_batch()
    beta = 0.5
    obj = make_objective(kind, config(pairs={"beta": beta}))
    assert isinstance(obj, Preference) and obj.temperature == 1.0
    ops = FakeOps(world_size=2)
    (update,) = obj.prepare(ops, samples, None)
    assert update.units == [[0, 1], [2, 3]] and update.normalizer == 2  # 4 pairs over 2 ranks
    assert ops.calls == []  # the samples carry their reference log-probs
    mb = packed(samples, update)
    loss, sums = obj.loss(mb, by_member(mb, lp), torch.ones(mb.targets.numel()), update.normalizer)

    h = [(sum(lp[c]) - sum(samples[c].ref_logprobs)) - (sum(lp[r]) - sum(samples[r].ref_logprobs))
         for c, r in ((0, 1), (2, 3))]
    assert h == pytest.approx([1.5, -0.7])
    per_pair = ([math.log1p(math.exp(-beta * x)) for x in h] if kind == "dpo"
                else [(x - 1 / (2 * beta)) ** 2 for x in h])
    assert loss.item() == pytest.approx(sum(per_pair) / 2, rel=1e-6)
    m = obj.metrics({k: sums.get(k, 0.0) for k in obj.sum_keys})
    assert m["pairs"] == 2 and m["tokens"] == 8 and m["entropy"] == 1.0 and m["accuracy"] == 0.5
    assert m["margin"] == pytest.approx(beta * sum(h) / 2)
    assert m["chosen_reward"] == pytest.approx(beta * (0.5 - 0.3) / 2)


def test_preference_reference_is_precomputed_or_frozen():
    samples, lp = pair_batch()
    samples[3].ref_logprobs = []
    with pytest.raises(ValueError, match="1 samples on rank 0 carry no reference log-probs"):
        make_objective("dpo", config()).prepare(FakeOps(), samples, None)
    frozen = [torch.tensor(x) for x in lp]
    ops = FakeOps(reference=frozen)
    obj = make_objective("dpo", config(pairs={"reference": "frozen"}))
    obj.prepare(ops, samples, None)
    assert ops.calls == [(True, 1.0)] and obj.ref is frozen
    with pytest.raises(ValueError, match="even number of samples"):
        obj.prepare(ops, samples[:3], None)
    with pytest.raises(ValueError, match="unknown objective 'ppo'"):
        make_objective("ppo", config())


# ----------------------------------------------------------------------------- the shared loop

class FakeEngine:
    """The DeepSpeed engine calls the loop makes, recorded; plain SGD."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.backwards, self.steps = module, [], 0
        self.opt = torch.optim.SGD(module.parameters(), lr=0.1)

    def __call__(self, **kw):
        return self.module(**kw)

    def train(self):
        self.module.train()

    def eval(self):
        self.module.eval()

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        pass

    def backward(self, loss: torch.Tensor) -> None:
        self.backwards.append(loss.item())
        loss.backward()

    def step(self) -> None:
        self.steps += 1
        self.opt.step()
        self.opt.zero_grad()

    def get_lr(self) -> list[float]:
        return [0.1]


def test_train_step_accumulates_pads_and_steps_once_per_update(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    cfg = config(learner={"micro_batch_tokens": 16, "share_prompts": False})
    w = LearnerWorker(LearnerSettings.of(cfg), str(tmp_path), 0, 1)
    model = Bigram()
    w.engine = FakeEngine(model)
    # another rank packs one micro-batch more: this rank pads with a dummy whose loss is 0
    monkeypatch.setattr(w, "all_reduce", lambda v, op="sum": [x + (op == "max") for x in v])
    samples = [sample([1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]), sample([2, 3], [4, 5, 6]), sample([12], [13, 14, 15])]
    want = sum(model.nll(s) for s in samples) / 12
    m = w.train_step(samples, 12, "sft")
    assert m["loss"] == pytest.approx(want, rel=1e-6)
    assert m["micro_batches"] == 2 and len(w.engine.backwards) == 3 and w.engine.backwards[-1] == 0.0
    assert m["updates"] == 1 and w.engine.steps == 1 and m["tokens"] == 12 and m["grad_norm"] > 0
    assert set(m) == {"loss", "micro_batches", "updates", "grad_norm", "lr", "tokens", "entropy", "old_logprob_s",
                      "ref_s", "time_s"}
    assert sum(model.nll(s) for s in samples) / 12 < want  # the step lowered the loss
