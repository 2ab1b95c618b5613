"""``model:``, the policy model."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import _Section


class LoraConfig(_Section):
    """LoRA adapters trained instead of the full weights (peft); exports are merged (and the adapters alone)."""

    rank: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)  # scaling = alpha / rank
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # on the adapters' input in training forwards
    # peft's target_modules: module-name suffixes, or "all-linear" (every Linear but the LM head)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # what the rollout engines get: merged (every weight, W + scaling B A, through sync.transport) or adapter (the
    # adapters alone, applied by vLLM's own LoRA support on the base weights: rapo_ray/weight_sync/lora_adapter.py)
    rollout: Literal["merged", "adapter"] = "merged"

    @field_validator("target_modules")
    @classmethod
    def _no_head(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list) and (not v or "lm_head" in v):
            raise ValueError("target_modules: a non-empty list of module names without lm_head (the learner's "
                             "log-prob head), or 'all-linear'")
        return v


class ModelConfig(_Section):
    """The policy model: a local HF folder or a built-in name (see ``rapo_ray.models``)."""

    name_or_path: str = "smollm2-135m-instruct"
    # Chat template override (a Jinja string); None uses the tokenizer's own.
    chat_template: str | None = None
    # How the thinking block is written when the model's template has none.
    think_open: str = "<think>"
    think_close: str = "</think>"
    trust_remote_code: bool = False
    lora: LoraConfig | None = None  # None: full fine-tuning

    @property
    def vllm_adapters(self) -> bool:
        """Whether vLLM applies the LoRA adapters on its base weights (``lora.rollout: adapter``) instead of
        receiving merged weights."""
        return self.lora is not None and self.lora.rollout == "adapter"
