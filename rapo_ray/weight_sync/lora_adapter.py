"""The LoRA-adapter sync (``model.lora.rollout: adapter``): the adapters alone travel, and vLLM applies them
with its own LoRA support on the base weights it loaded at start, instead of receiving merged weights.

A push: learner rank 0 gathers the adapters (collective under ZeRO-3), saves them with peft in PEFT's format and
puts the files' bytes into the Ray object store once; every rollout worker writes them as a folder on its own node
and sends each later request with a ``LoRARequest`` for it (a new LoRA id per load, so vLLM reads the new
adapters; with ``max_loras`` 1 the previous ones are evicted). Verification as in the weight-sync contract: the
float64 sum of every adapter tensor as sent, compared with the sums of the tensors the worker wrote. The bytes on
the wire are the adapters' (2 r (d_in + d_out) per adapted matrix) rather than every weight; the price is the
LoRA product vLLM computes beside each adapted matmul in every forward (docs/lora.md measures both).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch

from rapo_ray.weight_sync.common import Bucket, ParamMeta
from rapo_ray.weight_sync.interface import SyncPlan, WeightSynchronizer

VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted max_lora_rank values


def engine_kwargs(rank: int) -> dict[str, Any]:
    """The vLLM engine arguments that enable LoRA for adapters of ``rank``."""
    fit = [r for r in VLLM_MAX_RANKS if r >= rank]
    if not fit:
        raise ValueError(f"model.lora.rank={rank} is above vLLM's largest max_lora_rank ({VLLM_MAX_RANKS[-1]})")
    return {"enable_lora": True, "max_lora_rank": fit[0], "max_loras": 1}


def tensor_sums(state: dict[str, torch.Tensor]) -> list[float]:
    """The float64 sum of each tensor, in key order."""
    return [state[k].double().sum().item() for k in sorted(state)]


def pack_adapter(peft_model: Any, state: dict[str, torch.Tensor]) -> tuple[dict[str, bytes], list[float],
                                                                        list[ParamMeta]]:
    """The PEFT folder of ``state`` (the adapters' full tensors under the PeftModel's parameter names) as file
    name -> bytes, the sums of the saved tensors, and their (name, dtype, shape)."""
    from safetensors.torch import load

    with tempfile.TemporaryDirectory() as d:
        peft_model.save_pretrained(d, state_dict=state)
        files = {f: Path(d, f).read_bytes() for f in os.listdir(d) if Path(d, f).is_file()}
    saved = load(files["adapter_model.safetensors"])
    meta = [(k, str(saved[k].dtype).removeprefix("torch."), tuple(saved[k].shape)) for k in sorted(saved)]
    return files, tensor_sums(saved), meta


class AdapterStore:
    """A rollout worker's adapters on its node: the newest push as a PEFT folder and its ``LoRARequest``."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="rapo_lora_"))
        weakref.finalize(self, shutil.rmtree, self.root, True)  # removed with the worker (a killed one leaves it)
        self.loads = 0
        self.request: Any = None  # None until the first push: the base weights, as the learners' zero adapters

    def load(self, files: dict[str, bytes], version: int) -> list[float]:
        """Write ``files`` as this version's folder and point ``request`` at it; returns the tensors' sums."""
        from safetensors.torch import load
        from vllm.lora.request import LoRARequest

        if "adapter_model.safetensors" not in files or "adapter_config.json" not in files:
            raise ValueError(f"adapter push v{version} lacks the PEFT files (got {sorted(files)})")
        self.loads += 1
        folder = self.root / f"policy-v{version}-{self.loads}"
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        old = Path(self.request.lora_path) if self.request is not None else None
        self.request = LoRARequest(folder.name, self.loads, str(folder))
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return tensor_sums(load(files["adapter_model.safetensors"]))


class AdapterSync(WeightSynchronizer):
    """Driver side of the adapter sync (no transport group: the object store carries the files)."""

    transport = "lora_adapter"

    def setup(self) -> None:
        self.rollouts.ready()

    def _transfer(self, version: int) -> tuple[list[float], list[list[float]]]:
        import ray

        ref, sent, meta = self.learners.send_adapter()
        self.plan = SyncPlan("none", meta[0][1], (Bucket(tuple(meta)),))
        return sent, ray.get(self.rollouts.load_adapter(ref, version))
