"""A recipe of data sets -> the train and eval prompt lists, with a report of what was read, dropped and kept.

Per recipe entry, in order: read, wrap (entries with ``wrap: true``), drop prompts over the token limit,
drop ids seen in an earlier entry, cap (seeded sample). Then a train/eval split by ``origin_id`` (a
behaviour and all its wrappings land on one side; ``id`` when there is no ``origin_id``), per source.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from rapo_ray.config import DataConfig
from rapo_ray.data.paths import data_root
from rapo_ray.data.readers import read_dataset
from rapo_ray.data.wrap import Template, load_templates, spec_seed, wrap_rows

CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is given (English BPE averages about 4 chars/token)
_TOKENIZE_CHUNK = 256


@dataclass
class PromptSet:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    report: dict[str, Any]


def count_tokens(prompts: list[str], tokenizer: Any = None) -> list[int]:
    """Prompt lengths in tokens: with the tokenizer (no special tokens), else ceil(chars / CHARS_PER_TOKEN)."""
    if tokenizer is None:
        return [math.ceil(len(p) / CHARS_PER_TOKEN) for p in prompts]
    out: list[int] = []
    for i in range(0, len(prompts), _TOKENIZE_CHUNK):
        out += [len(ids) for ids in tokenizer(prompts[i:i + _TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]]
    return out


def origin(row: dict[str, Any]) -> str:
    return row.get("origin_id") or row["id"]


def split_by_origin(rows: list[dict[str, Any]], eval_fraction: float,
                    seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, eval): per source, round(eval_fraction * its origins) seeded origins go to eval."""
    rng = np.random.default_rng([seed, 1])
    by_source: dict[str, set[str]] = {}
    for r in rows:
        by_source.setdefault(r["source"], set()).add(origin(r))
    held: set[str] = set()
    for src in sorted(by_source):
        origins = sorted(by_source[src])
        held.update(origins[i] for i in rng.permutation(len(origins))[:round(eval_fraction * len(origins))])
    return [r for r in rows if origin(r) not in held], [r for r in rows if origin(r) in held]


def _counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": len(rows),
            "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
            "by_level": dict(sorted(Counter(str(r["level"]) for r in rows).items())),
            "by_label": dict(sorted(Counter("harmful" if r["harmful_label"] else "benign" for r in rows).items()))}


def build_prompt_set(cfg: DataConfig, seed: int, tokenizer: Any = None) -> PromptSet:
    """Read, wrap, limit, cap and split the recipe of ``cfg`` (deterministic for a seed)."""
    root = data_root(cfg)
    pools: dict[int, list[Template]] | None = None
    sets: dict[str, Any] = {}
    seen: set[str] = set()
    kept: list[dict[str, Any]] = []
    for i, spec in enumerate(cfg.recipe):
        rows, rep = read_dataset(spec, root)
        key = rows[0]["source"] if rows else spec.source or spec.name.lower()
        key = key if key not in sets else f"{key}#{i}"
        n_read = len(rows) + rep.total
        if spec.wrap:
            pools = pools or load_templates(cfg)
            rows = wrap_rows(rows, pools, cfg.wrap_levels, cfg.wrap_variants, spec_seed(seed, key))
        lengths = count_tokens([r["prompt"] for r in rows], tokenizer)
        rows, n_before = [r for r, n in zip(rows, lengths) if n <= cfg.max_prompt_tokens], len(rows)
        rep.add("too_long", n_before - len(rows))
        rows, n_before = [r for r in rows if r["id"] not in seen], len(rows)
        rep.add("duplicate_id", n_before - len(rows))
        if spec.cap is not None and len(rows) > spec.cap:
            pick = np.random.default_rng(spec_seed(seed, key)).choice(len(rows), spec.cap, replace=False)
            rep.add("over_cap", len(rows) - spec.cap)
            rows = [rows[j] for j in sorted(pick)]
        seen.update(r["id"] for r in rows)
        sets[key] = {"name": spec.name, "read": n_read, "dropped": rep.as_dict(), "kept": len(rows)}
        kept += rows
    train, evals = split_by_origin(kept, cfg.eval_fraction, seed)
    if cfg.shuffle:
        rng = np.random.default_rng([seed, 2])
        train = [train[j] for j in rng.permutation(len(train))]
        evals = [evals[j] for j in rng.permutation(len(evals))]
    counted = "tokenizer" if tokenizer is not None else f"estimate (1 token per {CHARS_PER_TOKEN} chars)"
    report = {"root": str(root), "max_prompt_tokens": cfg.max_prompt_tokens, "token_count": counted,
              "sets": sets, "train": _counts(train), "eval": _counts(evals)}
    return PromptSet(train=train, eval=evals, report=report)
