"""``rapo-ray pairs``: offline preference pairs sampled from a fixed model (``pairs.source: sampled``), or built
from the curated SFT rows (``verdict``: ``rapo_ray.sft.contrast``; pairs.jsonl, summary.json and COMPLETE only), or
from the fixed model's own scored completions cut at their decision (``decision``: sampled and scored as
``sampled`` is, paired by ``rapo_ray.sft.contrast.decision_pairs``).

The prompts are the train split in the online loader's seeded order (``PromptLoader``), in batches of
``rollout.prompts_per_step``; batch k is sampled with the rollout seeds of online step k. So, from the same start
model, the pairs' samples are exactly the completions online RAPO's first step draws, and the first batches hold
the prompts its first steps see. Every completion is scored by the judge pool; each prompt gives one pair:
chosen = the highest total reward, rejected = the lowest, ties broken by the risk reward, then by how close the
safety paragraph's sentence count is to its level's adequate band; kept when the totals differ by at least
``pairs.min_margin``.

Output folder (``pairs.out_dir``, default ``<output_dir>/pairs``):

- ``samples.jsonl``: every scored completion (token ids, text, every reward component), appended per batch;
- ``batches.jsonl``: one line per finished batch (its prompts, generation and judging time, mean reward);
  a run stopped midway resumes after the last finished batch;
- ``pairs.jsonl``: the kept pairs (prompt and completion token ids, both breakdowns, the margin);
- ``summary.json``, ``config.yaml``, and ``COMPLETE`` once everything is written.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from rapo_ray import atomic
from rapo_ray.config import JobConfig, JudgeConfig
from rapo_ray.data.loader import PromptLoader
from rapo_ray.data.recipe import training_prompt_set
from rapo_ray.data.rows import seeded_sample
from rapo_ray.judge.pool import JudgePool
from rapo_ray.models import load_tokenizer, resolve_model
from rapo_ray.rollout import RolloutGroup
from rapo_ray.runtime import init_ray, score
from rapo_ray.sft.contrast import decision_pairs, verdict_pairs
from rapo_ray.sft.curate import data_dir as sft_data_dir, is_complete as sft_data_complete
from rapo_ray.sft.trainer import is_complete as sft_complete, model_out
from rapo_ray.types import Sample, pair_record, sampled_side

COMPLETE = "COMPLETE"
SAMPLE_FIELDS = ("prompt_id", "sample_index", "prompt", "prompt_ids", "completion", "completion_ids", "truncated",
                 "harmful_label", "level", "source", "reward", "breakdown")


class PairsError(RuntimeError):
    """Pairs cannot be built or read: no prompts, unreadable files, no pair kept."""


# ----------------------------------------------------------------------------- pair selection (pure)

def band_gap(sentences: int, level: int, judge: JudgeConfig) -> int:
    """How many sentences the safety paragraph lies outside its level's adequate band (0 inside it)."""
    band = judge.band(level)
    over = 0 if band.max_sentences is None else sentences - band.max_sentences  # no upper bound: never over
    return max(band.min_sentences - sentences, over, 0)


def rank_key(breakdown: dict[str, Any], judge: JudgeConfig) -> tuple[float, float, int]:
    """Preference order of one completion: total reward, then risk reward, then closeness to the band."""
    return (float(breakdown["total"]), float(breakdown["risk_reward"]),
            -band_gap(int(breakdown["reasoning_sentences"]), int(breakdown["level"]), judge))


def select_pair(group: list[dict[str, Any]], judge: JudgeConfig,
                min_margin: float) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """(chosen, rejected, reason) for one prompt's scored completions (dicts with ``sample_index`` and
    ``breakdown``). Full ties go to the lowest sample index. reason: "kept", "tie" (no completion is preferred
    on any criterion) or "margin" (totals closer than ``min_margin``); chosen and rejected are None unless kept."""
    if len(group) < 2:
        return None, None, "tie"
    chosen = max(group, key=lambda r: (rank_key(r["breakdown"], judge), -r["sample_index"]))
    rejected = min(group, key=lambda r: (rank_key(r["breakdown"], judge), r["sample_index"]))
    if rank_key(chosen["breakdown"], judge) == rank_key(rejected["breakdown"], judge):
        return None, None, "tie"
    if chosen["breakdown"]["total"] - rejected["breakdown"]["total"] < min_margin:
        return None, None, "margin"
    return chosen, rejected, "kept"


