"""Experiment trackers beside ``metrics.jsonl`` (``metrics.trackers``): Weights & Biases and MLflow.

Each gets the same scalars as the JSONL log at the same step, the resolved config once (W&B config, MLflow
params), and every ``metrics.table_every`` steps a table of sampled rollouts (prompt, level, completion, reward
parts). A run resumed with ``--resume`` continues the same tracker run: its id is kept in ``trackers.json`` in
the run folder. Steps redone after a hard kill are logged again: MLflow then holds two values at those steps,
W&B keeps the first (it does not rewind an offline run).
"""
from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any, Protocol

from rapo_ray import atomic
from rapo_ray.config import JobConfig
from rapo_ray.types import Sample

TABLE_COLUMNS = ("prompt_id", "sample_index", "level", "harmful_label", "prompt", "completion", "reward",
                 "risk_reward", "general_reward", "case", "refused", "truncated")


class Tracker(Protocol):
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_table(self, step: int, name: str, columns: list[str], rows: list[list[Any]]) -> None: ...

    def close(self) -> None: ...


def _ids(run_dir: Path) -> dict[str, str]:
    try:
        return json.loads((run_dir / "trackers.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _remember(run_dir: Path, name: str, run_id: str) -> None:
    atomic.write_text(run_dir / "trackers.json", json.dumps({**_ids(run_dir), name: run_id}))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if not isinstance(v, str) else v
    return out


class WandbTracker:
    """A W&B run (offline by default) under ``<run>/wandb``."""

    def __init__(self, cfg: JobConfig, run_dir: Path, label: str):
        import wandb

        w = cfg.metrics.wandb
        key = f"wandb/{label}"
        run_id = _ids(run_dir).get(key) or secrets.token_hex(6)
        self.run = wandb.init(project=w.project, entity=w.entity, mode=w.mode, dir=str(run_dir), id=run_id,
                              resume="allow", name=f"{cfg.name}-{label}", config=cfg.model_dump(mode="json"),
                              settings=wandb.Settings(silent=True, console="off"))
        _remember(run_dir, key, run_id)
        self.wandb = wandb

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def log_table(self, step: int, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        self.run.log({k: self.wandb.Image(str(p)) for k, p in images.items()}, step=step)

    def close(self) -> None:
        self.run.finish()
        self.wandb.teardown()  # ends the W&B service: only then is a short offline run's file complete on disk


class MlflowTracker:
    """An MLflow run through ``MlflowClient`` (no global active run), in ``metrics.mlflow.tracking_uri`` or a
    SQLite store in the run folder."""

    def __init__(self, cfg: JobConfig, run_dir: Path, label: str):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        m = cfg.metrics.mlflow
        local = m.tracking_uri is None
        self.client = MlflowClient(tracking_uri=m.tracking_uri or f"sqlite:///{run_dir.resolve() / 'mlflow.db'}")
        name = m.experiment or cfg.name
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            name, artifact_location=(run_dir.resolve() / "mlartifacts").as_uri() if local else None)
        key = f"mlflow/{label}"
        run_id = _ids(run_dir).get(key)
        if run_id is None:
            run_id = self.client.create_run(exp_id, run_name=f"{cfg.name}-{label}").info.run_id
            params = _flat(cfg.model_dump(mode="json"))
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
                self.client.log_batch(run_id, params=items[i:i + 100])
            _remember(run_dir, key, run_id)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self.run_id = run_id

    def log(self, step: int, scalars: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in scalars.items()]
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_table(self, step: int, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        data = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
        self.client.log_table(self.run_id, data=data, artifact_file=f"{name}/step_{step:06d}.json")

    def log_images(self, step: int, images: dict[str, Path]) -> None:
        for p in images.values():
            self.client.log_artifact(self.run_id, str(p), artifact_path="plots")

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


TRACKERS = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def open_trackers(cfg: JobConfig, run_dir: Path, label: str) -> list[Tracker]:
    """The configured W&B/MLflow trackers for one run folder (``label``: train, sft, dpo, eval)."""
    return [TRACKERS[name](cfg, run_dir, label) for name in cfg.metrics.trackers if name in TRACKERS]


def rollout_rows(samples: list[Sample], n: int) -> list[list[Any]]:
    """The first ``n`` samples as table rows in ``TABLE_COLUMNS`` order."""
    rows = []
    for s in samples[:n]:
        b = s.breakdown
        rows.append([s.prompt_id, s.sample_index, b.get("level", s.level), s.harmful_label, s.prompt, s.completion,
                     s.reward, b.get("risk_reward"), b.get("general_reward"), b.get("case"), b.get("refused"),
                     s.truncated])
    return rows


def metric_rows(label: str, tree: Any, path: str = "") -> list[list[Any]]:
    """Rows (model, metric, value, n, low, high) of an evaluation's metrics: every rate with its interval and
    every plain number, by dotted path."""
    if isinstance(tree, dict) and "rate" in tree:
        return [[label, path, tree["rate"], tree.get("n"), tree.get("low"), tree.get("high")]]
    if isinstance(tree, dict):
        return [r for k, v in tree.items() for r in metric_rows(label, v, f"{path}.{k}" if path else str(k))]
    if isinstance(tree, (int, float)) and not isinstance(tree, bool):
        return [[label, path, tree, None, None, None]]
    return []


def log_eval(cfg: JobConfig, out: Path, metrics: dict[str, Any], images: dict[str, Path]) -> None:
    """Send an evaluation report to the configured trackers: its metrics table and its plots (``metrics``: the
    report's payload, ``models`` -> label -> ``safety``/``utility``)."""
    trackers = open_trackers(cfg, out, "eval")
    rows = [r for label, m in metrics["models"].items()
            for r in metric_rows(label, {k: v for k, v in m.items() if k in ("safety", "utility")})]
    for t in trackers:
        t.log_table(0, "eval", ["model", "metric", "value", "n", "low", "high"], rows)
        t.log_images(0, images)
        t.close()
