"""``rapo-ray sft-data``: level-adaptive safe-reasoning SFT data, curated by a streaming Ray Data pipeline.

prompts -> paragraph stage (template task, or an LLM generator's vLLM actors) -> continuation stage (the
policy's vLLM actors, k samples per prompt) -> judge stage (judge actors: filters, best of k; a harmful prompt
with no kept continuation gets a generator-written refusal) -> shards. STAR-1 rows (``sft.star1_path``) are
mixed in when the outputs are written (``rapo_ray.sft.star1``).

The prompts are the train split of the SFT recipe (``sft.recipe``, else ``data.recipe``), split by
``rapo_ray.data.split`` exactly as the RL stage and the evaluation split it; a recipe holding an
evaluation-only set (XSTest) is refused.

The prompts are cut into shards of ``sft.shard_size``; each shard is written (atomically) as soon as all its
rows are back, so a crash keeps the finished shards and a rerun curates only the missing ones (the manifest
pins the prompts and settings the shards were made with). When every shard exists the rows are filtered into
the outputs under ``sft.data_dir``:

- ``dataset/`` (HF ``save_to_disk``) and ``sft.jsonl``: the kept rows (format: ``rapo_ray.sft.records``);
- ``rejected.jsonl``: the other rows, with the filters they failed;
- ``report.json``: counts and survival rate per filter, per source (offered, kept, generator-written answers,
  dropped by filter), the kept mix and the STAR-1 counts; ``held_back.jsonl``: the recipe's dev split;
  ``test.jsonl``: its test split (never curated);
- ``COMPLETE``: written last; a folder holding it is not curated again.
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.config import JobConfig
from rapo_ray.data.recipe import training_prompt_set
from rapo_ray.data.rows import DataError, seeded_sample
from rapo_ray.judge.base import judge_identity
from rapo_ray.models import conversation, load_tokenizer, resolve_model
from rapo_ray.runtime import init_ray
from rapo_ray.sft.records import (TokenCounter, active_filters, build_report, completion_budget, format_report,
                                  initial_row)
from rapo_ray.sft.stages import ContinuationStage, JudgeStage, ParagraphStage, template_stage
from rapo_ray.sft.star1 import Star1Error, star1_ingredient

COMPLETE = "COMPLETE"
# SFT fields that do not change what curation writes (training settings and where things go).
# STAR-1 settings only change what is mixed in when the outputs are written, not the shards.
_NOT_CURATION = {"dataset", "epochs", "batch_size", "lr", "lr_schedule", "loss_agg", "warmup_ratio", "packing",
                 "micro_batch_tokens", "output_dir", "data_dir", "min_rows", "star1_path",
                 "star1_rows", "star1_fit"}


class SFTDataError(RuntimeError):
    """Curation cannot produce a usable data set (bad input, changed settings, too few rows)."""


def data_dir(cfg: JobConfig) -> Path:
    return Path(cfg.sft.data_dir or Path(cfg.output_dir) / "sft_data")


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / "dataset").is_dir()


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- prompts and rows

def curation_prompts(cfg: JobConfig, tokenizer: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                             list[dict[str, Any]]]:
    """(prompts to curate, dev prompts, test prompts): the SFT recipe's train, dev and test splits; at most
    ``sft.max_prompts`` of the train split (a seeded sample, in recipe order). An evaluation-only set (XSTest) in
    the recipe is an error."""
    what = "the SFT recipe (data.recipe)" if cfg.sft.recipe is None else "the SFT recipe (sft.recipe)"
    data = cfg.data if cfg.sft.recipe is None else cfg.data.model_copy(update={"recipe": cfg.sft.recipe})
    try:
        ps = training_prompt_set(data, cfg.seed, tokenizer, what)
    except DataError as e:
        raise SFTDataError(str(e)) from None
    return cap_rows(ps.train, cfg), ps.eval, ps.test


def cap_rows(rows: list[dict[str, Any]], cfg: JobConfig) -> list[dict[str, Any]]:
    """At most ``sft.max_prompts`` rows: a seeded sample, in the original order."""
    return seeded_sample(rows, cfg.sft.max_prompts, [cfg.seed, 5])


def generator_path(cfg: JobConfig, policy_path: str) -> str | None:
    """The generator model's folder; None for the template generator."""
    g = cfg.sft.generator
    if g == "template":
        return None
    return policy_path if g == "policy" else str(resolve_model(g))


