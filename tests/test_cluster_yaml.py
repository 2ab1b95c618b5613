"""cluster/: autoscaler YAMLs validated by Ray's own schema check, the KubeRay manifest consistent with them,
the cluster job config fitting each of them, and the runtime_env in step with pyproject.toml."""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
from ray.autoscaler._private.util import prepare_config, validate_config

from rapo_ray.config import load_config
from rapo_ray.placement import PlacementError, capacity_from_cluster_yaml, check_fits

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
AUTOSCALER_YAMLS = ["aws.yaml", "gcp.yaml"]
ROLE_TYPES = {"rollout": "rollout_gpu", "learner": "learner_gpu", "judge": "judge_gpu"}
BUILTIN = {"CPU", "GPU", "memory"}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def _prepared(name: str) -> dict:
    """What `ray up` validates: the YAML merged with the provider's defaults (offline part of its bootstrap)."""
    return prepare_config(copy.deepcopy(_load(name)))


def _kuberay_config() -> dict:
    """The autoscaler config KubeRay's autoscaler derives from the RayCluster (validated by Ray inside)."""
    return _derive_autoscaling_config_from_ray_cr(_load("kuberay.yaml"))


def _worker_types(config: dict) -> dict[str, dict]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def test_every_autoscaler_yaml_is_in_the_test():
    assert sorted(p.name for p in CLUSTER.glob("*.yaml") if "available_node_types" in p.read_text()) == AUTOSCALER_YAMLS


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_passes_ray_validation(name):
    validate_config(_prepared(name))


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_ray_validation_catches_mistakes(name):
    """The check above is not vacuous: Ray's validation rejects a misspelt key and inconsistent worker counts."""
    bad = _prepared(name)
    bad["available_node_types"]["rollout"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        validate_config(bad)
    bad = _prepared(name)
    bad["available_node_types"]["learner"]["min_workers"] = bad["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(bad)


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_installs_rapo_ray_gpu_on_the_ray_image(name):
    config = _load(name)
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    assert config["file_mounts"]["~/rapo_ray"] == "."
    assert any('"$HOME/rapo_ray[gpu]"' in c for c in config["setup_commands"])
    for cmd in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in cmd:
            assert "RAY_AUTH_MODE=token" in cmd  # the token is file-mounted; nodes and clients agree on the mode


def test_node_types_and_custom_resources_agree_across_clusters():
    configs = {name: _prepared(name) for name in AUTOSCALER_YAMLS} | {"kuberay.yaml": _kuberay_config()}
    shapes = {}
    for name, config in configs.items():
        workers = _worker_types(config)
        assert set(workers) == set(ROLE_TYPES), name
        shapes[name] = {t: ({k: v for k, v in spec["resources"].items() if k not in BUILTIN},
                            spec["resources"]["GPU"], spec["min_workers"], spec["max_workers"])
                        for t, spec in workers.items()}
        head = config["available_node_types"][config["head_node_type"]]["resources"]
        assert head.get("GPU", 0) == 0 and not set(head) - BUILTIN, f"{name}: the head runs no GPU role"
    assert shapes["aws.yaml"] == shapes["gcp.yaml"] == shapes["kuberay.yaml"]
    for node_type, (custom, gpus, _, _) in shapes["aws.yaml"].items():
        assert custom == {ROLE_TYPES[node_type]: gpus}  # one unit of the role's resource per GPU


def test_kuberay_manifest_matches_ray_version():
    manifest = _load("kuberay.yaml")
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__ == "2.60.0"
    images = [c["image"] for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
              for c in g["template"]["spec"]["containers"]]
    assert set(images) == {_load("aws.yaml")["docker"]["image"]} == {_load("gcp.yaml")["docker"]["image"]}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1) == images[0]
    assert spec["enableInTreeAutoscaling"] is True


def _env_of_every_container(spec: dict) -> list[dict]:
    return [{e["name"]: e.get("value") for e in c.get("env", [])}
            for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]] for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("name", AUTOSCALER_YAMLS)
