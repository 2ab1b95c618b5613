"""A pool of judge actors behind one call: ``JudgePool(cfg).score(rows) -> list[RewardBreakdown]``.

The pool validates rows in the caller, serves repeated judgements from an LRU cache, shards the rest over
its actors and returns results in row order. An actor that dies mid-call is restarted by Ray
(``judge.max_restarts``) and its in-flight shard retried there (``judge.max_retries`` task retries); if the
shard still fails, the pool re-submits it to another actor, at most ``judge.max_retries`` times, then raises
:class:`JudgeError`.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Any

import ray
from ray.exceptions import RayActorError

from rapo_ray.config import JobConfig, JudgeSettings
from rapo_ray.judge.base import cache_key, judge_identity, make_judge, prepare_rows
from rapo_ray.judge.reward import JudgeError, JudgeInput, RewardBreakdown
from rapo_ray.placement import actor_options


class JudgeActor:
    """One judge backend (for the LLM backend: one vLLM engine) in a Ray actor."""

    def __init__(self, cfg: JudgeSettings):
        self.judge = make_judge(cfg)

    def ready(self) -> bool:
        return True

    def score(self, rows: list[dict[str, Any]], state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return [b.to_dict() for b in self.judge.score(rows, state)]

    def stats(self) -> dict[str, Any]:
        return self.judge.stats()


class LRUCache:
    """Breakdowns by cache key; the least recently used entries go first past ``size``."""

    def __init__(self, size: int):
        self.size = size
        self._d: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        return None

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.size:
            self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class JudgePool:
    """``judge.num_actors`` judge actors with the judge role's resources (``resources.judge_cpus``,
    ``judge_gpus``, ``custom["judge"]``), optionally inside the judge placement group."""

    def __init__(self, cfg: JobConfig, placement: Any = None):
        j = cfg.judge
        if j.backend == "llm" and cfg.resources.judge_gpus > 0 and cfg.resources.judge_gpus < j.tensor_parallel_size:
            raise JudgeError(f"judge.tensor_parallel_size={j.tensor_parallel_size} needs resources.judge_gpus >= "
                             f"{j.tensor_parallel_size} per actor, got {cfg.resources.judge_gpus}")
        self.cfg = cfg
        self._identity = judge_identity(cfg)
        self._cache = LRUCache(j.cache_size) if j.cache else None
        remote = ray.remote(JudgeActor)
        self.actors = [remote.options(max_restarts=j.max_restarts, max_task_retries=j.max_retries,
                                      **actor_options(cfg, "judge", placement, i)).remote(JudgeSettings.of(cfg))
                       for i in range(j.num_actors)]
        try:
            ray.get([a.ready.remote() for a in self.actors])
        except RayActorError as e:
            self.close()
            raise JudgeError(f"a judge actor ({j.backend} backend) failed to start: {e}") from e
        self._suspect: set[int] = set()  # actors whose last call failed
        self._next = 0
        self._counts: Counter[str] = Counter()
        self._fallbacks: Counter[str] = Counter()

    # -- scoring -------------------------------------------------------------------------------------------------

    def score(self, rows: list[dict[str, Any]], state: dict[str, Any] | None = None) -> list[RewardBreakdown]:
        """One breakdown per row, in order (rows are validated first; a bad row raises JudgeError); ``state``: the
        training progress reward hooks see."""
        items = prepare_rows(rows, self.cfg)
        keys = [cache_key(self._identity, it, self.cfg, state) for it in items]
        results: list[dict[str, Any] | None] = [None] * len(rows)
        todo: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            hit = self._cache.get(key) if self._cache is not None else None
            if hit is not None:
                results[i] = hit
            elif key in todo:
                todo[key].append(i)  # a duplicate inside the batch is judged once
            else:
                todo[key] = [i]
        fresh = self._run([rows[idx[0]] for idx in todo.values()], state)
        for (key, idx), out in zip(todo.items(), fresh):
            if self._cache is not None:
                self._cache.put(key, out)
            for i in idx:
                results[i] = out
            self._fallbacks.update(out["fallbacks"])
        self._count(items, judged=len(todo))
        return [RewardBreakdown.from_dict(r) for r in results]

    def _count(self, items: list[JudgeInput], judged: int) -> None:
        c = self._counts
        c["rows"] += len(items)
        c["judged"] += judged
        c["cache_hits"] += len(items) - judged
        c["malformed"] += sum(not it.split.well_formed for it in items)

    def _pick(self, avoid: int | None = None) -> int:
        """The next actor in turn, preferring ones whose last call did not fail."""
        n = len(self.actors)
        order = [(self._next + k) % n for k in range(n)]
        healthy = [a for a in order if a not in self._suspect and a != avoid]
        others = [a for a in order if a != avoid] or order
        choice = (healthy or others)[0]
        self._next = (choice + 1) % n
        return choice

    def _run(self, rows: list[dict[str, Any]], state: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Judge ``rows`` on the actors: contiguous shards, one per healthy actor, results in order."""
        if not rows:
            return []
        n_shards = min(len(rows), max(1, len(self.actors) - len(self._suspect)))
        bounds = [round(k * len(rows) / n_shards) for k in range(n_shards + 1)]
        shards = [rows[bounds[k]:bounds[k + 1]] for k in range(n_shards)]
        attempts = [0] * n_shards
        done: list[list[dict[str, Any]] | None] = [None] * n_shards
        pending: dict[Any, tuple[int, int]] = {}

        def submit(shard: int, actor: int) -> None:
            pending[self.actors[actor].score.remote(shards[shard], state)] = (shard, actor)

        for k in range(n_shards):
            submit(k, self._pick())
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            shard, actor = pending.pop(ref)
            try:
                done[shard] = ray.get(ref)
                self._suspect.discard(actor)
            except RayActorError as e:
                self._counts["actor_failures"] += 1
                self._suspect.add(actor)
                attempts[shard] += 1
                if attempts[shard] > self.cfg.judge.max_retries:
                    raise JudgeError(f"judge shard of {len(shards[shard])} rows failed on {attempts[shard]} actor "
                                     f"calls (judge.max_retries={self.cfg.judge.max_retries}); last error: {e}") from e
                self._counts["shard_retries"] += 1
                submit(shard, self._pick(avoid=actor))
        return [out for part in done for out in part]

    # -- metrics and shutdown ------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters since the pool started: rows, judged, cache hits and hit rate, malformed completions (per
        scored row), fallbacks by reason (per judged row), actor failures and shard retries."""
        c = self._counts
        out: dict[str, Any] = {f"judge/{k}": c[k] for k in ("rows", "judged", "cache_hits", "malformed",
                                                             "actor_failures", "shard_retries")}
        out["judge/cache_hit_rate"] = c["cache_hits"] / c["rows"] if c["rows"] else 0.0
        out["judge/fallbacks"] = sum(self._fallbacks.values())
        out.update({f"judge/fallback/{k}": v for k, v in sorted(self._fallbacks.items())})
        return out

    def actor_stats(self) -> list[dict[str, Any]]:
        """Each actor's backend counters (for the LLM backends: engine calls and requests)."""
        return ray.get([a.stats.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []
