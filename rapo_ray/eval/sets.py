"""The safety prompts an evaluation reads (``eval.sets``), whole or one split of them (``eval.split``).

- ``test``: rows whose behaviour falls in the test split (``data.test_fraction``, ``data.split_seed``), which no
  training stage with this data config ever sees, plus every row of an evaluation-only set (XSTest).
- ``dev``: rows outside the test split that no training stage of this job trains on: not on the train side of
  the RL recipe (``data.recipe``), nor of the SFT recipe (``sft.recipe``), nor among the STAR-1 rows
  (``sft.star1_path``). For tuning, so that the test split is read once. Evaluation-only sets have no dev rows.

Either way behaviours an earlier eval set holds are dropped, then each set's cap is a seeded sample.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from rapo_ray.config import DataConfig, JobConfig
from rapo_ray.data.recipe import build_prompt_set
from rapo_ray.data.rows import seeded_sample
from rapo_ray.data.split import behaviour_key, eval_only_names, in_test, is_eval_only
from rapo_ray.models import load_tokenizer, resolve_model


def read_sets(cfg: JobConfig, recipe: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Eval sets read like a recipe (no split, no shuffle; prompt length estimated from characters so the set does
    not depend on any model's tokenizer)."""
    data_cfg = DataConfig.model_validate({**cfg.data.model_dump(), "recipe": recipe, "eval_fraction": 0.0,
                                          "test_fraction": 0.0, "shuffle": False,
                                          "max_prompt_tokens": cfg.eval.max_prompt_tokens})
    ps = build_prompt_set(data_cfg, cfg.eval.seed)
    return ps.train, ps.report


def trained_behaviours(cfg: JobConfig) -> set[str]:
    """Behaviour keys some training stage of ``cfg`` trains on: the train side of ``data.recipe`` (RL, pairs) and
    of ``sft.recipe`` (curation), counted with the policy's tokenizer as those stages count, and the STAR-1 rows."""
    from rapo_ray.sft.star1 import read_star1  # the SFT package pulls in the rollout stages

    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path), cfg.model)
    recipes = [cfg.data.recipe] + ([cfg.sft.recipe] if cfg.sft.recipe is not None else [])
    keys: set[str] = set()
    for recipe in recipes:
        data = cfg.data.model_copy(update={"recipe": recipe})
        keys.update(behaviour_key(r) for r in build_prompt_set(data, cfg.seed, tokenizer).train)
    if cfg.sft.star1_path:
        keys.update(behaviour_key(r) for r in read_star1(cfg.sft.star1_path, cfg)[0])
    return keys


def split_rows_of_sets(cfg: JobConfig, split: Literal["test", "dev"]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Of each eval set, the rows of ``split`` (see the module doc), minus behaviours an earlier eval set holds;
    then each set's cap (seeded). The report counts, per set, rows read, in the split, duplicate and kept."""
    names = eval_only_names(cfg)
    if split == "test":
        keep: Callable[[dict[str, Any], bool], bool] = lambda r, only_eval: only_eval or in_test(r, cfg)  # noqa: E731
    else:
        trained = trained_behaviours(cfg)
        keep = lambda r, only_eval: (not only_eval and not in_test(r, cfg)  # noqa: E731
                                     and behaviour_key(r) not in trained)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    report: dict[str, Any] = {"split": split, "test_fraction": cfg.data.test_fraction,
                              "split_seed": cfg.data.split_seed, "sets": {}}
    for i, spec in enumerate(cfg.eval.sets):
        tree = spec.model_dump(exclude_unset=True)  # unset: readers keep their own columns
        tree.pop("cap", None)
        got, _ = read_sets(cfg, [tree])
        n_read = len(got)
        only_eval = is_eval_only(spec, names)
        got = [r for r in got if keep(r, only_eval)]
        n_split = len(got)
        got = [r for r in got if behaviour_key(r) not in seen]
        n_new = len(got)
        got = seeded_sample(got, spec.cap, [cfg.eval.seed, i])
        seen.update(behaviour_key(r) for r in got)
        report["sets"][f"{i}:{spec.name}"] = {"read": n_read, "in_split": n_split,
                                              "duplicate_behaviour": n_split - n_new, "kept": len(got)}
        rows += got
    return rows, report
