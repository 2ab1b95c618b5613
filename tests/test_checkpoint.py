"""Checkpoint bookkeeping: completeness, pruning and resume from an upload (no learners needed)."""
from __future__ import annotations

import json
from pathlib import Path

from rapo_ray.checkpoint import COMPLETE, CheckpointManager
from rapo_ray.storage import Storage


class FakeLearners:
    """Writes what the learner group writes (an HF folder); the real group is covered by the e2e tests."""

    def save_checkpoint(self, path: str, state: dict) -> None:
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_text(f"weights at {state['step']}")


def test_save_marks_complete_prunes_and_uploads(tmp_path):
    mgr = CheckpointManager(tmp_path / "run", keep_last=2, upload_uri=f"file://{tmp_path / 'bucket'}", name="job")
    (tmp_path / "run" / "metrics.jsonl").parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "run" / "metrics.jsonl").write_text('{"step": 1}\n')
    for step in (1, 2, 3):
        final = mgr.save(step, FakeLearners(), {"step": step, "version": step, "data": {}})
        assert (final / COMPLETE).exists() and json.loads((final / "state.json").read_text())["step"] == step
    assert [p.name for p in mgr.complete()] == ["step_2", "step_3"]
    assert not list((tmp_path / "run" / "checkpoints").glob(".tmp*"))
    remote = Storage(str(tmp_path / "bucket" / "job"))
    assert remote.list_complete("checkpoints/step_") == ["checkpoints/step_2", "checkpoints/step_3"]
    assert (tmp_path / "bucket" / "job" / "logs" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_incomplete_checkpoints_are_ignored(tmp_path):
    mgr = CheckpointManager(tmp_path, keep_last=3)
    mgr.save(1, FakeLearners(), {"step": 1})
    (tmp_path / "checkpoints" / "step_5").mkdir()  # a write that never finished
    (tmp_path / "checkpoints" / ".tmp_step_6").mkdir()
    assert mgr.latest().name == "step_1"


def test_resume_downloads_the_newest_complete_upload(tmp_path):
    uri = f"file://{tmp_path / 'bucket'}"
    CheckpointManager(tmp_path / "first", 2, uri, "job").save(4, FakeLearners(), {"step": 4, "version": 4})
    (tmp_path / "bucket" / "job" / "checkpoints" / "step_9").mkdir()  # an upload without COMPLETE
    fresh = CheckpointManager(tmp_path / "second", 2, uri, "job")
    latest = fresh.latest()
    assert latest == tmp_path / "second" / "checkpoints" / "step_4"
    assert (latest / "model.safetensors").read_text() == "weights at 4"
    assert CheckpointManager.load_state(latest)["version"] == 4
    assert fresh.complete() == [latest]
