"""Robust parsing of the LLM judge's tagged output.

Tags may be in any case, carry spaces or attributes, sit inside other text, be left unclosed, or be
replaced by a ``name: value`` line. Values may be digits, words, signed or out of range. Every parser
returns None when it cannot get a valid value; the caller maps None to a counted fallback.
"""
from __future__ import annotations

import re

from rapo_ray.judge.reward import CASES

_NUMBER_WORDS = {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
                 "eight": 8, "nine": 9, "ten": 10, "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5}
_ROMAN = {"i": 1, "ii": 2, "iii": 3, "iv": 4, "v": 5}
MAX_LEVEL = 10


def extract_tag(text: str, name: str) -> str | None:
    """The content of the last ``<name>...</name>`` in ``text`` (case-insensitive); else of an unclosed
    ``<name>`` up to the next tag or line end; else of a ``name: value`` / ``name = value`` line."""
    if not text:
        return None
    n = re.escape(name)
    closed = re.findall(rf"<\s*{n}(?:\s[^>]*)?>(.*?)<\s*/\s*{n}\s*>", text, re.IGNORECASE | re.DOTALL)
    if closed:
        return closed[-1].strip()
    unclosed = re.findall(rf"<\s*{n}(?:\s[^>]*)?>([^<\n]*)", text, re.IGNORECASE)
    if unclosed and unclosed[-1].strip():
        return unclosed[-1].strip()
    line = re.findall(rf"(?im)^[\s*#>-]*{n}\**\s*[:=]\s*\**\s*([^\n]+)", text)
    return line[-1].strip().strip("*").strip() if line else None


def _integer(value: str) -> int | None:
    """The one integer in ``value``: digits with an optional sign, a number word or a bare roman numeral.
    None when there is no number, a fraction, or several different numbers."""
    v = value.strip().lower().replace("\u2212", "-").replace("\u2013", "-")
    if v in _ROMAN:
        return _ROMAN[v]
    nums: set[int] = set()
    for x in re.findall(r"[-+]?\d+(?:\.\d+)?", v):
        f = float(x)
        if not f.is_integer():
            return None
        nums.add(int(f))
    if not nums:
        nums = {_NUMBER_WORDS[w] for w in re.findall(r"[a-z]+", v) if w in _NUMBER_WORDS}
        if re.search(r"\b(?:minus|negative)\b", v):
            nums = {-x for x in nums}
    return nums.pop() if len(nums) == 1 else None


def parse_level(text: str) -> int | None:
    """The judge's risk level (1..MAX_LEVEL) from ``<level>``."""
    value = extract_tag(text, "level")
    if value is None:
        return None
    level = _integer(value)
    return level if level is not None and 1 <= level <= MAX_LEVEL else None


def parse_case(text: str) -> str | None:
    """The reasoning case from ``<case>``: exactly one of Adequate / Fair / Excessive / Poor."""
    value = extract_tag(text, "case")
    if value is None:
        return None
    found = {c for c in CASES if re.search(rf"\b{c}\b", value, re.IGNORECASE)}
    return found.pop() if len(found) == 1 else None


def parse_score(text: str) -> int | None:
    """The general reward (+1 or -1) from ``<score>`` (or ``<reward>``); digits or words."""
    value = extract_tag(text, "score")
    if value is None:
        value = extract_tag(text, "reward")
    if value is None:
        return None
    score = _integer(value)
    if score is None:
        words = set(re.findall(r"[a-z]+", value.lower()))
        if words & {"positive", "good", "pass", "yes"} and not words & {"negative", "bad", "fail", "no"}:
            score = 1
        elif words & {"negative", "bad", "fail", "no"} and not words & {"positive", "good", "pass", "yes"}:
            score = -1
    return score if score in (1, -1) else None


def parse_yes_no(text: str, name: str) -> bool | None:
    """A yes/no tag (``<refused>yes</refused>``); true/false and 1/0 are accepted."""
    value = extract_tag(text, name)
    if value is None:
        return None
    words = set(re.findall(r"[a-z]+|\d+", value.lower()))
    yes, no = bool(words & {"yes", "true", "1", "y"}), bool(words & {"no", "false", "0", "n"})
    return yes if yes != no else None
