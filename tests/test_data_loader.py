"""PromptLoader on real Ray Data: determinism, epochs, resume, and running beside actors that hold CPUs."""
from __future__ import annotations

from collections import Counter

import pytest

from rapo_ray.data import PromptLoader

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300, method="thread")]


def make_rows(n: int) -> list[dict]:
    return [{"id": f"s:{i}", "prompt": f"prompt {i}", "harmful_label": i % 2, "level": (None, 1, 2, 3)[i % 4],
             "source": "s", "category": ["a", i], "origin_id": f"s:{i // 2}"} for i in range(n)]


def ids(batches):
    return [[r["id"] for r in b] for b in batches]


def take(loader: PromptLoader, k: int) -> list[list[dict]]:
    return [loader.next_batch() for _ in range(k)]


def test_epochs_deterministic_reshuffled_and_exact(ray_cluster):
    rows = make_rows(23)
    a = PromptLoader(rows, batch_size=5, seed=11, block_rows=4)
    got = take(a, 10)  # 50 rows: two full epochs and 4 rows of the third
    assert all(len(b) == 5 for b in got)
    flat = [r["id"] for b in got for r in b]
    ep0, ep1 = flat[:23], flat[23:46]
    assert sorted(ep0) == sorted(ep1) == sorted(r["id"] for r in rows)  # every row once per epoch
    assert ep0 != ep1  # reshuffled
    assert ep0 == [f"s:{i}" for i in a.order(0)] and ep1 == [f"s:{i}" for i in a.order(1)]
    assert a.state_dict() == {"epoch": 2, "seed": 11, "consumed": 4, "batches": 10}
    by_id = {r["id"]: r for r in rows}
    assert all(r == by_id[r["id"]] for b in got for r in b)  # every column round-trips exactly
    b = PromptLoader(rows, batch_size=5, seed=11, block_rows=7)
    assert ids(take(b, 10)) == ids(got)  # same seed, other block size: same order
    c = PromptLoader(rows, batch_size=5, seed=12)
    assert ids(take(c, 5)) != ids(got[:5])
    for loader in (a, b, c):
        loader.close()


def test_resume_yields_the_same_next_batches(ray_cluster):
    rows = make_rows(17)
    ref = PromptLoader(rows, batch_size=4, seed=5, block_rows=3)
    take(ref, 3)
    state = ref.state_dict()
    expected = ids(take(ref, 6))  # crosses into the next epochs
    resumed = PromptLoader(rows, batch_size=4, seed=999, block_rows=3)
    resumed.load_state_dict(state)
    assert resumed.seed == 5 and ids(take(resumed, 6)) == expected
    # a loader mid-epoch can jump back to an earlier position too
    ref.load_state_dict(state)
    assert ids(take(ref, 6)) == expected
    with pytest.raises(ValueError, match="does not fit"):
        ref.load_state_dict({"epoch": 0, "seed": 5, "consumed": 17})
    ref.close()
    resumed.close()


def test_no_shuffle_keeps_order_and_small_sets_wrap(ray_cluster):
    rows = make_rows(3)
    loader = PromptLoader(rows, batch_size=7, seed=0, shuffle=False)
    assert ids(take(loader, 1)) == [["s:0", "s:1", "s:2", "s:0", "s:1", "s:2", "s:0"]]
    assert loader.state_dict() == {"epoch": 2, "seed": 0, "consumed": 1, "batches": 1}
    loader.close()
    with pytest.raises(ValueError):
        PromptLoader([], batch_size=1, seed=0)


def test_loader_runs_beside_actors_holding_cpus(ray_cluster):
    ray = ray_cluster

    @ray.remote
    class Holder:
        def ping(self) -> str:
            return "ok"

    free = ray.available_resources().get("CPU", 0.0)
    assert free > 0.6, f"test needs free CPUs, cluster has {free}"
    each = round((free - 0.4) / 2, 2)  # leave less than one CPU free: a 1-CPU task could never run
    holders = [Holder.options(num_cpus=each).remote() for _ in range(2)]
    try:
        assert ray.get([h.ping.remote() for h in holders], timeout=60) == ["ok", "ok"]
        assert ray.available_resources().get("CPU", 0.0) < 1.0
        rows = make_rows(40)
        loader = PromptLoader(rows, batch_size=8, seed=3, num_cpus=0.1, block_rows=8)
        got = take(loader, 6)
        assert Counter(r["id"] for b in got[:5] for r in b) == Counter(r["id"] for r in rows)
        loader.close()
    finally:
        for h in holders:
            ray.kill(h)


