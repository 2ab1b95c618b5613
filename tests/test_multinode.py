"""Two real Ray nodes on different loopback addresses (tests/cluster_utils.py), placement by custom resource.

Uses no fixture cluster: the nodes are `ray start` processes and the Ray client runs in a subprocess.
"""
from __future__ import annotations

import json

import pytest

from cluster_utils import LocalCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CLIENT = r"""
import json, time
import ray
from rapo_ray.config import build_config
from rapo_ray.placement import (PlacementError, actor_options, check_fits, create_placement_groups,
                                remove_placement_groups)

ray.init(address=ADDRESS, _node_ip_address=HEAD_IP, log_to_driver=False)
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
out = {"nodes": sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])}

@ray.remote
class Where:
    def ip(self):
        return ray.util.get_node_ip_address()

cfg = build_config({"rollout": {"num_workers": 1}, "learner": {"num_learners": 2}, "judge": {"num_actors": 1},
                    "resources": {"rollout_cpus": 0.2, "learner_cpus": 0.2, "judge_cpus": 0.1,
                                  "placement_timeout_s": 60,
                                  "custom": {"rollout": {"rollout_gpu": 1}, "learner": {"learner_gpu": 1}}}})
check_fits(cfg)  # against the running cluster: totals and node shapes
pgs = create_placement_groups(cfg)
actors = {f"{role}{i}": Where.options(**actor_options(cfg, role, pgs, i)).remote()
          for role, n in (("rollout", 1), ("learner", 2), ("judge", 1)) for i in range(n)}
out["ips"] = {name: ray.get(a.ip.remote()) for name, a in actors.items()}
for a in actors.values():
    ray.kill(a)
remove_placement_groups(pgs)

too_big = build_config({"resources": {"custom": {"rollout": {"rollout_gpu": 2}}}})
try:
    check_fits(too_big)
except PlacementError as e:
    out["too_big"] = str(e)
print("RESULT " + json.dumps(out))
"""


def test_two_nodes_roles_pinned_by_custom_resources():
    with LocalCluster() as cluster:
        cluster.start_head(num_cpus=2, resources={"learner_gpu": 2})
        cluster.add_node("127.0.0.2", num_cpus=1, resources={"rollout_gpu": 1})
        res = cluster.run_client(CLIENT)
        line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
        out = json.loads(line[len("RESULT "):])
        procs = [n.proc for n in cluster.nodes]
    assert out["nodes"] == ["127.0.0.2", "127.0.0.3"]
    assert out["ips"]["rollout0"] == "127.0.0.2"  # the only node with rollout_gpu
    assert out["ips"]["learner0"] == out["ips"]["learner1"] == "127.0.0.3"  # the head: the only node with learner_gpu
    assert "rollout_gpu 2 (largest node: 1)" in out["too_big"]
    assert all(p.poll() is not None for p in procs)  # every `ray start` process ended
