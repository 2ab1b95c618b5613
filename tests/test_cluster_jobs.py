"""Training on real `ray start` clusters: a job submitted with the job CLI, and two nodes on different
loopback addresses with roles pinned to each by custom resources (a hard-coded localhost fails here)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster_utils import RAY_BIN, LocalCluster, node_env
from e2e_utils import read_jsonl, tiny_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _job_tree(tmp_path: Path, model_dir: Path, overrides: dict) -> dict:
    cfg = tiny_job(tmp_path, model_dir, overrides)
    return cfg.model_dump(mode="json")


def test_ray_job_submit_runs_training(tiny_model_dir, tmp_path):
    work = tmp_path / "workdir"
    work.mkdir()
    tree = _job_tree(tmp_path, tiny_model_dir, {"train.total_steps": 2, "checkpoint.every": 0,
                                                 "output_dir": str(tmp_path / "out"),
                                                 "checkpoint.upload_uri": f"file://{tmp_path / 'bucket'}"})
    # The job reads its config and its prompt file from the uploaded working dir (relative paths).
    (work / "prompts.jsonl").write_text((tmp_path / "prompts.jsonl").read_text())
    tree["data"]["recipe"][0]["path"] = "prompts.jsonl"
    tree["data"]["root"] = "."
    (work / "job.yaml").write_text(yaml.safe_dump(tree))
    with LocalCluster(stop_timeout=5) as cluster:  # a trained head outlives SIGTERM: kill it sooner
        cluster.start_head(num_cpus=4, include_dashboard=True)
        res = subprocess.run(
            [str(RAY_BIN), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(work),
             "--", sys.executable, "-m", "rapo_ray", "train", "job.yaml"],
            capture_output=True, text=True, timeout=800, env=node_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "succeeded" in out, out[-5000:]
    assert "run finished" in out  # the job's own output reaches the job logs
    steps = [m["step"] for m in read_jsonl(tmp_path / "out" / "metrics.jsonl")]
    assert steps == [1, 2]
    assert (tmp_path / "out" / "checkpoints" / "step_2" / "COMPLETE").exists()
    remote = tmp_path / "bucket" / "tiny"  # <upload_uri>/<name>: uploaded, then marked complete
    assert (remote / "checkpoints" / "step_2" / "COMPLETE").exists()
    assert (remote / "checkpoints" / "step_2" / "model.safetensors").exists()
    assert [m["step"] for m in read_jsonl(remote / "logs" / "metrics.jsonl")] == [1, 2]


TWO_NODE_CLIENT = r"""
import json, ray, yaml
from rapo_ray.config import build_config
from rapo_ray import driver
ray.init(address=ADDRESS, _node_ip_address=HEAD_IP, log_to_driver=False)
run_dir = driver.train(build_config(yaml.safe_load(open(CONFIG))))
print("RESULT " + json.dumps({"run_dir": str(run_dir)}))
"""


def test_two_nodes_training_with_roles_on_different_addresses(tiny_model_dir, tmp_path):
    tree = _job_tree(tmp_path, tiny_model_dir, {
        "train.total_steps": 2, "checkpoint.every": 0, "sync.probe_every": 1,
        "resources.custom": {"rollout": {"rollout_gpu": 1}, "learner": {"learner_gpu": 1}}})
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(tree))
    code = f"CONFIG = {str(tmp_path / 'job.yaml')!r}\n" + TWO_NODE_CLIENT
    with LocalCluster(stop_timeout=5) as cluster:  # a trained head outlives SIGTERM: kill it sooner
        cluster.start_head(num_cpus=3, resources={"learner_gpu": 2})
        cluster.add_node("127.0.0.2", num_cpus=2, resources={"rollout_gpu": 1})
        res = cluster.run_client(code, timeout=800)
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("RESULT "))
    run_dir = Path(json.loads(line[len("RESULT "):])["run_dir"])
    where = json.loads((run_dir / "roles.json").read_text())  # where the run's own roles ran
    assert where == {"rollout": ["127.0.0.2"], "learner": ["127.0.0.3", "127.0.0.3"]}
    assert "placement: rollout on 127.0.0.2; learner on 127.0.0.3, 127.0.0.3" in res.stdout + res.stderr
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["sync/probe_logprob_diff"] < 1e-3 for m in metrics)  # weights crossed nodes intact
