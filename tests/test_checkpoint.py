"""Checkpoint bookkeeping: completeness, pruning and resume from an upload (no learners needed)."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import fsspec.implementations.memory
import pyarrow.fs as pafs
import pytest

from rapo_ray.checkpoint import COMPLETE, MANIFEST, CheckpointError, CheckpointManager, UploadError, verify
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


def test_manifest_lists_every_file_and_verify_refuses_any_change(tmp_path):
    """issue 19: DeepSpeed unpickles its state on resume, so a checkpoint loads only when it matches the manifest
    written at save (size and SHA-256 of every file, no file added)."""
    mgr = CheckpointManager(tmp_path, keep_last=1)
    final = mgr.save(3, FakeLearners(), {"step": 3})
    listed = json.loads((final / MANIFEST).read_text())["files"]
    assert sorted(listed) == ["model.safetensors", "state.json"]
    assert listed["state.json"]["sha256"] == hashlib.sha256((final / "state.json").read_bytes()).hexdigest()
    verify(final)

    def broken(change, match):
        bad = tmp_path / f"bad_{len(list(tmp_path.glob('bad_*')))}"
        shutil.copytree(final, bad)
        change(bad)
        with pytest.raises(CheckpointError, match=match):
            verify(bad)

    broken(lambda d: (d / "model.safetensors").write_text("weights at 9"), "differs from its SHA-256")
    broken(lambda d: (d / "model.safetensors").write_text("w"), "has 1 bytes")
    broken(lambda d: (d / "ds").mkdir() or (d / "ds" / "extra.pt").write_bytes(b"\x80"), "ds/extra.pt is not in")
    broken(lambda d: (d / "model.safetensors").unlink(), "missing")
    broken(lambda d: (d / MANIFEST).unlink(), "has no MANIFEST.json")
    broken(lambda d: (d / MANIFEST).write_text("{"), "unreadable")


def test_resume_refuses_a_checkpoint_that_fails_verification(tmp_path):
    from rapo_ray.config import JobConfig
    from rapo_ray.run import Run

    cfg = JobConfig(output_dir=str(tmp_path))
    final = CheckpointManager(tmp_path, keep_last=1).save(2, FakeLearners(), {"step": 2})
    assert Run(cfg, tmp_path, "train", total=4, resume=True).start == 2
    (final / "state.json").write_text(json.dumps({"step": 7}))
    with pytest.raises(CheckpointError, match="state.json differs"):
        Run(cfg, tmp_path, "train", total=4, resume=True)


class _FailingWrites(fsspec.implementations.memory.MemoryFileSystem):
    """An object store that is down for writes (reads and listings work)."""

    def _open(self, path, mode="rb", **kw):
        if "w" in mode or "a" in mode:
            raise OSError("503 Slow Down: the bucket refused the write")
        return super()._open(path, mode, **kw)


def _failing_remote(mgr: CheckpointManager) -> CheckpointManager:
    fs = pafs.PyFileSystem(pafs.FSSpecHandler(_FailingWrites(skip_instance_cache=True)))
    mgr.remote = Storage("/bucket/job", filesystem=fs)
    return mgr


def test_a_failing_upload_stops_with_the_local_checkpoint_complete(tmp_path):
    """issue 19, item 5: a pyarrow file system that raises on write; by default the run stops, naming both."""
    mgr = _failing_remote(CheckpointManager(tmp_path, 2, "file:///unused", "job"))
    with pytest.raises(UploadError, match=r"upload of step_1 to /bucket/job failed \(OSError: 503 Slow Down.*"
                                          r"the local checkpoint .*step_1 is complete"):
        mgr.save(1, FakeLearners(), {"step": 1})
    assert [p.name for p in mgr.complete()] == ["step_1"] and mgr.upload_failures == 1
    verify(mgr.complete()[0])


def test_a_failing_upload_is_reported_counted_and_training_goes_on_when_configured(tmp_path, capsys):
    from rapo_ray.config import JobConfig
    from rapo_ray.run import Run

    cfg = JobConfig(output_dir=str(tmp_path), checkpoint={"upload_uri": "file:///unused", "every": 1,
                                                          "on_upload_error": "continue"})
    run = Run(cfg, tmp_path, "sft", total=2)
    run.begin()
    _failing_remote(run.ckpts)
    with run.loop():
        for _ in run.steps():
            run.log({"loss": 1.0})
            run.maybe_save(FakeLearners())
    assert [p.name for p in run.ckpts.complete()] == ["step_1", "step_2"]
    err = capsys.readouterr().err
    assert err.count("rapo-ray: warning: upload of step_") == 2 and "training continues" in err
    logged = [json.loads(ln) for ln in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["checkpoint/upload_failures"] for m in logged] == [0, 1]
