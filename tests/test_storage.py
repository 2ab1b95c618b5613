"""Storage: local paths, file:// URIs (atomic rename) and pyarrow file systems without folder renames (upload,
then COMPLETE); incomplete entries are never returned."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from rapo_ray.storage import COMPLETE, Storage, StorageError


def _src(tmp_path: Path, name: str, payload: str) -> Path:
    d = tmp_path / "src" / name
    (d / "policy").mkdir(parents=True)
    (d / "state.json").write_text(json.dumps({"payload": payload}))
    (d / "policy" / "model.safetensors").write_bytes(payload.encode() * 100)
    return d


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _storages(tmp_path: Path) -> dict[str, tuple[Storage, Path]]:
    """Each storage kind with the local folder its root maps to."""
    (tmp_path / "sub").mkdir()
    return {
        "file_uri": (Storage(f"file://{tmp_path}/uri"), tmp_path / "uri"),
        # SubTreeFileSystem: no atomic folder rename assumed, so put_dir takes the upload-then-mark path.
        "subtree": (Storage("runs/x", pafs.SubTreeFileSystem(str(tmp_path / "sub"), pafs.LocalFileSystem())),
                    tmp_path / "sub" / "runs" / "x"),
    }


@pytest.mark.parametrize("kind", ["file_uri", "subtree"])
def test_put_list_latest_get_prune(tmp_path, kind):
    store, root = _storages(tmp_path)[kind]
    assert store.atomic_rename is (kind == "file_uri")
    assert store.latest_complete("checkpoints/") is None  # nothing there yet (root missing)
    for step in (2, 10, 9):
        store.put_dir(_src(tmp_path, f"s{step}", f"step{step}"), f"checkpoints/step_{step}")
    store.put_dir(_src(tmp_path, "log", "log"), "logs")
    assert store.list_complete("checkpoints/") == ["checkpoints/step_2", "checkpoints/step_9", "checkpoints/step_10"]
    assert store.latest_complete("checkpoints/step_") == "checkpoints/step_10"  # digits compared as numbers
    assert store.list_complete("") == ["logs"]  # "checkpoints" is only a parent folder, not an entry
    marker = json.loads((root / "checkpoints" / "step_10" / COMPLETE).read_text())
    assert marker["entry"] == "checkpoints/step_10" and marker["files"] == 2
    assert not [p for p in (root / "checkpoints").iterdir() if p.name.startswith(".")]  # no temp folders left

    out = store.get_dir("checkpoints/step_10", tmp_path / "restored")
    assert _tree(out) == _tree(tmp_path / "src" / "s10")  # round trip, marker not copied back

    # Re-writing an entry replaces it completely (no stale files from the old one).
    new = tmp_path / "src" / "s10b"
    new.mkdir()
    (new / "only.txt").write_text("new")
    store.put_dir(new, "checkpoints/step_10")
    assert sorted(p.name for p in (root / "checkpoints" / "step_10").iterdir()) == [COMPLETE, "only.txt"]

    assert store.prune(2, "checkpoints/") == ["checkpoints/step_2"]
    assert store.list_complete("checkpoints/") == ["checkpoints/step_9", "checkpoints/step_10"]
    assert not (root / "checkpoints" / "step_2").exists()
    assert store.list_complete("") == ["logs"]


@pytest.mark.parametrize("kind", ["file_uri", "subtree"])
def test_incomplete_entries_are_ignored(tmp_path, kind):
    store, root = _storages(tmp_path)[kind]
    store.put_dir(_src(tmp_path, "a", "a"), "checkpoints/step_1")
    # What an interrupted upload leaves behind: the files, no COMPLETE marker.
    partial = root / "checkpoints" / "step_5"
    (partial / "policy").mkdir(parents=True)
    (partial / "policy" / "model.safetensors").write_bytes(b"half")
    # A local writer that died before its rename: a hidden temp folder, even with a marker inside.
    stale = root / "checkpoints" / ".step_7.tmp-abc"
    stale.mkdir()
    (stale / COMPLETE).write_text("{}")
    assert store.latest_complete("checkpoints/") == "checkpoints/step_1"
    assert store.list_complete("checkpoints/") == ["checkpoints/step_1"]
    assert not store.is_complete("checkpoints/step_5")
    with pytest.raises(StorageError, match="no COMPLETE marker"):
        store.get_dir("checkpoints/step_5", tmp_path / "x")
    assert store.prune(1, "checkpoints/") == []  # incomplete entries are not pruned (nor counted)
    store.put_dir(_src(tmp_path, "b", "b"), "checkpoints/step_5")  # the retry completes it
    assert store.latest_complete("checkpoints/") == "checkpoints/step_5"
    written = _tree(root / "checkpoints" / "step_5")
    assert written.pop(COMPLETE) and written == _tree(tmp_path / "src" / "b")  # the half-written file is gone


@pytest.mark.parametrize("kind", ["file_uri", "subtree"])
def test_unreadable_source_rejected_before_writing(tmp_path, kind):
    store, root = _storages(tmp_path)[kind]
    store.put_dir(_src(tmp_path, "a", "a"), "ck/step_1")
    broken = _src(tmp_path, "broken", "b")
    os.symlink("loop", broken / "loop")  # a symlink loop: pyarrow's copy would skip it without a word
    with pytest.raises(StorageError, match=r"not readable files or folders.*broken/loop"):
        store.put_dir(broken, "ck/step_2")
    assert store.latest_complete("ck/") == "ck/step_1"
    assert sorted(p.name for p in (root / "ck").iterdir()) == ["step_1"]  # nothing written, no temp folder


def test_plain_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = Storage("runs/rel")
    assert store.atomic_rename and store.root == str(tmp_path / "runs" / "rel")
    assert store.put_dir(_src(tmp_path, "a", "a"), "step_1") == "runs/rel/step_1"
    assert (tmp_path / "runs" / "rel" / "step_1" / COMPLETE).exists()
    assert store.latest_complete() == "step_1"


def test_bad_input(tmp_path):
    store = Storage(str(tmp_path / "s"))
    for rel in ("", "../up", "/abs", "a/../../b"):
        with pytest.raises(StorageError, match="must be a relative path"):
            store.put_dir(tmp_path, rel)
    with pytest.raises(StorageError, match="is not a directory"):
        store.put_dir(tmp_path / "missing", "x")
    with pytest.raises(StorageError, match="cannot open storage 'nosuchfs://bucket/x'"):
        Storage("nosuchfs://bucket/x")
    with pytest.raises(StorageError, match="does not exist"):
        store.delete("nothing")
    with pytest.raises(ValueError, match="keep_last"):
        store.prune(0)