def build_pairs(samples: list[dict[str, Any]], judge: JudgeConfig,
                min_margin: float) -> tuple[list[dict[str, Any]], Counter]:
    """One pair per prompt occurrence (a prompt seen in two batches gives two groups), in sample order; returns
    the pairs and the count of each selection outcome. An unscored sample (no reward component scored it) takes
    no side."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for s in samples:
        g = groups.setdefault((s["batch"], s["prompt_id"]), [])
        if s["breakdown"].get("scored", True):
            g.append(s)
    pairs, outcome = [], Counter()
    for (batch, pid), group in groups.items():
        chosen, rejected, reason = select_pair(group, judge, min_margin)
        outcome[reason] += 1
        if reason != "kept":
            continue
        first = group[0]
        pairs.append(pair_record(
            pair_id=f"{pid}@{batch}", prompt_id=pid, batch=batch, prompt=first["prompt"],
            prompt_ids=first["prompt_ids"], harmful_label=first["harmful_label"], level=first["level"],
            source=first["source"], margin=chosen["breakdown"]["total"] - rejected["breakdown"]["total"],
            group_totals=[g["breakdown"]["total"] for g in sorted(group, key=lambda g: g["sample_index"])],
            chosen=sampled_side(chosen), rejected=sampled_side(rejected)))
    return pairs, outcome


def balance_labels(pairs: list[dict[str, Any]], outcome: Counter, seed: Any) -> list[dict[str, Any]]:
    """``pairs.balance_labels``: as many harmful as benign pairs, a seeded sample of the larger label's pairs (in
    their order) down to the smaller label's count; ``outcome`` moves the dropped ones from "kept" to
    "label_balance". Raises :class:`PairsError` when one label has no pair."""
    by_label = {label: [p for p in pairs if int(p["harmful_label"]) == label] for label in (0, 1)}
    n = min(len(v) for v in by_label.values())
    if n == 0:
        missing = "benign" if not by_label[0] else "harmful"
        raise PairsError(f"pairs.balance_labels: no {missing} pair was kept ({len(pairs)} pairs, "
                         f"{dict(Counter(int(p['harmful_label']) for p in pairs))} by harmful label); sample more "
                         f"{missing} prompts (data.benign_share, pairs.max_prompts) or turn balance_labels off")
    keep = {id(p) for v in by_label.values() for p in seeded_sample(v, n, seed)}
    dropped = len(pairs) - len(keep)
    outcome["kept"] -= dropped
    outcome["label_balance"] += dropped
    return [p for p in pairs if id(p) in keep]


def pair_samples(pairs: list[dict[str, Any]]) -> list[Sample]:
    """The learner's view of the pairs: ``[chosen_0, rejected_0, chosen_1, ...]`` (the preference objectives'
    layout); each sample's ``prompt_id`` is its pair's id."""
    out = []
    for p in pairs:
        for side in ("chosen", "rejected"):
            c = p[side]
            out.append(Sample(prompt_id=p["pair_id"], sample_index=c["sample_index"], prompt=p["prompt"],
                              prompt_ids=list(p["prompt_ids"]), completion_ids=list(c["completion_ids"]),
                              completion=c["completion"], sampling_logprobs=[], truncated=bool(c["truncated"]),
                              policy_version=0, harmful_label=int(p["harmful_label"]), level=p["level"],
                              source=p["source"], reward=float(c["reward"]), breakdown=dict(c["breakdown"])))
    return out


# ----------------------------------------------------------------------------- files

def pairs_dir(cfg: JobConfig) -> Path:
    return Path(cfg.pairs.out_dir or Path(cfg.output_dir) / "pairs")


def is_complete(out: Path) -> bool:
    return (Path(out) / COMPLETE).is_file()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file; a malformed line raises :class:`PairsError` naming it, except a cut last line (a
    run stopped while writing), which is dropped."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if n == len(lines):
                break
            raise PairsError(f"{path}:{n}: not a JSON object: {e}") from None
    return rows


def load_pairs(out: Path) -> list[dict[str, Any]]:
    """The kept pairs of a complete pairs folder."""
    out = Path(out)
    if not is_complete(out):
        raise PairsError(f"no complete pairs at {out}; run `rapo-ray pairs CONFIG` first")
    pairs = read_jsonl(out / "pairs.jsonl")
    for n, p in enumerate(pairs):
        if not isinstance(p, dict) or not all(k in p for k in ("pair_id", "prompt_ids", "chosen", "rejected")):
            raise PairsError(f"{out / 'pairs.jsonl'}: row {n} is not a pair")
    return pairs


def _sample_row(s: Sample, batch: int) -> dict[str, Any]:
    return {"batch": batch, **{k: getattr(s, k) for k in SAMPLE_FIELDS}}


def resolve_start_model(cfg: JobConfig, explicit: str | None) -> str:
    """``explicit`` when set, else the SFT export when it is complete, else ``model.name_or_path``."""
    if explicit:
        return explicit
    if sft_complete(cfg):
        return str(model_out(cfg))
    print(f"no complete SFT model at {model_out(cfg)}: starting from model.name_or_path={cfg.model.name_or_path}")
    return cfg.model.name_or_path


# ----------------------------------------------------------------------------- the command

def sampling_config(cfg: JobConfig) -> JobConfig:
    """The job config the fixed model samples with: ``pairs.n``, ``pairs.temperature`` and
    ``pairs.prompts_per_step`` in place of the rollout section's where set."""
    over = {k: v for k in ("n", "temperature", "prompts_per_step") if (v := getattr(cfg.pairs, k)) is not None}
    return cfg.model_copy(update={"rollout": cfg.rollout.model_copy(update=over)}) if over else cfg


