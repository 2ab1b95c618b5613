"""Where a run's checkpoints and logs end up: a local folder, or any URI pyarrow.fs opens (s3://, gs://, file://).

Each entry is a folder written from a local folder and then marked complete by a ``COMPLETE`` file written
last; readers only ever see complete entries, so an interrupted upload is ignored (and replaced by the next
``put_dir`` of the same name). On a local file system the folder is written under a temporary name next to
its destination and renamed into place, so it appears all at once. On object stores (no atomic folder
rename) the files are uploaded first and the marker after them.

Entries are ordered by name with digit runs compared as numbers (``step_9`` < ``step_10``). One writer per
storage root is assumed.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pyarrow.fs as pafs

from rapo_ray import atomic

COMPLETE = "COMPLETE"


class StorageError(RuntimeError):
    """A storage location that cannot be opened, or an entry that is missing or incomplete."""


def _natural_key(name: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _clean_rel(rel: str) -> str:
    parts = [p for p in rel.strip().split("/") if p not in ("", ".")]
    if not parts or ".." in parts or rel.startswith("/"):
        raise StorageError(f"entry name {rel!r} must be a relative path like 'checkpoints/step_10'")
    return "/".join(parts)


class Storage:
    """A storage root. ``uri`` is a local path, or a URI with a scheme that pyarrow.fs handles.

    ``filesystem`` overrides the URI lookup: ``uri`` is then a path inside that file system (e.g. a
    ``SubTreeFileSystem``, or a ``PyFileSystem`` over an fsspec file system).
    """

    def __init__(self, uri: str, filesystem: pafs.FileSystem | None = None):
        self.uri = uri.rstrip("/") or "/"
        if filesystem is not None:
            self.fs, self.root = filesystem, self.uri
        elif "://" in uri:
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(uri)
            except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError, its IO errors OSErrors
                raise StorageError(f"cannot open storage {uri!r}: {e}") from None
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
        self.root = self.root.rstrip("/") or "/"
        # Folder renames are atomic only on a plain local file system.
        self.atomic_rename = self.fs.type_name == "local"

    def __repr__(self) -> str:
        return f"Storage({self.uri!r})"

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if self.root != "/" else f"/{rel}"

    def uri_of(self, rel: str) -> str:
        """The location of entry ``rel``, in the form the storage was given."""
        return f"{self.uri}/{_clean_rel(rel)}"

    def _is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    # -- writing ---------------------------------------------------------------------------------------------------

    def put_dir(self, local_dir: str | os.PathLike, rel: str) -> str:
        """Write (upload) ``local_dir`` as entry ``rel``, replacing an existing one, then mark it complete."""
        src = Path(local_dir)
        if not src.is_dir():
            raise StorageError(f"put_dir: {src} is not a directory")
        rel = _clean_rel(rel)
        entries = list(src.rglob("*"))
        bad = [str(p) for p in entries if not (p.is_file() or p.is_dir())]
        if bad:  # pyarrow's copy would skip them silently
            raise StorageError(f"put_dir: {src} holds entries that are not readable files or folders (broken or "
                               f"looping symlinks, sockets, pipes): {', '.join(bad[:5])}")
        files = [p for p in entries if p.is_file()]
        marker = json.dumps({"entry": rel, "files": len(files), "bytes": sum(p.stat().st_size for p in files),
                             "completed_at": time.time()})
        if self.atomic_rename:
            self._put_local(src, self._path(rel), marker)
        else:
            self._put_remote(src, self._path(rel), marker)
        return self.uri_of(rel)

    def _put_local(self, src: Path, dest: str, marker: str) -> None:
        def copy(tmp: Path) -> None:
            shutil.copytree(src, tmp)
            with open(tmp / COMPLETE, "w") as f:
                f.write(marker)
                f.flush()
                os.fsync(f.fileno())

        atomic.build(dest, copy, replace=True)

    def _put_remote(self, src: Path, dest: str, marker: str) -> None:
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            self._delete_path(dest)
        self.fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(src), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        with self.fs.open_output_stream(f"{dest}/{COMPLETE}") as f:
            f.write(marker.encode())

    # -- reading ---------------------------------------------------------------------------------------------------

    def list_complete(self, prefix: str = "") -> list[str]:
        """Complete entries under ``prefix``, oldest first.

        ``prefix`` is a folder and a name start: ``"checkpoints/"`` lists every entry in ``checkpoints``,
        ``"checkpoints/step_"`` only those whose name starts with ``step_``, ``""`` the root's entries.
        """
        parent, _, stem = prefix.rpartition("/")
        parent = parent.strip("/")
        base = self._path(parent) if parent else self.root
        infos = self.fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory
                 and i.base_name.startswith(stem) and not i.base_name.startswith(".")]
        markers = self.fs.get_file_info([f"{base}/{n}/{COMPLETE}" for n in names])
        done = [n for n, m in zip(names, markers) if m.type == pafs.FileType.File]
        return [f"{parent}/{n}" if parent else n for n in sorted(done, key=_natural_key)]

    def latest_complete(self, prefix: str = "") -> str | None:
        """The newest complete entry under ``prefix`` (see ``list_complete``), or None."""
        done = self.list_complete(prefix)
        return done[-1] if done else None

    def is_complete(self, rel: str) -> bool:
        return self._is_file(f"{self._path(_clean_rel(rel))}/{COMPLETE}")

    def get_dir(self, rel: str, local_dir: str | os.PathLike) -> Path:
        """Copy (download) complete entry ``rel`` into ``local_dir`` (created); returns it."""
        rel = _clean_rel(rel)
        if not self.is_complete(rel):
            raise StorageError(f"{self.uri_of(rel)} is not a complete entry (missing, or an upload that never "
                               f"finished: no {COMPLETE} marker)")
        out = Path(local_dir)
        out.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(self._path(rel), str(out), source_filesystem=self.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        (out / COMPLETE).unlink(missing_ok=True)
        return out

    # -- deleting --------------------------------------------------------------------------------------------------

    def _delete_path(self, path: str) -> None:
        # The marker goes first, so a half-deleted entry is never taken for a complete one.
        if self._is_file(f"{path}/{COMPLETE}"):
            self.fs.delete_file(f"{path}/{COMPLETE}")
        self.fs.delete_dir(path)

    def delete(self, rel: str) -> None:
        """Remove entry ``rel`` (complete or not)."""
        path = self._path(_clean_rel(rel))
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise StorageError(f"{self.uri_of(rel)} does not exist")
        self._delete_path(path)

    def prune(self, keep_last: int, prefix: str = "") -> list[str]:
        """Delete all but the newest ``keep_last`` complete entries under ``prefix``; returns the deleted ones.

        Incomplete entries are left alone (a newer write may be in progress, and the next ``put_dir`` of the
        same name replaces a stale one).
        """
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        old = self.list_complete(prefix)[:-keep_last]
        for rel in old:
            self.delete(rel)
        return old
