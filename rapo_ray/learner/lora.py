"""LoRA adapters on the learner's policy (``model.lora``), through peft.

``apply_lora`` injects peft's LoRA layers into the HF model in place and freezes every other parameter, so the
DeepSpeed engine (any ZeRO stage) optimizes the adapters alone. What leaves the learner is always HF-format: the
weight sync and the checkpoint's HF folder carry *merged* weights (``W + scaling * B @ A``) under the base
model's parameter names, so vLLM and transformers load them unchanged; each checkpoint also holds the adapters
alone in PEFT format (``adapter/``, loadable with ``peft.PeftModel.from_pretrained``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rapo_ray.config import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter
ADAPTER_DIR = "adapter"  # inside a checkpoint


def apply_lora(hf: nn.Module, lora: LoraConfig) -> Any:
    """Wrap ``hf`` (modified in place: its targeted Linear layers become LoRA layers, all else frozen); returns
    the ``PeftModel`` (for saving the adapters)."""
    import peft

    cfg = peft.LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                          target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return peft.get_peft_model(hf, cfg)


def is_adapter(name: str) -> bool:
    """Whether a parameter or state-dict key of a LoRA-wrapped model belongs to an adapter."""
    return ".lora_" in name


def hf_name(name: str) -> str:
    """The base model's name for a wrapped layer's parameter (``q_proj.base_layer.weight`` -> ``q_proj.weight``)."""
    return name.replace(".base_layer.", ".")


def owner(model: nn.Module, name: str) -> nn.Module | None:
    """The LoRA layer that owns base parameter ``name``, or None when ``name`` is not inside one."""
    if ".base_layer." not in name:
        return None
    return model.get_submodule(name.split(".base_layer.")[0])


def adapter_params(layer: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters of one LoRA layer (to gather with its base weight under ZeRO-3)."""
    return [p for n, p in layer.named_parameters() if is_adapter("." + n)]


@torch.no_grad()
def merged(weight: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """``weight`` plus the layer's adapter delta (a new tensor, in ``weight``'s dtype)."""
    return weight + layer.get_delta_weight(ADAPTER).to(weight.dtype)
