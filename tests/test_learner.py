"""The DeepSpeed learner group: real Ray actors, real DeepSpeed engines over gloo, the tiny model."""
from __future__ import annotations

import random

import pytest
import torch

from rapo_ray.algo import group_advantages, policy_loss
from rapo_ray.config import JobConfig
from rapo_ray.learner import (LearnerError, LearnerGroup, MicroBatch, balanced_split, loss_token_count, prompt_units,
                              shard_by_tokens, split_unit)
from rapo_ray.learner.objectives import old_logprob_source, sampling_logprobs
from rapo_ray.types import Sample

FAV = 42  # the token the synthetic reward favours


def make_sample(pid: str, idx: int, prompt: list[int], completion: list[int], truncated: bool = False) -> Sample:
    return Sample(prompt_id=pid, sample_index=idx, prompt="p", prompt_ids=prompt, completion_ids=completion,
                  completion="", sampling_logprobs=[], truncated=truncated, policy_version=0, harmful_label=0)


def favour_batch(seed: int, n_prompts: int = 4, n: int = 4) -> list[Sample]:
    """Groups of n completions; half are FAV repeated (reward 1), half random tokens (reward 0)."""
    rng = random.Random(seed)
    out = []
    for p in range(n_prompts):
        prompt = [rng.randrange(100, 1000) for _ in range(rng.randrange(3, 12))]
        for i in range(n):
            length = rng.randrange(4, 10)
            comp = [FAV] * length if i % 2 == 0 else [rng.randrange(100, 1000) for _ in range(length)]
            out.append(make_sample(f"s{seed}p{p}", i, prompt, comp))
    adv, _ = group_advantages([1.0 if s.completion_ids[0] == FAV else 0.0 for s in out],
                              [s.prompt_id for s in out])
    for s, a in zip(out, adv):
        s.advantage = float(a)
    return out


def job_config(**learner) -> JobConfig:
    algo = learner.pop("algo", {})
    return JobConfig.model_validate({"learner": {"num_learners": 2, "lr": 2e-3, "micro_batch_tokens": 48,
                                                 "logprob_chunk": 16, **learner},
                                     "algo": algo, "resources": {"learner_cpus": 0.5}})


def hf_logprobs(model, samples: list[Sample]) -> list[torch.Tensor]:
    """Naive reference: each sequence alone through the HF model, full float32 log-softmax."""
    out = []
    for s in samples:
        ids = torch.tensor([s.prompt_ids + s.completion_ids])
        logits = model(input_ids=ids).logits[0].float()
        p = len(s.prompt_ids)
        out.append(torch.log_softmax(logits, -1)[p - 1:-1].gather(-1, torch.tensor(s.completion_ids)[:, None])[:, 0])
    return out


def favoured_logprob_trace(group, batch: list[Sample], steps: int, start: list[float] = ()) -> list[float]:
    """Mean log-prob of the batch's rewarded completions under the group, before and after each of ``steps``
    updates on ``batch`` (after ``start``, earlier values to prepend)."""
    fav = [s for s in batch if s.advantage > 0]

    def mean() -> float:
        lps = group.compute_logprobs(fav)
        return sum(map(sum, lps)) / sum(map(len, lps))

    trace = [*start, mean()]
    for _ in range(steps):
        group.train(batch)
        trace.append(mean())
    return trace


def load_hf(path, state_dict=None):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if state_dict is not None:
        m.load_state_dict(state_dict)
    return m


# ----------------------------------------------------------------------------- pure helpers

def test_balanced_split_and_shards():
    # heaviest first onto the lightest part: 5 -> A, 4 -> B, 3 -> B, 2 -> A, 1 -> A (tie: lowest index)
    assert balanced_split([5, 1, 4, 2, 3], 2) == [[0, 1, 3], [2, 4]]
    assert balanced_split([], 3) == [[], [], []]
    samples = [make_sample("a", i, [1] * n, [2] * n) for i, n in enumerate([10, 1, 1, 1, 9])]
    shards = shard_by_tokens(samples, 2)
    assert [sum(2 * len(samples[i].prompt_ids) for i in s) for s in shards] == [22, 22]