def fingerprint(cfg: JobConfig, policy_path: str, generator: str | None) -> dict[str, Any]:
    """Everything that decides what a shard holds."""
    sft = {k: v for k, v in cfg.sft.model_dump(mode="json").items() if k not in _NOT_CURATION}
    return {"policy": policy_path, "generator": generator or "template", "seed": cfg.seed, "sft": sft,
            "completion_budget": completion_budget(cfg),
            "model": cfg.model.model_dump(mode="json"), "judge": judge_identity(cfg),
            "levels": cfg.judge.model_dump(mode="json")["levels"], "level_source": cfg.judge.level_source}


# ----------------------------------------------------------------------------- the Ray Data pipeline

def _opts(cfg: JobConfig, role: str) -> dict[str, Any]:
    r = cfg.resources
    opts: dict[str, Any] = {"num_cpus": getattr(r, f"{role}_cpus"), "num_gpus": getattr(r, f"{role}_gpus")}
    if r.custom.get(role):
        opts["resources"] = dict(r.custom[role])
    return opts


def build_dataset(cfg: JobConfig, items: list[dict[str, Any]], policy_path: str, generator: str | None) -> Any:
    """The streaming pipeline over ``items`` ({shard, record}); actors are vLLM engines and judges.

    GPU note: each vLLM actor takes ``resources.rollout_gpus``; a generator with tensor parallelism > 1 needs
    vLLM's Ray executor inside a Ray Data actor, which is not exercised here (CPU runs are tested)."""
    import ray

    s = cfg.sft
    ds = ray.data.from_items(items, override_num_blocks=max(1, -(-len(items) // s.shard_size)))
    if generator is None:  # a light CPU task, with the judge role's CPU share
        ds = ds.map_batches(template_stage, batch_size=s.shard_size, batch_format="numpy",
                            fn_kwargs={"cfg": cfg}, num_cpus=cfg.resources.judge_cpus)
    else:
        ds = ds.map_batches(ParagraphStage, batch_size=s.shard_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=s.num_workers),
                            fn_constructor_kwargs={"cfg": cfg, "model_path": generator}, **_opts(cfg, "rollout"))
    ds = ds.map_batches(ContinuationStage, batch_size=s.shard_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=s.num_workers),
                        fn_constructor_kwargs={"cfg": cfg, "model_path": policy_path}, **_opts(cfg, "rollout"))
    return ds.map_batches(JudgeStage, batch_size=s.shard_size, batch_format="numpy",
                          compute=ray.data.ActorPoolStrategy(size=cfg.judge.num_actors),
                          fn_constructor_kwargs={"cfg": cfg, "generator": s.generator, "policy_path": policy_path},
                          **_opts(cfg, "judge"))


def run_shards(cfg: JobConfig, shards: list[list[dict[str, Any]]], todo: list[int], out: Path, policy_path: str,
               generator: str | None, on_shard: Callable[[int], None] | None = None) -> None:
    """Curate the shards ``todo``, writing each one as soon as all its rows are back."""
    items = [{"shard": i, "record": json.dumps(initial_row(r, cfg))} for i in todo for r in shards[i]]
    position = {str(r["id"]): j for i in todo for j, r in enumerate(shards[i])}
    expected = {i: len(shards[i]) for i in todo}
    got: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for row in build_dataset(cfg, items, policy_path, generator).iter_rows():
        i = int(row["shard"])
        got[i].append(json.loads(row["record"]))
        if len(got[i]) == expected[i]:
            recs = sorted(got.pop(i), key=lambda r: position[r["id"]])
            atomic.write_text(out / "shards" / f"shard_{i:05d}.jsonl", _jsonl([{**r, "shard": i} for r in recs]))
            if on_shard is not None:
                on_shard(i)
    if got:
        raise SFTDataError(f"the curation pipeline ended with incomplete shards {sorted(got)} "
                           f"({ {i: len(v) for i, v in got.items()} } rows of {expected})")


# ----------------------------------------------------------------------------- outputs

def finalize(cfg: JobConfig, out: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """Write the report and the outputs; fail with the report when fewer than ``sft.min_rows`` rows are kept."""
    from datasets import Dataset

    report = build_report(records, active_filters(cfg), meta)
    atomic.write_text(out / "report.json", json.dumps(report, indent=2))
    if report["kept"] < cfg.sft.min_rows:
        raise SFTDataError(f"only {report['kept']} rows kept, fewer than sft.min_rows={cfg.sft.min_rows}\n"
                           f"{format_report(report)}\n(report: {out / 'report.json'})")
    kept = [r for r in records if r["kept"]]
    atomic.write_text(out / "sft.jsonl", _jsonl(kept))
    atomic.write_text(out / "rejected.jsonl", _jsonl([r for r in records if not r["kept"]]))
    atomic.build(out / "dataset", lambda tmp: Dataset.from_list(kept).save_to_disk(str(tmp)), replace=True)
    atomic.write_text(out / COMPLETE, json.dumps({"kept": len(kept), "prompts": len(records)}))
    return report


def curate(cfg: JobConfig, on_shard: Callable[[int], None] | None = None) -> Path:
    """Curate (or resume curating) the SFT set of ``cfg`` and mix in STAR-1; returns ``data_dir(cfg)``.
    ``on_shard(i)`` is called after shard ``i`` is written."""
    out = data_dir(cfg)
    policy_path = str(resolve_model(cfg.model.name_or_path))
    generator = generator_path(cfg, policy_path)
    tokenizer = load_tokenizer(policy_path, cfg.model)
    # sft.max_prompts 0: nothing is curated, so the recipe is not read (a STAR-1-only set)
    rows, held, test = curation_prompts(cfg, tokenizer) if cfg.sft.max_prompts != 0 else ([], [], [])
    if not rows and not cfg.sft.star1_path:
        raise SFTDataError("the SFT recipe gave no prompts to curate (check sft.recipe / data.recipe / "
                           "sft.max_prompts) and no sft.star1_path is set")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "held_back.jsonl", _jsonl(held))
    atomic.write_text(out / "test.jsonl", _jsonl(test))
    size = cfg.sft.shard_size
    shards = [rows[i:i + size] for i in range(0, len(rows), size)]
    done: list[int] = []
    if shards:
        manifest = {"fingerprint": fingerprint(cfg, policy_path, generator),
                    "shards": [[str(r["id"]) for r in s] for s in shards]}
        chats = [conversation(r) for s in shards for r in s if r.get("messages") or r.get("system")]
        if chats:  # conversations and system prompts, which the ids do not pin
            manifest["chats"] = hashlib.sha256(json.dumps(chats).encode()).hexdigest()
        (out / "shards").mkdir(parents=True, exist_ok=True)
        mpath = out / "manifest.json"
        if mpath.exists() and json.loads(mpath.read_text()) != manifest:
            raise SFTDataError(f"{out} holds shards curated from other prompts or settings (see {mpath}); "
                               f"set sft.data_dir to a new folder or delete this one")
        atomic.write_text(mpath, json.dumps(manifest, indent=1))
        done = [i for i in range(len(shards)) if (out / "shards" / f"shard_{i:05d}.jsonl").is_file()]
        todo = [i for i in range(len(shards)) if i not in set(done)]
        if todo:
            init_ray()
            run_shards(cfg, shards, todo, out, policy_path, generator, on_shard)
    records = [r for i in range(len(shards)) for r in read_jsonl(out / "shards" / f"shard_{i:05d}.jsonl")]
    meta = {"generator": cfg.sft.generator, "policy": policy_path, "k": cfg.sft.k,
            "close_think": cfg.sft.close_think, "refusal_writer": cfg.sft.refusal_writer,
            "completion_budget": completion_budget(cfg), "max_seq_tokens": cfg.sft.max_seq_tokens,
            "shards": len(shards), "shards_resumed": len(done), "held_back": len(held), "test": len(test),
            "think_closed_by_pipeline": cfg.sft.close_think == "insert"}
    if cfg.sft.star1_path:
        try:
            star1, meta["star1"] = star1_ingredient(cfg, TokenCounter(tokenizer, cfg))
        except Star1Error as e:
            raise SFTDataError(str(e)) from None
        records += star1
    print(format_report(finalize(cfg, out, records, meta)))
    return out


def cmd_sft_data(cfg: JobConfig, on_shard: Callable[[int], None] | None = None) -> Path:
    """``rapo-ray sft-data CONFIG``: curate the SFT set (with STAR-1 mixed in when ``sft.star1_path`` is set);
    returns the data folder. A folder already marked complete is left as it is."""
    out = data_dir(cfg)
    if is_complete(out):
        print(f"sft-data: {out} is complete; skipped")
        return out
    return curate(cfg, on_shard)
