"""metrics.trackers (issue 18): W&B (offline) and MLflow (local SQLite) through the real libraries."""
from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from rapo_ray.config import JobConfig
from rapo_ray.metrics import MetricsLogger
from rapo_ray.trackers import TABLE_COLUMNS, open_trackers
from rapo_ray.types import Sample


def wandb_records(run_dir: Path) -> list:
    """Every record of the W&B offline runs under ``run_dir`` (the transaction log: a 7-byte file header, then
    32 KiB blocks of records with 7-byte headers: CRC, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, pos, buf = f.read_bytes(), 7, b""
        while pos + 7 <= len(data):
            left = 32768 - pos % 32768
            if left < 7:
                pos += left
                continue
            _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
            if kind == 0:
                break
            buf += data[pos + 7:pos + 7 + n]
            pos += 7 + n
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                out.append(rec)
                buf = b""
    return out


def history(records: list) -> list[dict[str, str]]:
    return [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item} for r in records
            if r.WhichOneof("record_type") == "history"]


def samples(step: int) -> list[Sample]:
    out = []
    for i in range(3):
        s = Sample(prompt_id=f"p{step}", sample_index=i, prompt="How do I bake bread?", prompt_ids=[1, 2],
                   completion_ids=[3], completion=f"<think>ok</think> knead {i}", sampling_logprobs=[-0.1],
                   truncated=False, policy_version=step, harmful_label=0, level=1)
        s.reward, s.breakdown = 1.0 - i, {"risk_reward": 1, "general_reward": -i, "case": "benign", "refused": False}
        out.append(s)
    return out


def run_steps(cfg: JobConfig, run_dir: Path, steps: range, start: int = 0) -> None:
    log = MetricsLogger(run_dir, tensorboard=False, start_step=start,
                        trackers=open_trackers(cfg, run_dir, "train"), table_every=2, table_rows=2)
    for step in steps:
        log.log(step, {"reward/all/total": step / 10, "flag": True, "none": None, "note": "text"})
        log.log_rollouts(step, samples(step))
    log.close()


def test_trackers_config():
    assert JobConfig().metrics.trackers == ["jsonl", "tensorboard"]
    assert JobConfig(metrics={"trackers": ["mlflow", "jsonl"]}).metrics.trackers == ["jsonl", "mlflow"]
    with pytest.raises(ValueError):
        JobConfig(metrics={"trackers": ["comet"]})
    assert open_trackers(JobConfig(), Path("/nonexistent"), "train") == []  # jsonl/tensorboard only: none opened


def test_wandb_offline_gets_scalars_config_tables_and_resumes_the_same_run(tmp_path):
    cfg = JobConfig(name="tiny", metrics={"trackers": ["wandb"]})
    run_steps(cfg, tmp_path, range(1, 4))
    run_id = json.loads((tmp_path / "trackers.json").read_text())["wandb/train"]
    # W&B names an offline run's folder by its start second and id: a resume starting in the same second would
    # reuse the folder (a real resume starts a Ray cluster first; here the two runs are a second apart)
    time.sleep(1.1 - time.time() % 1)
    run_steps(cfg, tmp_path, range(4, 5), start=3)  # a resumed run continues the same W&B run
    assert json.loads((tmp_path / "trackers.json").read_text())["wandb/train"] == run_id
    assert len(list(tmp_path.glob(f"wandb/offline-run-*-{run_id}"))) == 2
    rows = history(wandb_records(tmp_path))
    sizes = [(f.name, f.stat().st_size) for f in tmp_path.rglob("*.wandb")]
    assert [json.loads(r["_step"]) for r in rows] == [1, 2, 3, 4], sizes
    assert [json.loads(r["reward/all/total"]) for r in rows] == [0.1, 0.2, 0.3, 0.4]
    assert all("flag" not in r and "none" not in r and "note" not in r for r in rows)  # scalars only
    assert [r.get("rollouts/nrows") for r in rows] == [None, "2", None, "2"]  # a table every 2 steps, 2 rows
    table = json.loads(next(tmp_path.glob("wandb/offline-run-*/files/media/table/rollouts_2_*.table.json")).read_text())
    assert table["columns"] == list(TABLE_COLUMNS) and table["data"][1][:2] == ["p2", 1]
    runs = [r.run for r in wandb_records(tmp_path) if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in runs[0].config.update}
    assert config["name"] == "tiny" and config["model"]["name_or_path"] == "smollm2-135m-instruct"


def test_mlflow_local_store_gets_scalars_params_tables_and_resumes_the_same_run(tmp_path):
    from mlflow.tracking import MlflowClient

    cfg = JobConfig(name="tiny", metrics={"trackers": ["mlflow"]})
    run_steps(cfg, tmp_path, range(1, 4))
    run_steps(cfg, tmp_path, range(4, 5), start=3)
    run_id = json.loads((tmp_path / "trackers.json").read_text())["mlflow/train"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    hist = client.get_metric_history(run_id, "reward/all/total")
    assert [(m.step, m.value) for m in hist] == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-train"
    assert set(run.data.metrics) == {"reward/all/total"}
    assert run.data.params["model.name_or_path"] == "smollm2-135m-instruct"
    assert run.data.params["learner.lr"] == json.dumps(cfg.learner.lr)
    tables = sorted(f.path for f in client.list_artifacts(run_id, "rollouts"))
    assert tables == ["rollouts/step_000002.json", "rollouts/step_000004.json"]
    local = json.loads(next((tmp_path / "mlartifacts").rglob("step_000004.json")).read_text())
    assert local["columns"] == list(TABLE_COLUMNS) and [r[0] for r in local["data"]] == ["p4", "p4"]


def test_an_eval_report_goes_to_both_trackers(tmp_path):
    """The eval report's metrics table and plots, from a report folder written by the real report writer."""
    from mlflow.tracking import MlflowClient

    from rapo_ray.eval.report import PLOTS, write_report
    from rapo_ray.trackers import log_eval
    from test_eval_report import payload as eval_payload

    payload = eval_payload()
    files = write_report(tmp_path, payload)
    cfg = JobConfig(name="tiny", metrics={"trackers": ["wandb", "mlflow"]})
    log_eval(cfg, tmp_path, json.loads(files["metrics.json"].read_text()), {p: files[p] for p in PLOTS})
    ids = json.loads((tmp_path / "trackers.json").read_text())
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    arts = {f.path for f in client.list_artifacts(ids["mlflow/eval"], "plots")}
    assert arts == {f"plots/{p}" for p in PLOTS}
    table = json.loads(next((tmp_path / "mlartifacts").rglob("step_000000.json")).read_text())
    rows = {(r[0], r[1]): r[2] for r in table["data"]}
    assert rows[("base", "safety.harmful.asr_judge")] == 0.8
    assert rows[("runs/quickstart/hf", "safety.harmful.asr_judge")] == 0.3
    logged = history(wandb_records(tmp_path))
    assert logged[0]["eval/nrows"] == str(len(table["data"])) and "asr_by_level.png/_type" in logged[0]
