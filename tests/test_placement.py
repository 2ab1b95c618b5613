"""Placement: bundles from the config, fit checks and their messages, real placement groups on the session cluster."""
from __future__ import annotations

import pytest

from rapo_ray.config import build_config
from rapo_ray.placement import (
    ClusterCapacity,
    PlacementError,
    actor_options,
    capacity_from_cluster_yaml,
    check_fits,
    create_placement_groups,
    fit_problems,
    plan_placement,
    remove_placement_groups,
)


def _cfg(resources: dict | None = None, **sections):
    return build_config({"resources": resources or {}, **sections})


def test_plan_bundles_from_config():
    cfg = _cfg({"rollout_cpus": 1, "rollout_gpus": 1, "learner_gpus": 1, "learner_cpus": 2, "judge_cpus": 0.25,
                "custom": {"rollout": {"rollout_gpu": 2}, "judge": {"judge_gpu": 1}},
                "learner_strategy": "STRICT_PACK"},
               rollout={"num_workers": 3, "tensor_parallel_size": 2}, learner={"num_learners": 4},
               judge={"num_actors": 2})
    plan = plan_placement(cfg)
    assert plan["rollout"].bundles == [{"CPU": 1.0, "GPU": 2.0, "rollout_gpu": 2.0}] * 3  # GPUs x tensor parallel
    assert plan["learner"].bundles == [{"CPU": 2.0, "GPU": 1.0}] * 4  # no custom entry: plain CPU/GPU
    assert plan["judge"].bundles == [{"CPU": 0.25, "judge_gpu": 1.0}] * 2  # zero GPUs left out
    assert [plan[r].strategy for r in ("rollout", "learner", "judge")] == ["PACK", "STRICT_PACK", "PACK"]
    assert plan["rollout"].demand() == {"CPU": 3.0, "GPU": 6.0, "rollout_gpu": 6.0}


def test_empty_bundle_and_bad_custom_rejected():
    with pytest.raises(PlacementError, match="judge actor asks for no resources"):
        plan_placement(_cfg({"judge_cpus": 0}))
    with pytest.raises(ValueError, match="custom.rollout.*GPU"):
        _cfg({"custom": {"rollout": {"GPU": 1}}})
    with pytest.raises(ValueError, match="amounts must be > 0"):
        _cfg({"custom": {"learner": {"learner_gpu": 0}}})


def test_check_fits_names_missing_resources():
    cfg = _cfg({"rollout_gpus": 1, "learner_gpus": 1, "custom": {"rollout": {"rollout_gpu": 1}}},
               rollout={"num_workers": 2, "tensor_parallel_size": 2}, learner={"num_learners": 4})
    check_fits(cfg, cluster_resources={"CPU": 8, "GPU": 8, "rollout_gpu": 2})
    with pytest.raises(PlacementError) as e:
        check_fits(cfg, cluster_resources={"CPU": 8, "GPU": 2})
    msg = str(e.value)
    assert "GPU: needs 8 (rollout 2 x 2, learner 4 x 1), the cluster has 2" in msg
    assert "rollout_gpu: needs 2 (rollout 2 x 1), the cluster has 0" in msg  # custom: per actor, as written
    assert "CPU" not in msg  # CPU fits: only what is short is named
    with pytest.raises(PlacementError, match="does not fit the autoscaler maximum"):
        check_fits(cfg, autoscaler_max={"CPU": 100, "GPU": 4, "rollout_gpu": 4})


