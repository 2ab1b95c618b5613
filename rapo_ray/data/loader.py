"""``PromptLoader``: the driver's batches of prompt rows, streamed through Ray Data, seeded and resumable.

The rows live once in the object store as an Arrow table. Each epoch is a Ray Data pipeline over the
epoch's order (a permutation seeded by ``(seed, epoch)``, or the identity without shuffle): blocks of row
positions (``from_items``) -> ``map_batches`` gathering those rows. Order is preserved, so the stream is deterministic,
and it is lazy: only the blocks being consumed (plus Ray Data's small prefetch) are materialized. A resumed
loader starts the epoch's pipeline at the recorded position, so it yields exactly the batches the original
would have. Ray Data tasks ask for ``num_cpus`` (fractional) so they run beside actors that hold most CPUs.

With ``benign_per_batch`` = k, every batch holds exactly k benign rows (``harmful_label`` 0) and the rest harmful.
Each label then has its own seeded permutations; an epoch is as many batches as the larger side needs to be
served once, and the smaller side is drawn again (a fresh permutation each pass) to fill its share.
``benign_per_batch`` may also be a schedule ``{batch index: k}`` (the first key 0): from the batch at that index on
(0-based, counted over every epoch), k benign rows a batch. When k changes, the next batch starts a fresh epoch in
the new order; the count of batches served is part of the state, so a resumed loader serves the same batches.
"""
from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from rapo_ray.data.rows import CORE_COLUMNS
from rapo_ray.data.split import ALWAYS_EVAL_ONLY, refuse_eval_only_rows


def _encode(rows: list[dict[str, Any]]) -> pa.Table:
    """Core columns typed; the other columns of each row pickled into ``extra`` (exact round trip)."""
    return pa.table({
        "id": pa.array([str(r["id"]) for r in rows], pa.large_string()),
        "prompt": pa.array([r["prompt"] for r in rows], pa.large_string()),
        "harmful_label": pa.array([int(r["harmful_label"]) for r in rows], pa.int8()),
        "level": pa.array([r["level"] for r in rows], pa.int64()),
        "source": pa.array([r["source"] for r in rows], pa.large_string()),
        "extra": pa.array([pickle.dumps({k: v for k, v in r.items() if k not in CORE_COLUMNS}) for r in rows],
                          pa.large_binary()),
    })


def _decode(row: Any) -> dict[str, Any]:
    out = {k: row[k] for k in CORE_COLUMNS}
    out["harmful_label"] = int(out["harmful_label"])
    out.update(pickle.loads(row["extra"]))
    return out


def _gather(batch: dict[str, np.ndarray], table_ref: ray.ObjectRef) -> pa.Table:
    """A Ray Data task: the rows at the batch's positions, in order."""
    return ray.get(table_ref).take(pa.array(batch["pos"], pa.int64()))