def test_microbatch_pack_positions_and_targets():
    a = make_sample("a", 0, [10, 11], [12, 13, 14])
    b = make_sample("b", 0, [20], [21])
    mb = MicroBatch.pack([a, b], [0, 1], torch.device("cpu"))
    assert mb.input_ids.tolist() == [[10, 11, 12, 13, 14, 20, 21]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    assert mb.index.tolist() == [1, 2, 3, 5] and mb.targets.tolist() == [12, 13, 14, 21]
    assert mb.counts == [3, 1]
    with pytest.raises(ValueError, match="no prompt tokens"):
        MicroBatch.pack([make_sample("c", 0, [], [1])], [0], torch.device("cpu"))


def test_shared_prompt_units_shards_and_layout():
    g = [make_sample("g", i, [1, 2, 3], [10 + i] * (i + 1)) for i in range(3)]  # one prompt, completions 1-3 long
    h = make_sample("h", 0, [7, 8], [9])
    samples = [g[0], h, g[1], g[2]]
    assert prompt_units(samples, range(4), True) == [[0, 2, 3], [1]]
    assert prompt_units(samples, range(4), False) == [[0], [1], [2], [3]]
    assert shard_by_tokens(samples, 2, share_prompts=True) == [[0, 2, 3], [1]]  # a group stays on one rank
    assert split_unit(samples, [0, 2, 3], max_tokens=6) == [[0, 2], [3]]  # 3+1+2 fits, 3+3 starts anew
    mb = MicroBatch.pack(samples, [0, 2, 3, 1], torch.device("cpu"), share_prompts=True)
    assert mb.input_ids.tolist() == [[1, 2, 3, 10, 11, 11, 12, 12, 12, 7, 8, 9]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 3, 4, 3, 4, 5, 0, 1, 2]]
    # g[1]'s first token is predicted by the prompt's last state (2), its second by its own first token (4)
    assert mb.index.tolist() == [2, 2, 4, 2, 6, 7, 10]
    assert mb.targets.tolist() == [10, 11, 11, 12, 12, 12, 9] and mb.counts == [1, 2, 3, 1]
    unshared = MicroBatch.pack(samples, [0, 2, 3, 1], torch.device("cpu"))
    assert unshared.input_ids.shape[1] == 4 + 5 + 6 + 3
    # the attention layout, known at packing time: (start, end, first position, start of the prompt's sequence)
    from rapo_ray.learner.modeling import segments_from_positions

    assert mb.segments == ((0, 4, 0, 0), (4, 6, 3, 0), (6, 9, 3, 0), (9, 12, 0, 9))
    assert mb.segments == segments_from_positions(mb.position_ids[0])
    assert unshared.segments == segments_from_positions(unshared.position_ids[0])


def _flex_vs_varlen(device: torch.device, grad: bool) -> None:
    from rapo_ray.learner.modeling import flex_packed_attention, varlen_sdpa_attention

    rng = random.Random(1)
    samples = []
    for p in range(3):
        prompt = [rng.randrange(100, 400) for _ in range(rng.randrange(3, 40))]
        samples += [make_sample(f"p{p}", i, prompt, [7] * rng.randrange(0 if i == 0 else 1, 30)) for i in range(4)]
    units = prompt_units(samples, range(len(samples)), True)
    mb = MicroBatch.pack(samples, [i for u in units for i in u], device, share_prompts=True)
    assert any(q0 > 0 for _, _, q0, _ in mb.segments) and any(q0 == 0 for _, _, q0, _ in mb.segments)
    n = mb.input_ids.shape[1]
    out, grads = {}, {}
    for name, fn in (("varlen", varlen_sdpa_attention), ("flex", flex_packed_attention)):
        q, k, v = (torch.randn(1, h, n, 16, generator=torch.Generator().manual_seed(h)).to(device)
                   .requires_grad_(grad) for h in (6, 2, 3))
        k, v = k[:, :2], v[:, 1:3]  # two kv heads for six query heads
        o, _ = fn(None, q, k, v, None, position_ids=mb.position_ids, segments=mb.segments)
        out[name] = o
        if grad:
            (o * torch.randn(o.shape, generator=torch.Generator().manual_seed(5)).to(device)).sum().backward()
            grads[name] = q.grad
    torch.testing.assert_close(out["flex"], out["varlen"], rtol=1e-4, atol=1e-5)
    if grad:
        torch.testing.assert_close(grads["flex"], grads["varlen"], rtol=1e-4, atol=1e-5)


