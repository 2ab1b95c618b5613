"""The normalized prompt row and the drop report.

A row is a dict with ``id`` (str, unique), ``prompt`` (str), ``harmful_label`` (0/1), ``level`` (1, 2, 3 or
None when unknown) and ``source`` (data set name); every other column of the input passes through. An input
column whose name collides with one of those five is kept as ``orig_<name>``.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

CORE_COLUMNS = ("id", "prompt", "harmful_label", "level", "source")

_HARMFUL = {"1", "true", "yes", "unsafe", "harmful", "refusal"}
_BENIGN = {"0", "false", "no", "safe", "benign", "comply"}


class DataError(ValueError):
    """Bad data input: a missing file, an unknown data set, a layout a reader cannot read."""


@dataclass
class DropReport:
    """Rows dropped (or excluded by a reader's filter), counted by reason."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str, n: int = 1) -> None:
        if n:
            self.counts[reason] += n

    def merge(self, other: DropReport) -> None:
        self.counts.update(other.counts)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def parse_label(v: Any) -> int | None:
    """0/1 from ints, bools and the usual words (safe/unsafe, benign/harmful, comply/refusal); None if unparseable."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)) and not _missing(v) and float(v) in (0.0, 1.0):
        return int(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in _HARMFUL:
            return 1
        if s in _BENIGN:
            return 0
    return None


def parse_level(v: Any) -> tuple[bool, int | None]:
    """(ok, level): a missing value is (True, None); a positive integer (or its string) is (True, n)."""
    if _missing(v):
        return True, None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False, None
    if f != int(f) or f < 1:
        return False, None
    return True, int(f)


def normalize(records: Iterable[dict[str, Any]], *, source: str, prompt_column: str,
              harmful_label: int | None = None, label_column: str | None = None,
              level: int | None = None, level_column: str | None = None,
              id_column: str | None = None, id_prefix: str | None = None,
              report: DropReport | None = None) -> tuple[list[dict[str, Any]], DropReport]:
    """Map raw records to rows; rows with an empty or non-text prompt or an unparseable label/level are dropped
    and counted.

    The label is ``harmful_label`` when given, else parsed from ``label_column``; the level likewise.
    The id is ``<id_prefix or source>:<record id>`` (``id_column``) or ``...:<position in records>``.
    """
    if (harmful_label is None) == (label_column is None):
        raise ValueError("give exactly one of harmful_label and label_column")
    report = report if report is not None else DropReport()
    prefix = id_prefix or source
    used = {prompt_column, label_column, level_column, id_column} - {None}
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        prompt = rec.get(prompt_column)
        if _missing(prompt) or not isinstance(prompt, str):
            report.add("empty_prompt" if _missing(prompt) else "bad_prompt")
            continue
        label = harmful_label if label_column is None else parse_label(rec.get(label_column))
        if label is None:
            report.add("bad_label")
            continue
        lvl = level
        if level_column is not None:
            ok, lvl = parse_level(rec.get(level_column))
            if not ok:
                report.add("bad_level")
                continue
        key = rec.get(id_column) if id_column is not None else None
        row = {"id": f"{prefix}:{i if _missing(key) else str(key).strip()}", "prompt": prompt,
               "harmful_label": label, "level": lvl, "source": source}
        for k, v in rec.items():
            if k not in used:
                row[f"orig_{k}" if k in CORE_COLUMNS else k] = v
        rows.append(row)
    return rows, report


T = TypeVar("T")


def seeded_sample(items: Sequence[T], n: int | None, seed: Any) -> list[T]:
    """At most ``n`` of ``items`` (None: all): a seeded sample without replacement (``seed`` as numpy's
    ``default_rng`` takes it), in the original order."""
    if n is None or len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), n, replace=False))]
