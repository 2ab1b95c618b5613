"""Files and folders that appear all at once: each is built under a hidden sibling name, then renamed into place.

A reader never sees a half-written file or folder, and a failed build leaves nothing behind (its temporary
sibling is removed). The rename is atomic on a local (or NFS) file system; object stores go through
``rapo_ray.storage`` instead.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name next to ``path``, unique to this call (several processes may build the same path)."""
    return path.with_name(f".{path.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def build(dest: str | os.PathLike, make: Callable[[Path], None], *, replace: bool = False,
          done: Callable[[Path], bool] = Path.exists, tmp: Path | None = None) -> Path:
    """Run ``make(tmp)``, which writes a file or a folder at ``tmp``, then rename ``tmp`` to ``dest``.

    ``replace``: an existing ``dest`` is replaced (a file in one rename; a folder is moved aside, replaced, then
    deleted). Otherwise a rename that fails
    because ``dest`` is there and ``done(dest)`` holds means another process finished first: its result is kept
    (race-safe). ``tmp``: a fixed temporary path for a single writer (a stale one left by a killed build is cleared
    first); by default a unique sibling. The temporary path is gone afterwards, whatever happened.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or temp_sibling(dest)
    _remove(tmp)
    try:
        make(tmp)
        if replace and dest.is_dir():  # a folder cannot be renamed over a full one: move it aside first
            old = temp_sibling(dest, "old")
            os.rename(dest, old)
            os.rename(tmp, dest)
            _remove(old)
        else:
            try:
                os.replace(tmp, dest)
            except OSError:
                if replace or not (dest.exists() and done(dest)):
                    raise
    finally:
        _remove(tmp)
    return dest


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically, replacing it (parent folders are created)."""
    return build(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), replace=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically."""
    return write_text(path, json.dumps(obj))
