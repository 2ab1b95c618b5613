"""What each Ray actor is handed: only the config sections its role reads, not the whole ``JobConfig``.

A rollout worker, a learner rank or a judge actor is built from ``RolloutSettings.of(cfg)`` (and its learner and
judge siblings). The settings are frozen and carry the same section attributes as ``JobConfig`` (``.model``,
``.rollout``, ...), so role code reads ``cfg.rollout.n`` either way, while a section the role does not list is an
``AttributeError`` at once instead of a silent dependency. Adding a section to a role is one line here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, TypeVar

from .commands import PairsConfig
from .judge import JudgeConfig
from .model import ModelConfig
from .train import AlgoConfig, LearnerConfig, ResourcesConfig, RolloutConfig

if TYPE_CHECKING:
    from .job import JobConfig

S = TypeVar("S", bound="_RoleSettings")


@dataclass(frozen=True)
class _RoleSettings:
    seed: int
    model: ModelConfig

    @classmethod
    def of(cls: type[S], cfg: JobConfig | _RoleSettings) -> S:
        """The sections of ``cfg`` this role reads (``cfg`` may itself be a role's settings that has them)."""
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class RolloutSettings(_RoleSettings):
    """A vLLM rollout worker: engine and sampling settings, and its resources (CPU threads, device)."""

    rollout: RolloutConfig
    resources: ResourcesConfig


@dataclass(frozen=True)
class LearnerSettings(_RoleSettings):
    """One learner rank: optimiser and engine settings, the objectives' knobs (``algo``; ``pairs`` for the
    preference losses), the rollout's sampling temperature and its resources."""

    learner: LearnerConfig
    algo: AlgoConfig
    pairs: PairsConfig
    rollout: RolloutConfig
    resources: ResourcesConfig


@dataclass(frozen=True)
class JudgeSettings(_RoleSettings):
    """One judge actor: the judge section (backend, bands, prompts) and the model's think markers."""

    judge: JudgeConfig
