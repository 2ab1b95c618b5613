"""End-to-end online RAPO with real parts: vLLM rollout actor, rule judge actors, 2 DeepSpeed learners."""
from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import ray
import torch

from rapo_ray import driver, faults
from rapo_ray.checkpoint import CheckpointManager
from rapo_ray.hardware import resolve_dtype, resolve_for_role, resolve_precision
from rapo_ray.judge import make_judge
from rapo_ray.runtime import score
from rapo_ray.types import Sample
from e2e_utils import PROMPTS, read_jsonl, role_pids, run_cli, tiny_job

pytestmark = pytest.mark.slow

ROWS = [{"id": f"p{i}", "prompt": p, "harmful_label": h, "level": lvl} for i, (p, h, lvl) in enumerate(PROMPTS)]


def hf_greedy(model_dir, state_dict, prompt_ids: list[list[int]], max_new: int) -> list[list[int]]:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    m.load_state_dict(state_dict)
    m.eval()
    out = []
    for ids in prompt_ids:
        g = m.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=max_new, do_sample=False)
        out.append(g[0, len(ids):].tolist())
    return out


def one_step(cfg, roles, step: int, version: int) -> list[Sample]:
    """Generate, judge, then train with a reward that varies inside every group (the rule judge gives a
    random tiny model's garbage equal rewards, hence no gradient)."""
    pending = roles.rollouts.generate_async(ROWS[:cfg.rollout.prompts_per_step], step, version)
    samples = roles.rollouts.collect(pending, step, version, resync=lambda: version)
    score(roles.judge, samples)
    assert all(s.breakdown["case"] in ("Adequate", "Fair", "Excessive", "Poor") for s in samples)
    for s in samples:
        s.reward = float(s.sample_index)
    driver.assign_advantages(cfg, samples)
    roles.learners.train(samples)
    return samples


def check_sync_equals_hf(cfg, roles, tiny_model_dir, bucket_mb: float, version: int = 0) -> None:
    """From the policy at ``version``: one step, then a push; vLLM's greedy output moved and equals HF generate on
    the learners' gathered weights, and the sync probe agrees."""
    prompts = [r["prompt"] for r in ROWS[:3]]
    before = roles.rollouts.greedy(prompts, 8)
    samples = one_step(cfg, roles, version, version)
    assert all(s.policy_version == version for s in samples) and len(samples) == 2 * cfg.rollout.n
    stats = roles.sync.push(version + 1)
    assert stats.tensors > 0 and stats.bytes > 0 and (stats.buckets > 5 if bucket_mb < 1 else stats.buckets == 1)
    after = roles.rollouts.greedy(prompts, 8)
    moved = max(abs(a - b) for o1, o2 in zip(before, after) for a, b in zip(o1["logprobs"], o2["logprobs"]))
    assert moved > 1e-3, "the synced update changed nothing in vLLM"
    sd = roles.learners.gather_state_dict()
    hf = hf_greedy(tiny_model_dir, sd, [o["prompt_ids"] for o in after], 8)
    assert [o["token_ids"] for o in after] == hf
    assert driver.probe(cfg, roles, prompts)["sync/probe_logprob_diff"] < 1e-3


def check_update_raises_favoured_tokens(cfg, roles, version: int) -> int:
    """A synthetic reward (share of completion tokens with id < 3000) makes those tokens likelier, through
    vLLM sampling, the learners and the sync. (A near-uniform random model samples any single token of a
    49k vocabulary too rarely for a group to see it, so a class of tokens stands in for one.) Returns the policy version reached."""
    favoured = lambda t: t < 3000  # noqa: E731
    rows, shares = ROWS[:4], []
    probe_ids = list(range(100, 3000, 290))  # ten favoured tokens, fixed
    probe = [Sample(prompt_id="probe", sample_index=0, prompt="", prompt_ids=[1, 9690, 198], completion_ids=probe_ids,
                    completion="", sampling_logprobs=[], truncated=False, policy_version=0, harmful_label=0)]
    start = sum(roles.learners.compute_logprobs(probe)[0])
    for step in range(4):
        samples = roles.rollouts.collect(roles.rollouts.generate_async(rows, step, version), step, version,
                                         resync=lambda: version)
        assert all(s.policy_version == version for s in samples)
        for s in samples:
            s.reward = sum(map(favoured, s.completion_ids)) / max(1, len(s.completion_ids))
        shares.append(sum(s.reward for s in samples) / len(samples))
        driver.assign_advantages(cfg, samples)
        roles.learners.train(samples)
        version += 1
        roles.sync.push(version)
    end = sum(roles.learners.compute_logprobs(probe)[0])
    assert end > start + 0.5, (start, end, shares)
    return version


