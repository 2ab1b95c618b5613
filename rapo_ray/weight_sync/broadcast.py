"""``broadcast`` transport: one process group (gloo on CPU, NCCL on GPU: the backend learner rank 0 chose) with
learner rank 0 as the source and every vLLM worker as a receiver; one broadcast per bucket."""
from __future__ import annotations

from datetime import timedelta

import torch

from rapo_ray.weight_sync.common import DTYPES, WeightSyncError
from rapo_ray.weight_sync.interface import Receiver, Sender, SyncSpec, WeightSynchronizer, WeightUpdate


class Channel:
    """A broadcast-only process group outside the default torch.distributed world."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = 120.0):
        # timeout_s bounds the rendezvous (every rank reaching the store), not the broadcasts: a rank that never
        # arrives fails the setup in minutes, and the setup retries on a new port
        self.backend, self.rank, self.device = backend, rank, device
        if backend == "gloo":
            import torch.distributed as dist

            store = dist.TCPStore(host, port, world_size, is_master=rank == 0, wait_for_workers=False,
                                  timeout=timedelta(seconds=timeout_s))
            self._pg = dist.ProcessGroupGloo(dist.PrefixStore("rapo-wsync", store), rank, world_size)
        elif backend == "nccl":  # GPU path: vLLM's stateless group + its NCCL wrapper (not exercised on CPU CI)
            from vllm.distributed.device_communicators.pynccl import PyNcclCommunicator
            from vllm.distributed.utils import StatelessProcessGroup

            pg = StatelessProcessGroup.create(host=host, port=port, rank=rank, world_size=world_size,
                                              store_timeout=int(timeout_s))
            self._pg = PyNcclCommunicator(pg, device=device)
        else:
            raise ValueError(f"unknown weight-sync backend {backend!r}")

    @classmethod
    def join(cls, spec: SyncSpec, rank: int, device: torch.device) -> Channel:
        return cls(spec.backend, spec.host, spec.port, rank, spec.world_size, device)

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        if self.backend == "gloo":
            self._pg.broadcast(t, src).wait()
        else:
            self._pg.broadcast(t, src=src, stream=torch.cuda.current_stream())


def _opened(channel: Channel | None) -> Channel:
    if channel is None:
        raise WeightSyncError("broadcast transport used before prepare_weight_sync opened its group")
    return channel


class BroadcastSender(Sender):
    transport = "broadcast"
    channel: Channel | None = None

    def open(self, spec: SyncSpec) -> None:
        self.channel = Channel.join(spec, 0, self.device)

    def send(self, flat: torch.Tensor) -> None:
        _opened(self.channel).broadcast(flat, 0)


class BroadcastReceiver(Receiver):
    transport = "broadcast"
    channel: Channel | None = None

    def open(self, spec: SyncSpec, rank: int) -> None:
        self.channel = Channel.join(spec, rank, self.device)

    def receive(self, update: WeightUpdate, index: int) -> torch.Tensor:
        bucket = update.buckets[index]
        flat = torch.empty(bucket.numel, dtype=DTYPES[bucket.dtype], device=self.device)
        _opened(self.channel).broadcast(flat, 0)
        return flat


class BroadcastSync(WeightSynchronizer):
    transport = "broadcast"

    def setup(self, attempts: int = 3) -> None:
        import ray

        super().setup()
        world = 1 + sum(self.rollouts.receiving_ranks())
        for attempt in range(attempts):
            # The port is picked free on learner rank 0's node, then bound by the store: another process can take
            # it in between (seen under load), so a bind failure, or a rendezvous a rank never reached (seen once:
            # the store's port held on loopback by the vLLM worker), retries with a new port.
            host, port = self.learners.sync_endpoint()
            spec = SyncSpec(self.transport, self.plan.backend, host, port, world)
            refs = self.learners.prepare_weight_sync(spec) + self.rollouts.prepare_weight_sync(spec)
            try:
                ray.get(refs, timeout=self.cfg.resources.placement_timeout_s)
                return
            except ray.exceptions.RayTaskError as e:
                if not any(m in str(e).lower() for m in ("eaddrinuse", "address already in use", "timed out")):
                    raise
                if attempt == attempts - 1:
                    raise WeightSyncError(f"could not open the weight-sync group after {attempts} ports") from e

    def _transfer(self, version: int) -> tuple[list[float], list[list[float]]]:
        import ray

        update = WeightUpdate(self.transport, self.plan.buckets)
        received = self.rollouts.update_weights(update, version)  # receivers wait in the first broadcast
        _, sent = self.learners.send_weights(update)
        return sent, ray.get(received)