def test_node_shape_problems():
    cfg = _cfg({"rollout_gpus": 1, "learner_gpus": 1, "learner_strategy": "STRICT_PACK"},
               rollout={"num_workers": 1, "tensor_parallel_size": 8}, learner={"num_learners": 8})
    small_nodes = ClusterCapacity({"CPU": 64, "GPU": 32}, [{"CPU": 16, "GPU": 4}] * 8, "X")
    problems = fit_problems(plan_placement(cfg), small_nodes)
    assert any("each rollout actor needs" in p and "GPU 8 (largest node: 4)" in p for p in problems)
    assert any("the learner group (STRICT_PACK, 8 actors)" in p and "learner_strategy: PACK" in p for p in problems)
    # PACK lets the learners span nodes; only the 8-GPU engine is still too big for one node.
    pack = _cfg({"rollout_gpus": 1, "learner_gpus": 1}, rollout={"tensor_parallel_size": 4},
                learner={"num_learners": 8})
    assert fit_problems(plan_placement(pack), small_nodes) == []


def test_actor_options_without_placement_group():
    cfg = _cfg({"rollout_cpus": 0.5, "rollout_gpus": 1, "custom": {"rollout": {"rollout_gpu": 1}}},
               rollout={"num_workers": 2})
    assert actor_options(cfg, "rollout", None, 1) == {"num_cpus": 0.5, "num_gpus": 1.0,
                                                      "resources": {"rollout_gpu": 1.0}}
    threaded = _cfg({"rollout_threads": 2, "learner_threads": 1})
    assert actor_options(threaded, "rollout")["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "2"}}
    assert actor_options(threaded, "learner")["runtime_env"] == {"env_vars": {"OMP_NUM_THREADS": "1"}}
    assert "runtime_env" not in actor_options(threaded, "judge")
    with pytest.raises(IndexError, match="rollout has 2 actors"):
        actor_options(cfg, "rollout", None, 2)
    with pytest.raises(ValueError, match="unknown role"):
        actor_options(cfg, "critic", None, 0)


def test_capacity_from_bad_cluster_yaml(tmp_path):
    with pytest.raises(PlacementError, match="not found"):
        capacity_from_cluster_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(PlacementError, match="invalid YAML"):
        capacity_from_cluster_yaml(tmp_path / "bad.yaml")
    (tmp_path / "undeclared.yaml").write_text(
        "cluster_name: x\nmax_workers: 2\nprovider: {type: aws}\nhead_node_type: head\n"
        "available_node_types:\n  head: {resources: {CPU: 4}, node_config: {}}\n"
        "  gpu: {resources: {}, max_workers: 2, node_config: {InstanceType: g6e.xlarge}}\n")
    with pytest.raises(PlacementError, match="node type 'gpu' does not declare its resources"):
        capacity_from_cluster_yaml(tmp_path / "undeclared.yaml")
    (tmp_path / "rc.yaml").write_text("apiVersion: ray.io/v1\nkind: RayCluster\nmetadata: {name: x}\n"
                                      "spec: {headGroupSpec: {}, workerGroupSpecs: [{}]}\n")
    with pytest.raises(PlacementError, match="cannot read RayCluster"):
        capacity_from_cluster_yaml(tmp_path / "rc.yaml")


def test_cluster_yaml_max_respects_global_max_workers(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "cluster_name: x\nmax_workers: 3\nprovider: {type: aws}\nhead_node_type: head\n"
        "available_node_types:\n  head: {resources: {CPU: 4}, node_config: {}}\n"
        "  big: {resources: {CPU: 8, GPU: 4}, max_workers: 2, node_config: {}}\n"
        "  small: {resources: {CPU: 2, GPU: 1}, max_workers: 5, node_config: {}}\n")
    cap = capacity_from_cluster_yaml(tmp_path / "c.yaml")
    assert cap.totals["GPU"] == 2 * 4 + 1 * 1  # 3 workers at most: both big ones, then one small
    assert cap.totals["CPU"] == 4 + 2 * 8 + 2
    assert {"CPU": 8.0, "GPU": 4.0} in cap.nodes


# -- real placement groups on the session cluster (4 logical CPUs) ---------------------------------------------------

def _live_groups(ray, name: str) -> list[str]:
    table = ray.util.placement_group_table()
    return [pg["name"] for pg in table.values() if pg["name"].startswith(name) and pg["state"] != "REMOVED"]


@pytest.mark.slow
def test_placement_groups_and_actors(ray_cluster):
    ray = ray_cluster
    cfg = _cfg({"rollout_cpus": 0.1, "learner_cpus": 0.1, "judge_cpus": 0.1, "placement_timeout_s": 60},
               name="pgok", rollout={"num_workers": 1}, learner={"num_learners": 2}, judge={"num_actors": 1})
    check_fits(cfg)  # against the running cluster
    pgs = create_placement_groups(cfg)
    try:
        assert set(pgs) == {"rollout", "learner", "judge"}
        assert pgs["learner"].bundle_specs == [{"CPU": 0.1}, {"CPU": 0.1}]
        assert sorted(_live_groups(ray, "pgok-")) == ["pgok-judge", "pgok-learner", "pgok-rollout"]

        @ray.remote
        class Probe:
            def pg_id(self) -> str:
                return ray.get_runtime_context().get_placement_group_id()

            def threads(self) -> tuple[str | None, int]:
                import os

                import torch

                return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

        actors = [Probe.options(**actor_options(cfg, "learner", pgs, i)).remote() for i in range(2)]
        actors.append(Probe.options(**actor_options(cfg, "judge", pgs["judge"], 0)).remote())  # one role's group
        ids = ray.get([a.pg_id.remote() for a in actors], timeout=60)
        assert ids == [pgs["learner"].id.hex()] * 2 + [pgs["judge"].id.hex()]
        # rollout_threads reaches the actor's OpenMP/torch pool; unset, Ray's default for 0.1 CPU is 1 thread
        threaded = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"rollout_threads": 2})})
        actors.append(Probe.options(**actor_options(threaded, "rollout", pgs, 0)).remote())
        assert ray.get([actors[0].threads.remote(), actors[-1].threads.remote()], timeout=60) == [("1", 1), ("2", 2)]
        for a in actors:
            ray.kill(a)
    finally:
        remove_placement_groups(pgs)
    assert _live_groups(ray, "pgok-") == []


