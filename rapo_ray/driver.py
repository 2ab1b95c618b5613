"""The online RAPO loop: placement groups -> rollout -> judge -> advantages -> update -> sync -> log.

Kept short and linear on purpose; each role lives in its own module.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import remove_placement_group
from tqdm import tqdm

from rapo_ray import atomic, faults
from rapo_ray.algo import group_advantages
from rapo_ray.config import JobConfig
from rapo_ray.data.loader import PromptLoader
from rapo_ray.data.recipe import training_prompt_set
from rapo_ray.hardware import resolve_for_role, resolved_comment
from rapo_ray.judge.pool import JudgePool
from rapo_ray.learner import LearnerGroup
from rapo_ray.metrics import PhaseTimer, reward_metrics
from rapo_ray.models import conversation, load_tokenizer, resolve_model, thinking_prefix
from rapo_ray.placement import check_fits, create_placement_groups
from rapo_ray.rollout import RolloutGroup
from rapo_ray.run import Run
from rapo_ray.runtime import init_ray, score
from rapo_ray.types import Sample, row_columns
from rapo_ray.weight_sync import WeightSyncError, make_synchronizer


@dataclass
class Roles:
    rollouts: Any
    learners: Any
    judge: Any
    sync: Any
    placement: Any

    def shutdown(self) -> None:
        self.sync.close()
        self.rollouts.kill()
        self.learners.kill()
        self.judge.close()
        for pg in {id(p): p for p in self.placement.values()}.values():
            remove_placement_group(pg)


def start_roles(cfg: JobConfig, model_path: str, policy_path: str, version: int, step: int = 0) -> Roles:
    """Check the cluster fits, reserve placement groups, start every actor (the judge as it stands at ``step``)
    and build the sync group."""
    check_fits(cfg)
    pgs = create_placement_groups(cfg)
    rollouts = RolloutGroup(cfg, policy_path, pgs, initial_version=version)  # engines start while learners set up
    try:
        learners = LearnerGroup(cfg, model_path, pgs)
    except BaseException:
        rollouts.kill()
        raise
    judge = JudgePool(cfg.at_step(step), pgs)
    rollouts.ready()
    sync = make_synchronizer(cfg, learners, rollouts)
    sync.setup()
    return Roles(rollouts, learners, judge, sync, pgs)


def follow_judge_schedule(cfg: JobConfig, roles: Roles, step: int) -> None:
    """At a step where ``judge.schedule`` changes the judge, replace the judge actors with ones holding the new
    settings (and a fresh cache), and say so."""
    stage = cfg.at_step(step)
    current = roles.judge.cfg.judge
    if stage.judge == current:
        return
    before = current.model_dump(mode="json")
    changed = {k: v for k, v in stage.judge.model_dump(mode="json").items() if v != before[k]}
    roles.judge.close()
    roles.judge = JudgePool(stage, roles.placement)
    tqdm.write(f"judge: from step {step + 1} (judge.schedule): {json.dumps(changed)}")  # not into the bar's line


def record_precision(cfg: JobConfig, roles: Roles, run_dir: Path) -> dict[str, dict[str, str]]:
    """What every ``auto`` dtype resolved to where its role runs: logged, and appended to the run's config.yaml
    as comments (the keys keep ``auto``, so the config resolves again on other hardware)."""
    info = roles.rollouts.ready()[0]
    resolved = {"learner.precision": roles.learners.resolved(),
                "rollout.dtype": {"value": info["dtype"], "reason": info["dtype_reason"]}}
    if cfg.judge.backend == "llm":
        resolved["judge.dtype"] = resolve_for_role(cfg, "judge")
    with open(run_dir / "config.yaml", "a") as f:
        f.write(resolved_comment(resolved))
    print("precision: " + ", ".join(f"{k}={r['value']} ({r['reason']})" for k, r in resolved.items()), flush=True)
    return resolved


def record_placement(roles: Roles, run_dir: Path) -> dict[str, list[str]]:
    """Which node address each rollout worker and learner rank runs on: logged and written to ``roles.json``."""
    where = {"rollout": [i["ip"] for i in roles.rollouts.ready()],
             "learner": [ip for ip, _ in roles.learners.endpoints()]}
    atomic.write_text(run_dir / "roles.json", json.dumps(where, indent=1))
    print("placement: " + "; ".join(f"{k} on {', '.join(v)}" for k, v in where.items()), flush=True)
    return where


def assign_advantages(cfg: JobConfig, samples: list[Sample]) -> dict[str, float]:
    """Group advantages over the scored samples (an unscored one gets 0 and leaves its group's mean and std)."""
    adv, stats = group_advantages([s.reward for s in samples], [s.prompt_id for s in samples],
                                  std_norm=cfg.algo.adv_std_norm, eps=cfg.algo.adv_eps,
                                  scored=[s.scored for s in samples])
    for s, a in zip(samples, adv):
        s.advantage = float(a)
    return {f"adv/{k}": v for k, v in stats.items()}


def probe(cfg: JobConfig, roles: Roles, prompts: list[str]) -> dict[str, float]:
    """vLLM's greedy log-probs must match the learner's on the same tokens (catches a silently bad sync). Greedy
    log-probs are unscaled, so the learner's are taken at temperature 1, not at the rollout's temperature."""
    outs = roles.rollouts.greedy(prompts, cfg.sync.probe_tokens)
    samples = [Sample(prompt_id=f"probe{i}", sample_index=0, prompt=p, prompt_ids=o["prompt_ids"],
                      completion_ids=o["token_ids"], completion=o["text"], sampling_logprobs=o["logprobs"],
                      truncated=False, policy_version=-1, harmful_label=0) for i, (p, o) in enumerate(zip(prompts, outs))
               if o["token_ids"]]
    learner_lps = roles.learners.compute_logprobs(samples, temperature=1.0)
    diffs = [abs(a - b) for s, lps in zip(samples, learner_lps) for a, b in zip(s.sampling_logprobs, lps)]
    mean = sum(diffs) / max(1, len(diffs))
    if not math.isfinite(mean) or mean > cfg.sync.probe_tolerance:
        raise WeightSyncError(f"sync probe failed: mean |logprob(vLLM) - logprob(learner)| = {mean:.4f} "
                              f"> sync.probe_tolerance={cfg.sync.probe_tolerance}")
    return {"sync/probe_logprob_diff": mean}


def progress(cfg: JobConfig, step: int, data_state: dict[str, int], num_rows: int) -> dict[str, Any]:
    """The training progress reward hooks see as ``trainer_state`` when step ``step`` (0-based) is scored:
    optimizer steps done, their total, and passes over the training prompts."""
    per = cfg.algo.updates_per_batch
    return {"global_step": step * per, "max_steps": cfg.train.total_steps * per,
            "epoch": data_state["epoch"] + data_state["consumed"] / max(num_rows, 1)}


def evaluate_policy(cfg: JobConfig, roles: Roles, rows: list[dict], version: int) -> dict[str, float | None]:
    """Greedy completions of held-out prompts, judged; the same aggregates as training, under ``eval/``."""
    t0 = time.perf_counter()
    outs = ray.get(roles.rollouts.actors[0].complete.remote([conversation(r) for r in rows], cfg.rollout.max_tokens))
    samples = [Sample(prompt_id=str(r["id"]), sample_index=0, prompt=r["prompt"], prompt_ids=o["prompt_ids"],
                      completion_ids=o["token_ids"], completion=thinking_prefix(cfg.model) + o["text"],
                      sampling_logprobs=[], truncated=o["truncated"], policy_version=version,
                      harmful_label=int(r["harmful_label"]), level=r.get("level"), source=r.get("source", ""),
                      columns=row_columns(r))
               for r, o in zip(rows, outs)]
    score(roles.judge, samples)
    return {**{f"eval/{k}": v for k, v in reward_metrics(samples).items()}, "eval/seconds": time.perf_counter() - t0}


def train(cfg: JobConfig, resume: bool = False, address: str | None = None) -> Path:
    """Run online RAPO; returns the run directory."""
    run = Run(cfg, cfg.output_dir, "train", cfg.train.total_steps, resume, save_final=cfg.checkpoint.save_final,
              desc="rapo")
    run_dir = run.begin()
    init_ray(address)
    model_path = str(resolve_model(cfg.model.name_or_path))
    latest, state = run.latest, {"version": 0, **run.state}
    prompts = training_prompt_set(cfg.data, cfg.seed, load_tokenizer(model_path, cfg.model))
    loader = PromptLoader(prompts.train, cfg.rollout.prompts_per_step, cfg.seed, cfg.data.shuffle,
                          eval_only=tuple(cfg.data.eval_only),
                          benign_per_batch=cfg.data.benign_schedule(cfg.rollout.prompts_per_step))
    if latest:
        loader.load_state_dict(state["data"])

    # the engines start from the resumed checkpoint's merged weights, or, when vLLM applies the adapters itself,
    # from the base weights with the resumed adapters pushed once the learners hold them
    adapters = cfg.model.vllm_adapters
    roles = start_roles(cfg, model_path, str(latest) if latest and not adapters else model_path, state["version"],
                        run.start)
    record_precision(cfg, roles, run_dir)
    record_placement(roles, run_dir)
    run.restore(roles.learners)
    if latest and adapters:
        roles.sync.push(state["version"])
    version, timer = state["version"], PhaseTimer()
    probe_prompts = [r["prompt"] for r in (prompts.eval or prompts.train)[:2]]

    def resync() -> int:
        roles.sync.setup()
        roles.sync.push(version)
        return version

    overlap = cfg.algo.max_staleness > 0
    data_state = loader.state_dict()
    pending = None
    with run.loop(loader.close, roles.shutdown):
        for step in run.steps():
            follow_judge_schedule(cfg, roles, step)
            with timer("gen"):
                if pending is None:
                    pending = (roles.rollouts.generate_async(loader.next_batch(), step, version), version)
                samples = roles.rollouts.collect(pending[0], step, pending[1], resync)
                data_state = loader.state_dict()
                pending = None
                if overlap and step + 1 < cfg.train.total_steps:  # generation of step+1 overlaps this update
                    pending = (roles.rollouts.generate_async(loader.next_batch(), step + 1, version), version)
            with timer("reward"):
                score(roles.judge, samples, progress(cfg, step, data_state, loader.num_rows))
            with timer("adv"):
                metrics = assign_advantages(cfg, samples)
            with timer("update_actor"):
                update = roles.learners.train(samples)
            for phase, key in (("old_log_prob", "old_logprob_s"), ("ref", "ref_s")):  # measured inside the learners
                timer.times[phase] = update.pop(key, 0.0)
                timer.times["update_actor"] -= timer.times[phase]
            metrics.update({f"actor/{k}": v for k, v in update.items()})
            version += 1
            with timer("update_weights"):
                stats = roles.sync.push(version)
            if run.due(cfg.sync.probe_every, at=version):
                metrics.update(probe(cfg, roles, probe_prompts))
            if run.due(cfg.train.eval_every) and prompts.eval:
                metrics.update(evaluate_policy(cfg, roles, prompts.eval[:cfg.train.eval_prompts], version))
            times = timer.pop()
            gen_tokens = sum(len(s.completion_ids) for s in samples)
            metrics.update(reward_metrics(samples), **times, **roles.judge.stats())
            metrics.update({"policy_version": version, "samples": len(samples), "rollout/completion_tokens": gen_tokens, "staleness": version - 1 - min(s.policy_version for s in samples),
                            "rollout/tokens_per_s": gen_tokens / max(times.get("timing/gen", 0.0), 1e-9),
                            "sync/seconds": stats.seconds, "sync/bytes": stats.bytes,
                            "timing/step": sum(times.values()), "rollout/restarts": roles.rollouts.restarts})
            total = metrics["reward/all/total"]  # None when no sample of the step was scored
            run.log(metrics, samples if cfg.train.log_rollouts else None,
                    reward="-" if total is None else f"{total:.3f}",
                    gen=f"{times['timing/gen']:.1f}s", upd=f"{times['timing/update_actor']:.1f}s")
            run.maybe_save(roles.learners, version=version, data=data_state)
    return run_dir
