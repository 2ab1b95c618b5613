"""The ``wrap`` step: level-graded jailbreaks built from plain harmful behaviours (as Strata-Sword was built).

A plain behaviour is level 1; inside a role-play/hypothetical template, or lightly disguised (boxed or scrambled
words, a distracting preamble, contradictory rules, an inverted list) it is level 2; inside a long,
obfuscated or multi-step template (code completion, encoding, nested scenario) it is level 3.

Templates: rapo_ray's own (``rapo_ray/templates/wrap_templates.yaml``, levels given there) and, when
fetched, pyrit's jailbreak templates. A pyrit template is level 3 when it is longer than ``LONG_TEMPLATE_CHARS``
or mentions code, an encoding or explicit steps (``DEEP_MARKERS``), else level 2.
"""
from __future__ import annotations

import base64
import codecs
import functools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml
from jinja2.sandbox import SandboxedEnvironment

from rapo_ray.config import DataConfig
from rapo_ray.data.fetch import packaged_path
from rapo_ray.data.rows import DataError, with_prompt

OWN_TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "wrap_templates.yaml"
LONG_TEMPLATE_CHARS = 2500
DEEP_MARKERS = re.compile(
    r"```|\bdef \w+\(|\bpython\b|\bpseudo-?code\b|\bfunction\b|\bjson\b|\bbase64\b|\bcipher\b|\bencod|\bdecod|"
    r"\bencrypt|\bdecrypt|\bmorse\b|\brot-?13\b|\bleetspeak\b|\bhexadecimal\b|\bstep 1\b|\bnested\b", re.I)

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Templates are Jinja (pyrit's use {% raw %} blocks); rendered sandboxed, with only `prompt` defined.
_JINJA = SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_compile = functools.lru_cache(maxsize=None)(_JINJA.from_string)
_PROBE = "RAPO_SLOT_PROBE"


def _split_halves(s: str) -> str:
    words = s.split()
    mid = max(1, len(words) // 2)
    return f'a = "{" ".join(words[:mid])}"\nb = "{" ".join(words[mid:])}"'


def _shuffle_words(s: str) -> str:
    """The words in an order seeded by the text itself (the same behaviour always scrambles the same way)."""
    words = s.split()
    return " ".join(words[i] for i in np.random.default_rng(zlib.crc32(s.encode())).permutation(len(words)))


TRANSFORMS = {
    "none": lambda s: s,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "rot13": lambda s: codecs.encode(s, "rot13"),
    "reverse_words": lambda s: " ".join(reversed(s.split())),
    "split_halves": _split_halves,
    "boxed_words": lambda s: " ".join(f"[{w}]" for w in s.split()),
    "shuffle_words": _shuffle_words,
}


@dataclass(frozen=True)
class Template:
    name: str  # "own:<name>" or "pyrit:<relative path>"
    level: int  # 2 or 3
    text: str  # holds the {{ prompt }} slot
    transform: str = "none"

    @property
    def origin(self) -> str:
        """Who wrote it: "own" or "pyrit"."""
        return self.name.split(":", 1)[0]

    def fill(self, behaviour: str) -> str:
        return _compile(self.text).render(prompt=TRANSFORMS[self.transform](behaviour)).strip()


def _renders(text: str) -> bool:
    """The text is a valid template whose rendering holds the prompt."""
    try:
        return _PROBE in _compile(text).render(prompt=_PROBE)
    except jinja2.TemplateError:
        return False


def own_templates(path: Path = OWN_TEMPLATES) -> list[Template]:
    """rapo_ray's own templates; every entry is checked (slot present, level 2 or 3, known transform)."""
    out = []
    for e in yaml.safe_load(path.read_text(encoding="utf-8")):
        t = Template(f"own:{e['name']}", int(e["level"]), e["text"], e.get("transform", "none"))
        if t.level not in (2, 3) or t.transform not in TRANSFORMS or not _renders(t.text):
            raise DataError(f"{path}: template '{e['name']}' needs level 2 or 3, a known transform and a "
                            "{{ prompt }} slot")
        out.append(t)
    return out


def classify(text: str) -> int:
    """Level of a third-party template: 3 if long or code/encoding/multi-step, else 2."""
    return 3 if len(text) > LONG_TEMPLATE_CHARS or DEEP_MARKERS.search(text) else 2


def pyrit_templates(folder: Path, max_chars: int) -> list[Template]:
    """pyrit's jailbreak template YAMLs whose only parameter is ``prompt``, at most ``max_chars`` long."""
    out = []
    for p in sorted(folder.rglob("*.yaml")):
        try:
            d = yaml.load(p.read_text(encoding="utf-8"), Loader=_YAML_LOADER)
        except yaml.YAMLError:
            continue
        text = d.get("value") if isinstance(d, dict) else None
        if (not isinstance(text, str) or d.get("parameters") != ["prompt"] or len(text) > max_chars
                or not _renders(text)):
            continue
        out.append(Template(f"pyrit:{p.relative_to(folder).with_suffix('')}", classify(text), text))
    return out


def load_templates(cfg: DataConfig, cache: Path | None = None) -> dict[int, list[Template]]:
    """Template pools by level (2, 3): own ones, plus pyrit's when enabled and fetched."""
    templates = own_templates()
    folder = packaged_path("jailbreak_templates", cache)
    if cfg.wrap_pyrit and folder.is_dir():
        templates += pyrit_templates(folder, cfg.wrap_max_template_chars)
    return {lvl: [t for t in templates if t.level == lvl] for lvl in (2, 3)}


def spec_seed(seed: int, name: str) -> list[int]:
    """A per-data-set seed that does not depend on the set's position in the recipe."""
    return [seed, zlib.crc32(name.encode())]


def wrap_rows(rows: list[dict[str, Any]], pools: dict[int, list[Template]], weights: list[float],
              variants: int, seed: list[int] | int) -> list[dict[str, Any]]:
    """Each plain harmful row (level 1 or unknown) becomes ``variants`` rows at distinct levels drawn from
    ``weights``; other rows pass unchanged.

    A template is drawn by picking its author (own, pyrit) uniformly, then one of that author's templates of
    the level uniformly, so the few own templates are not swamped. Wrapped rows carry ``origin_id`` (the
    behaviour's id, or its existing ``origin_id``), ``behaviour`` (the plain behaviour text, which the split
    groups by) and ``template`` (None for the plain row); the level-1 row keeps the behaviour's id, the others
    get ``<id>#L<level>``. A chat row's wrapped prompt replaces its last user turn.
    """
    rng = np.random.default_rng(seed)
    p = np.asarray(weights, dtype=float) / float(sum(weights))
    by_author = {lvl: [[t for t in pool if t.origin == a] for a in sorted({t.origin for t in pool})]
                 for lvl, pool in pools.items()}
    out: list[dict[str, Any]] = []
    for row in rows:
        if row["harmful_label"] != 1 or row["level"] not in (1, None):
            out.append(row)
            continue
        for lvl in sorted(int(x) + 1 for x in rng.choice(3, size=variants, replace=False, p=p)):
            new = {**row, "level": lvl, "origin_id": row.get("origin_id", row["id"]), "template": None,
                   "behaviour": row.get("behaviour") or row["prompt"]}
            if lvl > 1:
                group = by_author[lvl][int(rng.integers(len(by_author[lvl])))]
                t = group[int(rng.integers(len(group)))]
                new = with_prompt(new, t.fill(row["prompt"]))
                new.update(id=f"{row['id']}#L{lvl}", template=t.name)
            out.append(new)
    return out
