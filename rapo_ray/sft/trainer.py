"""``rapo-ray sft``: format-alignment fine-tuning on the curated set with the RL stage's DeepSpeed learner group.

Each row (``messages`` ending with the assistant turn, or ``prompt`` + ``completion``: ``records.sft_row``) becomes
a ``Sample`` exactly as the RL stage builds them: the prompt is the row's conversation (system prompt: the row's,
else ``data.system_prompt``) through the chat template, ending with the thinking prefix (``format_prompt``), the
completion is the rest of the assistant turn plus the end-of-turn
token. The learners' ``objective="sft"`` loss is the mean NLL of the completion tokens only (the prompt is
masked). The run (checkpoints every ``checkpoint.every`` steps and at the end, resume, metrics) is a
``rapo_ray.run.Run``; the final policy is exported to ``<sft dir>/model`` in HF format, which ``rapo-ray train``
takes as ``model.name_or_path``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from rapo_ray import atomic
from rapo_ray.config import JobConfig
from rapo_ray.data.rows import DataError
from rapo_ray.data.split import eval_only_names, refuse_eval_only_rows
from rapo_ray.learner import LearnerGroup
from rapo_ray.learner.lora import ADAPTER_DIR
from rapo_ray.data.rows import MessagesError
from rapo_ray.models import load_tokenizer, resolve_model, thinking_prefix
from rapo_ray.run import Run
from rapo_ray.runtime import init_ray
from rapo_ray.sft.curate import data_dir
from rapo_ray.sft.records import sft_row, sft_token_ids
from rapo_ray.types import Sample

COMPLETE = "COMPLETE"


class SFTError(RuntimeError):
    """SFT cannot run: no data, unusable rows."""


def sft_dir(cfg: JobConfig) -> Path:
    return Path(cfg.sft.output_dir or Path(cfg.output_dir) / "sft")


def model_out(cfg: JobConfig) -> Path:
    """Where the fine-tuned policy is exported (HF format)."""
    return sft_dir(cfg) / "model"


def is_complete(cfg: JobConfig) -> bool:
    return (model_out(cfg) / COMPLETE).is_file()


def checkpoint_model_dir(ckpt: Path) -> Path:
    """A checkpoint's HF model folder (the checkpoint folder itself, see ``rapo_ray.checkpoint``)."""
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"no HF model (config.json) in checkpoint {ckpt}")
    return ckpt


