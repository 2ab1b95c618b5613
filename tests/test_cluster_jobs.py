"""Training on a real `ray start` cluster: a job submitted with the job CLI to two nodes on different loopback
addresses, with roles pinned to each by custom resources (a hard-coded localhost fails here)."""
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


def test_job_submitted_to_two_nodes_trains_with_roles_on_different_addresses(tiny_model_dir, tmp_path):
    """`ray job submit` of a training run to a two-node cluster whose roles are pinned by custom resources: the job
    reads its config and prompts from the uploaded working dir, each role runs on its own address, weights cross
    nodes intact, and the checkpoint is uploaded."""
    work = tmp_path / "workdir"
    work.mkdir()
    tree = _job_tree(tmp_path, tiny_model_dir, {
        "train.total_steps": 2, "checkpoint.every": 0, "sync.probe_every": 1, "output_dir": str(tmp_path / "out"),
        "checkpoint.upload_uri": f"file://{tmp_path / 'bucket'}",
        "resources.custom": {"rollout": {"rollout_gpu": 1}, "learner": {"learner_gpu": 1}}})
    # The job reads its config and its prompt file from the uploaded working dir (relative paths).
    (work / "prompts.jsonl").write_text((tmp_path / "prompts.jsonl").read_text())
    tree["data"]["recipe"][0]["path"] = "prompts.jsonl"
    tree["data"]["root"] = "."
    (work / "job.yaml").write_text(yaml.safe_dump(tree))
    with LocalCluster(stop_timeout=5) as cluster:  # a trained head outlives SIGTERM: kill it sooner
        cluster.start_head(num_cpus=3, resources={"learner_gpu": 2}, include_dashboard=True)
        cluster.add_node("127.0.0.2", num_cpus=2, resources={"rollout_gpu": 1})
        res = subprocess.run(
            [str(RAY_BIN), "job", "submit", "--address", cluster.dashboard_url, "--working-dir", str(work),
             "--", sys.executable, "-m", "rapo_ray", "train", "job.yaml"],
            capture_output=True, text=True, timeout=800, env=node_env())
    out = res.stdout + res.stderr
    assert res.returncode == 0 and "succeeded" in out, out[-5000:]
    assert "run finished" in out  # the job's own output reaches the job logs
    assert "placement: rollout on 127.0.0.2; learner on 127.0.0.3, 127.0.0.3" in out
    run_dir = tmp_path / "out"
    where = json.loads((run_dir / "roles.json").read_text())  # where the run's own roles ran
    assert where == {"rollout": ["127.0.0.2"], "learner": ["127.0.0.3", "127.0.0.3"]}
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(m["sync/probe_logprob_diff"] < 1e-3 for m in metrics)  # weights crossed nodes intact
    assert (run_dir / "checkpoints" / "step_2" / "COMPLETE").exists()
    remote = tmp_path / "bucket" / "tiny"  # <upload_uri>/<name>: uploaded, then marked complete
    assert (remote / "checkpoints" / "step_2" / "COMPLETE").exists()
    assert (remote / "checkpoints" / "step_2" / "model.safetensors").exists()
    assert [m["step"] for m in read_jsonl(remote / "logs" / "metrics.jsonl")] == [1, 2]
