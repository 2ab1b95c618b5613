"""The two ends inside the actors: ``LearnerSyncMixin`` (remote methods of every learner rank; rank 0 sends) and
``receive_update`` (the weights iterator a vLLM worker feeds to ``reload_weights``)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from rapo_ray.weight_sync.common import Checksums, free_port, pack, plan_buckets, unflatten
from rapo_ray.weight_sync.interface import Receiver, Sender, SyncPlan, SyncSpec, WeightUpdate
from rapo_ray.weight_sync.registry import transport


class LearnerSyncMixin:
    """Learner-side half of the weight sync. Needs ``rank``, ``device``, ``backend`` (the collective backend the
    learner chose for its device and validated against ``learner.dist_backend``), ``param_shapes()`` and
    ``named_full_params()`` (collective under ZeRO-3, so every rank walks it on a send)."""

    rank: int
    device: torch.device
    backend: str
    _sender: Sender | None = None

    def named_full_params(self) -> Iterator[tuple[str, torch.Tensor]]:  # provided by the learner
        raise NotImplementedError

    def param_shapes(self) -> list[tuple[str, tuple[int, ...]]]:  # provided by the learner
        raise NotImplementedError

    def sync_endpoint(self) -> tuple[str, int]:
        """An address on this actor's node for a transport's group (rank 0 hosts it)."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port()

    def sync_plan(self, dtype: str, bucket_bytes: int) -> SyncPlan:
        """The backend (this rank's own, from its device), the wire dtype and the parameters cut into buckets."""
        meta = [(name, dtype, shape) for name, shape in self.param_shapes()]
        return SyncPlan(self.backend, dtype, tuple(plan_buckets(meta, bucket_bytes)))

    def prepare_weight_sync(self, spec: SyncSpec) -> bool:
        self._sender = transport(spec.transport).sender(self.device)
        self._sender.open(spec)
        return True

    def send_weights(self, update: WeightUpdate) -> tuple[list[Any], list[float]] | None:
        """Collective: rank 0 sends ``update.buckets`` (payload entries, checksums); other ranks only take part
        in the ZeRO-3 gathers and return None."""
        params = self.named_full_params()
        if self.rank != 0:
            for _ in params:
                pass
            return None
        if self._sender is None or self._sender.transport != update.transport:
            self._sender = transport(update.transport).sender(self.device)
        sums, payload = Checksums(), []
        for flat in pack(params, list(update.buckets), self.device):
            payload.append(self._sender.send(flat))
            sums.add(flat)
        return payload, sums.values()


def receive_update(receiver: Receiver, update: WeightUpdate, sums: Checksums) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter of ``update``, bucket by bucket, adding each bucket's sum to ``sums``."""
    for i, bucket in enumerate(update.buckets):
        flat = receiver.receive(update, i)
        named = unflatten(flat, bucket)
        sums.add(flat)
        yield from named
