"""The train / dev / test split of prompt rows, shared by RL training, SFT curation and evaluation.

Rows are grouped before they are split, so that one behaviour never sits on two sides:

- by origin id (``origin_id``, else ``id``): the wrapped variants of one behaviour share it;
- by normalised behaviour text (``behaviour``, which the wrap step sets to the plain behaviour, else the prompt;
  lower-cased, punctuation and whitespace collapsed): the same behaviour read from two sets (JBB shares
  behaviours with AdvBench and HarmBench) joins one group, whatever its id or level.

Sides, per group:

- **test**: a seeded hash (``data.split_seed``) of one of the group's behaviour texts falls below
  ``data.test_fraction``. The hash depends on nothing but the text, so the test behaviours are the same for any
  recipe, cap, token limit or job seed: a caller that trains and a caller that evaluates agree without sharing
  state, and a behaviour in test is never in a train split built with the same ``split_seed``.
- **dev**: ``round(eval_fraction x the source's groups)`` of each source's other groups, those with the lowest
  second hash (the per-source "eval" split as before; for tuning and in-training evaluation). Its size is exact
  per source; its members depend on which groups the caller holds.
- **train**: the rest.

``dedupe_behaviours`` drops rows whose behaviour an earlier set already holds (the recipe does it per entry).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from rapo_ray.config import DataConfig, DatasetSpec, JobConfig
from rapo_ray.data.rows import DataError

SPLITS = ("train", "dev", "test")
ALWAYS_EVAL_ONLY = ("xstest",)  # the over-refusal test set: never a training set, whatever the config says
_NON_WORD = re.compile(r"[\W_]+")


def normalise_behaviour(text: str) -> str:
    """Lower case, Unicode-compatibility folded, every run of punctuation, symbols and whitespace one space."""
    return _NON_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def behaviour_key(row: dict[str, Any]) -> str:
    """The normalised behaviour of a row: its ``behaviour`` (set by the wrap step), else its prompt (a text with
    no letters or digits at all keys on itself, so such rows are not lumped together)."""
    text = row.get("behaviour")
    text = text if isinstance(text, str) and text.strip() else row["prompt"]
    return normalise_behaviour(text) or text.strip()


def origin(row: dict[str, Any]) -> str:
    return str(row.get("origin_id") or row["id"])


def unit_hash(key: str, seed: int) -> float:
    """A uniform number in [0, 1) from ``(seed, key)``: stable across processes and Python versions."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


class _Groups:
    """Union-find over row indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def join(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def group_rows(rows: list[dict[str, Any]]) -> list[list[int]]:
    """Row indices grouped by shared origin id or shared behaviour text, in first-appearance order."""
    uf = _Groups(len(rows))
    first: dict[tuple[str, str], int] = {}
    for i, r in enumerate(rows):
        for key in (("origin", origin(r)), ("text", behaviour_key(r))):
            if key in first:
                uf.join(first[key], i)
            else:
                first[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(uf.find(i), []).append(i)
    return list(groups.values())


def _data_cfg(cfg: DataConfig | JobConfig) -> DataConfig:
    return cfg.data if isinstance(cfg, JobConfig) else cfg


def split_rows(rows: list[dict[str, Any]], cfg: DataConfig | JobConfig) -> dict[str, list[dict[str, Any]]]:
    """``{"train", "dev", "test"}``: the rows split by behaviour group (see the module doc), each list in the
    input order. ``cfg`` (a ``DataConfig`` or a ``JobConfig``) gives ``test_fraction``, ``eval_fraction`` (dev)
    and ``split_seed``."""
    d = _data_cfg(cfg)
    groups = group_rows(rows)
    side = ["train"] * len(groups)
    n_groups: dict[str, int] = {}
    candidates: dict[str, list[tuple[float, int]]] = {}
    for g, members in enumerate(groups):
        keys = sorted({behaviour_key(rows[i]) for i in members})
        src = rows[members[0]]["source"]
        n_groups[src] = n_groups.get(src, 0) + 1
        if min(unit_hash(k, d.split_seed) for k in keys) < d.test_fraction:
            side[g] = "test"
        else:  # dev candidates, ranked by a second, independent draw
            candidates.setdefault(src, []).append((unit_hash(keys[0], d.split_seed + 1), g))
    for src, ranked in candidates.items():
        for _, g in sorted(ranked)[:round(d.eval_fraction * n_groups[src])]:
            side[g] = "dev"
    row_side = {i: side[g] for g, members in enumerate(groups) for i in members}
    out: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    for i, r in enumerate(rows):
        out[row_side[i]].append(r)
    return out


def in_test(row: dict[str, Any], cfg: DataConfig | JobConfig) -> bool:
    """Whether ``row``'s own behaviour falls in the test split (evaluation). Such a row is never trained on: its
    group in any ``split_rows`` with the same ``split_seed`` holds this behaviour, so the group's least hash is
    at most this one and the group goes to test too."""
    d = _data_cfg(cfg)
    return unit_hash(behaviour_key(row), d.split_seed) < d.test_fraction


def dedupe_behaviours(rows: list[dict[str, Any]], seen: set[str]) -> tuple[list[dict[str, Any]], int]:
    """Rows whose behaviour is not in ``seen`` (the behaviours of earlier sets), and how many were dropped;
    ``seen`` is not changed (add the kept rows' keys once the whole set is in)."""
    kept = [r for r in rows if behaviour_key(r) not in seen]
    return kept, len(rows) - len(kept)


def eval_only_names(cfg: DataConfig | JobConfig) -> set[str]:
    return {n.lower() for n in _data_cfg(cfg).eval_only} | set(ALWAYS_EVAL_ONLY)


def is_eval_only(spec: DatasetSpec, names: Iterable[str]) -> bool:
    """Whether a recipe entry reads an evaluation-only set: by reader name, ``source``, or a path that names it."""
    names = {n.lower() for n in names}
    fields = [spec.name.lower(), (spec.source or "").lower()]
    path = (spec.path or "").lower()
    return any(f in names for f in fields) or any(n in path for n in names)


def check_training_recipe(recipe: list[DatasetSpec], cfg: DataConfig | JobConfig, what: str) -> None:
    """Fail when a training recipe holds an evaluation-only set (XSTest always; ``data.eval_only``)."""
    names = eval_only_names(cfg)
    bad = [s.name if not s.path else f"{s.name} ({s.path})" for s in recipe if is_eval_only(s, names)]
    if bad:
        raise DataError(f"{what} holds evaluation-only data set(s) {bad}: XSTest and the sets in data.eval_only "
                        f"({sorted(names)}) measure over-refusal and safety on prompts the model never saw, so "
                        f"they are never trained on; remove them from the training recipe (keep them in "
                        f"eval.sets)")


def refuse_eval_only_rows(rows: Iterable[dict[str, Any]], what: str,
                          names: Iterable[str] = ALWAYS_EVAL_ONLY) -> None:
    """Fail when rows about to be trained on come from an evaluation-only set (their ``source`` names it)."""
    names = [n.lower() for n in names]
    hits: dict[str, int] = {}
    for r in rows:
        src = str(r.get("source", "")).lower()
        if any(n in src for n in names):
            hits[src] = hits.get(src, 0) + 1
    if hits:
        raise DataError(f"{what} holds rows of evaluation-only data ({hits}): XSTest measures over-refusal on "
                        f"prompts the model never saw and is never trained on; remove it from the training data")
