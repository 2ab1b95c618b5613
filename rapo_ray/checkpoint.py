"""Atomic, resumable checkpoints: the policy in HF format plus the learner/driver state.

Layout: ``<output_dir>/checkpoints/step_<N>/`` is an HF model folder (safetensors, config, tokenizer: loadable
by transformers and vLLM) that also holds ``ds/`` (DeepSpeed engine and optimizer state) and ``state.json``
(step, policy version, data position). A checkpoint is written into a temporary folder, renamed into place
and only then marked with a ``COMPLETE`` file; resume takes the newest complete one, and the last K are kept.

Before the rename, a manifest (``MANIFEST.json``: size and SHA-256 of every file) is written into the folder.
DeepSpeed's resume unpickles its state, so a checkpoint is loaded only when every file matches the manifest and
no file is unlisted (``verify``); one that does not is refused with the first difference named.

``output_dir`` must be visible to the driver and to every learner (one node, or shared storage such as NFS for a
multi-node learner group: DeepSpeed writes each rank's shard). With ``upload_uri`` set, each checkpoint and the
run's logs are also uploaded (``rapo_ray.storage``: files first, ``COMPLETE`` last).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rapo_ray import atomic, faults
from rapo_ray.storage import COMPLETE, Storage


LOG_FILES = ("config.yaml", "metrics.jsonl", "rollouts.jsonl", "tensorboard")
MANIFEST = "MANIFEST.json"
_CHUNK = 8 << 20


class CheckpointError(RuntimeError):
    """A checkpoint that is not safe to load: no manifest, or a file that differs from it."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.name not in (MANIFEST, COMPLETE))


def _hashes(folder: Path, names: list[str]) -> dict[str, str]:
    """SHA-256 of each file, several at a time (hashlib releases the GIL on large reads)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return dict(zip(names, pool.map(lambda n: _sha256(folder / n), names)))


def write_manifest(folder: Path) -> None:
    """Record the size and SHA-256 of every file under ``folder``."""
    names = _files(folder)
    hashes = _hashes(folder, names)
    files = {n: {"bytes": (folder / n).stat().st_size, "sha256": hashes[n]} for n in names}
    atomic.write_text(folder / MANIFEST, json.dumps({"algorithm": "sha256", "files": files}, indent=1))


def drop_optimizer_state(folder: Path) -> None:
    """Remove a checkpoint's DeepSpeed state (its HF weights stay loadable) and re-record its manifest."""
    shutil.rmtree(folder / "ds", ignore_errors=True)
    write_manifest(folder)


def verify(folder: Path) -> None:
    """Raise ``CheckpointError`` unless every file under ``folder`` is in its manifest with the same size and hash."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {MANIFEST}: it was not written by this version of rapo_ray, and its "
                              f"DeepSpeed state would be unpickled on load; resume from a checkpoint written with a "
                              f"manifest, or start the run again") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder / MANIFEST} is unreadable ({e}); the checkpoint is not loaded") from None
    present = _files(folder)
    if extra := sorted(set(present) - set(listed)):
        raise CheckpointError(f"{folder}: {extra[0]} is not in {MANIFEST} (a file added after the save); "
                              f"the checkpoint is not loaded")
    if missing := sorted(set(listed) - set(present)):
        raise CheckpointError(f"{folder}: {missing[0]} is listed in {MANIFEST} but missing; the checkpoint is "
                              f"incomplete and not loaded")
    for name in present:
        if (folder / name).stat().st_size != listed[name]["bytes"]:
            raise CheckpointError(f"{folder}: {name} has {(folder / name).stat().st_size} bytes, the manifest "
                                  f"{listed[name]['bytes']}; the checkpoint is not loaded")
    for name, digest in _hashes(folder, present).items():
        if digest != listed[name]["sha256"]:
            raise CheckpointError(f"{folder}: {name} differs from its SHA-256 in {MANIFEST} (changed after the "
                                  f"save); the checkpoint is not loaded")


class UploadError(RuntimeError):
    """A checkpoint or log upload failed (the local checkpoint is complete)."""


class CheckpointManager:
    def __init__(self, output_dir: str | Path, keep_last: int, upload_uri: str | None = None, name: str = "run",
                 on_upload_error: str = "stop"):
        self.run_dir = Path(output_dir)
        self.root = self.run_dir / "checkpoints"
        self.keep_last = keep_last
        self.remote = Storage(f"{upload_uri.rstrip('/')}/{name}") if upload_uri else None
        self.on_upload_error = on_upload_error
        self.upload_failures = 0

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
            faults.point("checkpoint_write")
            (tmp / "state.json").write_text(json.dumps(state))
            write_manifest(tmp)

        final = atomic.build(self.root / f"step_{step}", write, replace=True, tmp=self.root / f".tmp_step_{step}")
        (final / COMPLETE).write_text(str(step))
        for old in self.complete()[:-self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        if self.remote:
            remote = self.remote

            def upload() -> None:
                remote.put_dir(final, f"checkpoints/{final.name}")
                remote.prune(self.keep_last, "checkpoints/step_")
                self._upload_logs()

            self._guarded(final.name, f"the local checkpoint {final} is complete", upload)
        return final

    def _guarded(self, what: str, kept: str, upload: Callable[[], Any]) -> None:
        """Run ``upload``; a failure is counted, then raised as ``UploadError`` or reported (``on_upload_error``)."""
        try:
            upload()
        except Exception as e:  # OSError, pyarrow's errors, StorageError: any failure of the remote side
            self.upload_failures += 1
            msg = f"upload of {what} to {self.remote.uri} failed ({type(e).__name__}: {e}); {kept}"
            if self.on_upload_error == "stop":
                raise UploadError(msg) from e
            print(f"rapo-ray: warning: {msg}; training continues (checkpoint.on_upload_error: continue)",
                  file=sys.stderr, flush=True)

    def upload_logs(self) -> None:
        """Mirror the run's logs (metrics, rollouts, TensorBoard, config) to the upload URI, if any."""
        if self.remote:
            self._guarded("the logs", f"they are complete under {self.run_dir}", self._upload_logs)

    def _upload_logs(self) -> None:
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
