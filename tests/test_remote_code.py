"""No code from a model folder runs unless the config says so (``model.trust_remote_code``, false by default)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from rapo_ray.config import JobConfig, LearnerSettings, ModelConfig
from rapo_ray.learner.modeling import load_policy
from rapo_ray.models import load_tokenizer

_EVIL = '''
import pathlib
pathlib.Path("{marker}").write_text("model-folder code ran")
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
class EvilConfig(LlamaConfig):
    pass
class EvilModel(LlamaForCausalLM):
    config_class = EvilConfig
class EvilTok(PreTrainedTokenizerFast):
    pass
'''


@pytest.fixture
def evil_model(tmp_path, tiny_model_dir):
    """The tiny model with custom code declared in its config and tokenizer config; importing it leaves RAN."""
    path = tmp_path / "evil"
    shutil.copytree(tiny_model_dir, path)
    (path / "evil.py").write_text(_EVIL.format(marker=path / "RAN"))  # transformers imports a cached copy
    for name, auto_map in (("config.json", {"AutoConfig": "evil.EvilConfig",
                                            "AutoModelForCausalLM": "evil.EvilModel"}),
                           ("tokenizer_config.json", {"AutoTokenizer": [None, "evil.EvilTok"]})):
        cfg = json.loads((path / name).read_text())
        cfg["auto_map"] = auto_map
        (path / name).write_text(json.dumps(cfg))
    return path


def test_model_folder_code_does_not_run_by_default(evil_model):
    assert JobConfig().model.trust_remote_code is False
    tok = load_tokenizer(evil_model, ModelConfig())
    policy = load_policy(LearnerSettings.of(JobConfig()), str(evil_model), torch.device("cpu"))
    assert tok is not None and policy is not None  # the library's own classes, from the weights
    assert not (evil_model / "RAN").exists()


def test_the_check_can_fail(evil_model):
    """With trust_remote_code set, the same loaders do run the folder's code: the test above can see it."""
    cfg = JobConfig(model={"trust_remote_code": True})
    load_policy(LearnerSettings.of(cfg), str(evil_model), torch.device("cpu"))
    assert (evil_model / "RAN").exists()
