"""The learner group: ``learner.num_learners`` Ray actors (``LearnerWorker``), one DeepSpeed data-parallel group.
Ray is imported only when a group is built, so the rest of ``rapo_ray.learner`` works without it."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from rapo_ray import faults
from rapo_ray.algo import PREFERENCE_LOSSES
from rapo_ray.config import JobConfig, LearnerSettings
from rapo_ray.learner.objectives import gradient_free
from rapo_ray.learner.packing import loss_token_count, pair_shards, shard_by_tokens
from rapo_ray.learner.worker import LearnerError, LearnerWorker
from rapo_ray.placement import actor_options
from rapo_ray.types import Sample
from rapo_ray.weight_sync import SyncPlan, SyncSpec, WeightUpdate


GRACE_S = 10.0  # after a rank fails, how long to wait for the others' errors before naming the root cause


def gather(refs: list, what: str, timeout_s: float, grace_s: float = GRACE_S) -> list:
    """Results of one call per rank. On a failure, waits up to ``grace_s`` more for the other ranks to fail too and
    raises a LearnerError naming the rank that died (a killed or crashed actor) if any, else the first to fail:
    when one rank dies mid-collective, its peers fail with a connection error that can reach the driver first."""
    import ray

    results: list = [None] * len(refs)
    failed: list[tuple[int, Exception]] = []
    pending = list(refs)
    deadline = time.monotonic() + timeout_s
    while pending and not any(isinstance(e, ray.exceptions.RayActorError) for _, e in failed):
        done, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0))
        if not done:
            if failed:  # the grace is over
                break
            raise LearnerError(f"learner group: {what} timed out after {timeout_s:.0f}s")
        rank = refs.index(done[0])
        try:
            results[rank] = ray.get(done[0])
        except Exception as e:
            if not failed:
                deadline = min(deadline, time.monotonic() + grace_s)
            failed.append((rank, e))
    if failed:
        rank, err = next(((r, e) for r, e in failed if isinstance(e, ray.exceptions.RayActorError)), failed[0])
        others = sorted(r for r, _ in failed if r != rank)
        also = f" (also rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))})" if others else ""
        raise LearnerError(f"learner group: {what} failed on rank {rank}{also}: {err}") from err
    return results


class LearnerGroup:
    """``learner.num_learners`` LearnerWorker actors forming one DeepSpeed data-parallel group."""

    def __init__(self, cfg: JobConfig, model_path: str, placement_group: Any = None, bundle_offset: int = 0):
        """``placement_group``: a PlacementGroup, or ``create_placement_groups``' dict (its "learner" entry);
        rank r takes bundle ``bundle_offset + r``."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.cfg = cfg
        self.timeout_s = cfg.learner.init_timeout_s
        n = cfg.learner.num_learners
        pg = placement_group.get("learner") if isinstance(placement_group, dict) else placement_group
        remote_cls = ray.remote(max_restarts=0)(LearnerWorker)
        self.actors = []
        for r in range(n):
            # learner_cpus / learner_gpus and the custom "learner" resources, as placement reserved them
            opts = actor_options(cfg, "learner", None, r)
            if pg is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=bundle_offset + r)
            self.actors.append(remote_cls.options(**opts).remote(LearnerSettings.of(cfg), str(model_path), r, n))
        try:
            addr, port = self._get([self.actors[0].master_endpoint.remote()], "rendezvous")[0]
            self._get([a.setup.remote(addr, port) for a in self.actors], "setup")
        except BaseException:
            self.kill()
            raise

    def _get(self, refs: list, what: str) -> list:
        """Results of one call per rank; a failure (or the timeout) raises, naming its root cause (``gather``)."""
        return gather(refs, what, self.timeout_s)

    def _shards(self, samples: Sequence[Sample]) -> list[list[int]]:
        return shard_by_tokens(samples, len(self.actors), self.cfg.learner.prompt_sharing)

    def train(self, samples: list[Sample], objective: str = "grpo") -> dict[str, float]:
        """One GRPO update on ``samples`` (advantages set), or one SFT step (``objective="sft"``), sharded over
        the ranks by token count; or one DPO/IPO step (``objective="dpo"``/``"ipo"``) on pairs (samples 2k chosen,
        2k + 1 rejected), sharded by whole pairs. A GRPO batch's gradient-free samples (``algo.skip_zero_advantage``,
        ``objectives.gradient_free``) stay on the driver; their tokens still count in the normalizer, and the
        metrics report them as ``skipped_samples`` / ``skipped_tokens``."""
        pairs = objective in PREFERENCE_LOSSES
        n_loss = [loss_token_count(s, self.cfg.algo.mask_truncated) for s in samples]
        total = None if pairs else sum(n_loss)
        idle = set(gradient_free(samples, self.cfg.algo)) if objective == "grpo" else set()
        left_out = (sum(n_loss[i] for i in idle), sum(1 for i in idle if n_loss[i] > 0))
        samples = [s for i, s in enumerate(samples) if i not in idle]
        shards = pair_shards(samples, len(self.actors)) if pairs else self._shards(samples)
        refs = [a.train_step.remote([samples[i] for i in shard], total, objective, left_out)
                for a, shard in zip(self.actors, shards)]
        faults.point("update")
        out = self._get(refs, "train_step")[0]
        if objective == "grpo":
            out.update(skipped_samples=float(len(idle)), skipped_tokens=float(left_out[0]))
        return out

    def compute_logprobs(self, samples: list[Sample], temperature: float | None = None) -> list[list[float]]:
        """Completion log-probs of every sample under the current policy, in input order, at ``temperature``
        (default: the rollout's)."""
        shards = self._shards(samples)
        refs = [a.compute_logprobs.remote([samples[i] for i in shard], temperature)
                for a, shard in zip(self.actors, shards)]
        out: list[list[float]] = [[] for _ in samples]
        for shard, res in zip(shards, self._get(refs, "compute_logprobs")):
            for i, lp in zip(shard, res):
                out[i] = lp
        return out

    def endpoints(self) -> list[tuple[str, int]]:
        """Each rank's node IP and a free port there, in rank order."""
        return self._get([a.master_endpoint.remote() for a in self.actors], "master_endpoint")

    def resolved(self) -> dict[str, str]:
        """What ``learner.precision`` resolved to (rank 0's; the ranks' own when they differ)."""
        per_rank = self._get([a.resolved.remote() for a in self.actors], "resolved")
        if any(r["value"] != per_rank[0]["value"] for r in per_rank):
            return {"value": per_rank[0]["value"],
                    "reason": "ranks differ: " + "; ".join(f"{r['value']} ({r['reason']})" for r in per_rank)}
        return per_rank[0]

    def param_checksums(self) -> list[dict[str, float]]:
        """Per rank: the float64 sum of each full parameter (equal across ranks when in sync)."""
        return self._get([a.param_checksums.remote() for a in self.actors], "param_checksums")

    def gather_state_dict(self) -> dict[str, torch.Tensor]:
        return self._get([a.gather_state_dict.remote() for a in self.actors], "gather_state_dict")[0]

    def save_checkpoint(self, path: str, client_state: dict) -> None:
        self._get([a.save_checkpoint.remote(str(path), client_state) for a in self.actors], "save_checkpoint")

    def load_checkpoint(self, path: str) -> dict:
        return self._get([a.load_checkpoint.remote(str(path)) for a in self.actors], "load_checkpoint")[0]

    # -- weight sync (rapo_ray.weight_sync): rank 0 plans and sends ----------------------------------------
    def sync_plan(self, dtype: str, bucket_bytes: int) -> SyncPlan:
        return self._get([self.actors[0].sync_plan.remote(dtype, bucket_bytes)], "sync_plan")[0]

    def sync_endpoint(self) -> tuple[str, int]:
        """A free address on rank 0's node for a transport's group."""
        return self._get([self.actors[0].sync_endpoint.remote()], "sync_endpoint")[0]

    def prepare_weight_sync(self, spec: SyncSpec) -> list[Any]:
        return [self.actors[0].prepare_weight_sync.remote(spec)]

    def send_weights(self, update: WeightUpdate) -> tuple[list[Any], list[float]]:
        """Send the current weights as ``update`` plans them (collective: ZeRO-3 gathers on every rank); returns
        rank 0's per-bucket payload and checksums."""
        return self._get([a.send_weights.remote(update) for a in self.actors], "send_weights")[0]

    def send_adapter(self) -> tuple[Any, list[float], list[Any]]:
        """The LoRA adapters as rank 0 put them into the object store (collective), with their sums and shapes."""
        return self._get([a.send_adapter.remote() for a in self.actors], "send_adapter")[0]

    def kill(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a, no_restart=True)
