"""A recipe of data sets -> the train and eval prompt lists, with a report of what was read, dropped and kept.

Per recipe entry, in order: read (system prompts: the row's, else the entry's, else ``data.system_prompt``), wrap
(entries with ``wrap: true``), drop prompts over the token limit (the conversation's text: ``rows.prompt_text``),
drop ids seen in an earlier entry, drop behaviours an earlier entry holds (normalised text: JBB shares
behaviours with AdvBench and HarmBench), cap (seeded sample). Then the train / dev ("eval") / test split of
``rapo_ray.data.split``: a behaviour and all its wrappings, in any set, land on one side. Last, the train rows of
an entry with ``repeat: k`` are copied k - 1 times (ids ``<id>~2`` ... ``<id>~k``).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rapo_ray.config import DataConfig
from rapo_ray.data.paths import data_root
from rapo_ray.data.readers import read_dataset
from rapo_ray.data.rows import prompt_text, seeded_sample, set_system
from rapo_ray.data.split import behaviour_key, check_training_recipe, dedupe_behaviours, split_rows
from rapo_ray.data.wrap import Template, load_templates, spec_seed, wrap_rows

CHARS_PER_TOKEN = 4  # the estimate used when no tokenizer is given (English BPE averages about 4 chars/token)
_TOKENIZE_CHUNK = 256


@dataclass
class PromptSet:
    """The recipe's rows by split: ``eval`` is the dev split (tuning, in-training eval), ``test`` the held-out
    test split (``data.test_fraction``; empty at 0)."""

    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    report: dict[str, Any]
    test: list[dict[str, Any]] = field(default_factory=list)


def count_tokens(prompts: list[str], tokenizer: Any = None) -> list[int]:
    """Prompt lengths in tokens: with the tokenizer (no special tokens), else ceil(chars / CHARS_PER_TOKEN)."""
    if tokenizer is None:
        return [math.ceil(len(p) / CHARS_PER_TOKEN) for p in prompts]
    out: list[int] = []
    for i in range(0, len(prompts), _TOKENIZE_CHUNK):
        out += [len(ids) for ids in tokenizer(prompts[i:i + _TOKENIZE_CHUNK], add_special_tokens=False)["input_ids"]]
    return out


def _counts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"rows": len(rows),
            "by_source": dict(sorted(Counter(r["source"] for r in rows).items())),
            "by_level": dict(sorted(Counter(str(r["level"]) for r in rows).items())),
            "by_label": dict(sorted(Counter("harmful" if r["harmful_label"] else "benign" for r in rows).items()))}


def _copies(row: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """The row and its n - 1 copies, each under its own id."""
    return [row] + [{**row, "id": f"{row['id']}~{k}"} for k in range(2, n + 1)]


def build_prompt_set(cfg: DataConfig, seed: int, tokenizer: Any = None) -> PromptSet:
    """Read, wrap, limit, cap and split the recipe of ``cfg`` (deterministic for a seed)."""
    root = data_root(cfg)
    pools: dict[int, list[Template]] | None = None
    sets: dict[str, Any] = {}
    seen: set[str] = set()
    behaviours: set[str] = set()
    kept: list[dict[str, Any]] = []
    repeats: dict[str, int] = {}  # row id -> its entry's `repeat`, where above 1
    for i, spec in enumerate(cfg.recipe):
        rows, rep = read_dataset(spec, root)
        set_system(rows, cfg.system_prompt)
        key = rows[0]["source"] if rows else spec.source or spec.name.lower()
        key = key if key not in sets else f"{key}#{i}"
        n_read = len(rows) + rep.total
        if spec.wrap:
            pools = pools or load_templates(cfg)
            rows = wrap_rows(rows, pools, cfg.wrap_levels, cfg.wrap_variants, spec_seed(seed, key))
        lengths = count_tokens([prompt_text(r) for r in rows], tokenizer)
        rows, n_before = [r for r, n in zip(rows, lengths) if n <= cfg.max_prompt_tokens], len(rows)
        rep.add("too_long", n_before - len(rows))
        rows, n_before = [r for r in rows if r["id"] not in seen], len(rows)
        rep.add("duplicate_id", n_before - len(rows))
        rows, n_dup = dedupe_behaviours(rows, behaviours)
        rep.add("duplicate_behaviour", n_dup)
        if spec.cap is not None and len(rows) > spec.cap:
            rep.add("over_cap", len(rows) - spec.cap)
            rows = seeded_sample(rows, spec.cap, spec_seed(seed, key))
        seen.update(r["id"] for r in rows)
        behaviours.update(behaviour_key(r) for r in rows)
        sets[key] = {"name": spec.name, "read": n_read, "dropped": rep.as_dict(), "kept": len(rows)}
        if spec.repeat > 1:
            sets[key]["repeat"] = spec.repeat
            repeats.update((r["id"], spec.repeat) for r in rows)
        kept += rows
    parts = split_rows(kept, cfg)
    train, evals, test = parts["train"], parts["dev"], parts["test"]
    if cfg.shuffle:
        rng = np.random.default_rng([seed, 2])
        train = [train[j] for j in rng.permutation(len(train))]
        evals = [evals[j] for j in rng.permutation(len(evals))]
        test = [test[j] for j in rng.permutation(len(test))]
    if repeats:  # after the shuffles above, so that dev and test keep their order
        train = [c for r in train for c in _copies(r, repeats.get(r["id"], 1))]
        if cfg.shuffle:
            train = [train[j] for j in np.random.default_rng([seed, 3]).permutation(len(train))]
    counted = "tokenizer" if tokenizer is not None else f"estimate (1 token per {CHARS_PER_TOKEN} chars)"
    report = {"root": str(root), "max_prompt_tokens": cfg.max_prompt_tokens, "token_count": counted,
              "split": {"test_fraction": cfg.test_fraction, "dev_fraction": cfg.eval_fraction,
                        "split_seed": cfg.split_seed},
              "sets": sets, "train": _counts(train), "eval": _counts(evals), "test": _counts(test)}
    return PromptSet(train=train, eval=evals, report=report, test=test)


def training_prompt_set(cfg: DataConfig, seed: int, tokenizer: Any = None,
                        what: str = "the training recipe (data.recipe)") -> PromptSet:
    """``build_prompt_set`` for a set that will be trained on: fails (``DataError``) when the recipe holds an
    evaluation-only set (XSTest, ``data.eval_only``). Train on ``.train`` only; ``.eval`` is dev, ``.test`` test."""
    check_training_recipe(cfg.recipe, cfg, what)
    return build_prompt_set(cfg, seed, tokenizer)
