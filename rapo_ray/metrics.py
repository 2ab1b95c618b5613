"""Phase timers, per-step metrics (JSONL + TensorBoard) and the append-only rollout log."""
from __future__ import annotations

import json
import statistics
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.trackers import TABLE_COLUMNS, rollout_rows
from rapo_ray.types import Sample

PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "update_weights")


class PhaseTimer:
    """Named wall-clock timers (verl's phase names), reset each step."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out, self.times = {f"timing/{k}": v for k, v in self.times.items()}, {}
        return out


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a metrics row as floats (bools, None and text left out): what TensorBoard and the
    trackers get."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def truncate_log(path: Path, last_step: int) -> int:
    """Keep the rows of a JSONL step log up to ``last_step`` (a row cut off by a hard kill is dropped too);
    returns the rows dropped. The file is rewritten atomically; a missing file is left missing."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            ok = json.loads(line)["step"] <= last_step
        except (ValueError, KeyError, TypeError):
            ok = False
        if ok:
            kept.append(line + "\n")
        else:
            dropped += 1
    if dropped:
        atomic.write_text(path, "".join(kept))
    return dropped


class MetricsLogger:
    """Writes one JSON object per step to ``metrics.jsonl`` and the same scalars to TensorBoard and to the
    ``trackers`` (``rapo_ray.trackers``: W&B, MLflow), with a table of the step's first ``table_rows`` rollouts
    every ``table_every`` steps.

    A run that starts at ``start_step`` (the resumed checkpoint's step; 0 for a fresh run) first drops the rows of
    later steps from ``metrics.jsonl`` and ``rollouts.jsonl`` and purges them from TensorBoard: after a hard kill
    the steps past the checkpoint are done again, and would otherwise appear twice."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, start_step: int = 0, trackers: list[Any] = (),
                 table_every: int = 0, table_rows: int = 16):
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self.dropped = {name: truncate_log(run_dir / name, start_step) for name in ("metrics.jsonl", "rollouts.jsonl")}
        self._f = self.path.open("a")
        self._rollouts = (run_dir / "rollouts.jsonl").open("a")
        self.trackers, self.table_every, self.table_rows = list(trackers), table_every, table_rows
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_step + 1)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, "time": time.time(), **metrics}
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        values = scalars(metrics)
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
            self._tb.flush()
        for t in self.trackers:
            t.log(step, values)

    def log_rollouts(self, step: int, samples: list[Sample]) -> None:
        for s in samples:
            b = s.breakdown
            self._rollouts.write(json.dumps({
                "step": step, "prompt_id": s.prompt_id, "sample_index": s.sample_index, "policy_version": s.policy_version,
                "prompt": s.prompt, "completion": s.completion, "completion_ids": s.completion_ids, "reasoning": b.get("reasoning"), "answer": b.get("answer"),
                "harmful_label": s.harmful_label, "level": b.get("level", s.level), "source": s.source,
                "truncated": s.truncated, "reward": s.reward, "advantage": s.advantage,
                **{k: v for k, v in b.items() if k not in ("reasoning", "answer", "level")},
            }) + "\n")
        self._rollouts.flush()
        if self.trackers and self.table_every and step % self.table_every == 0:
            rows = rollout_rows(samples, self.table_rows)
            for t in self.trackers:
                t.log_table(step, "rollouts", list(TABLE_COLUMNS), rows)

    def close(self) -> None:
        self._f.close()
        self._rollouts.close()
        if self._tb is not None:
            self._tb.close()
        for t in self.trackers:
            t.close()


GROUPS = ("all", "level1", "level2", "level3", "harmful", "benign")


def _mean(xs: list[float]) -> float | None:
    return float(statistics.fmean(xs)) if xs else None


def reward_metrics(samples: list[Sample]) -> dict[str, float | None]:
    """Rewards overall, by level (3 = 3 and above) and by harmful/benign (totals over the scored samples); refusal
    rate; reasoning length by group; lengths. With reward hooks, also each component's mean over the samples it
    scored (``reward/component/<name>``) and the unscored count (``reward/unscored``). Every step has the same keys:
    a group absent from the batch logs null."""
    groups: dict[str, list[Sample]] = {g: [] for g in GROUPS}
    for s in samples:
        level = s.breakdown.get("level", s.level) or 1
        for g in ("all", f"level{min(int(level), 3)}", "harmful" if s.harmful_label else "benign"):
            groups[g].append(s)
    out: dict[str, float | None] = {}
    for g, ss in groups.items():
        out[f"reward/{g}/total"] = _mean([s.reward for s in ss if s.scored])
        out[f"reward/{g}/risk"] = _mean([s.breakdown.get("risk_reward", 0.0) for s in ss])
        out[f"reward/{g}/general"] = _mean([s.breakdown.get("general_reward", 0.0) for s in ss])
        out[f"reward/{g}/repeat_price"] = _mean([s.breakdown.get("repeat_price", 0.0) for s in ss])
        out[f"refusal_rate/{g}"] = _mean([float(bool(s.breakdown.get("refused"))) for s in ss])
        out[f"reasoning_sentences/{g}"] = _mean([s.breakdown.get("reasoning_sentences", 0) for s in ss])
    out["response_length/mean"] = _mean([len(s.completion_ids) for s in samples])
    out["response_length/truncated_frac"] = _mean([float(s.truncated) for s in samples])
    out["well_formed_frac"] = _mean([float(bool(s.breakdown.get("well_formed"))) for s in samples])
    components = [s.breakdown.get("components", {}) for s in samples]
    for name in dict.fromkeys(k for c in components for k in c):
        out[f"reward/component/{name}"] = _mean([c[name] for c in components if c.get(name) is not None])
    if any(components):
        out["reward/unscored"] = float(sum(not s.scored for s in samples))
    return out