@pytest.mark.slow
def test_custom_resource_requested_and_timeout_names_it(ray_cluster):
    ray = ray_cluster
    cfg = _cfg({"rollout_cpus": 0.1, "learner_cpus": 0.1, "judge_cpus": 0.1, "placement_timeout_s": 1.5,
                "custom": {"judge": {"judge_gpu": 1}}}, name="pgcustom", learner={"num_learners": 1})
    with pytest.raises(PlacementError, match="does not fit the running cluster") as e:
        check_fits(cfg)
    assert "judge_gpu: needs 1 (judge 1 x 1), the running cluster has 0" in str(e.value)
    with pytest.raises(PlacementError) as e:
        create_placement_groups(cfg)
    msg = str(e.value)
    assert "role 'judge'" in msg and "{CPU: 0.1, judge_gpu: 1}" in msg
    assert "missing judge_gpu (needs 1, available 0 of 0)" in msg
    assert _live_groups(ray, "pgcustom-") == []  # the groups that were met are released too


@pytest.mark.slow
def test_cpu_shortfall_times_out_naming_cpu(ray_cluster):
    ray = ray_cluster
    cfg = _cfg({"rollout_cpus": 0.1, "learner_cpus": 3, "judge_cpus": 0.1, "placement_timeout_s": 1.0},
               name="pgcpu", learner={"num_learners": 2})
    with pytest.raises(PlacementError, match=r"CPU: needs 6\.2 \(rollout 1 x 0\.1, learner 2 x 3, judge 1 x 0\.1\)"):
        check_fits(cfg)
    with pytest.raises(PlacementError, match=r"role 'learner'.*missing CPU \(needs 6, available [0-9.]+ of 4\)"):
        create_placement_groups(cfg)
    assert _live_groups(ray, "pgcpu-") == []
