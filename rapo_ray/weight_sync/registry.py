"""The transports, by ``sync.transport`` name: the only place a new one is added.

Room for more (not built): ``cuda_ipc`` for a learner and an engine sharing one GPU would be a module whose
Sender returns CUDA IPC handles of each bucket as its payload and whose Receiver rebuilds the tensors from them
(no copy, no group; its synchronizer is shaped like ``ObjectStoreSync``). With ``model.lora.rollout: adapter`` the
synchronizer is ``lora_adapter.AdapterSync`` whatever the transport: the adapters alone, applied by vLLM's LoRA.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapo_ray.weight_sync.broadcast import BroadcastReceiver, BroadcastSender, BroadcastSync
from rapo_ray.weight_sync.interface import Transport, WeightSynchronizer
from rapo_ray.weight_sync.lora_adapter import AdapterSync
from rapo_ray.weight_sync.object_store import ObjectStoreReceiver, ObjectStoreSender, ObjectStoreSync

if TYPE_CHECKING:
    from rapo_ray.config import JobConfig

TRANSPORTS: dict[str, Transport] = {
    "broadcast": Transport(BroadcastSync, BroadcastSender, BroadcastReceiver),
    "object_store": Transport(ObjectStoreSync, ObjectStoreSender, ObjectStoreReceiver),
}


def transport(name: str) -> Transport:
    if name not in TRANSPORTS:
        raise ValueError(f"unknown weight-sync transport {name!r} (known: {', '.join(TRANSPORTS)})")
    return TRANSPORTS[name]


def make_synchronizer(cfg: JobConfig, learners: Any, rollouts: Any) -> WeightSynchronizer:
    if cfg.model.vllm_adapters:
        return AdapterSync(cfg, learners, rollouts)
    return transport(cfg.sync.transport).synchronizer(cfg, learners, rollouts)
