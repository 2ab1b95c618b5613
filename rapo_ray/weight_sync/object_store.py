"""``object_store`` transport: learner rank 0 puts each bucket into the Ray object store once; every vLLM worker
gets them. Portable (no extra process group), one extra copy. The worker must live in a Ray process: the
in-process "uni" executor inside the rollout actor, or vLLM's "ray" executor."""
from __future__ import annotations

from typing import Any

import torch

from rapo_ray.weight_sync.interface import Receiver, Sender, WeightSynchronizer, WeightUpdate


class ObjectStoreSender(Sender):
    transport = "object_store"

    def send(self, flat: torch.Tensor) -> Any:
        import ray

        return ray.put(flat.cpu())


class ObjectStoreReceiver(Receiver):
    transport = "object_store"

    def receive(self, update: WeightUpdate, index: int) -> torch.Tensor:
        import ray

        return ray.get(update.payload[index]).to(self.device)


class ObjectStoreSync(WeightSynchronizer):
    transport = "object_store"

    def _transfer(self, version: int) -> tuple[list[float], list[list[float]]]:
        import ray

        refs, sent = self.learners.send_weights(WeightUpdate(self.transport, self.plan.buckets))
        update = WeightUpdate(self.transport, self.plan.buckets, tuple(refs))
        return sent, ray.get(self.rollouts.update_weights(update, version))