def cmd_pairs(cfg: JobConfig) -> Path:
    """``rapo-ray pairs CONFIG``: sample, score and pair; returns the pairs folder (left as it is when complete)."""
    cfg = sampling_config(cfg)
    out = pairs_dir(cfg)
    if is_complete(out):
        print(f"pairs: {out} is complete; skipped")
        return out
    model = resolve_start_model(cfg, cfg.pairs.model)
    model_path = str(resolve_model(model))
    if cfg.pairs.source == "verdict":
        return _from_sft_rows(cfg, out, model, model_path)
    init_ray()
    tokenizer = load_tokenizer(model_path, cfg.model)
    train = training_prompt_set(cfg.data, cfg.seed, tokenizer).train
    if not train:
        raise PairsError("the data recipe left no train prompts to sample pairs from")
    n_prompts = cfg.pairs.max_prompts or len(train)
    per_batch = cfg.rollout.prompts_per_step
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    batches = {b["batch"]: b for b in read_jsonl(out / "batches.jsonl")}
    done = [s for s in read_jsonl(out / "samples.jsonl") if s["batch"] in batches]
    atomic.write_text(out / "samples.jsonl", "".join(json.dumps(s) + "\n" for s in done))  # drop unfinished batches
    n_batches = math.ceil(n_prompts / per_batch)
    todo = [k for k in range(n_batches) if k not in batches]
    if todo:
        loader = PromptLoader(train, per_batch, cfg.seed, cfg.data.shuffle, eval_only=tuple(cfg.data.eval_only),
                              benign_per_batch=cfg.data.benign_per_batch(per_batch))
        rollouts = RolloutGroup(cfg, model_path)
        judge = JudgePool(cfg)
        try:
            rollouts.ready()
            with (out / "samples.jsonl").open("a") as fs, (out / "batches.jsonl").open("a") as fb:
                for k in todo:
                    pos = k * per_batch  # the loader's position at online step k
                    where = {"epoch": pos // loader.num_rows, "seed": cfg.seed, "consumed": pos % loader.num_rows,
                             "batches": k}
                    if loader.state_dict() != where:
                        loader.load_state_dict(where)
                    rows = loader.next_batch()[:n_prompts - pos]
                    t0 = time.perf_counter()
                    samples = rollouts.collect(rollouts.generate_async(rows, k, 0), k, 0, resync=lambda: 0)
                    t1 = time.perf_counter()
                    score(judge, samples)
                    t2 = time.perf_counter()
                    fs.write("".join(json.dumps(_sample_row(s, k)) + "\n" for s in samples))
                    fs.flush()
                    batch = {"batch": k, "prompt_ids": [str(r["id"]) for r in rows], "samples": len(samples),
                             "gen_s": t1 - t0, "reward_s": t2 - t1,
                             "reward_mean": sum(s.reward for s in samples) / len(samples)}
                    fb.write(json.dumps(batch) + "\n")
                    fb.flush()
                    batches[k] = batch
                    print(f"pairs: batch {k + 1}/{n_batches}, mean reward {batch['reward_mean']:.3f}")
        finally:
            loader.close()
            rollouts.kill()
            judge.close()
    samples = read_jsonl(out / "samples.jsonl")
    if cfg.pairs.source == "decision":
        pairs, outcome = decision_pairs(samples, cfg, tokenizer)
    else:
        pairs, outcome = build_pairs(samples, cfg.judge, cfg.pairs.min_margin)
    if cfg.pairs.balance_labels and pairs:
        pairs = balance_labels(pairs, outcome, [cfg.seed, 17])
    atomic.write_text(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    summary = summarize(samples, pairs, outcome, list(batches.values()))
    summary |= {"model": model, "source": cfg.pairs.source}
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    if not pairs:
        hint = ("every harmful completion refused and no benign one was answered helpfully"
                if cfg.pairs.source == "decision" else
                "lower pairs.min_margin or sample more completions per prompt (rollout.n)")
        raise PairsError(f"no pair kept out of {sum(outcome.values())} prompts ({dict(outcome)}); {hint}")
    (out / COMPLETE).write_text(str(len(pairs)))
    print(f"pairs: {len(pairs)} kept of {sum(outcome.values())} prompts ({dict(outcome)}) at {out}")
    return out


def _from_sft_rows(cfg: JobConfig, out: Path, model: str, model_path: str) -> Path:
    """``pairs.source: verdict``: one pair per usable curated SFT row (at most ``pairs.max_prompts``, a seeded
    sample)."""
    src = sft_data_dir(cfg)
    if not sft_data_complete(src):
        raise PairsError(f"pairs.source: verdict builds pairs from the curated SFT rows, and {src} holds no complete "
                         f"set; run `rapo-ray sft-data CONFIG` first")
    pairs, outcome = verdict_pairs(read_jsonl(src / "sft.jsonl"), cfg, load_tokenizer(model_path, cfg.model))
    if cfg.pairs.balance_labels and pairs:
        pairs = balance_labels(pairs, outcome, [cfg.seed, 17])
    pairs = seeded_sample(pairs, cfg.pairs.max_prompts, [cfg.seed, 13])
    if not pairs:
        raise PairsError(f"no verdict pair could be built from {src / 'sft.jsonl'} ({dict(outcome)}); it needs rows "
                         f"written with sft.generator: template")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(cfg.to_yaml())
    atomic.write_text(out / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    summary = summarize([], pairs, outcome, []) | {"model": model, "source": "verdict", "sft_data": str(src)}
    atomic.write_text(out / "summary.json", json.dumps(summary, indent=1))
    (out / COMPLETE).write_text(str(len(pairs)))
    print(f"pairs: {len(pairs)} verdict pairs from {src} ({dict(outcome)}) at {out}")
    return out


def summarize(samples: list[dict[str, Any]], pairs: list[dict[str, Any]], outcome: Counter,
              batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts (pairs by harmful label included), reward means and time of a pairs run."""
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"prompts": sum(outcome.values()), "samples": len(samples), "pairs": len(pairs), "outcome": dict(outcome),
            "reward_mean": mean([s["breakdown"]["total"] for s in samples]),
            "chosen_reward_mean": mean([p["chosen"]["breakdown"]["total"] for p in pairs]),
            "rejected_reward_mean": mean([p["rejected"]["breakdown"]["total"] for p in pairs]),
            "margin_mean": mean([p["margin"] for p in pairs]),
            "by_label": dict(Counter(p["harmful_label"] for p in pairs)),
            "chosen_cases": dict(Counter(p["chosen"]["breakdown"]["case"] for p in pairs)),
            "rejected_cases": dict(Counter(p["rejected"]["breakdown"]["case"] for p in pairs)),
            "gen_s": sum(b["gen_s"] for b in batches), "reward_s": sum(b["reward_s"] for b in batches)}
