"""Evaluation cache: model fingerprints by content, and stored generations and scores by key.

A model is identified by the SHA-256 of its weight files' bytes (``*.safetensors``, else ``*.bin``) plus the
files that change what it generates (config, generation config, tokenizer, chat template), never by its path:
a copied checkpoint hits the cache, an overwritten one misses. File digests are memoised by (path, size,
mtime) so an unchanged multi-GB checkpoint is hashed once.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.models import ModelError

_WEIGHT_GLOBS = ("*.safetensors", "*.bin")
_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "chat_template.json")
_CHUNK = 1 << 20


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class FileDigests:
    """SHA-256 of files, memoised in a JSON file by (resolved path, size, mtime_ns)."""

    def __init__(self, memo_path: Path):
        self.memo_path = memo_path
        self.hashed = 0  # files actually read (memo misses)
        try:
            self._memo: dict[str, dict[str, Any]] = json.loads(memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            self._memo = {}

    def digest(self, path: Path) -> str:
        p = path.resolve()
        st = p.stat()
        hit = self._memo.get(str(p))
        if hit and hit["size"] == st.st_size and hit["mtime_ns"] == st.st_mtime_ns:
            return hit["sha256"]
        h = hashlib.sha256()
        with p.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        self.hashed += 1
        self._memo[str(p)] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
        atomic.write_json(self.memo_path, self._memo)
        return h.hexdigest()


def model_fingerprint(model_dir: Path, digests: FileDigests) -> dict[str, str]:
    """``{"weights": sha256, "files": sha256}``: the weight files' content and the side files' content."""
    model_dir = Path(model_dir)
    weights = next((sorted(model_dir.glob(g)) for g in _WEIGHT_GLOBS if any(model_dir.glob(g))), [])
    if not weights:
        raise ModelError(f"model folder {model_dir} holds no weight files ({', '.join(_WEIGHT_GLOBS)})")
    side = [model_dir / f for f in _SIDE_FILES if (model_dir / f).is_file()]
    return {"weights": stable_hash([(p.name, digests.digest(p)) for p in weights]),
            "files": stable_hash([(p.name, digests.digest(p)) for p in side])}


class ResultCache:
    """JSON entries under ``root``: ``<kind>/<key>.json``."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.json"

    def get(self, kind: str, key: str) -> Any | None:
        """The stored value, or None (absent or unreadable: recomputed)."""
        try:
            return json.loads(self.path(kind, key).read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def put(self, kind: str, key: str, value: Any) -> None:
        atomic.write_json(self.path(kind, key), value)
