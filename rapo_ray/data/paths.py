"""Where data lives: the data root, the packaged-sets cache, and case-insensitive lookup of files and folders."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from rapo_ray.config import DataConfig, DatasetSpec
from rapo_ray.data.rows import DataError
from rapo_ray.models import cache_dir


def data_root(cfg: DataConfig) -> Path:
    """The data root: ``cfg.root``, else ``$RAPO_DATA_DIR``, else ``./data``."""
    return Path(cfg.root or os.environ.get("RAPO_DATA_DIR") or "data").expanduser()


def packaged_dir(cache: Path | None = None) -> Path:
    """Folder of the prompt sets fetched from PyPI packages: ``<RAPO_CACHE_DIR or ~/.cache/rapo_ray>/data``."""
    return Path(cache) if cache is not None else cache_dir() / "data"


def _child(base: Path, name: str) -> Path | None:
    """``base/name`` matched case-insensitively (an exact match wins)."""
    exact = base / name
    if exact.exists():
        return exact
    if not base.is_dir():
        return None
    low = name.lower()
    hits = sorted(p for p in base.iterdir() if p.name.lower() == low)
    return hits[0] if hits else None


def resolve_ci(base: Path, rel: str) -> Path | None:
    """``base/rel`` with every path component matched case-insensitively; None if absent."""
    cur: Path | None = base
    for part in Path(rel).parts:
        cur = _child(cur, part)
        if cur is None:
            return None
    return cur


def locate(root: Path, names: Sequence[str], data_set: str) -> Path:
    """The first of ``names`` found in ``root`` or in one of its immediate subfolders (case-insensitive)."""
    bases = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for name in names:
        for base in bases:
            hit = resolve_ci(base, name)
            if hit is not None:
                return hit
    raise DataError(f"data set '{data_set}': none of {list(names)} found in {root} or its subfolders "
                    f"(set the data root, RAPO_DATA_DIR, or `path:` in the recipe entry)")


def spec_path(spec: DatasetSpec, root: Path) -> Path | None:
    """The recipe entry's explicit path (relative paths are under the data root); it must exist."""
    if spec.path is None:
        return None
    p = Path(spec.path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.exists():
        raise DataError(f"data set '{spec.name}': path {p} does not exist")
    return p
