"""Atomic files and folders: all or nothing, nothing left behind, a concurrent winner kept."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rapo_ray import atomic


def _debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_write_text_and_json_replace_whole_files(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic.write_json(path, {"x": 1})
    atomic.write_json(path, {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2} and _debris(path.parent) == []
    assert atomic.write_text(tmp_path / "t.txt", "héllo\n").read_text(encoding="utf-8") == "héllo\n"


class Boom(RuntimeError):
    pass


def _fail_halfway(tmp: Path) -> None:
    tmp.mkdir()
    (tmp / "part").write_text("half")
    raise Boom()


def test_a_failed_build_leaves_the_old_folder_and_no_temp(tmp_path):
    dest = tmp_path / "model"
    atomic.build(dest, lambda tmp: (tmp.mkdir(), (tmp / "w").write_text("v1")), replace=True)
    with pytest.raises(Boom):
        atomic.build(dest, _fail_halfway, replace=True)
    assert (dest / "w").read_text() == "v1" and _debris(tmp_path) == []
    with pytest.raises(Boom):
        atomic.build(tmp_path / "new", _fail_halfway)
    assert not (tmp_path / "new").exists() and _debris(tmp_path) == []


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic.write_text(path, "old")

    def half(tmp: Path) -> None:
        tmp.write_text("partial")
        raise Boom()

    with pytest.raises(Boom):
        atomic.build(path, half, replace=True)
    assert path.read_text() == "old" and _debris(tmp_path) == []


def test_replace_swaps_a_full_folder(tmp_path):
    dest = tmp_path / "d"
    for v in ("v1", "v2"):
        atomic.build(dest, lambda tmp, v=v: (tmp.mkdir(), (tmp / v).write_text(v)), replace=True)
    assert [p.name for p in dest.iterdir()] == ["v2"] and _debris(tmp_path) == []


def test_without_replace_a_finished_concurrent_build_wins(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "theirs").write_text("done")
    out = atomic.build(dest, lambda tmp: (tmp.mkdir(), (tmp / "mine").write_text("x")))
    assert out == dest and [p.name for p in dest.iterdir()] == ["theirs"] and _debris(tmp_path) == []
    with pytest.raises(OSError):  # a folder that ``done`` does not accept is not taken for a winner
        atomic.build(dest, lambda tmp: (tmp.mkdir(), (tmp / "mine").write_text("x")), done=lambda p: False)
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder (left by a caller) is renamed over
    atomic.build(empty, lambda tmp: (tmp.mkdir(), (tmp / "mine").write_text("x")))
    assert [p.name for p in empty.iterdir()] == ["mine"]


def test_a_fixed_temp_path_is_cleared_first(tmp_path):
    stale = tmp_path / ".tmp_d"
    stale.mkdir()
    (stale / "old").write_text("stale")
    atomic.build(tmp_path / "d", lambda tmp: (tmp.mkdir(), (tmp / "new").write_text("x")), tmp=stale)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"] and not stale.exists()