def test_benign_share_fixes_every_batch_and_resumes(ray_cluster):
    # 5 benign, 15 harmful rows; 2 of 4 benign a batch: the harmful side sets the epoch (15 / 2 -> 8 batches) and
    # the benign side is served three times over (fresh permutations), so every benign row appears 3-4 times
    rows = [{**r, "harmful_label": int(i >= 5)} for i, r in enumerate(make_rows(20))]
    loader = PromptLoader(rows, batch_size=4, seed=2, block_rows=5, benign_per_batch=2)
    assert loader.num_rows == 32
    got = take(loader, 8)
    assert [sum(1 - r["harmful_label"] for r in b) for b in got] == [2] * 8
    harmful = Counter(r["id"] for b in got for r in b if r["harmful_label"])
    benign = Counter(r["id"] for b in got for r in b if not r["harmful_label"])
    assert set(harmful) == {f"s:{i}" for i in range(5, 20)} and sorted(harmful.values()) == [1] * 14 + [2]
    assert set(benign) == {f"s:{i}" for i in range(5)} and set(benign.values()) <= {3, 4}
    assert loader.state_dict() == {"epoch": 1, "seed": 2, "consumed": 0, "batches": 8}
    loader.next_batch()
    state_mid = loader.state_dict()
    take(loader, 2)
    resumed = PromptLoader(rows, batch_size=4, seed=7, benign_per_batch=2)
    resumed.load_state_dict(state_mid)
    loader.load_state_dict(state_mid)
    assert ids(take(resumed, 4)) == ids(take(loader, 4))
    # all harmful (share 0) and the errors: a share whose side has no rows, a share above the batch
    only = PromptLoader(rows, batch_size=4, seed=2, benign_per_batch=0)
    assert all(r["harmful_label"] for b in take(only, 5) for r in b) and only.num_rows == 16
    with pytest.raises(ValueError, match="needs benign training prompts"):
        PromptLoader(rows[5:], batch_size=4, seed=0, benign_per_batch=1)
    with pytest.raises(ValueError, match="within 0..batch_size"):
        PromptLoader(rows, batch_size=4, seed=0, benign_per_batch=5)
    for x in (loader, resumed, only):
        x.close()


def test_benign_schedule_switches_at_its_batch_and_resumes(ray_cluster):
    # 2 of 4 benign for the first 3 batches, then 1 of 4: the switch starts a fresh epoch in the new order, and a
    # loader resumed before, at or after the switch serves the same batches as the one that ran on
    rows = [{**r, "harmful_label": int(i >= 5)} for i, r in enumerate(make_rows(20))]
    loader = PromptLoader(rows, batch_size=4, seed=2, benign_per_batch={3: 1, 0: 2})
    got = take(loader, 3)
    assert [sum(1 - r["harmful_label"] for r in b) for b in got] == [2, 2, 2] and loader.num_rows == 32
    at_switch = loader.state_dict()
    assert at_switch == {"epoch": 0, "seed": 2, "consumed": 12, "batches": 3}
    after = take(loader, 5)
    assert [sum(1 - r["harmful_label"] for r in b) for b in after] == [1] * 5
    assert loader.num_rows == 20 and loader.state_dict() == {"epoch": 2, "seed": 2, "consumed": 0, "batches": 8}
    new_order = [f"s:{i}" for i in loader.order(1)]  # the epoch that started at the switch, 1 of 4: 20 rows
    assert [r["id"] for b in after for r in b] == new_order
    assert PromptLoader(rows, batch_size=4, seed=2, benign_per_batch=2).order(1).tolist() != loader.order(1).tolist()
    for state, expect in ((at_switch, after), ({"epoch": 0, "seed": 2, "consumed": 8, "batches": 2}, got[2:] + after)):
        resumed = PromptLoader(rows, batch_size=4, seed=9, benign_per_batch={0: 2, 3: 1})
        resumed.load_state_dict(state)
        assert ids(take(resumed, len(expect))) == ids(expect)
        resumed.close()
    mid = PromptLoader(rows, batch_size=4, seed=9, benign_per_batch={0: 2, 3: 1})
    mid.load_state_dict({"epoch": 1, "seed": 2, "consumed": 8, "batches": 5})  # in the 1-of-4 phase
    assert mid.num_rows == 20 and ids(take(mid, 3)) == ids(after[2:])
    # every quota of a schedule is checked up front, and the schedule starts at batch 0
    with pytest.raises(ValueError, match="needs benign training prompts"):
        PromptLoader(rows[5:], batch_size=4, seed=0, benign_per_batch={0: 0, 3: 1})
    with pytest.raises(ValueError, match="first key at batch 0"):
        PromptLoader(rows, batch_size=4, seed=0, benign_per_batch={3: 1})
    for x in (loader, mid):
        x.close()
