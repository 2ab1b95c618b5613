"""``JobConfig``: every section of a job in one model, validated together."""
from __future__ import annotations

import warnings
from typing import Any

import yaml
from pydantic import Field, model_validator

from .base import _Section
from .commands import AblateConfig, EvalConfig, PairsConfig, SFTConfig
from .data import DataConfig
from .judge import JudgeConfig
from .metrics import MetricsConfig
from .model import ModelConfig
from .train import (AlgoConfig, CheckpointConfig, LearnerConfig, ResourcesConfig, RolloutConfig, SyncConfig,
                    TrainConfig)


class JobConfig(_Section):
    name: str = "rapo"
    output_dir: str = "runs/rapo"
    seed: int = 0
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algo: AlgoConfig = Field(default_factory=AlgoConfig)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    sync: SyncConfig = Field(default_factory=SyncConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    ablate: AblateConfig = Field(default_factory=AblateConfig)

    @model_validator(mode="before")
    @classmethod
    def _sft_checkpoint_every(cls, data: Any) -> Any:
        """``sft.checkpoint_every`` (deprecated) is still read: it becomes ``checkpoint.every``, with a warning."""
        sft = data.get("sft") if isinstance(data, dict) else None
        if not isinstance(sft, dict) or "checkpoint_every" not in sft:
            return data
        every, ckpt = sft["checkpoint_every"], dict(data.get("checkpoint") or {})
        if ckpt.get("every", every) != every:
            raise ValueError(f"sft.checkpoint_every={every} and checkpoint.every={ckpt['every']}: sft.checkpoint_every "
                             "is deprecated, set only checkpoint.every")
        warnings.warn("sft.checkpoint_every is deprecated: use checkpoint.every (sft, dpo and train all save every "
                      "checkpoint.every steps)", FutureWarning)
        return {**data, "sft": {k: v for k, v in sft.items() if k != "checkpoint_every"},
                "checkpoint": {**ckpt, "every": every}}

    @model_validator(mode="after")
    def _backend_fits_devices(self) -> JobConfig:
        """gloo with GPU learners would train them on the CPU without saying so."""
        if self.learner.dist_backend == "gloo" and self.resources.learner_gpus > 0:
            raise ValueError(f"learner.dist_backend gloo with resources.learner_gpus={self.resources.learner_gpus}: "
                             "the learners would train on the CPU; use auto (NCCL on GPUs) or nccl")
        return self

    def at_step(self, step: int) -> JobConfig:
        """This config with the judge as ``judge.schedule`` sets it for RL step ``step`` (steps done)."""
        if not self.judge.schedule:
            return self
        return self.model_copy(update={"judge": self.judge.at(step)})

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
