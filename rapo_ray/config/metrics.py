"""``metrics:``, where a run's scalars and sampled rollouts go (``rapo_ray/trackers.py``)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import _Section


class WandbConfig(_Section):
    project: str = "rapo_ray"
    entity: str | None = None
    # offline: everything under <run>/wandb, uploaded later with `wandb sync`; online needs WANDB_API_KEY
    mode: Literal["offline", "online"] = "offline"


class MlflowConfig(_Section):
    tracking_uri: str | None = None  # None: a SQLite store in the run folder (mlflow.db, artifacts in mlartifacts/)
    experiment: str | None = None  # None: the job's name


class MetricsConfig(_Section):
    # jsonl (metrics.jsonl, rollouts.jsonl) is always written; the others are added to it
    trackers: list[Literal["jsonl", "tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"])
    table_every: int = Field(default=10, ge=0)  # steps between sampled-rollout tables sent to wandb/mlflow (0: never)
    table_rows: int = Field(default=16, ge=1)  # rollouts per table (the step's first ones)
    wandb: WandbConfig = Field(default_factory=WandbConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @field_validator("trackers")
    @classmethod
    def _jsonl_on(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(["jsonl", *v]))  # always on, each once
