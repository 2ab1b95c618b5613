"""The normalized prompt row and the drop report.

A row is a dict with ``id`` (str, unique), ``prompt`` (str), ``harmful_label`` (0/1), ``level`` (1, 2, 3 or
None when unknown) and ``source`` (data set name); every other column of the input passes through. An input
column whose name collides with one of those five (or with ``messages``/``system``) is kept as ``orig_<name>``.

A row read from chat messages also holds ``messages``: the conversation's user/assistant turns as
``{role, content}`` dicts, ending with a user turn, whose content is the row's ``prompt`` (the text the judges,
level estimation and the split read). ``system`` (str), when present, is the row's system prompt: its own
system message, else its set's ``system_prompt``, else ``data.system_prompt``.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

CORE_COLUMNS = ("id", "prompt", "harmful_label", "level", "source")
CHAT_ROLES = ("system", "user", "assistant")

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


class MessagesError(ValueError):
    """A malformed chat messages list; ``reason`` is the drop reason it is counted under."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def parse_messages(value: Any) -> tuple[list[dict[str, str]], str | None]:
    """(turns, system) of a chat-format messages list (a list, or its JSON text as a CSV cell holds it): the
    user/assistant turns as ``{role, content}`` dicts (other keys dropped) and the leading system message's
    content. A system message elsewhere, a role other than system/user/assistant, a non-text content or no user
    turn raises ``MessagesError``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise MessagesError("bad_messages", "not a JSON list of messages") from None
    if hasattr(value, "tolist"):  # a numpy array (pandas, Arrow)
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise MessagesError("bad_messages", "not a non-empty list of messages")
    msgs = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES or not isinstance(m.get("content"), str):
            raise MessagesError("bad_messages", f"message {i} is not a {{role: system|user|assistant, content: str}}")
        msgs.append({"role": m["role"], "content": m["content"]})
    system = msgs.pop(0)["content"] if msgs[0]["role"] == "system" else None
    if any(m["role"] == "system" for m in msgs):
        raise MessagesError("bad_messages", "a system message after the first message")
    if not any(m["role"] == "user" for m in msgs):
        raise MessagesError("no_user_turn", "no user message")
    return msgs, system


def prompt_messages(value: Any) -> tuple[list[dict[str, str]], str | None]:
    """``parse_messages`` for a prompt: the conversation must end with a user turn (``ends_with_assistant``)."""
    turns, system = parse_messages(value)
    if turns[-1]["role"] != "user":
        raise MessagesError("ends_with_assistant", "the last message is an assistant turn; a prompt ends with a "
                                                   "user turn (SFT data takes it as the completion)")
    return turns, system


def with_prompt(row: dict[str, Any], prompt: str) -> dict[str, Any]:
    """``row`` with its prompt replaced, in its last user turn too when it has ``messages``."""
    new = {**row, "prompt": prompt}
    if row.get("messages"):
        new["messages"] = [*row["messages"][:-1], {"role": "user", "content": prompt}]
    return new


def prompt_text(row: dict[str, Any]) -> str:
    """All the text a row's conversation holds (system prompt and every turn), for length limits."""
    parts = [row["system"]] if row.get("system") else []
    return "\n".join(parts + [m["content"] for m in row.get("messages") or [{"content": row["prompt"]}]])


def set_system(rows: list[dict[str, Any]], system: str | None) -> None:
    """Give ``system`` to the rows that have no system prompt yet (in place)."""
    if system:
        for r in rows:
            r["system"] = r.get("system") or system


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
              messages_column: str | None = None, harmful_label: int | None = None, label_column: str | None = None,
              level: int | None = None, level_column: str | None = None,
              id_column: str | None = None, id_prefix: str | None = None,
              report: DropReport | None = None) -> tuple[list[dict[str, Any]], DropReport]:
    """Map raw records to rows; rows with an empty or non-text prompt, a malformed messages list (reasons of
    ``MessagesError``) or an unparseable label/level are dropped and counted.

    With ``messages_column`` the prompt is that column's chat messages (``prompt_messages``) and
    ``prompt_column`` is not read.
    The label is ``harmful_label`` when given, else parsed from ``label_column``; the level likewise.
    The id is ``<id_prefix or source>:<record id>`` (``id_column``) or ``...:<position in records>``.
    """
    if (harmful_label is None) == (label_column is None):
        raise ValueError("give exactly one of harmful_label and label_column")
    report = report if report is not None else DropReport()
    prefix = id_prefix or source
    used = {messages_column or prompt_column, label_column, level_column, id_column} - {None}
    rows: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        chat: dict[str, Any] = {}
        if messages_column is not None:
            try:
                turns, system = prompt_messages(rec.get(messages_column))
            except MessagesError as e:
                report.add(e.reason)
                continue
            chat = {"messages": turns, **({"system": system} if system else {})}
            prompt = turns[-1]["content"]
        else:
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
                row[f"orig_{k}" if k in (*CORE_COLUMNS, "messages", "system") else k] = v
        row.update(chat)
        rows.append(row)
    return rows, report


T = TypeVar("T")


def seeded_sample(items: Sequence[T], n: int | None, seed: Any) -> list[T]:
    """At most ``n`` of ``items`` (None: all): a seeded sample without replacement (``seed`` as numpy's
    ``default_rng`` takes it), in the original order."""
    if n is None or len(items) <= n:
        return list(items)
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), n, replace=False))]
