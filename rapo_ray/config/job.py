"""``JobConfig``: every section of a job in one model, validated together."""
from __future__ import annotations

import yaml
from pydantic import Field

from .base import _Section
from .commands import AblateConfig, EvalConfig, PairsConfig, SFTConfig
from .data import DataConfig
from .judge import JudgeConfig
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
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    ablate: AblateConfig = Field(default_factory=AblateConfig)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)
