"""rapo_ray.weight_sync without vLLM or a GPU: the bucket plan, checksums and verification, the broadcast
transport over a real gloo group (two threads), the object-store transport through a real local Ray, the
registry and the backend choice."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

from rapo_ray.config import ModelConfig, SyncConfig
from rapo_ray.weight_sync import (TRANSPORTS, Checksums, SyncPlan, SyncSpec, WeightSyncError, WeightSynchronizer,
                                  WeightUpdate, free_port, make_synchronizer, plan_buckets)
from rapo_ray.weight_sync.broadcast import BroadcastReceiver, BroadcastSync
from rapo_ray.weight_sync.common import pack, unflatten, verify
from rapo_ray.weight_sync.endpoints import LearnerSyncMixin, receive_update
from rapo_ray.weight_sync.object_store import ObjectStoreReceiver, ObjectStoreSync
from rapo_ray.weight_sync.lora_adapter import AdapterSync

KIB = 1024


def params() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"embed.weight": torch.randn(96, 32, generator=g),  # 6 KiB in 16-bit dtypes: bigger than a 4 KiB bucket
            "layers.0.q.weight": torch.randn(48, 48, generator=g),
            "layers.0.q.bias": torch.randn(16, generator=g),
            "layers.0.norm.weight": torch.randn(16, generator=g),
            "layers.1.scale": torch.randn((), generator=g),            # a 0-d parameter
            "head.weight": torch.randn(8, 3, 5, generator=g)}


class FakeLearner(LearnerSyncMixin):
    """The learner's sync surface over a plain dict of tensors."""

    def __init__(self, tensors: dict[str, torch.Tensor], rank: int = 0, backend: str = "gloo"):
        self.tensors, self.rank, self.device, self.backend = tensors, rank, torch.device("cpu"), backend
        self.walked = 0

    def named_full_params(self):
        for item in self.tensors.items():
            self.walked += 1
            yield item

    def param_shapes(self):
        return [(n, tuple(t.shape)) for n, t in self.tensors.items()]


def test_plan_keeps_order_splits_by_size_and_dtype_and_isolates_a_big_param():
    meta = [("a", "float32", (4,)), ("b", "float32", (1024,)), ("c", "float32", (2, 2)), ("d", "bfloat16", (3,)),
            ("e", "bfloat16", (5,)), ("f", "float32", (1,))]
    buckets = plan_buckets(meta, 64)
    assert [[p[0] for p in b.params] for b in buckets] == [["a"], ["b"], ["c"], ["d", "e"], ["f"]]
    assert [b.dtype for b in buckets] == ["float32", "float32", "float32", "bfloat16", "float32"]
    assert buckets[1].nbytes == 4096 and buckets[3].numel == 8
    assert len(plan_buckets(meta, 1)) == len(meta)  # tiny buckets: one tensor each (the per-tensor baseline)
    assert len(plan_buckets(meta[:3], 2**20)) == 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_pack_unflatten_round_trip(dtype):
    src = params()
    buckets = plan_buckets([(n, dtype, tuple(t.shape)) for n, t in src.items()], 4 * KIB)
    assert len(buckets) > 2 and buckets[0].params[0][0] == "embed.weight" and len(buckets[0].params) == 1
    flats = list(pack(src.items(), buckets, torch.device("cpu")))
    out = dict(kv for flat, b in zip(flats, buckets) for kv in unflatten(flat, b))
    assert list(out) == list(src)
    for name, t in src.items():
        assert out[name].dtype == getattr(torch, dtype) and out[name].shape == t.shape
        assert torch.equal(out[name], t.to(out[name].dtype))


def test_pack_and_unflatten_reject_what_does_not_follow_the_plan():
    src = params()
    buckets = plan_buckets([(n, "float32", tuple(t.shape)) for n, t in src.items()], 4 * KIB)
    shuffled = list(src.items())[::-1]
    with pytest.raises(WeightSyncError, match="does not follow the sync plan"):
        list(pack(shuffled, buckets, torch.device("cpu")))
    with pytest.raises(WeightSyncError, match="bucket arrived"):
        unflatten(torch.zeros(3), buckets[0])