# temperature 0.7: the greedy probe must compare unscaled log-probs on both sides, whatever the sampling temperature;
# 64 MiB buckets (the default): the tiny model travels in one; a compiled engine (enforce_eager false, as the
# safety chain's rollout): the synced weights reach the torch.compile-d model, not a copy captured at start
def test_vllm_after_sync_equals_hf_on_learner_weights_zero3_object_store(ray_cluster, tiny_model_dir, tmp_path):
    cfg = tiny_job(tmp_path, tiny_model_dir, {"learner.zero_stage": 3, "sync.transport": "object_store",
                                              "learner.lr": 1e-2, "rollout.temperature": 0.7, "sync.bucket_mb": 64.0,
                                              "rollout.enforce_eager": False})
    roles = driver.start_roles(cfg, str(tiny_model_dir), str(tiny_model_dir), 0)
    try:
        check_sync_equals_hf(cfg, roles, tiny_model_dir, 64.0)
    finally:
        roles.shutdown()


def test_zero2_broadcast_update_raises_rewarded_tokens_then_sync_equals_hf(ray_cluster, tiny_model_dir, tmp_path):
    """One start of the roles (ZeRO-2, broadcast in 0.05 MiB buckets: the tiny model travels in many, the
    embedding alone in one) for two checks in turn: ``check_update_raises_favoured_tokens`` from the start
    weights, then ``check_sync_equals_hf`` from the policy it left."""
    cfg = tiny_job(tmp_path, tiny_model_dir, {"learner.zero_stage": 2, "sync.transport": "broadcast",
                                              "learner.lr": 3e-3, "rollout.temperature": 1.0, "sync.bucket_mb": 0.05})
    roles = driver.start_roles(cfg, str(tiny_model_dir), str(tiny_model_dir), 0)
    try:
        version = check_update_raises_favoured_tokens(cfg, roles, 0)
        check_sync_equals_hf(cfg, roles, tiny_model_dir, 0.05, version)
    finally:
        roles.shutdown()


def test_killed_rollout_worker_and_judge_actor_step_completes_on_current_policy(ray_cluster, tiny_model_dir, tmp_path):
    """Also: the roles started with ``auto`` precision (real DeepSpeed, real vLLM) resolve it where they run, as a
    probe task with the rollout's resources does (the step below asserts no numerics, so either kind of CPU)."""
    cfg = tiny_job(tmp_path, tiny_model_dir, {"rollout.max_tokens": 128, "rollout.prompts_per_step": 8,
                                              "learner.precision": "auto", "rollout.dtype": "auto"})
    want_p, want_d = resolve_precision("auto", "cpu"), resolve_dtype("auto", "cpu")
    roles = driver.start_roles(cfg, str(tiny_model_dir), str(tiny_model_dir), 0)
    try:
        assert roles.learners.resolved() == {"value": want_p.value, "reason": want_p.reason}
        info = roles.rollouts.ready()[0]
        assert (info["dtype"], info["dtype_reason"]) == (want_d.value, want_d.reason)
        assert resolve_for_role(cfg, "rollout")["value"] == want_d.value
        one_step(cfg, roles, 0, 0)
        roles.sync.push(1)
        version = 1

        def resync() -> int:
            roles.sync.setup()
            roles.sync.push(version)
            return version

        first_incarnation = roles.rollouts.ready()[0]["incarnation"]
        pending = roles.rollouts.generate_async(ROWS[:8], 1, version)
        ray.kill(roles.rollouts.actors[0], no_restart=False)
        samples = roles.rollouts.collect(pending, 1, version, resync)
        assert len(samples) == 8 * cfg.rollout.n
        assert sorted({s.prompt_id for s in samples}) == sorted(r["id"] for r in ROWS[:8])
        assert all(s.policy_version == version for s in samples)
        assert roles.rollouts.restarts >= 1
        assert roles.rollouts.ready()[0]["incarnation"] != first_incarnation
        # issue 19, item 3: a judge actor killed in the same step; the step's samples are all judged, as a
        # healthy pool judges them
        ray.kill(roles.judge.actors[0], no_restart=False)
        score(roles.judge, samples)
        local = make_judge(cfg)  # the same judge in this process, no actors
        want = [b.total for b in local.score([{"prompt": s.prompt, "completion": s.completion,
                                               "harmful_label": s.harmful_label, "level": s.level,
                                               "truncated": s.truncated} for s in samples])]
        assert [s.reward for s in samples] == want and len(want) == 8 * cfg.rollout.n
    finally:
        roles.shutdown()