def test_flex_attention_equals_the_per_segment_reference(tiny_model_dir):
    """One FlexAttention call with the packed row's block mask gives the per-segment attention's outputs
    (shared-prompt completions, an empty-completion sequence, grouped-query heads). FlexAttention has no backward
    on CPU: gradients are compared on CUDA only, and a CPU learner refuses ``flex``."""
    _flex_vs_varlen(torch.device("cpu"), grad=False)
    cfg = JobConfig(learner={"attn_implementation": "flex"})
    assert cfg.learner.prompt_sharing
    from rapo_ray.config import LearnerSettings
    from rapo_ray.learner import LearnerWorker
    from rapo_ray.learner.modeling import load_policy

    samples = favour_batch(0, n_prompts=2)  # through the model: the layout reaches the registered attention
    mb = MicroBatch.pack(samples, list(range(len(samples))), torch.device("cpu"), share_prompts=True)
    lps = {}
    for name in ("varlen_sdpa", "flex"):
        policy = load_policy(LearnerSettings.of(JobConfig(learner={"attn_implementation": name})),
                             str(tiny_model_dir), torch.device("cpu")).eval()
        with torch.no_grad():
            lps[name], _ = policy(mb.input_ids, mb.position_ids, mb.index, mb.targets, segments=mb.segments)
    torch.testing.assert_close(lps["flex"], lps["varlen_sdpa"], rtol=1e-4, atol=1e-5)

    with pytest.raises(LearnerError, match="flex attention needs a CUDA learner"):
        LearnerWorker(LearnerSettings.of(cfg), str(tiny_model_dir), rank=0, world_size=1)


def test_auto_attention_is_flex_on_cuda_and_varlen_elsewhere(tiny_model_dir):
    """``auto`` (the default) resolves where the learner runs: flex on CUDA, varlen_sdpa on CPU, where a learner
    and its loaded model use it; an explicit name stands, and auto shares prompts."""
    from rapo_ray.config import LearnerSettings
    from rapo_ray.learner import LearnerWorker
    from rapo_ray.learner.modeling import VARLEN_ATTENTION, load_policy, resolve_attention

    assert resolve_attention("auto", torch.device("cuda", 0)) == "flex"
    assert resolve_attention("auto", torch.device("cpu")) == "varlen_sdpa"
    assert resolve_attention("sdpa", torch.device("cuda", 0)) == "sdpa"
    cfg = JobConfig()
    assert cfg.learner.attn_implementation == "auto" and cfg.learner.prompt_sharing
    assert LearnerWorker(LearnerSettings.of(cfg), str(tiny_model_dir), rank=0, world_size=1).attention == "varlen_sdpa"
    policy = load_policy(LearnerSettings.of(cfg), str(tiny_model_dir), torch.device("cpu"))
    assert policy.hf.config._attn_implementation == VARLEN_ATTENTION


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_attention_gradients_equal_the_reference_on_cuda():
    _flex_vs_varlen(torch.device("cuda"), grad=True)