def test_checksums_are_float64_bucket_sums_and_mismatch_raises():
    flats = [torch.randn(3 * Checksums.CHUNK + 5).bfloat16(), torch.randn(7)]  # summed in chunks; and a short one
    sums = Checksums()
    for f in flats:
        sums.add(f)
    expected = [float(f.double().sum()) for f in flats]
    assert sums.values() == pytest.approx(expected, rel=1e-12)
    verify(expected, [sums.values(), [e * (1 + 1e-7) for e in expected]], 1e-4, "v1")
    with pytest.raises(WeightSyncError, match="rollout worker 1 bucket #1"):
        verify(expected, [expected, [expected[0], expected[1] + 1.0]], 1e-4, "v1")
    with pytest.raises(WeightSyncError, match="received 1 buckets, learner sent 2"):
        verify(expected, [expected[:1]], 1e-4, "v1")


def test_push_verifies_every_time():
    class Fixed(WeightSynchronizer):
        transport = "fixed"
        got: list[float] = [1.0, 2.0]

        def _transfer(self, version):
            return [1.0, 2.0], [[1.0, 2.0], self.got]

    cfg = SimpleNamespace(sync=SimpleNamespace(checksum_rtol=1e-4))
    sync = Fixed(cfg, None, None)
    sync.plan = SyncPlan("gloo", "float32", tuple(plan_buckets([("a", "float32", (3,)), ("b", "float32", (5,))], 16)))
    stats = sync.push(3)
    assert (stats.version, stats.tensors, stats.bytes, stats.buckets) == (3, 2, 32, 2)
    sync.got = [1.0, 2.5]
    with pytest.raises(WeightSyncError, match="weight sync v4 \\(fixed\\): rollout worker 1 bucket #1"):
        sync.push(4)


def test_backend_is_decided_by_the_learner_device():
    plan = FakeLearner(params()).sync_plan("bfloat16", 4 * KIB)
    assert plan.backend == "gloo" and plan.dtype == "bfloat16" and plan.tensors == len(params())
    assert {p[1] for b in plan.buckets for p in b.params} == {"bfloat16"}
    assert FakeLearner(params(), backend="nccl").sync_plan("float32", KIB).backend == "nccl"


def test_registry_picks_the_transport_classes():
    assert set(TRANSPORTS) == set(SyncConfig.model_fields["transport"].annotation.__args__)
    full, merged, adapter = (ModelConfig(lora=lora)
                             for lora in (None, {"rollout": "merged"}, {"rollout": "adapter"}))
    for name, cls in (("broadcast", BroadcastSync), ("object_store", ObjectStoreSync)):
        for model in (full, merged):  # LoRA with merged weights goes through the transport as full fine-tuning
            sync = make_synchronizer(SimpleNamespace(sync=SimpleNamespace(transport=name), model=model),
                                     "learners", "rollouts")
            assert type(sync) is cls and sync.learners == "learners" and sync.rollouts == "rollouts"
        t = TRANSPORTS[name]
        assert t.sender.transport == t.receiver.transport == t.synchronizer.transport == name
        # vLLM-applied LoRA adapters: the adapter sync, whatever the transport
        assert type(make_synchronizer(SimpleNamespace(sync=SimpleNamespace(transport=name), model=adapter),
                                      None, None)) is AdapterSync
    with pytest.raises(ValueError, match="unknown weight-sync transport"):
        make_synchronizer(SimpleNamespace(sync=SimpleNamespace(transport="carrier_pigeon"), model=full), None, None)


def test_bucket_mb_default_and_validation():
    assert SyncConfig().bucket_mb == 4.0
    with pytest.raises(ValueError):
        SyncConfig(bucket_mb=0)


def test_non_zero_ranks_walk_the_params_and_send_nothing():
    other = FakeLearner(params(), rank=1)
    update = WeightUpdate("object_store", tuple(plan_buckets([], 1)))
    assert other.send_weights(update) is None and other.walked == len(params())  # ZeRO-3 gathers are collective


@pytest.fixture
def no_item(monkeypatch):
    """Fail on any per-tensor host sync through ``.item()`` (the sums are read once, with ``.tolist()``)."""
    def item(self):
        raise AssertionError("per-tensor .item() in the sync path")

    monkeypatch.setattr(torch.Tensor, "item", item)