def test_checkpoint_resume_equals_uninterrupted_run(ray_cluster, tiny_model_dir, tmp_path):
    """issue 19: three faults in one run, each resumed from the last complete checkpoint: learner rank 1 SIGKILLed in
    step 2's update (the run ends at once, exit 1), SIGTERM (``ray job stop``) during the resumed step 2's update
    (actors shut down before the driver exits, exit 143; Ctrl-C takes the same path: tests/test_run.py), the driver
    SIGKILLed while writing the step-3 checkpoint. Each stop names the step, the last complete checkpoint and the
    resume command in one line, and leaves no actor; the final resume reproduces the uninterrupted run (every step's
    prompts, token ids and rewards, the held-out eval, the losses)."""
    full = tiny_job(tmp_path / "a", tiny_model_dir, {"train.total_steps": 3, "train.eval_every": 3})
    run_a = driver.train(full)
    ckpts = CheckpointManager(run_a, 3).complete()
    assert [p.name for p in ckpts] == ["step_1", "step_2", "step_3"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(ckpts[-1])  # the checkpoint folder is an HF model folder

    resumed = tiny_job(tmp_path / "b", tiny_model_dir, {"train.total_steps": 3, "train.eval_every": 3})
    out_b = tmp_path / "b" / "run"
    root_b = out_b / "checkpoints"
    # (fault, argv, exit status, what its one line names, complete checkpoints after it, steps logged after it); a
    # point counts its passes per process, so a resumed run's first update is update@1 and its second checkpoint
    # write is step 3's
    hint = "step_1; continue from it with `rapo-ray train CONFIG --resume`"
    faults_run = [("learner1_step@2", ["train"], 1, ["train stopped", "step 2", "train_step failed on rank 1", hint],
                   ["step_1"], [1]),
                  ("update@1:TERM", ["train", "--resume"], 143, ["step 2", "SIGTERM", hint], ["step_1"], [1]),
                  ("checkpoint_write@2", ["train", "--resume"], -signal.SIGKILL, [], ["step_1", "step_2"],
                   [1, 2, 3])]
    for fault, argv, code, named, complete, logged in faults_run:
        before, t0 = role_pids(), time.monotonic()
        out = run_cli(resumed, argv, env={faults.ENV: fault})
        # bounded: after a learner's death the surviving rank waits in a collective, but the group fails on the first
        # dead rank, long before learner.init_timeout_s (600 s); about 50 s here, start-up included
        assert time.monotonic() - t0 < 400, fault
        assert out.returncode == code, (fault, out.stderr[-3000:])
        if named:
            lines = [ln for ln in out.stderr.splitlines() if ln.startswith("rapo-ray: ")]
            assert len(lines) == 1 and "Traceback" not in out.stderr.split("rapo-ray: ")[-1], out.stderr[-3000:]
            assert all(n in lines[0] for n in named), (fault, lines[0])
        assert [p.name for p in CheckpointManager(out_b, 3).complete()] == complete, fault
        # metrics of steps past the last checkpoint are truncated on resume, then logged again
        assert [m["step"] for m in read_jsonl(out_b / "metrics.jsonl")] == logged, fault
        if fault.endswith(":TERM"):
            assert not role_pids() - before  # shut down before the driver exited, not reaped later
        deadline = time.monotonic() + 60  # a killed driver's actors go with it (Ray kills a dead job's actors)
        while role_pids() - before and time.monotonic() < deadline:
            time.sleep(1)
        assert not role_pids() - before, fault
    assert (root_b / ".tmp_step_3").is_dir()  # the half-written checkpoint: never taken for complete
    (root_b / "step_9").mkdir()  # no COMPLETE marker: an interrupted write, ignored
    assert CheckpointManager(out_b, 3).latest().name == "step_2"
    run_b = driver.train(resumed, resume=True)

    key = lambda r: (r["step"], r["prompt_id"], r["sample_index"])  # noqa: E731
    rows_a = sorted(read_jsonl(run_a / "rollouts.jsonl"), key=key)
    rows_b = sorted(read_jsonl(run_b / "rollouts.jsonl"), key=key)  # each step once, steps 2-3 from resumed runs
    assert [key(r) for r in rows_a] == [key(r) for r in rows_b]
    assert [r["completion_ids"] for r in rows_a] == [r["completion_ids"] for r in rows_b]
    assert [r["reward"] for r in rows_a] == [r["reward"] for r in rows_b]
    metrics_a = read_jsonl(run_a / "metrics.jsonl")
    assert [("eval/reward/all/total" in m) for m in metrics_a] == [False, False, True]  # held-out eval at step 3
    metrics_b = read_jsonl(run_b / "metrics.jsonl")
    assert [m["step"] for m in metrics_b] == [1, 2, 3]
    assert metrics_a[2]["eval/reward/all/total"] == metrics_b[2]["eval/reward/all/total"]
    for a, b in zip(metrics_a, metrics_b):
        assert abs(a["actor/loss"] - b["actor/loss"]) < 1e-5, (a["step"], a["actor/loss"], b["actor/loss"])


def test_one_step_off_policy_overlap(ray_cluster, tiny_model_dir, tmp_path, capsys):
    """Generation of step t+1 overlaps the update of step t: samples are one version stale, corrected with the
    sampling log-probs, and the metrics stream is the same as on-policy (step 1 has nothing to overlap with, so it
    runs the on-policy path). ``data.benign_share`` as a schedule ``{0: 0.5, 2: 0.0}``: steps 1 and 2 sample one
    benign and one harmful prompt (the seeded unbalanced order would not), step 3 two harmful ones, although its
    batch was drawn while step 2 trained. ``judge.schedule`` ``{2: {rapo_weight: 0.5}}``: step 3's samples (scored
    after two steps) weigh the RAPO reward by half, steps 1 and 2 by one."""
    progress = {"hook": f"{Path(__file__).parent / 'trl_rewards.py'}:training_progress", "weight": 0.0}
    off = driver.train(tiny_job(tmp_path / "off", tiny_model_dir, {"train.total_steps": 3, "checkpoint.every": 0,
                                                                   "algo.max_staleness": 1,
                                                                   "judge.reward_hooks": [progress],
                                                                   "data.benign_share": {0: 0.5, 2: 0.0},
                                                                   "judge.schedule": {2: {"rapo_weight": 0.5}}}))
    metrics = read_jsonl(off / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2, 3]
    # a TRL reward function reading trainer_state (global_step / max_steps) saw each scored batch's progress
    assert [m["reward/component/training_progress"] for m in metrics] == pytest.approx([0.0, 1 / 3, 2 / 3])
    assert all(set(m) == set(metrics[0]) for m in metrics) and {"actor/loss", "staleness"} <= set(metrics[0])
    assert [m["staleness"] for m in metrics] == [0, 1, 1]
    versions = {(r["step"], r["policy_version"]) for r in read_jsonl(off / "rollouts.jsonl")}
    assert versions == {(1, 0), (2, 0), (3, 1)}  # step t+1 was sampled while step t trained
    labels = {(r["step"], r["prompt_id"]): r["harmful_label"] for r in read_jsonl(off / "rollouts.jsonl")}
    assert [sorted(h for (s, _), h in labels.items() if s == step) for step in (1, 2, 3)] == [[0, 1], [0, 1], [1, 1]]
    assert all(m["actor/clip_frac"] >= 0.0 for m in metrics)
    weights = {(r["step"], r["total"] / r["components"]["rapo"]) for r in read_jsonl(off / "rollouts.jsonl")
               if r["components"]["rapo"]}
    assert weights == {(1, 1.0), (2, 1.0), (3, 0.5)}, weights
    assert 'judge: from step 3 (judge.schedule): {"rapo_weight": 0.5}' in capsys.readouterr().out.splitlines()
    # each update left out exactly its zero-advantage samples (algo.skip_zero_advantage), unless all were
    rollouts = read_jsonl(off / "rollouts.jsonl")
    for m in metrics:
        step = [r for r in rollouts if r["step"] == m["step"]]
        idle = sum(r["advantage"] == 0.0 or not r["scored"] for r in step)
        assert m["actor/skipped_samples"] == (idle if idle < len(step) else 0), m["step"]