def test_varlen_attention_with_a_layout_makes_no_host_sync(monkeypatch):
    """Given MicroBatch.segments, the attention forward reads nothing back from the device (tolist, item, nonzero
    raise) and equals the layout read from position ids."""
    from rapo_ray.learner.modeling import varlen_sdpa_attention

    samples = [make_sample("g", i, [1, 2, 3], [5] * (i + 1)) for i in range(3)] + [make_sample("h", 0, [7, 8], [9])]
    mb = MicroBatch.pack(samples, [0, 1, 2, 3], torch.device("cpu"), share_prompts=True)
    g = torch.Generator().manual_seed(0)
    n = mb.input_ids.shape[1]
    q, k, v = (torch.randn(1, h, n, 8, generator=g) for h in (4, 2, 2))
    expected, _ = varlen_sdpa_attention(None, q, k, v, None, position_ids=mb.position_ids)

    def no_sync(*_a, **_k):
        raise AssertionError("host sync in the attention forward")

    for name in ("tolist", "item"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    monkeypatch.setattr(torch, "nonzero", no_sync)
    got, _ = varlen_sdpa_attention(None, q, k, v, None, position_ids=mb.position_ids, segments=mb.segments)
    with pytest.raises(AssertionError, match="host sync"):  # the patch is live: the old path syncs
        varlen_sdpa_attention(None, q, k, v, None, position_ids=mb.position_ids)
    monkeypatch.undo()
    torch.testing.assert_close(got, expected)


def test_shared_prompt_logprobs_and_grads_equal_whole_sequences(tiny_model_dir):
    """Packing a group's prompt once changes no log-prob and no gradient (fp32), an empty completion included."""
    from rapo_ray.learner.modeling import load_policy

    rng = random.Random(3)
    samples = []
    for p in range(3):
        prompt = [rng.randrange(100, 4000) for _ in range(rng.randrange(2, 9))]
        for i in range(4):
            length = rng.randrange(0 if i == 1 else 1, 7)  # sample 1 of each group may be empty
            samples.append(make_sample(f"p{p}", i, prompt, [rng.randrange(100, 4000) for _ in range(length)]))
    rng.shuffle(samples)  # groups interleaved, as shards arrive
    policy = load_policy(JobConfig(), str(tiny_model_dir), torch.device("cpu")).train()
    out, grads = {}, {}
    for share in (False, True):
        units = prompt_units(samples, range(len(samples)), share)
        mb = MicroBatch.pack(samples, [i for u in units for i in u], torch.device("cpu"), share)
        lp, _ = policy(mb.input_ids, mb.position_ids, mb.index, mb.targets)
        with_layout, _ = policy(mb.input_ids, mb.position_ids, mb.index, mb.targets, segments=mb.segments)
        torch.testing.assert_close(with_layout, lp, rtol=1e-5, atol=1e-5)  # ulps: an empty completion's prompt
        # and the completion sharing it are one segment when read from positions, two in the packed layout
        by_sample = dict(zip(mb.members, lp.split(mb.counts)))
        out[share] = [by_sample[i] for i in range(len(samples))]
        policy.zero_grad()
        weights = torch.cat([torch.linspace(-1, 1, len(samples[i].completion_ids)) * (i + 1) for i in mb.members])
        (lp * weights).sum().backward()
        grads[share] = {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}
        if share:
            assert mb.input_ids.shape[1] < sum(len(s.prompt_ids) + len(s.completion_ids) for s in samples)
    for a, b in zip(out[False], out[True]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert grads[False].keys() == grads[True].keys()
    for name in grads[False]:
        torch.testing.assert_close(grads[False][name], grads[True][name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{name}: {m}")


def test_loss_token_count_masks_truncated():
    s = make_sample("a", 0, [1], [2, 3, 4], truncated=True)
    assert loss_token_count(s, mask_truncated=False) == 3 and loss_token_count(s, mask_truncated=True) == 0


def test_old_logprob_source_and_sampling_logprob_checks():
    def source(**algo) -> str:
        return old_logprob_source(JobConfig.model_validate({"algo": algo}).algo)

    assert source() == "current"
    assert source(updates_per_batch=2) == "learner"
    assert source(max_staleness=1) == "vllm"
    assert source(old_logprobs="learner") == "learner"
    s = make_sample("a", 0, [1], [2, 3])
    s.sampling_logprobs = [-0.5]
    with pytest.raises(ValueError, match="1 sampling log-probs for 2 completion tokens"):
        sampling_logprobs([s], torch.device("cpu"))
    s.sampling_logprobs = [-0.5, -1.0]
    assert sampling_logprobs([s], torch.device("cpu"))[0].tolist() == [-0.5, -1.0]


def test_varlen_attention_matches_masked_sdpa_and_single_sequences(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from rapo_ray.learner.modeling import attn_implementation

    lens = [5, 1, 17, 9]
    ids = torch.randint(0, 5000, (1, sum(lens)), generator=torch.Generator().manual_seed(0))
    pos = torch.cat([torch.arange(n) for n in lens])[None]  # restarting at each sequence
    out, grads = {}, {}
    for name in ("varlen_sdpa", "sdpa"):
        m = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=attn_implementation(name))
        out[name] = m(input_ids=ids, position_ids=pos, use_cache=False).logits
        out[name].pow(2).mean().backward()
        grads[name] = m.model.layers[0].self_attn.q_proj.weight.grad
        alone = m(input_ids=ids[:, 6:23], use_cache=False).logits  # the third sequence on its own
        torch.testing.assert_close(out[name][:, 6:23], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["varlen_sdpa"], out["sdpa"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grads["varlen_sdpa"], grads["sdpa"], rtol=1e-4, atol=1e-6)


_BF16_IN_ENGINE = """
import sys, torch
orig = torch.is_autocast_enabled
# What DeepSpeed reads to decide: CUDA autocast on outside the engine (as on a GPU learner). Simulated on CPU.
torch.is_autocast_enabled = lambda device_type=None: True if device_type is None else orig(device_type)
from rapo_ray.config import JobConfig, LearnerSettings
from rapo_ray.learner import LearnerWorker, MicroBatch
from rapo_ray.types import Sample
from rapo_ray.weight_sync import free_port

cfg = LearnerSettings.of(JobConfig(learner={"precision": "bf16", "zero_stage": 0}))
w = LearnerWorker(cfg, sys.argv[1], rank=0, world_size=1)
w.setup("127.0.0.1", free_port("127.0.0.1"))
seen = []
linear = next(m for m in w.engine.module.modules() if isinstance(m, torch.nn.Linear))
linear.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
s = Sample("p", 0, "x", [5, 6, 7], [8, 9], "", [], False, 0, 0)
mb = MicroBatch.pack([s], [0], w.device)
w._forward(w.engine, mb)
print("DTYPE", seen[0])
from deepspeed.comm import comm
print("SHM_OP", comm.cdb.shm_comm_op)  # the inference-only shared-memory op is not built
"""


def test_bf16_reaches_the_deepspeed_forward_when_cuda_autocast_is_seen(tiny_model_dir):
    """DeepSpeed turns autocast off inside its forward when CUDA autocast is on outside and its own torch_autocast
    section is off: GPU learners then ran float32 silently. Simulated here (the CUDA autocast query patched True):
    with precision bf16 the engine's Linear layers must compute in bfloat16. Also: DeepSpeed's shared-memory
    all-reduce op (tensor-parallel inference only) is not JIT-built at setup."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _BF16_IN_ENGINE, str(tiny_model_dir)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "DTYPE torch.bfloat16" in res.stdout, res.stdout[-2000:]
    assert "SHM_OP None" in res.stdout  # no JIT compile of an op the learners never call


# ----------------------------------------------------------------------------- real DeepSpeed groups

@pytest.mark.slow
def test_zero3_update_sync_and_checkpoint(ray_cluster, tiny_model_dir, tmp_path):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
    from safetensors import safe_open

    group = LearnerGroup(job_config(zero_stage=3, precision="fp32"), str(tiny_model_dir))
    try:
        batch = favour_batch(0)
        base = load_hf(tiny_model_dir)

        # packed, chunked, ZeRO-3 log-probs == per-sequence naive HF log-probs
        packed = group.compute_logprobs(batch)
        with torch.no_grad():
            naive = hf_logprobs(base, batch)
        for got, want in zip(packed, naive):
            torch.testing.assert_close(torch.tensor(got), want, rtol=0, atol=2e-5)
        # one sample over two ranks: rank 1 runs a dummy forward so the ZeRO-3 gathers stay matched
        torch.testing.assert_close(torch.tensor(group.compute_logprobs(batch[:1])[0]), naive[0], rtol=0, atol=2e-5)

        # the first update's gradient norm == the full-batch loss gradient computed locally: the loss is
        # normalized by the global token count across micro-batches and ranks, the tokens of a group with equal
        # rewards included though the learners never see it (algo.skip_zero_advantage)
        tied = [make_sample("tied", i, [7, 8, 9], [50 + i] * (3 + i)) for i in range(4)]
        m = group.train(batch + tied)
        lp = torch.cat(hf_logprobs(base, batch + tied))
        adv = torch.cat([torch.full((len(s.completion_ids),), s.advantage) for s in batch + tied])
        loss, _ = policy_loss(lp, lp.detach(), adv, torch.ones_like(lp), 0.2, 0.28)
        loss.backward()
        local_norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in base.parameters())).item()
        assert m["grad_norm"] == pytest.approx(local_norm, rel=1e-3)
        assert m["loss"] == pytest.approx(loss.item(), abs=1e-5)
        assert m["tokens"] == sum(len(s.completion_ids) for s in batch) and m["clip_frac"] == 0.0
        assert (m["skipped_samples"], m["skipped_tokens"]) == (4, 3 + 4 + 5 + 6)
        assert m["micro_batches"] < len(batch)  # sequences were packed several to a row

        # the favoured token's probability rises step after step
        fav = [s for s in batch if s.advantage > 0]
        hf_mean = sum(t.sum().item() for t in hf_logprobs(base, fav)) / sum(len(s.completion_ids) for s in fav)
        trace = favoured_logprob_trace(group, batch, 3, start=[hf_mean])
        assert all(b > a for a, b in zip(trace, trace[1:])), trace

        # ranks agree; names are the HF checkpoint's (tied lm_head stored once, as in the safetensors file)
        sums = group.param_checksums()
        assert sums[0] == sums[1]
        with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
            assert set(sums[0]) == set(f.keys())

        # checkpoint: HF folder loads in transformers with the learner's weights; the DeepSpeed state holds
        # the same fp32 weights (consolidated independently by zero_to_fp32)
        ckpt = tmp_path / "ckpt"
        group.save_checkpoint(str(ckpt), {"step": 4, "data_pos": 16})
        sd = group.gather_state_dict()
        assert set(sd) == set(base.state_dict())
        for k, v in load_hf(ckpt).state_dict().items():
            assert torch.equal(v, sd[k]), k
        from transformers import AutoTokenizer
        assert AutoTokenizer.from_pretrained(ckpt).encode("hello") == AutoTokenizer.from_pretrained(
            tiny_model_dir).encode("hello")
        ds_sd = get_fp32_state_dict_from_zero_checkpoint(str(ckpt / "ds"), tag="state")
        for k, v in ds_sd.items():
            assert torch.equal(v, sd[k.removeprefix("hf.")]), k

        # resume: the step after a load equals the step after the save (weights and optimizer state restored)
        batch2 = favour_batch(1)
        m1 = group.train(batch2)
        after1 = group.param_checksums()[0]
        assert after1 != sums[0]
        assert group.load_checkpoint(str(ckpt)) == {"step": 4, "data_pos": 16}
        assert group.param_checksums()[0] == pytest.approx(sums[0], rel=0, abs=0)
        m2 = group.train(batch2)
        assert m2["loss"] == pytest.approx(m1["loss"], abs=1e-6)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-6)
        assert group.param_checksums()[0] == pytest.approx(after1, rel=1e-6)
    finally:
        group.kill()


@pytest.mark.slow
def test_zero2_bf16_kl_minibatches(ray_cluster, tiny_model_dir):
    cfg = job_config(zero_stage=2, precision="bf16",
                     algo={"kl_coef": 0.05, "updates_per_batch": 2, "loss_agg": "seq_mean", "mask_truncated": True})
    group = LearnerGroup(cfg, str(tiny_model_dir))
    try:
        batch = favour_batch(2)
        batch[1].truncated = True
        with torch.no_grad():
            naive = hf_logprobs(load_hf(tiny_model_dir), batch)
        got = [torch.tensor(x) for x in group.compute_logprobs(batch)]
        diff = max((g - w).abs().max().item() for g, w in zip(got, naive))
        assert 0 < diff < 0.1  # bf16 autocast is on, and close to fp32

        m = group.train(batch)
        assert m["updates"] == 2
        assert m["tokens"] == sum(len(s.completion_ids) for s in batch) - len(batch[1].completion_ids)
        # the 2nd mini-batch runs on updated weights against recomputed old log-probs: ratio != 1
        assert m["approx_kl"] > 0 and m["kl_ref"] > 0 and m["entropy"] > 0
        assert torch.isfinite(torch.tensor([m["loss"], m["grad_norm"]])).all()
        m2 = group.train(batch)
        assert m2["kl_ref"] > m["kl_ref"]
        sums = group.param_checksums()  # ZeRO-2: each rank's own full copy
        assert sums[0] == sums[1]
    finally:
        group.kill()


@pytest.mark.slow
def test_group_setup_failure_is_clear(ray_cluster, tmp_path):
    with pytest.raises(LearnerError, match=r"(?s)rendezvous failed on rank 0: .*no HF model at .*no-such-model"):
        LearnerGroup(job_config(), str(tmp_path / "no-such-model"))


def test_deepspeed_is_imported_without_mlflow_which_imports_normally_after():
    """The learner imports DeepSpeed with mlflow hidden (its unused autotuner imports mlflow when installed, 2-3 s of
    every learner start on a 2-core CPU); mlflow itself still imports afterwards (the trackers use it)."""
    import subprocess
    import sys

    code = ("import sys\nfrom rapo_ray.learner.worker import hidden_module\n"
            "with hidden_module('mlflow'):\n    import deepspeed\n"
            "from deepspeed.autotuning import autotuner\nassert not autotuner.has_mlflow\n"
            "assert 'mlflow' not in sys.modules\nimport mlflow\nassert mlflow.__name__ == 'mlflow'\n"
            "with hidden_module('mlflow'):\n    import mlflow as again\nassert again is mlflow\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