class PromptLoader:
    """Endless batches of exactly ``batch_size`` rows; an epoch ends, the next starts reshuffled. The rows are
    training rows: rows of an evaluation-only set (``eval_only``, by source; XSTest always) are an error."""

    def __init__(self, rows: list[dict[str, Any]], batch_size: int, seed: int, shuffle: bool = True,
                 num_cpus: float = 0.25, block_rows: int = 256, eval_only: tuple[str, ...] = (),
                 benign_per_batch: int | Mapping[int, int] | None = None):
        if not rows:
            raise ValueError("PromptLoader needs at least one row")
        refuse_eval_only_rows(rows, "the training prompts (PromptLoader)", (*ALWAYS_EVAL_ONLY, *eval_only))
        if batch_size < 1 or block_rows < 1 or num_cpus <= 0:
            raise ValueError("batch_size and block_rows must be >= 1 and num_cpus > 0")
        self.batch_size, self.seed, self.shuffle = batch_size, seed, shuffle
        self.num_cpus, self.block_rows = num_cpus, block_rows
        labels = np.array([int(r["harmful_label"]) for r in rows])
        self._total, self._by_label = len(rows), {0: np.flatnonzero(labels == 0), 1: np.flatnonzero(labels == 1)}
        self.schedule = self._check_schedule(benign_per_batch)
        self._use_quota(self.quota_at(0))
        self._table_ref = ray.put(_encode(rows))
        self._epoch, self._consumed, self._batches = 0, 0, 0
        self._it: Iterator[Any] | None = None

    @property
    def epoch(self) -> int:
        return self._epoch

    def _check_schedule(self, benign_per_batch: int | Mapping[int, int] | None) -> dict[int, int | None]:
        """``{first batch index: benign rows a batch}``, every quota checked against the batch and the rows."""
        schedule = dict(benign_per_batch) if isinstance(benign_per_batch, Mapping) else {0: benign_per_batch}
        if 0 not in schedule or any(b < 0 for b in schedule):
            raise ValueError(f"a benign schedule {schedule} needs its first key at batch 0 and no negative key")
        for k in schedule.values():
            if k is None:
                continue
            if not 0 <= k <= self.batch_size:
                raise ValueError(f"benign_per_batch {k} must be within 0..batch_size ({self.batch_size})")
            for label, quota in ((0, k), (1, self.batch_size - k)):
                if quota and not len(self._by_label[label]):
                    kind = "benign" if label == 0 else "harmful"
                    raise ValueError(f"a benign share of {k} in {self.batch_size} needs {kind} "
                                     "training prompts, and there are none")
        return dict(sorted(schedule.items()))

    def quota_at(self, batch: int) -> int | None:
        """Benign rows in the batch at this index (0-based, over every epoch)."""
        return [k for b, k in self.schedule.items() if b <= batch][-1]

    def _use_quota(self, quota: int | None) -> None:
        """Serve ``quota`` benign rows a batch; ``num_rows``: the rows an epoch of its order serves."""
        self.benign_per_batch = quota
        self.num_rows = len(self.order(0))

    def _apply_quota(self) -> None:
        """Switch to the schedule's quota for the next batch; a new quota starts a fresh epoch in its order."""
        quota = self.quota_at(self._batches)
        if quota == self.benign_per_batch:
            return
        self.close()
        if self._consumed:
            self._epoch, self._consumed = self._epoch + 1, 0
        self._use_quota(quota)

    def order(self, epoch: int) -> np.ndarray:
        """Row positions of an epoch, in the order they are served."""
        if self.benign_per_batch is not None:
            return self._balanced_order(epoch)
        if not self.shuffle:
            return np.arange(self._total)
        return np.random.default_rng([self.seed, epoch]).permutation(self._total)

    def _balanced_order(self, epoch: int) -> np.ndarray:
        quotas = {0: self.benign_per_batch, 1: self.batch_size - self.benign_per_batch}
        batches = max(math.ceil(len(self._by_label[k]) / q) for k, q in quotas.items() if q)
        columns = []  # per label, its rows of each batch: (batches, quota)
        for label, quota in quotas.items():
            pos = self._by_label[label]
            passes = math.ceil(batches * quota / len(pos)) if quota else 0
            stream = [np.random.default_rng([self.seed, epoch, label, r]).permutation(pos) if self.shuffle else pos
                      for r in range(passes)]
            columns.append(np.concatenate([pos[:0], *stream])[:batches * quota].reshape(batches, quota))
        return np.concatenate(columns, axis=1).ravel().astype(np.int64)

    def _epoch_dataset(self) -> ray.data.Dataset:
        rest = self.order(self._epoch)[self._consumed:]
        # from_items builds its blocks in the driver: no Ray task needed (from_numpy/range would launch 1-CPU tasks,
        # which never start while actors hold the CPUs).
        ds = ray.data.from_items([{"pos": int(i)} for i in rest],
                                 override_num_blocks=max(1, math.ceil(len(rest) / self.block_rows)))
        ds = ds.map_batches(functools.partial(_gather, table_ref=self._table_ref), batch_size=None,
                            batch_format="numpy", num_cpus=self.num_cpus)
        ds.context.execution_options.preserve_order = True
        return ds

    def close(self) -> None:
        """Stop the epoch's stream (the next batch starts a new one at the same position)."""
        close = getattr(self._it, "close", None)
        if close is not None:
            close()
        self._it = None

    def next_batch(self) -> list[dict[str, Any]]:
        self._apply_quota()
        out: list[dict[str, Any]] = []
        while len(out) < self.batch_size:
            if self._it is None:
                self._it = iter(self._epoch_dataset().iter_rows())
            out.append(_decode(next(self._it)))
            self._consumed += 1
            if self._consumed == self.num_rows:
                self.close()
                self._epoch, self._consumed = self._epoch + 1, 0
        self._batches += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "seed": self.seed, "consumed": self._consumed, "batches": self._batches}

    def load_state_dict(self, d: dict[str, int]) -> None:
        """Resume at a recorded position (the recorded seed replaces this loader's). The position is in the order
        of the last served batch's quota; a state without ``batches`` (recorded before the count) counts from 0."""
        epoch, seed, consumed, batches = int(d["epoch"]), int(d["seed"]), int(d["consumed"]), int(d.get("batches", 0))
        self.close()
        self._use_quota(self.quota_at(max(batches - 1, 0)))
        if epoch < 0 or batches < 0 or not 0 <= consumed < self.num_rows:
            raise ValueError(f"loader state {d} does not fit {self.num_rows} rows")
        self.seed, self._epoch, self._consumed, self._batches = seed, epoch, consumed, batches
