"""One typed, validated config for a whole rapo_ray job.

Loaded from YAML (``job_configs/*.yaml``), overridable with dotted keys (``--set rollout.n=8``).
Unknown keys, wrong types and impossible values fail at load time with a message naming the key
and the file.

Each section lives next to its command's others: ``model`` / ``data`` / ``judge`` in their own modules, the
training loop's sections in ``train``, the other commands' (``eval``, ``sft``, ``pairs``, ``ablate``) in
``commands``; ``job.JobConfig`` holds them all and validates them together, and ``loading`` reads a file and its
``--set`` overrides into one. Import from here: ``from rapo_ray.config import JobConfig, load_config``.
"""
from __future__ import annotations

from .base import ConfigError
from .commands import AblateConfig, EvalConfig, PairsConfig, SFTConfig
from .data import DataConfig, DatasetSpec
from .job import JobConfig
from .judge import JudgeConfig, LevelBand, OpenAIJudgeConfig, RewardHook
from .loading import build_config, default_config_path, load_config, parse_override
from .metrics import MetricsConfig
from .model import LoraConfig, ModelConfig
from .roles import JudgeSettings, LearnerSettings, RolloutSettings
from .train import (AlgoConfig, CheckpointConfig, LearnerConfig, ResourcesConfig, RolloutConfig, SyncConfig,
                    TrainConfig)

__all__ = [
    "AblateConfig", "AlgoConfig", "CheckpointConfig", "ConfigError", "DataConfig", "DatasetSpec", "EvalConfig",
    "JobConfig", "JudgeConfig", "JudgeSettings", "LearnerConfig", "LearnerSettings", "LevelBand", "LoraConfig",
    "MetricsConfig", "ModelConfig", "OpenAIJudgeConfig", "PairsConfig", "ResourcesConfig", "RewardHook",
    "RolloutConfig", "RolloutSettings", "SFTConfig", "SyncConfig", "TrainConfig", "build_config",
    "default_config_path", "load_config", "parse_override",
]
