"""Atomic, resumable checkpoints: the policy in HF format plus the learner/driver state.

Layout: ``<output_dir>/checkpoints/step_<N>/`` is an HF model folder (safetensors, config, tokenizer: loadable
by transformers and vLLM) that also holds ``ds/`` (DeepSpeed engine and optimizer state) and ``state.json``
(step, policy version, data position). A checkpoint is written into a temporary folder, renamed into place
and only then marked with a ``COMPLETE`` file; resume takes the newest complete one, and the last K are kept.

``output_dir`` must be visible to the driver and to every learner (one node, or shared storage such as NFS for a
multi-node learner group: DeepSpeed writes each rank's shard). With ``upload_uri`` set, each checkpoint and the
run's logs are also uploaded (``rapo_ray.storage``: files first, ``COMPLETE`` last).
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.storage import COMPLETE, Storage


LOG_FILES = ("config.yaml", "metrics.jsonl", "rollouts.jsonl", "tensorboard")


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int, upload_uri: str | None = None, name: str = "run"):
        self.run_dir = Path(output_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.remote = Storage(f"{upload_uri.rstrip('/')}/{name}") if upload_uri else None

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.exists():
            return []
        done = [p for p in self.root.glob("step_*") if (p / COMPLETE).exists()]
        return sorted(done, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        """The newest complete local checkpoint, else the newest complete upload (downloaded), else None."""
        done = self.complete()
        if done:
            return done[-1]
        rel = self.remote.latest_complete("checkpoints/step_") if self.remote else None
        if rel is None:
            return None
        local = self.root / Path(rel).name
        self.remote.get_dir(rel, local)
        (local / COMPLETE).write_text(local.name)
        return local

    def save(self, step: int, learners: Any, state: dict[str, Any]) -> Path:
        """Collective over the learner group; returns the final folder."""
        def write(tmp: Path) -> None:
            learners.save_checkpoint(str(tmp), state)
            (tmp / "state.json").write_text(json.dumps(state))

        final = atomic.build(self.root / f"step_{step}", write, replace=True, tmp=self.root / f".tmp_step_{step}")
        (final / COMPLETE).write_text(str(step))
        for old in self.complete()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        if self.remote:
            self.remote.put_dir(final, f"checkpoints/{final.name}")
            self.remote.prune(self.keep_last, "checkpoints/step_")
            self.upload_logs()
        return final

    def upload_logs(self) -> None:
        """Mirror the run's logs (metrics, rollouts, TensorBoard, config) to the upload URI, if any."""
        if not self.remote:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for name in LOG_FILES:
                src = self.run_dir / name
                if src.is_dir():
                    shutil.copytree(src, Path(tmp) / name)
                elif src.exists():
                    shutil.copy2(src, Path(tmp) / name)
            self.remote.put_dir(tmp, "logs")

    @staticmethod
    def load_state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())