def test_broadcast_over_gloo_between_two_threads(no_item):
    src = params()
    learner = FakeLearner(src)
    plan = learner.sync_plan("float32", 4 * KIB)
    spec = SyncSpec("broadcast", plan.backend, "127.0.0.1", free_port("127.0.0.1"), world_size=2)
    receiver = BroadcastReceiver(torch.device("cpu"))
    update = WeightUpdate("broadcast", plan.buckets)

    def receive():
        receiver.open(spec, 1)
        sums = Checksums()
        named = [(n, t.clone()) for n, t in receive_update(receiver, update, sums)]
        return named, sums.values()

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(receive)
        learner.prepare_weight_sync(spec)  # both ends rendezvous here
        payload, sent = learner.send_weights(update)
        named, got = fut.result(timeout=120)
    assert payload == [None] * len(plan.buckets) and len(sent) == len(plan.buckets) > 2
    assert got == sent
    assert [n for n, _ in named] == list(src)
    assert all(torch.equal(t, src[n]) for n, t in named)
    assert math.isclose(sum(sent), sum(float(t.double().sum()) for t in src.values()), rel_tol=1e-9)


def test_object_store_through_ray(ray_cluster, no_item):
    src = params()
    learner = FakeLearner(src)
    plan = learner.sync_plan("bfloat16", 4 * KIB)
    refs, sent = learner.send_weights(WeightUpdate("object_store", plan.buckets))
    assert len(refs) == len(plan.buckets) and all(isinstance(r, ray_cluster.ObjectRef) for r in refs)
    update = WeightUpdate("object_store", plan.buckets, tuple(refs))

    @ray_cluster.remote
    def receive(update: WeightUpdate):  # another process, as a rollout worker; refs ride inside the handle
        sums = Checksums()
        return [(n, t.clone()) for n, t in receive_update(ObjectStoreReceiver(torch.device("cpu")), update, sums)], \
            sums.values()

    named, got = ray_cluster.get(receive.remote(update))
    assert got == sent and [n for n, _ in named] == list(src)
    assert all(t.dtype == torch.bfloat16 and torch.equal(t, src[n].bfloat16()) for n, t in named)


class _Groups:
    """Learner and rollout groups that only record the sync calls (BroadcastSync.setup)."""

    def __init__(self, ray, fail_first: int = 0, message: str = ""):
        self.ray, self.fail_first, self.message, self.specs = ray, fail_first, message, []

    def ready(self):
        return [{"dtype": "bfloat16"}, {"dtype": "bfloat16"}]

    def receiving_ranks(self):
        return [1, 2]

    def sync_plan(self, dtype, bucket_bytes):
        return SyncPlan("nccl", dtype, ())  # whatever learner rank 0 says, with no torch.cuda on the driver

    def sync_endpoint(self):
        return "127.0.0.1", 1000 + len(self.specs)

    def prepare_weight_sync(self, spec):
        self.specs.append(spec)

        message = self.message

        @self.ray.remote
        def bind(fail: bool):
            if fail:
                raise OSError(message)
            return True

        return [bind.remote(len(self.specs) <= self.fail_first)]


@pytest.mark.parametrize("message", [
    "bind failed: EADDRINUSE",
    "The client socket has timed out after 120000ms while trying to connect to (192.0.2.2, 44515).",  # seen once
])
def test_broadcast_setup_uses_the_learners_backend_and_retries_a_taken_port(ray_cluster, message):
    cfg = SimpleNamespace(sync=SimpleNamespace(bucket_mb=1.0), resources=SimpleNamespace(placement_timeout_s=60))
    groups = _Groups(ray_cluster, fail_first=1, message=message)
    sync = BroadcastSync(cfg, groups, groups)
    sync.setup()
    assert sync.plan.dtype == "bfloat16"
    # first attempt: learner and rollout specs fail to bind; second attempt on a new port succeeds
    assert [s.port for s in groups.specs] == [1000, 1000, 1002, 1002]
    assert {(s.backend, s.world_size, s.transport) for s in groups.specs} == {("nccl", 4, "broadcast")}
    groups = _Groups(ray_cluster, fail_first=10, message=message)
    with pytest.raises(WeightSyncError, match="could not open the weight-sync group after 2 ports"):
        BroadcastSync(cfg, groups, groups).setup(attempts=2)
    groups = _Groups(ray_cluster, fail_first=1, message="unrelated failure")
    with pytest.raises(ray_cluster.exceptions.RayTaskError, match="unrelated failure"):  # not retried
        BroadcastSync(cfg, groups, groups).setup()
    assert len(groups.specs) == 2