def load_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """SFT rows from a curated folder (``save_to_disk``) or a JSONL file; each needs a ``messages`` list ending with
    the assistant turn, or ``prompt`` and ``completion`` strings (``records.sft_row``); a malformed row is an
    error naming the file and the row."""
    p = Path(path)
    if p.is_dir():
        from datasets import load_from_disk

        rows = load_from_disk(str(p)).to_list()
    elif p.is_file():
        rows = []
        for n, line in enumerate(p.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise SFTError(f"{p}:{n}: not a JSON object: {e}") from None
    else:
        raise SFTError(f"SFT data not found at {p}; run `rapo-ray sft-data CONFIG` first or set sft.dataset")
    for n, r in enumerate(rows):
        if not isinstance(r, dict):
            raise SFTError(f"{p}: row {n} is a {type(r).__name__}, not an object")
        try:
            sft_row(r)
        except MessagesError as e:
            raise SFTError(f"{p}: row {n}: {e}") from None
    return rows


def build_samples(rows: list[dict[str, Any]], tokenizer: Any, cfg: JobConfig) -> tuple[list[Sample], Counter]:
    """Token samples of the rows (``records.sft_row``: prompt = the row's conversation through the chat template,
    with the thinking prefix; completion = the assistant turn after that prefix, then the end-of-turn token). Rows
    whose completion does not open with the thinking prefix, or longer than ``sft.max_seq_tokens``, are dropped and
    counted; a malformed row and rows of an evaluation-only set (XSTest, ``data.eval_only``, by source) are an
    error."""
    try:
        refuse_eval_only_rows(rows, "the SFT rows", eval_only_names(cfg))
    except DataError as e:
        raise SFTError(str(e)) from None
    prefix = thinking_prefix(cfg.model)
    if tokenizer.eos_token_id is None:
        raise SFTError("the tokenizer has no end-of-turn (eos) token to end the assistant turn with")
    samples, dropped = [], Counter()
    for n, raw in enumerate(rows):
        try:
            r = sft_row(raw)
        except MessagesError as e:
            raise SFTError(f"SFT row {n}: {e}") from None
        if not r["completion"].startswith(prefix):
            dropped["no_thinking_prefix"] += 1
            continue
        p_ids, (c_ids,) = sft_token_ids(r, [r["completion"]], tokenizer, cfg)
        if len(p_ids) + len(c_ids) > cfg.sft.max_seq_tokens:
            dropped["too_long"] += 1
            continue
        samples.append(Sample(prompt_id=str(r.get("id", n)), sample_index=0, prompt=r["prompt"], prompt_ids=p_ids,
                              completion_ids=c_ids, completion=r["completion"], sampling_logprobs=[], truncated=False,
                              policy_version=0, harmful_label=int(r.get("harmful_label", 0)), level=r.get("level"),
                              source=str(r.get("source", ""))))
    return samples, dropped


def learner_config(cfg: JobConfig, total_steps: int) -> JobConfig:
    """The job config the learners run SFT with: the sft section's lr, schedule, packing and loss aggregation; no
    reference model."""
    s = cfg.sft
    warmup = round(s.warmup_ratio * total_steps)
    learner = cfg.learner.model_copy(update={
        "lr": s.lr, "warmup_steps": warmup, "lr_schedule": s.lr_schedule, "lr_decay_steps": total_steps - warmup,
        "packing": s.packing, "micro_batch_tokens": s.micro_batch_tokens or cfg.learner.micro_batch_tokens})
    algo = cfg.algo.model_copy(update={"kl_coef": 0.0, "loss_agg": s.loss_agg})
    return cfg.model_copy(update={"learner": learner, "algo": algo})


def group_keys(rows: list[dict[str, Any]], samples: list[Sample]) -> list[str]:
    """Per sample, its row's ``origin_id`` (both sides of a matched pair share it), else its id."""
    origins = {str(r.get("id")): r.get("origin_id") for r in rows}
    return [str(origins.get(s.prompt_id) or s.prompt_id) for s in samples]


def epoch_order(keys: list[str], seed: int, epoch: int) -> list[int]:
    """A seeded permutation of the samples in which samples sharing a key (a matched pair's ``origin_id``) follow
    the first of them, so that a pair lands in one batch (or two adjacent ones); distinct keys: the permutation."""
    members: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        members.setdefault(k, []).append(i)
    order: list[int] = []
    for i in np.random.default_rng([seed, 7, epoch]).permutation(len(keys)).tolist():
        order += members.pop(keys[i], [])  # the whole group where its first member falls
    return order


def _export(src: Path, dst: Path) -> None:
    """Copy an HF model folder (its files, and a LoRA run's ``adapter/``; hard links where possible) to ``dst``
    atomically, then mark it."""
    def copy(tmp: Path) -> None:
        tmp.mkdir(parents=True)
        for f in [*src.iterdir(), *(src / ADAPTER_DIR).glob("*")]:
            if f.is_file():
                out = tmp / f.relative_to(src)
                out.parent.mkdir(exist_ok=True)
                try:
                    os.link(f, out)
                except OSError:
                    shutil.copy2(f, out)

    atomic.build(dst, copy, replace=True)
    (dst / COMPLETE).write_text(str(src))


def cmd_sft(cfg: JobConfig, resume: bool = False) -> Path:
    """``rapo-ray sft CONFIG``: fine-tune the policy on the SFT set; returns the exported model folder. A
    completed export is left as it is; ``resume`` continues from the newest complete checkpoint."""
    out = sft_dir(cfg)
    if is_complete(cfg):
        print(f"sft: {model_out(cfg)} is complete; skipped")
        return model_out(cfg)
    model_path = str(resolve_model(cfg.model.name_or_path))
    rows = load_rows(cfg.sft.dataset or data_dir(cfg) / "dataset")
    samples, dropped = build_samples(rows, load_tokenizer(model_path, cfg.model), cfg)
    if not samples:
        raise SFTError(f"no usable SFT rows out of {len(rows)} (dropped: {dict(dropped)})")
    keys = group_keys(rows, samples)
    per_epoch = math.ceil(len(samples) / cfg.sft.batch_size)
    total = per_epoch * cfg.sft.epochs
    lcfg = learner_config(cfg, total)
    run = Run(cfg, out, "sft", total, resume, upload_name=f"{cfg.name}/sft")
    run.begin()
    init_ray()
    learners = LearnerGroup(lcfg, model_path)
    with run.loop(learners.kill):
        run.restore(learners)
        run.log({"sft/rows": len(samples), **{f"sft/dropped/{k}": v for k, v in dropped.items()}})
        for step in run.steps():
            epoch, i = divmod(step, per_epoch)
            order = epoch_order(keys, cfg.seed, epoch)
            m = learners.train([samples[j] for j in order[i * cfg.sft.batch_size:(i + 1) * cfg.sft.batch_size]],
                               objective="sft")
            run.log({f"sft/{k}": v for k, v in m.items()} | {"sft/epoch": epoch + (i + 1) / per_epoch},
                    loss=f"{m['loss']:.3f}", lr=f"{m['lr']:.2e}", epoch=epoch + 1)
            run.maybe_save(learners)
        _export(checkpoint_model_dir(run.final_checkpoint()), model_out(cfg))
    print(f"sft: model at {model_out(cfg)}")
    return model_out(cfg)
