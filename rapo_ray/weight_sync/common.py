"""Pieces every transport shares: the bucket plan, packing and unpacking, per-bucket checksums, verification."""
from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ParamMeta = tuple[str, str, tuple[int, ...]]  # (hf name, dtype name, shape)


class WeightSyncError(RuntimeError):
    """The weights in the rollout workers do not match the learner's."""


@dataclass
class SyncStats:
    version: int
    seconds: float
    tensors: int
    bytes: int
    buckets: int


@dataclass(frozen=True)
class Bucket:
    """Consecutive parameters of one dtype sent as one flat tensor, in this order."""

    params: tuple[ParamMeta, ...]

    @property
    def dtype(self) -> str:
        return self.params[0][1]

    @property
    def numel(self) -> int:
        return sum(math.prod(shape) for _, _, shape in self.params)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize


def plan_buckets(meta: Iterable[ParamMeta], bucket_bytes: int) -> list[Bucket]:
    """Group ``meta`` in order into buckets of one dtype and at most ``bucket_bytes`` (a larger parameter gets a
    bucket of its own). Order is kept: ZeRO-3 gathers in parameter order and vLLM reloads layer by layer."""
    buckets: list[list[ParamMeta]] = []
    size = 0
    for p in meta:
        nbytes = math.prod(p[2]) * DTYPES[p[1]].itemsize
        if not buckets or buckets[-1][0][1] != p[1] or size + nbytes > bucket_bytes:
            buckets.append([])
            size = 0
        buckets[-1].append(p)
        size += nbytes
    return [Bucket(tuple(b)) for b in buckets]


def pack(named: Iterable[tuple[str, torch.Tensor]], buckets: list[Bucket],
         device: torch.device) -> Iterator[torch.Tensor]:
    """Copy (and cast) the tensors of ``named``, which must follow the plan, into one new flat tensor per bucket."""
    it = iter(named)
    for bucket in buckets:
        flat = torch.empty(bucket.numel, dtype=DTYPES[bucket.dtype], device=device)
        offset = 0
        for name, _, shape in bucket.params:
            got, t = next(it, (None, None))
            if got != name or tuple(t.shape) != shape:
                raise WeightSyncError(f"learner parameter {got} {None if t is None else tuple(t.shape)} does not "
                                      f"follow the sync plan ({name} {shape}): re-run setup")
            n = t.numel()
            flat[offset:offset + n].copy_(t.reshape(-1))
            offset += n
        yield flat


def unflatten(flat: torch.Tensor, bucket: Bucket) -> list[tuple[str, torch.Tensor]]:
    """The named parameters of ``bucket`` as views into its flat tensor."""
    if flat.numel() != bucket.numel or flat.dtype != DTYPES[bucket.dtype]:
        raise WeightSyncError(f"bucket arrived as {flat.numel()} x {flat.dtype}, expected {bucket.numel} x "
                              f"{bucket.dtype}")
    out, offset = [], 0
    for name, _, shape in bucket.params:
        n = math.prod(shape)
        out.append((name, flat[offset:offset + n].view(shape)))
        offset += n
    return out


class Checksums:
    """float64 sums of flat buckets, kept on device and read back in one host transfer."""

    CHUNK = 1 << 16  # elements: on CPU, cast and sum cache-sized pieces (a whole 64 MiB bucket at once is ~9x slower)

    def __init__(self) -> None:
        self._sums: list[torch.Tensor] = []

    def add(self, flat: torch.Tensor) -> None:
        pieces = flat.split(self.CHUNK) if flat.device.type == "cpu" else (flat,)  # one kernel per bucket on GPU
        self._sums.append(torch.stack([c.double().sum() for c in pieces]).sum())

    def values(self) -> list[float]:
        return torch.stack(self._sums).tolist() if self._sums else []


def verify(expected: list[float], got: list[list[float]], rtol: float, what: str) -> None:
    """Every receiver's per-bucket sums must equal the learner's."""
    for w, sums in enumerate(got):
        if len(sums) != len(expected):
            raise WeightSyncError(f"{what}: rollout worker {w} received {len(sums)} buckets, "
                                  f"learner sent {len(expected)}")
        for i, (a, b) in enumerate(zip(expected, sums)):
            if not math.isclose(a, b, rel_tol=rtol, abs_tol=1e-6):
                raise WeightSyncError(f"{what}: rollout worker {w} bucket #{i} checksum {b} != learner {a}")


def wire_dtype(engine_dtypes: list[str]) -> str:
    """What crosses the wire: the rollout engines' resolved dtype (fp32 masters are cast on the learner), or
    float32 when engines on different hardware resolved differently (each engine casts on load)."""
    return engine_dtypes[0] if len(set(engine_dtypes)) == 1 else "float32"


def free_port(host: str = "") -> int:
    """A port no socket on this node holds. The default (the wildcard address) is the one to use for a
    rendezvous store, which binds every address: a port picked free on one address only can be held on another
    (seen: the weight-sync store's port held on 127.0.0.1 by the vLLM worker, which then waited its full timeout)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
