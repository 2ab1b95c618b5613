"""The transports, by ``sync.transport`` name: the only place a new one is added.

Room for more (not built): ``cuda_ipc`` for a learner and an engine sharing one GPU would be a module whose
Sender returns CUDA IPC handles of each bucket as its payload and whose Receiver rebuilds the tensors from them
(no copy, no group; its synchronizer is shaped like ``ObjectStoreSync``). LoRA-adapter-only sends would publish a
plan over the adapter's parameters only and need a second receive path in ``rapo_ray.vllm_ext`` that hands the
unflattened tensors to vLLM's LoRA manager instead of ``reload_weights``; the bucketing and checksums stay.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rapo_ray.weight_sync.broadcast import BroadcastReceiver, BroadcastSender, BroadcastSync
from rapo_ray.weight_sync.interface import Transport, WeightSynchronizer
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
    return transport(cfg.sync.transport).synchronizer(cfg, learners, rollouts)
