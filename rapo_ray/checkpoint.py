"""Atomic, resumable checkpoints: the policy in HF format plus the learner/driver state.

Layout: ``<output_dir>/checkpoints/step_<N>/`` is an HF model folder (safetensors, config, tokenizer: loadable
by transformers and vLLM) that also holds ``ds/`` (DeepSpeed engine and optimizer state) and ``state.json``
(step, policy version, data position). A checkpoint is
written into a temporary folder, renamed into place and only then marked with a ``COMPLETE`` file;
resume takes the newest complete one, and the last K are kept.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE"


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int):
        self.root = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.root.exists():
            return []
        done = [p for p in self.root.glob("step_*") if (p / COMPLETE).exists()]
        return sorted(done, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, learners: Any, state: dict[str, Any]) -> Path:
        """Collective over the learner group; returns the final folder."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step_{step}"
        tmp = self.root / f".tmp_step_{step}"
        for p in (tmp, final):
            if p.exists():
                shutil.rmtree(p)
        learners.save_checkpoint(str(tmp), state)
        (tmp / "state.json").write_text(json.dumps(state))
        tmp.rename(final)
        (final / COMPLETE).write_text(str(step))
        for old in self.complete()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def load_state(path: Path) -> dict[str, Any]:
        return json.loads((path / "state.json").read_text())