def test_autoscaler_yaml_keeps_auth_on_and_the_dashboard_on_localhost(name):
    """issue 19 (security): every node starts with token auth and the token file mounted, and the head's
    dashboard (and job server) listens on localhost only: users reach it through the SSH tunnel."""
    config = _load(name)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c for c in starts)
    head = next(c for c in starts if "--head" in c)
    assert re.search(r"--dashboard-host=(\S+)", head).group(1) == "127.0.0.1"
    assert "0.0.0.0" not in (CLUSTER / name).read_text()


def test_kuberay_keeps_auth_on_and_the_dashboard_on_localhost():
    spec = _load("kuberay.yaml")["spec"]
    assert spec["authOptions"] == {"mode": "token"}  # KubeRay >= 1.5.1 generates the token and sets it everywhere
    assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "127.0.0.1"
    envs = _env_of_every_container(spec)
    assert len(envs) == 4 and not any(env.get("RAY_AUTH_MODE") == "disabled" for env in envs)
    assert "kubectl get secret rapo-ray" in (CLUSTER / "README.md").read_text()  # how a client gets the token


@pytest.mark.parametrize("name", [*AUTOSCALER_YAMLS, "kuberay.yaml"])
def test_cluster_job_config_fits_each_cluster(name):
    cfg = load_config(REPO / "job_configs" / "cluster_7b.yaml")
    assert cfg.judge.backend == "llm" and cfg.model.name_or_path.startswith("/mnt/models/")
    for role, res in cfg.resources.custom.items():
        assert set(res) == {ROLE_TYPES[role]}
    cfg.resources.cluster_yaml = str(CLUSTER / name)
    check_fits(cfg)  # totals at max workers, every actor on one node, 8 STRICT_PACK learners on one node

    too_many = cfg.model_copy(deep=True)
    too_many.learner.num_learners = 24
    with pytest.raises(PlacementError) as e:
        check_fits(too_many)
    assert f"learner_gpu: needs 24 (learner 24 x 1), the autoscaler maximum of {CLUSTER / name} has 16" in str(e.value)
    assert "the learner group (STRICT_PACK, 24 actors) needs" in str(e.value)

    tp8 = cfg.model_copy(deep=True)
    tp8.rollout.tensor_parallel_size = 8  # 8 GPUs exist only on learner nodes, which have no rollout_gpu
    with pytest.raises(PlacementError, match="each rollout actor needs .* no single node has all of them together"):
        check_fits(tp8)


def test_capacity_reads_kuberay_like_the_autoscaler(tmp_path):
    cap = capacity_from_cluster_yaml(CLUSTER / "kuberay.yaml")
    assert cap.totals["GPU"] == 4 * 4 + 2 * 8 + 4 * 1
    assert cap.totals["rollout_gpu"] == 16 and cap.totals["learner_gpu"] == 16 and cap.totals["judge_gpu"] == 4
    rj = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "j"},
          "spec": {"entrypoint": "rapo-ray train x.yaml", "rayClusterSpec": _load("kuberay.yaml")["spec"]}}
    (tmp_path / "rayjob.yaml").write_text(yaml.safe_dump(rj))
    assert capacity_from_cluster_yaml(tmp_path / "rayjob.yaml").totals == cap.totals  # a RayJob's cluster spec


def _name(req: str) -> str:
    return re.split(r"[\[<>=!~; ]", req, maxsplit=1)[0].lower()


def test_runtime_env_pins_match_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(d): d.replace(" ", "") for d in project["dependencies"] + project["optional-dependencies"]["gpu"]
              if _name(d) != "ray"}  # Ray comes with the image
    env = _load("runtime_env.yaml")
    got = {_name(p): p.replace(" ", "") for p in env["pip"]["packages"]}
    assert got == wanted
    assert env["working_dir"] == "."
