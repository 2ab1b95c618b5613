"""``model:``, the policy model."""
from __future__ import annotations

from .base import _Section


class ModelConfig(_Section):
    """The policy model: a local HF folder or a built-in name (see ``rapo_ray.models``)."""

    name_or_path: str = "smollm2-135m-instruct"
    # Chat template override (a Jinja string); None uses the tokenizer's own.
    chat_template: str | None = None
    # How the thinking block is written when the model's template has none.
    think_open: str = "<think>"
    think_close: str = "</think>"
    trust_remote_code: bool = False
